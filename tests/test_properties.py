"""Property tests over random ranks, shapes, batch sizes, channel counts and methods."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import ndcam

from .conftest import CONV, GAP

METHODS = ndcam.methods()


@st.composite
def cases(draw):
    rank = draw(st.integers(1, 3))
    n = draw(st.integers(1, 3))
    c = draw(st.integers(1, 3))
    max_side = {1: 40, 2: 12, 3: 7}[rank]
    spatial = tuple(draw(st.integers(3, max_side)) for _ in range(rank))
    stride = draw(st.integers(1, 2))
    width = draw(st.integers(1, 5))
    classes = draw(st.integers(1, 4))
    method = draw(st.sampled_from(METHODS))
    seed = draw(st.integers(0, 2**16))
    return rank, n, c, spatial, stride, width, classes, method, seed


def build(rank, c, stride, width, classes, seed):
    torch.manual_seed(seed)
    return nn.Sequential(
        CONV[rank](c, width, 3, padding=1, stride=stride), nn.ReLU(), GAP[rank](1), nn.Flatten(), nn.Linear(width, classes)
    ).double().eval()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases())
def test_shapes_range_and_batch_consistency(case):
    rank, n, c, spatial, stride, width, classes, method, seed = case
    model = build(rank, c, stride, width, classes, seed)
    x = torch.randn(n, c, *spatial, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    cam = ndcam.get_method(method)(model)
    exp = cam.explain(x)
    assert exp.maps.shape == (n, *spatial) and exp.maps.dtype == torch.float32
    assert torch.isfinite(exp.maps).all()
    assert exp.maps.min() >= 0 and exp.maps.max() <= 1
    # every map is either all-zero (constant raw map) or reaches 1
    peak = exp.maps.flatten(1).amax(1)
    assert ((peak == 0) | (peak == 1)).all()
    if "upsample" in cam.unsupported:  # declared: refused before any forward (Guided Grad-CAM)
        with pytest.raises(ndcam.InputError, match="upsample=False"):
            cam(x, upsample=False, normalize=False)
    else:
        low = cam(x, upsample=False, normalize=False)
        assert low.shape[0] == n and low.ndim == rank + 1
    for i in range(n):
        torch.testing.assert_close(cam(x[i : i + 1], exp.targets[i : i + 1]), exp.maps[i : i + 1], atol=1e-6, rtol=1e-5)


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 3), st.integers(1, 4), st.data())
def test_k_targets_any_shape(rank, k, data):
    classes = 5
    model = build(rank, 2, 1, 3, classes, 0)
    spatial = tuple(data.draw(st.integers(3, 8)) for _ in range(rank))
    n = data.draw(st.integers(1, 3))
    t = torch.tensor(data.draw(st.lists(st.lists(st.integers(0, classes - 1), min_size=k, max_size=k), min_size=n,
                                        max_size=n)))
    x = torch.randn(n, 2, *spatial, dtype=torch.float64)
    maps = ndcam.GradCAMPlusPlus(model)(x, t)
    assert maps.shape == (n, k, *spatial)
    for j in range(k):
        torch.testing.assert_close(maps[:, j], ndcam.GradCAMPlusPlus(model)(x, t[:, j]), atol=1e-6, rtol=1e-5)
