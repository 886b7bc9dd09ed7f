"""Numerics (issue 12): low-precision models, large and tiny magnitudes, eigen fallbacks, FullGrad's default layers.

Each test reproduces a failure of the code before issue 12 (all-zero maps, NaN maps, torch's ``LinAlgError``, a
FullGrad default layer that never runs) on 1D, 2D and 3D, and checks the fixed result against a float64 computation.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

import ndcam
from ndcam import ops
from ndcam.methods import gradient

from . import reference as R
from .conftest import CONV, SHAPES, GapNet, make_input, make_net

METHODS = sorted(set(ndcam.methods()))


def _scaled_gapnet(rank: int, fc_scale: float, dtype=torch.float64, bias_shift: float = 0.0) -> nn.Module:
    net = make_net(rank, cls=GapNet)
    with torch.no_grad():
        net.fc.weight.mul_(fc_scale)
        net.conv2.bias.add_(bias_shift)
    return net.to(dtype)


def _explain(net, x, method, targets=1):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ndcam.explain(net, x, method, targets=targets)


# ------------------------------------------------------------------------------------------------ Grad-CAM++ scale
@pytest.mark.parametrize("fc_scale", [1e-12, 1e5, 1e17])
def test_gradcampp_float32_equals_float64_for_tiny_and_huge_gradients(rank, fc_scale):
    """Gradients ~1e-13 (G^3 underflows in float32) or ~1e13 (G^3 overflows): float32 used to return zeros/garbage."""
    x = make_input(rank)
    ref = ndcam.GradCAMPlusPlus(_scaled_gapnet(rank, fc_scale), "feat")(x, [0, 1, 2])
    got = ndcam.GradCAMPlusPlus(_scaled_gapnet(rank, fc_scale, torch.float32), "feat")(x.float(), [0, 1, 2])
    assert torch.isfinite(got).all()
    assert ref.flatten(1).amax(1).min() == 1, "reference maps must not be constant"
    torch.testing.assert_close(got.double(), ref.double(), rtol=0, atol=1e-5)


@pytest.mark.parametrize("scale", [1e-20, 1e-8, 1.0, 1e8, 1e20])
def test_gradcampp_weights_equal_the_float64_formula_at_any_scale(scale):
    """The pure weight function on float32 inputs equals eq. 19 evaluated in float64 (loop reference), any rank."""
    g = torch.Generator().manual_seed(3)
    for shape in [(2, 3, 7), (2, 3, 4, 5), (2, 3, 2, 3, 4)]:
        A = torch.rand(*shape, generator=g)
        G = (torch.randn(*shape, generator=g) * scale).float()
        w = gradient.gradcampp_weights(A, G)
        A64, G64 = A.double().numpy(), G.double().numpy()
        ref = np.zeros(shape[:2])
        for i in range(shape[0]):
            for c in range(shape[1]):
                s = A64[i, c].sum()
                gp = np.maximum(G64[i, c], 0)
                with np.errstate(invalid="ignore"):
                    t = gp**3 / (2 * gp**2 + s * gp**3 + 1e-6)
                ref[i, c] = np.nansum(t)
        np.testing.assert_allclose(w.numpy(), ref, rtol=1e-10, atol=0)
        assert G.abs().max() > 0  # the input is not consumed


def test_gradcampp_does_not_overwrite_the_gradient():
    A, G = torch.rand(2, 3, 5), torch.randn(2, 3, 5)
    G0 = G.clone()
    gradient.gradcampp_weights(A, G, inplace=True)
    torch.testing.assert_close(G, G0)


# ------------------------------------------------------------------------------------------------ Eigen methods
@pytest.mark.parametrize("method", ["eigencam", "eigengradcam"])
def test_eigen_methods_on_activations_near_1e30(rank, method):
    """Activations ~1e30: the Gram matrix overflowed in float32 and eigh raised LinAlgError; now equal to float64."""
    x = make_input(rank) * 1e30
    ref = _explain(_scaled_gapnet(rank, 1.0), x, method).maps
    got = _explain(_scaled_gapnet(rank, 1.0, torch.float32), x.float(), method).maps
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got.double(), ref.double(), rtol=0, atol=1e-4)


def test_first_principal_component_is_scale_equivariant_and_matches_the_reference(rank):
    g = torch.Generator().manual_seed(0)
    t = torch.randn(3, 5, *[4, 3, 2][:rank], generator=g, dtype=torch.float64)
    ref = np.stack([R._pc_projection(t[i].numpy(), t[i].sum(0).numpy()) for i in range(3)])
    base = ops.first_principal_component(t)
    np.testing.assert_allclose(base.numpy(), ref, rtol=1e-8, atol=1e-10)
    for s in (1e-30, 1e30):
        got = ops.first_principal_component((t * s).float())
        assert torch.isfinite(got).all()
        np.testing.assert_allclose((got.double() / s).numpy(), ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


def test_eigen_fallback_when_eigh_fails(monkeypatch, rank):
    """If eigh raises LinAlgError (ill-conditioned input), the SVD fallback gives the same projection."""
    g = torch.Generator().manual_seed(1)
    t = torch.randn(2, 6, *[5, 4, 3][:rank], generator=g, dtype=torch.float64)
    expected = ops.first_principal_component(t)

    def broken(*a, **k):
        raise torch.linalg.LinAlgError("linalg.eigh: The algorithm failed to converge")

    monkeypatch.setattr(torch.linalg, "eigh", broken)
    got = ops.first_principal_component(t)
    torch.testing.assert_close(got, expected, rtol=1e-8, atol=1e-10)
    model, x = make_net(rank), make_input(rank)
    maps = ndcam.EigenCAM(model, "feat")(x)
    assert torch.isfinite(maps).all()


def test_eigen_on_degenerate_activations_stays_finite(rank):
    sp = [5, 4, 3][:rank]
    same = torch.randn(2, 1, *sp).expand(2, 4, *sp).contiguous()  # rank one: every channel equal
    const = torch.ones(2, 4, *sp)  # nothing varies over positions: zero after centring
    tied = torch.zeros(2, 4, *sp)  # two equal leading singular values
    tied.reshape(2, 4, -1)[:, 0, 0] = 1.0
    tied.reshape(2, 4, -1)[:, 1, 1] = 1.0
    for t in (same, const, tied, same * 1e35, same * 1e-35):
        out = ops.first_principal_component(t)
        assert torch.isfinite(out).all() and out.shape == (2, *sp)
    assert (ops.first_principal_component(const) == 0).all()


# ------------------------------------------------------------------------------------------------ Guided Grad-CAM
@pytest.mark.parametrize("x_scale, fc_scale", [(1e20, 1e15), (1.0, 1e30)])
def test_guided_gradcam_stays_finite_for_huge_magnitudes(rank, x_scale, fc_scale):
    """guided * cam overflowed float32 (inf * 0 = NaN maps); now equal to the float64 model's maps."""
    x = make_input(rank) * x_scale
    ref = _explain(_scaled_gapnet(rank, fc_scale), x, "guidedgradcam").maps
    got = _explain(_scaled_gapnet(rank, fc_scale, torch.float32), x.float(), "guidedgradcam").maps
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got.double(), ref.double(), rtol=0, atol=1e-5)


