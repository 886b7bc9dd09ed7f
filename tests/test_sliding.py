"""Sliding-window explanations: patches, blending weights and stitching of raw patch maps (MONAI's conventions)."""

from __future__ import annotations

import itertools
import math
import sys
import warnings

import pytest
import torch
from torch import nn
from tqdm import tqdm

import ndcam
import ndcam.core.progress as ndcam_progress
from ndcam.sliding import SlidingWindow, importance_map, sliding_window_explain

CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
GAP = {1: nn.AdaptiveAvgPool1d, 2: nn.AdaptiveAvgPool2d, 3: nn.AdaptiveAvgPool3d}


class PatchFunction:
    """A stand-in method whose patch map is a known function of the patch: ``x[:, 0]^2 + mean(x)`` per patch."""

    calls: list[tuple[int, ...]] = []

    def __init__(self, model, layers=None, **options):
        self.model = model

    @staticmethod
    def f(x: torch.Tensor) -> torch.Tensor:
        return x[:, 0] ** 2 + x.flatten(1).mean(1).reshape((-1,) + (1,) * (x.ndim - 2))

    def __call__(self, x, targets=None, *, upsample=True, normalize=True):
        PatchFunction.calls.append(tuple(x.shape))
        return self.f(x)


def _loop_reference(x: torch.Tensor, roi: tuple[int, ...], overlap: float, mode: str, sigma: float) -> torch.Tensor:
    """Float64 per-voxel loop from the written convention (no padding: every axis at least one patch long)."""
    size = x.shape[2:]
    starts = []
    for s, r in zip(size, roi):
        step = r if s == r else max(1, int(r * (1 - overlap)))
        k, axis = 0, []
        while True:
            a = min(k * step, s - r)
            axis.append(a)
            if a + r >= s:
                break
            k += 1
        starts.append(axis)

    def weight(offset):
        if mode == "constant":
            return 1.0
        return math.prod(math.exp(-((o - (r - 1) / 2) ** 2) / (2 * (sigma * r) ** 2)) for o, r in zip(offset, roi))

    wmin = max(min(weight(o) for o in itertools.product(*(range(r) for r in roi))), 1e-3)
    num = torch.zeros(x.shape[0], *size, dtype=torch.float64)
    den = torch.zeros(*size, dtype=torch.float64)
    for corner in itertools.product(*starts):
        sl = tuple(slice(a, a + r) for a, r in zip(corner, roi))
        m = PatchFunction.f(x[(slice(None), slice(None), *sl)].double())
        for offset in itertools.product(*(range(r) for r in roi)):
            v = tuple(a + o for a, o in zip(corner, offset))
            w = max(weight(offset), wmin)
            num[(slice(None), *v)] += w * m[(slice(None), *offset)]
            den[v] += w
    return num / den


@pytest.mark.parametrize("mode", ["constant", "gaussian"])
@pytest.mark.parametrize("rank, size, roi, overlap", [
    (1, (37,), (10,), 0.25), (2, (13, 11), (6, 5), 0.5), (3, (9, 7, 8), (4, 4, 3), 0.25),
])
def test_stitching_is_the_importance_weighted_mean_of_patch_maps(rank, size, roi, overlap, mode):
    torch.manual_seed(0)
    x = torch.randn(2, 1, *size)
    got = SlidingWindow(nn.Identity(), roi, PatchFunction, overlap=overlap, mode=mode, batch_size=3)(x, normalize=False)
    expected = _loop_reference(x, roi, overlap, mode, 0.125)
    assert got.shape == (2, *size)
    torch.testing.assert_close(got.double(), expected, atol=1e-5, rtol=1e-5)
    # normalized once, after blending
    norm = SlidingWindow(nn.Identity(), roi, PatchFunction, overlap=overlap, mode=mode)(x)
    torch.testing.assert_close(norm, ndcam.ops.minmax_normalize(expected.float()), atol=1e-5, rtol=1e-5)


def test_patches_are_run_in_batches_of_batch_size():
    PatchFunction.calls = []
    x = torch.randn(2, 1, 20, 20)
    sw = SlidingWindow(nn.Identity(), 8, PatchFunction, overlap=0.25, batch_size=5)
    sw(x)
    count = len(sw.patches((20, 20)))  # starts 0, 6, 12 per axis: 9 patches per sample
    assert count == 9 and [c[0] for c in PatchFunction.calls] == [5, 5, 5, 3]
    assert all(c[1:] == (1, 8, 8) for c in PatchFunction.calls)


class BlobNet(nn.Module):
    """Patch classifier with fixed weights: class 1 = mean of a smoothed, rectified input (a bright-lesion detector)."""

    def __init__(self, rank: int):
        super().__init__()
        self.conv = CONV[rank](1, 1, 3, padding=1)
        self.act = nn.ReLU()
        self.pool = GAP[rank](1)
        self.fc = nn.Linear(1, 2)
        with torch.no_grad():
            self.conv.weight.fill_(1 / 3**rank)
            self.conv.bias.fill_(-0.5)
            self.fc.weight.copy_(torch.tensor([[-1.0], [1.0]]))
            self.fc.bias.zero_()

    def forward(self, x):
        return self.fc(self.pool(self.act(self.conv(x))).flatten(1))


