"""Pictures: every view names what it shows, has a colorbar and real units, draws in world orientation, says when a
map is constant, and never touches the caller's matplotlib backend."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import torch
from matplotlib.text import Text

import ndcam
from ndcam import viz
from ndcam.core.errors import ConstantMapWarning, InputError
from ndcam.viz.common import MAP_LABEL, rgba_to_array
from ndcam.viz.signal import PAPER_MINOR

from .conftest import Net

ROOT = Path(__file__).resolve().parents[1]
LEADS = ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"]


def texts(fig) -> str:
    return "\n".join(t.get_text() for t in fig.findobj(Text))


def has_map_colorbar(fig) -> bool:
    return any(ax.get_ylabel() == MAP_LABEL or ax.get_xlabel() == MAP_LABEL for ax in fig.axes)


def bump(n: int, at: float, width: float = 0.05) -> np.ndarray:
    t = np.linspace(0, 1, n)
    return np.exp(-((t - at) ** 2) / (2 * width**2)).astype(np.float32)


# ---------------------------------------------------------------- titles, colorbars, layer names
def test_layer_label_never_a_bare_index():
    assert viz.layer_label(["9"]) == 'module "9"'
    assert viz.layer_label(["features.9"]) == 'layer "features.9"'
    assert viz.layer_label(["layer4"]) == 'layer "layer4"'
    assert viz.layer_label(["a", "b.1"]) == 'layers "a", "b.1"'


@pytest.mark.parametrize("rank", [1, 2, 3])
def test_explanation_picture_names_method_layer_target_score(rank):
    torch.manual_seed(0)
    shape = {1: (64,), 2: (16, 20), 3: (8, 10, 12)}[rank]
    model = Net(rank, c_in=1, n_classes=3).eval()
    x = torch.randn(2, 1, *shape)
    exp = ndcam.explain(model, x, "gradcam", targets=2, layers="feat")
    fig = exp.plot(x, index=1, labels=["normal", "PVC", "fusion"], fs=100.0 if rank == 1 else None)
    s = texts(fig)
    assert "gradcam" in s and 'layer "feat"' in s and "target fusion (class 2)" in s
    assert f"score {float(exp.scores[1]):.4g}" in s
    assert has_map_colorbar(fig)


def test_explanation_k_targets_and_kind_checks():
    model = Net(1, c_in=1, n_classes=3).eval()
    x = torch.randn(1, 1, 40)
    exp = ndcam.explain(model, x, "gradcam", targets=torch.tensor([[0, 2]]), layers="feat")
    s = texts(exp.plot(x, k=1))
    assert "class 2" in s and f"{float(exp.scores[0, 1]):.4g}" in s
    with pytest.raises(InputError, match="kind"):
        exp.plot(x, kind="movie")


# ---------------------------------------------------------------- 1D
def test_signal_amplitude_axes_units_offset_and_leadwise_maps():
    fs, n = 200.0, 400
    sig = np.stack([np.sin(np.linspace(0, 20, n)), 2 * np.cos(np.linspace(0, 20, n))])
    cam = np.stack([bump(n, 0.3), bump(n, 0.7)])  # one band per lead
    fig = viz.plot_signal(sig, cam, fs=fs, channels=["MLII", "V1"], units=["mV", "mV"], offset=1800.0)
    leads = [ax for ax in fig.axes if ax.get_ylabel().startswith(("MLII", "V1"))]
    assert len(leads) == 2
    assert leads[0].get_ylabel() == "MLII\n(mV)"
    assert len(leads[1].get_yticks()) >= 3 and leads[1].yaxis.get_visible()
    lo, hi = leads[0].get_xlim()
    assert lo == pytest.approx(1800.0 - 0.5 / fs) and hi == pytest.approx(1800.0 + (n - 0.5) / fs)
    assert "ECG paper: 25 mm/s, 10 mm/mV" in texts(fig)
    minor = matplotlib.colors.to_rgba(PAPER_MINOR)
    assert any(np.allclose(c.get_color()[0], minor) for c in leads[0].collections)
    # paper at its physical scale: 1 s = 25 mm, 1 mV = 10 mm
    rgba_to_array(fig)  # lay out and draw
    bb = leads[0].get_window_extent()
    x0, x1 = leads[0].get_xlim()
    y0, y1 = leads[0].get_ylim()
    mm_per_s = bb.width / fig.dpi * 25.4 / (x1 - x0)
    mm_per_mv = bb.height / fig.dpi * 25.4 / (y1 - y0)
    assert mm_per_mv / mm_per_s == pytest.approx(10 / 25, rel=0.02)
    with pytest.raises(InputError, match="one \\(C, L\\) map per lead"):
        viz.plot_signal(sig, np.zeros((3, n)))


def test_signal_without_units_is_not_paper_and_says_amplitude():
    fig = viz.plot_signal(np.random.rand(2, 100), np.random.rand(100), fs=50.0)
    assert "ECG paper" not in texts(fig)
    assert any(ax.get_ylabel() == "ch 0\n(amplitude)" for ax in fig.axes)


def test_long_recording_wraps_and_pages_with_offsets():
    fs = 100.0
    n = int(95 * fs)
    sig, cam = np.random.rand(1, n), np.random.rand(n)
    fig = viz.plot_signal(sig, cam, fs=fs, row_seconds=10, max_rows=4)
    rows = [ax for ax in fig.axes if ax.get_ylabel().startswith("ch 0")]
    assert len(rows) == 4
    assert rows[2].get_xlim()[0] == pytest.approx(20 - 0.5 / fs)
    assert "first 40 s of 95 s shown" in texts(fig)
    pages = list(viz.signal_pages(sig, cam, fs=fs, page_seconds=30, offset=5.0, title="rec"))
    assert len(pages) == 4
    last = [ax for ax in pages[-1].axes if ax.get_ylabel().startswith("ch 0")][0]
    assert last.get_xlim()[0] == pytest.approx(5.0 + 90 - 0.5 / fs)
    assert "page 4 of 4" in texts(pages[-1])


def test_twelve_lead_layout_any_order_and_case():
    fs, n = 250.0, 2500
    rng = np.random.default_rng(0)
    order = list(rng.permutation(12))
    names = [LEADS[i].lower() if i % 2 else LEADS[i] for i in order]
    sig = np.stack([np.full(n, float(i)) for i in order])  # channel value = its standard index
    assert viz.twelve_lead_order(names) == {LEADS[i]: j for j, i in enumerate(order)}
    assert viz.twelve_lead_order(LEADS[:11] + ["V7"]) is None

    class Exp:
        maps = torch.as_tensor(bump(n, 0.4))[None]
        scores = torch.tensor([1.5])
        targets = torch.tensor([1])
        layers = ["layer4"]
        method = "gradcam"
        rank = 1

    fig = viz.plot_explanation(Exp(), torch.as_tensor(sig)[None], fs=fs, channels=names, units="uV")
    s = texts(fig)
    assert "12-lead ECG, 25 mm/s, 10 mm/mV" in s and "rhythm strip: lead II" in s
    for lead in LEADS:
        assert lead in s.split("\n") or f"\n{lead}\n" in f"\n{s}\n"
    rgba_to_array(fig)
    ax = max(fig.axes, key=lambda a: a.get_window_extent().width)
    bb = ax.get_window_extent()
    x0, x1 = ax.get_xlim()
    assert bb.width / fig.dpi * 25.4 / (x1 - x0) == pytest.approx(25.0, rel=0.01)  # 25 mm/s on the page
    assert has_map_colorbar(fig)
    # each trace sits where its lead belongs: amplitude encodes the standard lead index
    t = np.arange(n) / fs
    sig = np.stack([0.1 * (i + 1) * np.sin(2 * np.pi * 3 * t) for i in order])
    fig = viz.plot_ecg12(sig, bump(n, 0.4), fs=fs, channels=names)
    from ndcam.viz.ecg import LAYOUT, ROW_MV
    seen = 0
    for line in fig.axes[0].get_lines():
        xd, yd = line.get_xdata(), line.get_ydata()
        if len(xd) < 100:
            continue  # calibration pulses
        row = int(round(-(yd.max() + yd.min()) / 2 / ROW_MV - 0.62))
        col = int(round(xd[0] / 2.5))
        lead = LAYOUT[row][col] if row < 3 else "II"
        assert (yd.max() - yd.min()) / 2 == pytest.approx(0.1 * (LEADS.index(lead) + 1), rel=0.02), (row, col)
        seen += 1
    assert seen == 13
    with pytest.raises(InputError, match="12 standard leads"):
        viz.plot_ecg12(sig, bump(n, 0.4), fs=fs, channels=LEADS[:11] + ["X"])


# ---------------------------------------------------------------- 2D
def test_overlay_shape_dtype_values():
    rng = np.random.default_rng(0)
    img = (rng.random((30, 40, 3)) * 255).astype(np.uint8)
    cam = rng.random((30, 40)).astype(np.float32)
    assert np.array_equal(viz.overlay(img, cam, alpha=0.0), img)
    heat = (matplotlib.colormaps["viridis"](cam)[..., :3] * 255).round().astype(np.uint8)
    out = viz.overlay(img, cam, alpha=1.0, cmap="viridis")
    assert out.dtype == np.uint8 and out.shape == (30, 40, 3)
    assert np.abs(out.astype(int) - heat.astype(int)).max() <= 1
    half = viz.overlay(img, cam, alpha=0.5, cmap="viridis").astype(float)
    assert np.abs(half - (img / 2 + heat / 2)).max() <= 1.01
    # grey float image in any range, channels-first, small map resized to the image
    grey = rng.random((1, 30, 40)) * 1000 - 500
    out = viz.overlay(torch.as_tensor(grey), torch.rand(7, 9), alpha=0.3)
    assert out.shape == (30, 40, 3) and out.dtype == np.uint8
    g = viz.overlay(grey, np.zeros((30, 40)), alpha=0.0)
    assert np.array_equal(g[..., 0], g[..., 1]) and g.min() == 0 and g.max() == 255
    with pytest.raises(InputError):
        viz.overlay(img, cam, alpha=1.5)


@pytest.mark.parametrize("h,w", [(37, 211), (300, 120)])
def test_image_native_resolution_and_aspect(h, w):
    fig = viz.plot_image(np.random.rand(3, h, w), np.random.rand(h // 4, w // 4))
    ax = fig.axes[0]
    bb = ax.get_window_extent()
    scale = max(1, int(np.ceil(320 / max(h, w))))
    assert bb.width == pytest.approx(w * scale, abs=1) and bb.height == pytest.approx(h * scale, abs=1)
    assert has_map_colorbar(fig)
    big = viz.plot_image(np.random.rand(700, 900), np.random.rand(700, 900))
    assert big.axes[0].get_window_extent().width == pytest.approx(900, abs=1)  # never shrunk


# ---------------------------------------------------------------- spectrograms
def test_spectrogram_frequency_up_axes_in_hz_and_s():
    spec = np.zeros((65, 50), np.float32)
    spec[50] = 1.0  # a tone in a high bin
    cam = np.zeros((65, 50), np.float32)
    cam[50, 10:20] = 1.0
    fig = viz.plot_spectrogram(spec, cam, fs=8000.0, hop=64)
    ax = fig.axes[0]
    lo, hi = ax.get_ylim()
    assert lo < hi and hi == pytest.approx(4000 + 31.25, rel=0.01)
    assert ax.get_ylabel() == "frequency (Hz)" and ax.get_xlabel() == "time (s)"
    assert ax.get_xlim()[1] == pytest.approx(49.5 * 64 / 8000, rel=1e-3)
    assert "hop 64 samples" in texts(fig) and has_map_colorbar(fig)
    # explicit mel axis, rows stored high-to-low: drawn low-to-high on a mel scale
    freqs = np.linspace(4000, 50, 65)
    fig = viz.plot_spectrogram(spec, cam, freqs=freqs, times=np.arange(50) * 0.01, freq_scale="mel")
    assert fig.axes[0].get_yscale() == "function" and fig.axes[0].get_ylim()[0] < fig.axes[0].get_ylim()[1]


def test_exp_plot_spectrogram_kind():
    model = Net(2, c_in=1, n_classes=2).eval()
    x = torch.rand(1, 1, 33, 24)
    exp = ndcam.explain(model, x, "gradcam", layers="feat")
    fig = exp.plot(x, kind="spectrogram", fs=16000.0)
    assert fig.axes[0].get_ylabel() == "frequency (Hz)" and "gradcam" in texts(fig)


# ---------------------------------------------------------------- volumes
def stored_in(canonical: np.ndarray, affine: np.ndarray, perm: tuple[int, int, int], flips: tuple[int, ...]):
    """The same anatomy as ``canonical`` (with ``affine``) stored with axes permuted and flipped."""
    data = np.transpose(canonical, perm)
    t = np.zeros((4, 4))
    t[3, 3] = 1
    for k in range(3):
        t[perm[k], k] = 1.0
    for f in flips:
        data = np.flip(data, f)
        t[perm[f], f] = -1.0
        t[perm[f], 3] = data.shape[f] - 1
    return np.ascontiguousarray(data), affine @ t


def test_same_anatomy_two_orientations_same_picture():
    rng = np.random.default_rng(1)
    anat = rng.random((12, 14, 10)).astype(np.float32)
    cam = np.zeros_like(anat)
    cam[8:11, 3:6, 6:9] = np.linspace(0.2, 1, 27).reshape(3, 3, 3)
    aff = np.array([[1.5, 0, 0, -9], [0, 1.0, 0, -7], [0, 0, 2.5, 4], [0, 0, 0, 1]])
    vol2, aff2 = stored_in(anat, aff, (2, 0, 1), (0, 2))
    cam2, _ = stored_in(cam, aff, (2, 0, 1), (0, 2))
    assert vol2.shape != anat.shape
    a, b = viz.volume_planes(anat, cam, aff), viz.volume_planes(vol2, cam2, aff2)
    for pa, pb in zip(a, b):
        assert np.array_equal(pa["image"], pb["image"]) and np.array_equal(pa["map"], pb["map"])
        assert np.allclose(pa["extent"], pb["extent"]) and pa["letters"] == pb["letters"]
    fa = rgba_to_array(viz.plot_volume(anat, cam, affine=aff, title="t"))
    fb = rgba_to_array(viz.plot_volume(vol2, cam2, affine=aff2, title="t"))
    assert fa.shape == fb.shape and np.array_equal(fa, fb)


def test_world_orientation_sides_and_spacing():
    # RAS volume: a bright block at the patient's right, anterior and superior
    anat = np.zeros((20, 20, 20), np.float32)
    anat[15:19, 15:19, 15:19] = 1.0
    aff = np.diag([2.0, 1.0, 3.0, 1.0])
    planes = viz.volume_planes(anat, anat, aff, index=(16, 16, 16))
    axial, coronal, sagittal = planes
    assert axial["letters"] == ("R", "L", "A", "P")  # radiological: patient's right on the image's left
    rows, cols = np.nonzero(axial["image"])
    assert rows.max() < 10 and cols.max() < 10  # anterior up, right on the left
    rows, cols = np.nonzero(coronal["image"])
    assert rows.max() < 10 and cols.max() < 10  # superior up, right on the left
    rows, cols = np.nonzero(sagittal["image"])
    assert rows.max() < 10 and cols.max() < 10  # superior up, anterior on the left
    assert sagittal["letters"] == ("A", "P", "S", "I")
    ext = axial["extent"]  # mm: x spacing 2, y spacing 1
    assert abs(ext[0] - ext[1]) == pytest.approx(40) and abs(ext[3] - ext[2]) == pytest.approx(20)
    neuro = viz.volume_planes(anat, anat, aff, convention="neurological", index=(16, 16, 16))[0]
    assert neuro["letters"] == ("L", "R", "A", "P") and np.array_equal(neuro["image"], axial["image"][:, ::-1])
    # an LPS-stored copy (x and y flipped with the affine) gives the same axial picture
    lps, aff_lps = stored_in(anat, aff, (0, 1, 2), (0, 1))
    assert np.array_equal(viz.volume_planes(lps, lps, aff_lps, index=(16, 16, 16))[0]["image"], axial["image"])
    fig = viz.plot_volume(anat, anat, affine=aff)
    s = texts(fig)
    assert "axial z =" in s and "x (mm)" in s and "world orientation (RAS, radiological)" in s
    assert has_map_colorbar(fig)
    fig = viz.plot_volume(anat, anat)
    assert "voxel axes (no orientation)" in texts(fig)
    m = viz.plot_montage(anat, anat, affine=aff, n=6)
    assert "axial slices, world orientation" in texts(m)


# ---------------------------------------------------------------- constant maps, backend
@pytest.mark.parametrize("view", ["signal", "ecg12", "image", "spectrogram", "volume", "montage"])
def test_constant_map_warns_and_says_so(view):
    z = {"signal": (2, 300), "ecg12": (12, 1000), "image": (20, 30), "spectrogram": (33, 40),
         "volume": (6, 7, 8), "montage": (6, 7, 8)}[view]
    x = np.random.rand(*z)
    cam = np.zeros(z[-1:] if view in ("signal", "ecg12") else z)
    with pytest.warns(ConstantMapWarning, match="all zero"):
        fig = {"signal": lambda: viz.plot_signal(x, cam, fs=100.0),
               "ecg12": lambda: viz.plot_ecg12(x, cam, fs=250.0, channels=LEADS),
               "image": lambda: viz.plot_image(x, cam),
               "spectrogram": lambda: viz.plot_spectrogram(x, cam, fs=8000.0),
               "volume": lambda: viz.plot_volume(x, cam),
               "montage": lambda: viz.plot_montage(x, cam)}[view]()
    assert "map is constant (all zero): nothing to show -- try another target, layer or method" in texts(fig)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConstantMapWarning)
        viz.plot_image(np.random.rand(20, 30), np.random.rand(20, 30))  # a map with contrast: no warning


def test_no_backend_switch_and_no_pyplot():
    before = matplotlib.get_backend()
    viz.plot_signal(np.random.rand(50), np.random.rand(50))
    viz.plot_volume(np.random.rand(4, 5, 6), np.random.rand(4, 5, 6))
    assert matplotlib.get_backend() == before
    code = ("import sys, numpy as np, ndcam, matplotlib\n"
            "from ndcam import viz, report\n"
            "b = matplotlib.get_backend()\n"
            "f = viz.plot_image(np.random.rand(8, 9), np.random.rand(8, 9))\n"
            "report.png_bytes(f); viz.plot_volume(np.random.rand(4, 5, 6), np.random.rand(4, 5, 6))\n"
            "report.volume_viewer(np.random.rand(4, 5, 6), np.random.rand(4, 5, 6), 'u')\n"
            "print(b, matplotlib.get_backend(), 'matplotlib.pyplot' in sys.modules)\n")
    env = dict(os.environ, MPLBACKEND="svg", PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.split() == ["svg", "svg", "False"]


def test_plot_grid_all_ranks():
    for shape in [(1, 1, 60), (1, 1, 12, 14), (1, 1, 5, 6, 7)]:
        x = torch.rand(*shape)
        maps = {"gradcam": torch.rand(1, *shape[2:]), "hirescam": torch.zeros(1, *shape[2:])}
        fig = viz.plot_grid(x, maps, fs=100.0)
        s = texts(fig)
        assert "gradcam" in s and "hirescam" in s and "constant map" in s and has_map_colorbar(fig)