# ------------------------------------------------------------------------------------------------ huge magnitudes
@pytest.mark.parametrize("method", METHODS)
def test_every_method_is_finite_on_inputs_near_1e20(method, rank):
    """Inputs ~1e20 with class weights ~1e15 (activations ~1e20, maps up to ~1e35): finite maps, equal to the
    float64 twin's (a piecewise-linear net, so nothing saturates)."""
    x = make_input(rank) * 1e20
    got = _explain(_scaled_gapnet(rank, 1e15, torch.float32), x.float(), method)
    assert torch.isfinite(got.maps).all()
    ref = _explain(_scaled_gapnet(rank, 1e15), x, method)
    torch.testing.assert_close(got.maps.double(), ref.maps.double(), rtol=0, atol=1e-4)


# ------------------------------------------------------------------------------------------------ low precision
#: max |map(low precision model) - map(float32 twin)| (normalized maps): the model's own forward pass in float16 /
#: bfloat16 rounds activations and scores by ~5e-4 / ~4e-3 relative, which no CAM computation can undo
#: (measured on these nets: float16 <= 1e-2, mostly ~1e-3; bfloat16 <= 0.12, and up to 0.29 for the methods that
#: backpropagate through the whole bfloat16 network, FULL_BACKWARD)
LOW_TOL = {torch.float16: 1.5e-2, torch.bfloat16: 0.15}
FULL_BACKWARD = {"fullgrad", "guidedbackprop", "guidedgradcam"}
#: Ablation-CAM's weights are differences of nearly equal scores: in bfloat16 (8 significant bits) the model itself
#: cannot resolve them, so only finiteness and the float16 tolerance are asserted for it
BF16_UNRESOLVABLE = {"ablationcam"}


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
@pytest.mark.parametrize("method", METHODS)
def test_low_precision_models_give_their_float32_twins_maps(method, dtype, rank):
    net32 = make_net(rank, dtype=torch.float32)
    net = make_net(rank, dtype=torch.float32).to(dtype)
    x = make_input(rank, dtype=torch.float32)
    ref = _explain(net32, x, method)
    got = _explain(net, x.to(dtype), method)
    assert got.maps.dtype == torch.float32 and got.maps.shape == ref.maps.shape
    assert torch.isfinite(got.maps).all()
    if dtype == torch.bfloat16 and method in BF16_UNRESOLVABLE:
        return
    err = (got.maps - ref.maps).abs().max().item()
    tol = 0.35 if (dtype == torch.bfloat16 and method in FULL_BACKWARD) else LOW_TOL[dtype]
    assert err <= tol, f"{method} {dtype}: max abs difference {err:.2e}"


