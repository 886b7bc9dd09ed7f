"""Invariants: rank twins, K targets vs single calls, batch vs per-sample, layer fusion, upsampling paths."""

from __future__ import annotations

import contextlib

import pytest
import torch
from torch import nn

import ndcam

from .conftest import GapNet, Net, make_input, make_net

ALL = ndcam.methods()


def _twin(net1: nn.Module, rank: int) -> nn.Module:
    """Copy a Conv1d net into its rank-``rank`` twin with kernels (1, k) / (1, 1, k)."""
    twin = (type(net1))(rank).double().eval()
    sd = {}
    for k, v in net1.state_dict().items():
        if v.ndim == 3 and "conv" in k:  # conv weight (out, in, k) -> (out, in, 1, k) / (out, in, 1, 1, k)
            v = v.reshape(v.shape[:2] + (1,) * (rank - 1) + v.shape[2:])
        sd[k] = v
    twin.load_state_dict(sd)
    return twin


class TwinNet(Net):
    """Net whose convolutions only act along the last axis, so a Conv1d net has exact Conv2d/Conv3d twins."""

    def __init__(self, rank: int, c_in: int = 2, n_classes: int = 5, width: int = 6):
        super().__init__(1, c_in, n_classes, width)
        C = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[rank]
        B = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[rank]
        P = {1: nn.AdaptiveAvgPool1d, 2: nn.AdaptiveAvgPool2d, 3: nn.AdaptiveAvgPool3d}[rank]
        lead = (1,) * (rank - 1)
        self.conv1 = C(c_in, width, lead + (3,), padding=(0,) * (rank - 1) + (1,))
        self.bn1 = B(width)
        self.conv2 = C(width, width + 2, lead + (3,), stride=lead + (2,), padding=(0,) * (rank - 1) + (1,))
        self.conv3 = C(width + 2, width, lead + (3,), padding=(0,) * (rank - 1) + (1,))
        self.pool = P(1)


@pytest.mark.parametrize("method", ALL)
@pytest.mark.parametrize("upsample", [True, False])
def test_conv1d_net_and_its_conv2d_conv3d_twins_give_the_same_maps(method, upsample):
    torch.manual_seed(0)
    from .conftest import randomize_bn

    net1 = randomize_bn(TwinNet(1)).double().eval()
    x1 = make_input(1, n=3)
    kw = {"layers": "act3" if method == "cam" else "feat"}  # CAM needs the layer right before pooling
    if not upsample and "upsample" in ndcam.get_method(method).unsupported:  # declared: refused before any forward
        with pytest.raises(ndcam.InputError, match="upsample=False"):
            ndcam.explain(net1, x1, method, upsample=upsample, **kw)
        return
    m1 = ndcam.explain(net1, x1, method, upsample=upsample, **kw).maps
    assert m1.shape[0] == 3 and m1.max() > 0
    for rank in (2, 3):
        twin = _twin(net1, rank)
        xr = x1.reshape(x1.shape[:2] + (1,) * (rank - 1) + x1.shape[2:])
        mr = ndcam.explain(twin, xr, method, upsample=upsample, **kw).maps
        assert mr.shape == (3,) + (1,) * (rank - 1) + m1.shape[1:]
        torch.testing.assert_close(mr.reshape(m1.shape), m1, atol=1e-6, rtol=1e-5)


