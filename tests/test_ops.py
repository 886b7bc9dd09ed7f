"""Spatial ops: upsampling paths agree, normalization is safe, reductions are rank-agnostic."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ndcam import ops

from . import reference as R


@pytest.mark.parametrize("src, dst", [((5,), (23,)), ((3, 4), (10, 7)), ((2, 3, 4), (5, 9, 8)), ((4, 6), (2, 3))])
def test_upsample_native_and_separable_equal_the_loop_reference(src, dst):
    m = torch.rand(2, *src, dtype=torch.float64)
    ref = R.ref_upsample(m.numpy(), dst)
    np.testing.assert_allclose(ops.upsample(m, dst).numpy(), ref, atol=1e-12)
    np.testing.assert_allclose(ops.upsample(m, dst, separable=True).numpy(), ref, atol=1e-12)


def test_upsample_rank4_uses_separable_passes():
    m = torch.rand(2, 2, 3, 2, 3, dtype=torch.float64)
    out = ops.upsample(m, (4, 5, 3, 6))
    assert out.shape == (2, 4, 5, 3, 6)
    np.testing.assert_allclose(out.numpy(), R.ref_upsample(m.numpy(), (4, 5, 3, 6)), atol=1e-12)


def test_upsample_rejects_wrong_size_rank():
    with pytest.raises(ValueError, match="2 spatial axes"):
        ops.upsample(torch.rand(1, 3, 3), (4,))


def test_normalize_constant_maps_are_zero_not_nan():
    maps = torch.stack([torch.full((4, 4), 3.0), torch.zeros(4, 4), torch.arange(16.0).reshape(4, 4)])
    out = ops.minmax_normalize(maps)
    assert torch.isfinite(out).all()
    assert (out[0] == 0).all() and (out[1] == 0).all()
    assert out[2].min() == 0 and out[2].max() == 1
    # nearly constant (float rounding) maps are constant too
    near = torch.full((1, 8), 1.0) + torch.tensor([0, 1e-8, 0, 0, 0, 0, 0, 0])
    assert (ops.minmax_normalize(near) == 0).all()
    # tiny but genuine variation is kept
    tiny = torch.tensor([[1e-20, 2e-20, 3e-20]])
    torch.testing.assert_close(ops.minmax_normalize(tiny), torch.tensor([[0.0, 0.5, 1.0]]))


def test_normalize_with_k_axis():
    maps = torch.rand(2, 3, 5, 6)
    out = ops.minmax_normalize(maps, batch_dims=2)
    assert torch.allclose(out.flatten(2).amax(2), torch.ones(2, 3))
    torch.testing.assert_close(out[1, 2], ops.minmax_normalize(maps[1, 2][None])[0])


def test_reductions_any_rank():
    for shape in [(2, 3, 5), (2, 3, 4, 5), (2, 3, 2, 3, 4), (2, 3, 2, 2, 2, 2)]:
        t = torch.rand(shape, dtype=torch.float64)
        torch.testing.assert_close(ops.spatial_mean(t), t.reshape(2, 3, -1).mean(2))
        torch.testing.assert_close(ops.spatial_sum(t), t.reshape(2, 3, -1).sum(2))
        w = torch.rand(2, 3, dtype=torch.float64)
        torch.testing.assert_close(ops.weighted_sum(w, t), (w.reshape(2, 3, *[1] * (t.ndim - 2)) * t).sum(1))


@pytest.mark.parametrize("src, dst", [((3, 3, 3), (48, 40, 37)), ((7, 7), (224, 224)), ((2, 5, 3), (9, 9, 9)),
                                      ((16, 2), (17, 40)), ((3, 2, 2, 3), (5, 7, 4, 6))])
def test_small_map_fast_path_equals_the_reference_and_the_native_kernels(src, dst):
    m = torch.rand(3, *src, dtype=torch.float64)
    fast = ops.upsample(m, dst)
    np.testing.assert_allclose(fast.numpy(), R.ref_upsample(m.numpy(), dst), atol=1e-12)
    if len(src) <= 3:
        mode = {2: "bilinear", 3: "trilinear"}[len(src)]
        native = torch.nn.functional.interpolate(m[:, None], size=dst, mode=mode, align_corners=False)[:, 0]
        np.testing.assert_allclose(fast.numpy(), native.numpy(), atol=1e-12)


@pytest.mark.parametrize("src, dst", [((5,), (23,)), ((40,), (17,)), ((3, 4), (10, 7)), ((3, 3, 3), (48, 40, 37)),
                                      ((7, 2, 5), (3, 9, 12)), ((2, 3, 2, 3), (5, 7, 4, 6))])
def test_upsampled_minmax_is_exact(src, dst):
    m = torch.randn(6, *src, dtype=torch.float64)
    lo, hi = ops.upsampled_minmax(m, dst)
    full = ops.upsample(m, dst).reshape(6, -1)
    torch.testing.assert_close(lo, full.amin(1), rtol=0, atol=1e-12)
    torch.testing.assert_close(hi, full.amax(1), rtol=0, atol=1e-12)