def _rounding_twin(rank: int, dtype: torch.dtype) -> nn.Module:
    """The float32 twin of the ``dtype`` net that rounds every module's output to ``dtype`` (forward hooks; in the
    backward the cast rounds the gradient at each module boundary too): it reproduces the low-precision forward
    exactly on CPU, so what remains between the two maps is ndcam's own arithmetic (plus the low-precision backward's
    internal roundings for gradient methods)."""
    twin = make_net(rank, dtype=torch.float32).to(dtype).float()

    def hook(module, inputs, output):
        return output.to(dtype).float()

    for m in twin.modules():
        if m is not twin:
            m.register_forward_hook(hook)
    return twin


#: forward-only methods see exactly the same activations and scores; gradient methods also the low-precision
#: backward's roundings inside each module (measured: float16 <= 5e-4 at the layer, <= 2.4e-3 through the whole
#: network; bfloat16 <= 2.4e-3 / 4.8e-3); Score-CAM's masks are built in the input's dtype (measured <= 9e-4)
FORWARD_ONLY = {"ablationcam", "cam", "eigencam"}
TWIN_TOL = {torch.float16: (1e-3, 3e-3), torch.bfloat16: (5e-3, 6e-3)}


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
@pytest.mark.parametrize("method", METHODS)
def test_low_precision_maps_equal_the_rounding_twins_maps(method, dtype, rank):
    """ndcam's arithmetic adds nothing to a low-precision model's own rounding: its maps equal those of a float32
    twin that rounds like it (exactly for forward-only methods; the issue's 1e-3 for float16 gradient methods)."""
    x = make_input(rank, dtype=torch.float32).to(dtype)
    got = _explain(make_net(rank, dtype=torch.float32).to(dtype), x, method).maps
    ref = _explain(_rounding_twin(rank, dtype), x.float(), method).maps
    err = (got - ref).abs().max().item()
    if method in FORWARD_ONLY:
        tol = 1e-5
    else:  # second-order (ShapleyCAM) and full-backward methods round through more of the network
        tol = TWIN_TOL[dtype][1 if method in FULL_BACKWARD or method == "shapleycam" else 0]
    assert err <= tol, f"{method} {dtype}: max abs difference {err:.2e} to the rounding twin"