@pytest.mark.parametrize("mode", ["constant", "gaussian"])
@pytest.mark.parametrize("rank", [1, 2, 3])
def test_a_lesion_straddling_patch_borders_is_found(rank, mode):
    """roi 16, overlap 0.25: patches start at 0, 12, 24 (size 40), so borders lie at 12, 16, 24 and 28; the lesion
    spans 10..18 on every axis, across the borders 12 and 16."""
    torch.manual_seed(0)
    size = (40,) * rank
    x = 0.1 * torch.randn(1, 1, *size)
    grid = torch.stack(torch.meshgrid(*(torch.arange(s, dtype=torch.float32) for s in size), indexing="ij"))
    lesion = ((grid - 14.0) ** 2).sum(0) <= 4.0**2
    x[0, 0][lesion] += 2.0
    model = BlobNet(rank).eval()
    sw = SlidingWindow(model, (16,) * rank, "gradcam", "act", overlap=0.25, mode=mode, batch_size=8)
    assert {s[0].start for s in sw.patches(size)} == {0, 12, 24}
    maps = sw(x, targets=1)
    assert maps.shape == (1, *size)
    peak = torch.nonzero(maps[0] == maps[0].max())[0]
    assert lesion[tuple(peak)], f"peak {peak.tolist()} outside the lesion"
    assert maps[0][lesion].mean() > 5 * maps[0][~lesion].mean()
    # a fully convolutional detector explained in one piece gives (nearly) the same map
    whole = ndcam.GradCAM(model, "act")(x, 1)
    a, b = maps.flatten() - maps.mean(), whole.flatten() - whole.mean()
    assert float(a @ b / (a.norm() * b.norm())) > 0.95


def test_per_sample_and_multi_targets_reach_every_patch_of_their_sample():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(4, 3)).eval()
    x = torch.randn(2, 1, 20, 24)
    sw = SlidingWindow(model, (12, 12), "gradcam", overlap=0.5, batch_size=4)
    per_sample = sw(x, targets=[2, 0])
    assert per_sample.shape == (2, 20, 24)
    torch.testing.assert_close(per_sample[0], sw(x[:1], targets=2)[0])
    torch.testing.assert_close(per_sample[1], sw(x[1:], targets=0)[0])
    multi = sw(x, targets=torch.tensor([[2, 1], [0, 1]]))
    assert multi.shape == (2, 2, 20, 24)
    torch.testing.assert_close(multi[:, 0], per_sample)
    fn = sliding_window_explain(model, x, (12, 12), "gradcam", lambda out: out[:, 1], overlap=0.5)
    torch.testing.assert_close(fn, sw(x, targets=1))


def test_an_input_smaller_than_a_patch_is_padded_and_cropped_back():
    x = torch.randn(1, 1, 10, 30)
    got = SlidingWindow(nn.Identity(), (16, 16), PatchFunction, overlap=0.25)(x, normalize=False)
    assert got.shape == (1, 10, 30)
    padded = torch.nn.functional.pad(x, (0, 0, 3, 3))
    expected = _loop_reference(padded, (16, 16), 0.25, "constant", 0.125)[:, 3:13]
    torch.testing.assert_close(got.double(), expected, atol=1e-5, rtol=1e-5)


def test_bad_options_get_clear_errors():
    net = nn.Identity()
    with pytest.raises(ValueError, match="mode must be"):
        SlidingWindow(net, 8, PatchFunction, mode="linear")
    with pytest.raises(ValueError, match="overlap must lie"):
        SlidingWindow(net, 8, PatchFunction, overlap=1.0)
    with pytest.raises(ValueError, match="batch_size"):
        SlidingWindow(net, 8, PatchFunction, batch_size=0)
    with pytest.raises(ValueError, match="roi_size .* 2 entries .* rank 3"):
        SlidingWindow(net, (8, 8), PatchFunction)(torch.randn(1, 1, 9, 9, 9))
    with pytest.raises(ValueError, match="unknown method"):
        SlidingWindow(net, 8, "gradcan")


