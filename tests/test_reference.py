"""Every method x rank 1/2/3 against slow loop-based references (float64)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import ndcam
from ndcam.methods import activation, gradient

from . import reference as R
from .conftest import GapNet, make_input, make_net

GRAD_REFS = {
    "gradcam": (ndcam.GradCAM, R.ref_gradcam),
    "gradcam++": (ndcam.GradCAMPlusPlus, R.ref_gradcampp),
    "xgradcam": (ndcam.XGradCAM, R.ref_xgradcam),
    "hirescam": (ndcam.HiResCAM, R.ref_hirescam),
    "gradcamelementwise": (ndcam.GradCAMElementWise, R.ref_elementwise),
    "layercam": (ndcam.LayerCAM, R.ref_layercam),
    "eigengradcam": (ndcam.EigenGradCAM, R.ref_eigengradcam),
}


def _classes(out):
    return out.argmax(1)


@pytest.mark.parametrize("name", list(GRAD_REFS))
def test_gradient_methods_match_reference(name, rank):
    cls, ref = GRAD_REFS[name]
    model = make_net(rank)
    x = make_input(rank)
    targets = [0, 3, 1]
    idx = torch.tensor(targets)
    A, G, _ = R.capture_reference(model, model.feat, x, lambda o: o.gather(1, idx[:, None])[:, 0])
    expected_raw = np.maximum(ref(A, G), 0)
    cam = cls(model, "feat")
    raw = cam(x, targets, upsample=False, normalize=False)
    assert raw.dtype == torch.float32 and raw.shape == (3, *A.shape[2:])
    np.testing.assert_allclose(raw.double().numpy(), expected_raw, rtol=1e-5, atol=1e-6 * np.abs(expected_raw).max())
    assert np.abs(expected_raw).max() > 0, "reference map is all-zero: the test would not discriminate"
    full = cam(x, targets)
    expected = R.ref_normalize(R.ref_upsample(expected_raw, x.shape[2:]))
    assert full.shape == (3, *x.shape[2:])
    np.testing.assert_allclose(full.double().numpy(), expected, atol=2e-6)


def test_eigencam_matches_reference(rank):
    model = make_net(rank)
    x = make_input(rank)
    A, _, _ = R.capture_reference(model, model.feat, x, lambda o: o[:, 0])
    expected_raw = np.maximum(R.ref_eigencam(A), 0)
    raw = ndcam.EigenCAM(model, "feat")(x, upsample=False, normalize=False)
    np.testing.assert_allclose(raw.double().numpy(), expected_raw, rtol=1e-5, atol=1e-6 * np.abs(expected_raw).max())


def test_cam_matches_reference(rank):
    model = make_net(rank, cls=GapNet)
    x = make_input(rank)
    A, _, out = R.capture_reference(model, model.feat, x, lambda o: o[:, 0])
    classes = out.argmax(1).numpy()
    W = model.fc.weight.detach().double().numpy()
    expected_raw = R.ref_cam(A, W, classes)  # no ReLU, as in the paper
    raw = ndcam.CAM(model, "feat")(x, upsample=False, normalize=False)
    np.testing.assert_allclose(raw.double().numpy(), expected_raw, rtol=1e-5, atol=1e-7)
    assert (expected_raw < 0).any() and (expected_raw > 0).any()


def test_cam_equals_gradcam_on_gap_linear_heads(rank):
    """On conv -> GAP -> linear, Grad-CAM weights are W_k / |S|: same map up to the ReLU."""
    model = make_net(rank, cls=GapNet)
    x = make_input(rank)
    cam = ndcam.CAM(model, "feat")(x, [1, 2, 3], upsample=False, normalize=False)
    grad = ndcam.GradCAM(model, "feat")(x, [1, 2, 3], upsample=False, normalize=False)
    size = np.prod(cam.shape[2:]) if cam.ndim > 2 else cam.shape[-1]
    size = int(np.prod(cam.shape[1:]))
    torch.testing.assert_close(grad, torch.relu(cam) / size, rtol=1e-5, atol=1e-7)


def test_pure_weight_functions_any_rank():
    """The pure functions take any rank, including 4 spatial axes, and agree with the references."""
    g = torch.Generator().manual_seed(0)
    A = torch.rand(2, 3, 2, 3, 2, 2, generator=g, dtype=torch.float64)
    G = torch.randn(2, 3, 2, 3, 2, 2, generator=g, dtype=torch.float64)
    An, Gn = A.numpy(), G.numpy()
    np.testing.assert_allclose(ndcam.ops.weighted_sum(gradient.gradcam_weights(G), A).numpy(), R.ref_gradcam(An, Gn))
    np.testing.assert_allclose(ndcam.ops.weighted_sum(gradient.gradcampp_weights(A, G), A).numpy(), R.ref_gradcampp(An, Gn))
    np.testing.assert_allclose(ndcam.ops.weighted_sum(gradient.xgradcam_weights(A, G), A).numpy(), R.ref_xgradcam(An, Gn))
    np.testing.assert_allclose(gradient.hirescam_map(A, G).numpy(), R.ref_hirescam(An, Gn))
    np.testing.assert_allclose(gradient.elementwise_map(A, G).numpy(), R.ref_elementwise(An, Gn))
    np.testing.assert_allclose(gradient.layercam_map(A, G).numpy(), R.ref_layercam(An, Gn))
    np.testing.assert_allclose(activation.eigencam_map(A).numpy(), R.ref_eigencam(An), atol=1e-10)
    np.testing.assert_allclose(activation.eigengradcam_map(A, G).numpy(), R.ref_eigengradcam(An, Gn), atol=1e-10)


def test_gradcampp_alpha_is_zero_where_gradient_is_zero():
    A = torch.ones(1, 1, 4, dtype=torch.float64)
    G = torch.tensor([[[0.0, 1.0, 0.0, -1.0]]], dtype=torch.float64)
    # alpha at s=1: 1 / (2 + 4 + 1e-6); relu(G) kills s=3; zeros contribute nothing
    expected = 1 / (2 + 4 + 1e-6)
    assert gradient.gradcampp_weights(A, G).item() == pytest.approx(expected, rel=1e-12)


def test_eigencam_sign_is_not_inverted():
    """A map with one strong blob: the projection must be high on the blob, whatever sign the SVD returns."""
    A = torch.zeros(1, 4, 10, dtype=torch.float64)
    A[0, :, 3] = torch.tensor([5.0, 4.0, 3.0, 6.0])
    A[0, :, 4] = torch.tensor([4.0, 5.0, 3.0, 5.0])
    A += 0.01 * torch.rand(1, 4, 10, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    m = activation.eigencam_map(A)
    assert m[0].argmax().item() in (3, 4)
    m_neg = activation.eigencam_map(-A)  # reference flips with the data, so the peak is still on the blob in |.|
    assert m_neg[0].abs().argmax().item() in (3, 4)