def test_half_ablation_cam_is_not_all_zero(rank):
    """A map with a large offset (activations ~100): computed in float16 it fell below float16's resolution and was
    taken for a constant map (all zeros). Weights and maps are now float32."""
    x = make_input(rank, dtype=torch.float32)
    ref = ndcam.AblationCAM(_scaled_gapnet(rank, 1.0, torch.float32, bias_shift=100.0))(x, 1)
    got = ndcam.AblationCAM(_scaled_gapnet(rank, 1.0, torch.float16, bias_shift=100.0))(x.half(), 1)
    assert (got.flatten(1).amax(1) == 1).all()
    assert (got - ref).abs().max() < 0.2  # float16 activations near 100 are rounded to 1/16


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
def test_weight_functions_compute_in_float32_or_wider(dtype):
    g = torch.Generator().manual_seed(0)
    A = torch.rand(2, 4, 6, 5, generator=g).to(dtype)
    G = torch.randn(2, 4, 6, 5, generator=g).to(dtype)
    w = gradient.gradcampp_weights(A, G)
    ref = gradient.gradcampp_weights(A.double(), G.double())
    assert w.dtype in (torch.float32, torch.float64)
    torch.testing.assert_close(w.double(), ref, rtol=1e-6, atol=0)
    out = ops.first_principal_component(A)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), ops.first_principal_component(A.double()), rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------------------------------ FullGrad layers
class AuxNet(nn.Module):
    """A conv net with an auxiliary branch that only runs in training mode (Inception's aux head) and a conv that
    never runs at all."""

    def __init__(self, rank: int):
        super().__init__()
        C = CONV[rank]
        self.conv1 = C(2, 4, 3, padding=1)
        self.conv2 = C(4, 6, 3, padding=1)
        self.aux = C(4, 3, 1)
        self.unused = C(6, 6, 1)
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        h = torch.relu(self.conv1(x))
        if self.training:
            _ = self.aux(h)
        h = torch.relu(self.conv2(h))
        return self.fc(h.flatten(2).mean(2))


def test_fullgrad_default_layers_are_those_that_ran(rank):
    torch.manual_seed(0)
    model = AuxNet(rank).double().train()
    x = make_input(rank)
    got = ndcam.FullGrad(model)(x, [0, 1, 2])
    expected = ndcam.FullGrad(model, ["conv1", "conv2"])(x, [0, 1, 2])
    torch.testing.assert_close(got, expected)
    assert model.training and model.aux.training  # flags restored


class OnlyUnusedBias(nn.Module):
    def __init__(self, rank: int):
        super().__init__()
        self.conv = CONV[rank](2, 3, 3, bias=False)
        self.never = CONV[rank](3, 3, 1)
        self.fc = nn.Linear(3, 2)

    def forward(self, x):
        return self.fc(self.conv(x).flatten(2).mean(2))


def test_fullgrad_refuses_when_no_bias_layer_runs(rank):
    model = OnlyUnusedBias(rank).double()
    with pytest.raises(LookupError, match="never ran"):
        ndcam.FullGrad(model)(make_input(rank))


# ------------------------------------------------------------------------------------------------ inference mode
@pytest.mark.parametrize("method", ["fullgrad", "guidedbackprop", "guidedgradcam"])
def test_full_backward_methods_accept_inference_mode_inputs(method, rank):
    model = make_net(rank)
    with torch.inference_mode():
        x = make_input(rank)
    expected = _explain(model, x.clone(), method).maps
    torch.testing.assert_close(_explain(model, x, method).maps, expected)
    with torch.inference_mode():
        torch.testing.assert_close(_explain(model, x, method).maps, expected)


def test_gradcampp_blocks_of_channels_give_the_whole_tensors_weights(rank, monkeypatch):
    """Grad-CAM++'s float64 temporaries are made for blocks of channels: any block size gives the same weights."""
    from ndcam.methods import gradient

    g = torch.Generator().manual_seed(3)
    shape = (2, 7) + tuple(SHAPES[rank])
    a, grad = torch.rand(shape, generator=g), torch.randn(shape, generator=g) * 1e-3
    whole = gradient.gradcampp_weights(a, grad)
    monkeypatch.setattr(gradient, "GRADCAMPP_BLOCK", 1)  # one channel per block
    torch.testing.assert_close(gradient.gradcampp_weights(a, grad), whole, rtol=0, atol=0)