# -- MONAI as an oracle (skips without it) -------------------------------------------------------------------------
@pytest.mark.parametrize("rank, size, roi, overlap", [
    (1, (50,), (16,), 0.25), (2, (21, 30), (8, 9), 0.5), (3, (12, 17, 10), (5, 6, 10), 0.3),
])
@pytest.mark.parametrize("mode, sigma", [("constant", 0.125), ("gaussian", 0.125), ("gaussian", 0.3)])
def test_weights_patches_and_blend_agree_with_monai(rank, size, roi, overlap, mode, sigma):
    monai_utils = pytest.importorskip("monai.data.utils", reason="MONAI is not installed")
    inferers = pytest.importorskip("monai.inferers", reason="MONAI is not installed")
    torch.testing.assert_close(importance_map(roi, mode, sigma),
                               monai_utils.compute_importance_map(roi, mode=mode, sigma_scale=sigma))
    sw = SlidingWindow(nn.Identity(), roi, PatchFunction, overlap=overlap, mode=mode, sigma_scale=sigma)
    from monai.inferers.utils import _get_scan_interval

    interval = _get_scan_interval(size, roi, rank, (overlap,) * rank)
    assert sorted(sw.patches(size)) == sorted(monai_utils.dense_patch_slices(size, roi, interval))
    x = torch.randn(2, 1, *size)
    ours = sw(x, normalize=False)
    theirs = inferers.sliding_window_inference(x, roi, 4, lambda p: PatchFunction.f(p)[:, None], overlap=overlap,
                                               mode=mode, sigma_scale=sigma)
    torch.testing.assert_close(ours, theirs[:, 0], atol=1e-5, rtol=1e-5)


def test_background_patches_do_not_warn_but_an_empty_stitched_map_does():
    model = BlobNet(2).eval()
    x = torch.zeros(1, 1, 40, 40)
    x[0, 0, 10:18, 10:18] = 2.0  # one lesion: most patches see only background (all-zero maps)
    sw = SlidingWindow(model, 16, "gradcam", "act")
    with warnings.catch_warnings():
        warnings.simplefilter("error", ndcam.ConstantMapWarning)
        assert sw(x, 1).max() == 1
    with pytest.warns(ndcam.ConstantMapWarning, match="stitched"):
        sw(torch.zeros(1, 1, 40, 40), 1)


# -- progress bar ---------------------------------------------------------------------------------------------------
class _SpyBar(tqdm):
    """The real tqdm bar, recording how it was made and every update."""

    made: list[_SpyBar] = []

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.made_with, self.updates = kwargs, []
        self.shown = not kwargs.get("disable", False)  # (tqdm sets .disable on close)
        _SpyBar.made.append(self)

    def update(self, n=1):
        self.updates.append(n)
        return super().update(n)


@pytest.fixture
def spy_bar(monkeypatch):
    _SpyBar.made = []
    monkeypatch.setattr(ndcam_progress, "tqdm", _SpyBar)
    return _SpyBar.made


def _blob_window(**options):
    return SlidingWindow(BlobNet(2).eval(), 8, "gradcam", "act", overlap=0.25, batch_size=4, **options)


def test_progress_true_updates_the_bar_once_per_batch_of_patches(spy_bar, capsys):
    x = 2 * torch.rand(2, 1, 20, 20, generator=torch.Generator().manual_seed(0))  # 9 patches per sample, 18 in all
    quiet = _blob_window(progress=False)(x, 1)  # batches of 4, 4, 4, 4, 2
    assert capsys.readouterr().err == "" and not any(b.shown for b in spy_bar)
    spy_bar.clear()
    maps = _blob_window(progress=True)(x, 1)
    (bar,) = spy_bar
    assert bar.updates == [4, 4, 4, 4, 2] and bar.total == 18 and bar.n == 18 and bar.shown
    assert "18/18" in capsys.readouterr().err
    torch.testing.assert_close(maps, quiet, rtol=0, atol=0)
    assert torch.equal(maps, _blob_window()(x, 1))  # progress=None (no terminal here): the same maps, nothing shown
    assert capsys.readouterr().err == ""


def test_progress_none_shows_a_bar_for_many_patches_on_a_terminal_only(spy_bar, monkeypatch):
    x = 2 * torch.rand(1, 1, 20, 20, generator=torch.Generator().manual_seed(0))  # 9 patches
    _blob_window()(x, 1)  # not a terminal: disabled
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    _blob_window()(x, 1)  # a terminal and 3 batches: a bar, shown once 2 s have passed
    _blob_window()(x[..., :8, :8], 1)  # one patch, one batch: no bar
    assert [b.shown for b in spy_bar] == [False, True, False]
    assert spy_bar[1].made_with["delay"] == 2.0 and spy_bar[1].updates == [4, 4, 1]


def test_progress_is_checked_and_passed_to_a_method_with_a_bar_of_its_own():
    model = BlobNet(1).eval()
    with pytest.raises(TypeError, match="progress"):
        SlidingWindow(model, 8, "scorecam", progress="yes")
    assert SlidingWindow(model, 8, "scorecam").method.progress is None  # the method's default: its bar for long runs
    assert SlidingWindow(model, 8, "scorecam", progress=True).method.progress is False  # the patch bar instead
    assert SlidingWindow(model, 8, "scorecam", progress=False).method.progress is False
    SlidingWindow(model, 8, PatchFunction, progress=True)  # a method without the option gets nothing new