def test_twins_also_agree_with_automatic_layer_choice():
    torch.manual_seed(0)
    net1 = TwinNet(1).double().eval()
    x1 = make_input(1)
    e1 = ndcam.explain(net1, x1, "gradcam")
    for rank in (2, 3):
        twin = _twin(net1, rank)
        er = ndcam.explain(twin, x1.reshape(x1.shape[:2] + (1,) * (rank - 1) + x1.shape[2:]), "gradcam")
        assert er.layers == e1.layers
        torch.testing.assert_close(er.maps.reshape(e1.maps.shape), e1.maps, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("method", ALL)
def test_k_targets_at_once_equal_k_single_calls(method, rank):
    model = make_net(rank, cls=GapNet) if method == "cam" else make_net(rank)
    x = make_input(rank)
    t = torch.tensor([[0, 3], [2, 2], [1, 0]])
    cam = ndcam.get_method(method)(model, "feat")
    exp = cam.explain(x, t)
    assert exp.maps.shape == (3, 2, *x.shape[2:])
    assert exp.scores.shape == (3, 2) and exp.targets.tolist() == t.tolist()
    for k in range(2):
        single = cam.explain(x, t[:, k])
        torch.testing.assert_close(exp.maps[:, k], single.maps, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(exp.scores[:, k], single.scores)
        torch.testing.assert_close(exp.raw_max[:, k], single.raw_max)


def test_k_equals_one_keeps_the_k_axis(rank):
    model, x = make_net(rank), make_input(rank)
    maps = ndcam.GradCAM(model, "feat")(x, torch.tensor([[1], [2], [3]]))
    assert maps.shape == (3, 1, *x.shape[2:])


@pytest.mark.parametrize("method", ALL)
def test_mixed_class_batch_equals_per_sample_calls(method, rank):
    model = make_net(rank, cls=GapNet) if method == "cam" else make_net(rank)
    x = make_input(rank, n=4)
    targets = [3, 0, 1, 3]
    cam = ndcam.get_method(method)(model, "feat")
    batch = cam(x, targets)
    for i in range(4):
        torch.testing.assert_close(batch[i : i + 1], cam(x[i : i + 1], targets[i]), atol=1e-6, rtol=1e-5)


def test_default_targets_are_top1_per_sample(rank):
    model, x = make_net(rank), make_input(rank, n=4)
    exp = ndcam.explain(model, x, "gradcam", layers="feat")
    top = model(x).argmax(1)
    assert exp.targets.tolist() == top.tolist()
    torch.testing.assert_close(exp.maps, ndcam.GradCAM(model, "feat")(x, top))
    torch.testing.assert_close(exp.scores, model(x).max(1).values.float())


def test_int_target_applies_to_every_sample(rank):
    model, x = make_net(rank), make_input(rank)
    cam = ndcam.GradCAM(model, "feat")
    torch.testing.assert_close(cam(x, 2), cam(x, [2, 2, 2]))
    torch.testing.assert_close(cam(x, 2), cam(x, torch.tensor([2, 2, 2])))


def test_multi_layer_maps_are_fused_per_layer_normalized_mean(rank):
    model, x = make_net(rank), make_input(rank)
    fused = ndcam.GradCAM(model, ["act1", "feat"])(x, 1)
    a = ndcam.GradCAM(model, "act1")(x, 1)
    b = ndcam.GradCAM(model, "feat")(x, 1)
    torch.testing.assert_close(fused, ndcam.ops.minmax_normalize((a + b) / 2), atol=1e-6, rtol=1e-5)
    # upsample=False: maps brought to the finest layer's resolution
    low = ndcam.GradCAM(model, ["act1", "feat"])(x, 1, upsample=False)
    assert low.shape == (3, *x.shape[2:])  # act1 keeps the input resolution


def test_maps_are_in_unit_range_and_raw_range_is_kept(rank):
    model, x = make_net(rank), make_input(rank)
    exp = ndcam.explain(model, x, "gradcam", layers="feat", targets=[0, 1, 2])
    assert exp.maps.min() >= 0 and exp.maps.max() <= 1
    assert torch.allclose(exp.maps.flatten(1).amax(1), torch.ones(3))
    raw = ndcam.GradCAM(model, "feat")(x, [0, 1, 2], normalize=False)
    torch.testing.assert_close(exp.raw_max, raw.flatten(1).amax(1))
    torch.testing.assert_close(exp.raw(), raw, atol=1e-5, rtol=1e-4)


def test_float32_and_float64_models_agree(rank):
    model64, x64 = make_net(rank), make_input(rank)
    model32 = make_net(rank, dtype=torch.float32)
    m64 = ndcam.GradCAM(model64, "feat")(x64, 1)
    m32 = ndcam.GradCAM(model32, "feat")(x64.float(), 1)
    assert m64.dtype == m32.dtype == torch.float32
    torch.testing.assert_close(m32, m64, atol=1e-4, rtol=1e-3)


class HookedRun(ndcam.GradCAM):
    """A subclass that hooks the model around the captured forward through ``_forward_context(ctx)`` and keeps what
    the hook records in ``ctx.state`` (never on ``self``)."""

    @contextlib.contextmanager
    def _forward_context(self, ctx):
        seen = ctx.state["seen"] = []
        handle = self.model.register_forward_hook(lambda m, i, o: seen.append(o.shape[0]))
        try:
            yield
        finally:
            handle.remove()

    def _layer_maps(self, ctx):
        assert ctx.state["seen"] == [ctx.n]  # the captured forward ran inside the context
        return super()._layer_maps(ctx)


class ContextLayerMaps(ndcam.GradCAM):
    """A subclass overriding ``_layer_maps(ctx)`` (the per-call context)."""

    def _layer_maps(self, ctx):
        grads = ctx.cap.gradients(ctx.scores[:, 0])
        return [torch.stack([torch.relu(ndcam.ops.weighted_sum(ndcam.ops.spatial_mean(g), a))], 1)
                for a, g in zip(ctx.cap.activations, grads)]


def test_the_removed_layer_maps_signature_is_refused_at_class_definition():
    with pytest.raises(TypeError, match=r"_layer_maps must take \(self, ctx\)"):
        class Old(ndcam.GradCAM):
            def _layer_maps(self, cap, x, sc, class_idx, score_fn):
                return []


def test_the_removed_run_signature_is_refused_at_class_definition():
    with pytest.raises(TypeError, match=r"_run must take \(self, ctx\)"):
        class Old(ndcam.GradCAM):
            def _run(self, x, targets, score_fn, class_idx, upsample, normalize):
                return None


def test_subclasses_of_the_private_steps_work(rank):
    model, x = make_net(rank), make_input(rank)
    want = ndcam.GradCAM(model, "feat")(x, [0, 1, 2])
    torch.testing.assert_close(HookedRun(model, "feat")(x, [0, 1, 2]), want)
    assert not model._forward_hooks  # the context's hook is gone
    torch.testing.assert_close(HookedRun(model, "feat", per_sample=True)(x, [0, 1, 2]), want)
    torch.testing.assert_close(HookedRun(model, "feat", aug_smooth=True)(x, [0, 1, 2]),
                               ndcam.GradCAM(model, "feat", aug_smooth=True)(x, [0, 1, 2]))
    torch.testing.assert_close(ContextLayerMaps(model, "feat")(x, [0, 1, 2]), want)
