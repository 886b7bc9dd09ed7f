"""`ndcam explain` end to end on files it writes: every input kind, bad files, a missing layer name."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ndcam.app import cli

FACTORIES = '''
import torch
from torch import nn

def _net(conv, pool, c_in=1, classes=3):
    torch.manual_seed(0)
    return nn.Sequential(conv(c_in, 4, 3, padding=1), nn.ReLU(), conv(4, 6, 3, padding=1), nn.ReLU(), pool(1),
                         nn.Flatten(), nn.Linear(6, classes)).eval()

def net1d(): return _net(nn.Conv1d, nn.AdaptiveAvgPool1d, c_in=2)
def net1d_one(): return _net(nn.Conv1d, nn.AdaptiveAvgPool1d, c_in=1)
def net2d(): return _net(nn.Conv2d, nn.AdaptiveAvgPool2d, c_in=1)
def net2d_rgb(): return _net(nn.Conv2d, nn.AdaptiveAvgPool2d, c_in=3)
def net3d(): return _net(nn.Conv3d, nn.AdaptiveAvgPool3d, c_in=1)
'''


@pytest.fixture()
def work(tmp_path, monkeypatch):
    (tmp_path / "clifactories.py").write_text(FACTORIES)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("clifactories", None)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run(*args) -> int:
    return cli.main(["explain", *args])


def check_out(out: Path, n_pictures: int, shape):
    files = {p.name for p in out.iterdir()}
    assert {"maps.npy", "report.html", "scores.json"} <= files
    pngs = sorted(f for f in files if f.endswith(".png"))
    assert len(pngs) == n_pictures
    for f in pngs:
        assert (out / f).stat().st_size > 1000 and (out / f).read_bytes()[:4] == b"\x89PNG"
    maps = np.load(out / "maps.npy")
    assert maps.shape == shape and np.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 1
    html = (out / "report.html").read_text()
    assert "data:image/png;base64," in html and "<script src" not in html and "Settings" in html
    scores = json.loads((out / "scores.json").read_text())
    assert scores["method"] and len(scores["rows"]) == shape[0]
    return html


def test_npy_npz_pt_arrays_of_every_rank(work):
    np.save("s1.npy", np.random.rand(3, 2, 50).astype("float32"))
    assert run("--model", "clifactories:net1d", "--input", "s1.npy", "--out", "o1", "--fs", "100") == 0
    check_out(work / "o1", 3, (3, 50))
    np.savez("s2.npz", x=np.random.rand(1, 16, 12).astype("float32"))
    assert run("--model", "clifactories:net2d", "--input", "s2.npz", "--single", "--out", "o2") == 0
    check_out(work / "o2", 1, (1, 16, 12))
    torch.save(torch.rand(2, 1, 6, 7, 8), "s3.pt")
    html = None
    assert run("--model", "clifactories:net3d", "--input", "s3.pt", "--out", "o3", "--target", "0", "--target", "2") == 0
    html = check_out(work / "o3", 2, (2, 2, 6, 7, 8))
    assert 'type="range"' in html  # slice slider for volumes


def test_weights_and_methods(work):
    sys.path.insert(0, str(work))
    import clifactories

    m = clifactories.net1d()
    with torch.no_grad():
        for p in m.parameters():
            p.mul_(2)
    torch.save(m.state_dict(), "w.pt")
    np.save("s.npy", np.random.rand(2, 2, 40).astype("float32"))
    assert run("--model", "clifactories:net1d", "--weights", "w.pt", "--input", "s.npy", "--method", "scorecam",
               "--out", "o") == 0
    check_out(work / "o", 2, (2, 40))
    torch.save({"bad": torch.zeros(1)}, "bad.pt")
    assert run("--model", "clifactories:net1d", "--weights", "bad.pt", "--input", "s.npy", "--out", "o2") == 2


def test_images_audio_and_spectrogram(work):
    from PIL import Image
    from scipy.io import wavfile

    Image.fromarray((np.random.rand(20, 24, 3) * 255).astype("uint8")).save("im.png")
    Image.fromarray((np.random.rand(20, 24, 3) * 255).astype("uint8")).save("im.jpg")
    for f in ("im.png", "im.jpg"):
        assert run("--model", "clifactories:net2d_rgb", "--input", f, "--out", f"o_{f}") == 0
        check_out(work / f"o_{f}", 1, (1, 20, 24))
    wavfile.write("a.wav", 8000, (np.sin(np.arange(4000) / 3) * 2000).astype("int16"))
    assert run("--model", "clifactories:net1d_one", "--input", "a.wav", "--out", "oa") == 0
    check_out(work / "oa", 1, (1, 4000))
    assert run("--model", "clifactories:net2d", "--input", "a.wav", "--spectrogram", "--out", "os") == 0
    maps = np.load(work / "os" / "maps.npy")
    assert maps.ndim == 3 and maps.shape[1] == 129  # 256-point segments -> 129 frequency bins


def test_nifti_roundtrip_keeps_the_affine(work):
    nib = pytest.importorskip("nibabel")
    affine = np.diag([2.0, 1.5, 1.0, 1.0])
    nib.save(nib.Nifti1Image(np.random.rand(6, 7, 8).astype("float32"), affine), "v.nii.gz")
    assert run("--model", "clifactories:net3d", "--input", "v.nii.gz", "--out", "ov") == 0
    check_out(work / "ov", 1, (1, 6, 7, 8))
    back = nib.load(str(work / "ov" / "maps.nii.gz"))
    assert back.shape == (6, 7, 8) and np.allclose(back.affine, affine)


def test_wfdb_record(work):
    wfdb = pytest.importorskip("wfdb")
    sig = np.stack([np.sin(np.arange(720) / 20), np.cos(np.arange(720) / 15)], 1)
    wfdb.wrsamp("rec", fs=360, units=["mV", "mV"], sig_name=["MLII", "V1"], p_signal=sig, fmt=["212", "212"])
    assert run("--model", "clifactories:net1d", "--input", "rec.hea", "--out", "ow") == 0
    check_out(work / "ow", 1, (1, 720))


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "clifactories:net1d", "--input", "missing.npy"], "does not exist"),
        (["--model", "clifactories:nope", "--input", "s.npy"], "cannot import"),
        (["--model", "clifactories:net1d", "--input", "s.npy", "--layer", "9"], "does not exist"),
        (["--model", "clifactories:net1d", "--input", "s.npy", "--method", "gradcma"], "did you mean gradcam"),
        (["--model", "clifactories:net1d", "--input", "bad.npy"], "cannot read"),
        (["--model", "clifactories:net1d", "--input", "s.txt"], "unknown input type"),
        (["--model", "clifactories:net2d", "--input", "s.npy"], "forward pass failed"),
        (["--model", "clifactories:net1d", "--input", "s.npy", "--target", "7"], "out of range"),
    ],
    ids=["missing-file", "bad-factory", "missing-layer", "bad-method", "corrupt-npy", "unknown-type", "wrong-rank",
         "bad-target"],
)
def test_bad_inputs_give_one_line_and_exit_2(work, capsys, args, message):
    np.save("s.npy", np.random.rand(2, 2, 30).astype("float32"))
    Path("bad.npy").write_bytes(b"not numpy")
    Path("s.txt").write_text("hello")
    assert run(*args, "--out", "out") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("ndcam: error:") and message in err[-1] and "Traceback" not in "\n".join(err)
    assert not Path("out").exists()  # nothing half-written
    assert not [p for p in Path(".").iterdir() if p.name.startswith(".ndcam-")]


def test_torchscript_is_refused_with_an_explanation(work, capsys):
    sys.path.insert(0, str(work))
    import clifactories

    torch.jit.save(torch.jit.script(clifactories.net1d()), "m.ts")
    np.save("s.npy", np.random.rand(2, 2, 30).astype("float32"))
    assert run("--model", "m.ts", "--input", "s.npy") == 2
    assert "TorchScript" in capsys.readouterr().err


def test_export_archive_with_automatic_layer(work):
    sys.path.insert(0, str(work))
    import clifactories

    ep = torch.export.export(clifactories.net2d(), (torch.randn(2, 1, 10, 12),))
    torch.export.save(ep, "m.pt2")
    np.save("s.npy", np.random.rand(2, 1, 10, 12).astype("float32"))
    assert run("--model", "m.pt2", "--input", "s.npy", "--out", "oe") == 0
    check_out(work / "oe", 2, (2, 10, 12))


def test_debug_is_accepted_anywhere_on_the_line(work, capsys):
    np.save("s.npy", np.random.rand(2, 2, 30).astype("float32"))
    for argv in (["--debug", "explain", "--model", "clifactories:nope", "--input", "s.npy"],
                 ["explain", "--model", "clifactories:nope", "--debug", "--input", "s.npy"],
                 ["explain", "--model", "clifactories:nope", "--input", "s.npy", "--debug"]):
        with pytest.raises(Exception, match="cannot import"):
            cli.main(argv)
    assert cli.main(["explain", "--model", "clifactories:nope", "--input", "s.npy"]) == 2


def test_a_three_axis_array_that_fails_suggests_single(work, capsys):
    np.save("img.npy", np.random.rand(1, 16, 12).astype("float32"))  # one (C, H, W) image, read as a 1D batch
    assert run("--model", "clifactories:net2d", "--input", "img.npy", "--out", "o") == 2
    err = capsys.readouterr().err
    assert "forward pass failed" in err and "add --single" in err
    assert run("--model", "clifactories:net2d", "--input", "img.npy", "--single", "--out", "o") == 0


def test_labels_targets_by_name_and_cmap(work):
    np.save("s.npy", np.random.rand(2, 2, 30).astype("float32"))
    Path("names.txt").write_text("normal\nventricular\n\natrial\n")
    assert run("--model", "clifactories:net1d", "--input", "s.npy", "--labels", "names.txt", "--target", "atrial",
               "--cmap", "viridis", "--out", "o") == 0
    rows = json.loads((work / "o" / "scores.json").read_text())["rows"]
    assert [r["label"] for r in rows] == [["atrial"], ["atrial"]] and rows[0]["target"] == [2]
    assert run("--model", "clifactories:net1d", "--input", "s.npy", "--labels", "a,b,c", "--out", "o2") == 0
    meta = json.loads((work / "o2" / "scores.json").read_text())
    assert meta["labels"] == ["a", "b", "c"] and all(r["label"][0] in "abc" for r in meta["rows"])


def test_plot_kwargs_reach_the_pictures(work, monkeypatch):
    from ndcam import viz

    seen = []
    real = viz.plot_explanation
    monkeypatch.setattr(viz, "plot_explanation", lambda exp, x, **kw: seen.append(kw) or real(exp, x, **kw))
    wfdb = pytest.importorskip("wfdb")
    sig = np.stack([np.sin(np.arange(3600) / 20), np.cos(np.arange(3600) / 15)], 1)
    wfdb.wrsamp("rec", fs=360, units=["mV", "mV"], sig_name=["MLII", "V1"], p_signal=sig, fmt=["212", "212"])
    assert run("--model", "clifactories:net1d", "--input", "rec.hea", "--window", "2", "--labels", "a,b,c",
               "--cmap", "magma", "--out", "o", "--max-pictures", "3") == 0
    assert [kw["offset"] for kw in seen] == [0.0, 2.0, 4.0] and [kw["index"] for kw in seen] == [0, 1, 2]
    assert seen[1]["kind"] == "signal" and seen[1]["fs"] == 360 and seen[1]["units"] == ["mV", "mV"]
    assert seen[1]["channels"] == ["MLII", "V1"] and seen[1]["labels"] == ["a", "b", "c"] and seen[1]["cmap"] == "magma"


def test_warnings_during_explain_reach_stderr_and_the_report(work, monkeypatch, capsys):
    import warnings

    import ndcam

    explain_mod = sys.modules["ndcam.explain"]
    real = explain_mod.explain

    def noisy(*a, **k):
        warnings.warn("map 0 is constant: the target does not depend on this layer", ndcam.ConstantMapWarning,
                      stacklevel=2)
        return real(*a, **k)

    monkeypatch.setattr(explain_mod, "explain", noisy)
    np.save("s.npy", np.random.rand(2, 2, 30).astype("float32"))
    assert run("--model", "clifactories:net1d", "--input", "s.npy", "--out", "o") == 0
    assert "ConstantMapWarning: map 0 is constant" in capsys.readouterr().err
    assert "map 0 is constant" in (work / "o" / "report.html").read_text()
    assert json.loads((work / "o" / "scores.json").read_text())["warnings"]


def test_no_carriage_return_spam_and_agg_backend(work, capsys):
    import matplotlib

    np.save("s.npy", np.random.rand(4, 2, 60).astype("float32"))
    assert run("--model", "clifactories:net1d", "--input", "s.npy", "--method", "scorecam", "--batch-size", "2",
               "--out", "o") == 0
    assert "\r" not in capsys.readouterr().err  # stderr is not a terminal here
    assert matplotlib.get_backend().lower() == "agg"


def test_perturbation_options_follow_the_class_not_a_name_list():
    class Marked:
        perturbative = True

        def __init__(self, model, layers=None, **options):
            pass

    class Plain:
        def __init__(self, model, layers=None):
            pass

    class TakesBatch:
        def __init__(self, model, layers=None, *, batch_size=8):
            pass

    args = type("A", (), {"batch_size": 5})()
    assert cli._method_options(Marked, args)["batch_size"] == 5 and "progress" in cli._method_options(Marked, args)
    assert cli._method_options(Plain, args) == {}
    assert cli._method_options(TakesBatch, args) == {"batch_size": 5}


def test_interrupted_run_leaves_the_folder_as_it_was(work, monkeypatch):
    np.save("s.npy", np.random.rand(2, 2, 30).astype("float32"))
    out = work / "o"
    out.mkdir()
    (out / "maps.npy").write_bytes(b"old")
    (out / "mine.txt").write_text("keep")
    calls = {"n": 0}
    real = Path.write_bytes

    def interrupted(self, data):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", interrupted)
    assert run("--model", "clifactories:net1d", "--input", "s.npy", "--out", "o") == 130
    monkeypatch.setattr(Path, "write_bytes", real)
    assert sorted(p.name for p in out.iterdir()) == ["maps.npy", "mine.txt"] and (out / "maps.npy").read_bytes() == b"old"
    assert not [p for p in work.iterdir() if p.name.startswith(".ndcam-")]


def test_interrupt_while_moving_files_in_completes_the_folder(work, monkeypatch):
    import os
    import signal

    np.save("s.npy", np.random.rand(2, 2, 30).astype("float32"))
    real = os.replace
    sent = []

    def replace(a, b):
        if not sent:
            sent.append(1)
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C arrives while files are being moved in
        return real(a, b)

    monkeypatch.setattr(os, "replace", replace)
    assert run("--model", "clifactories:net1d", "--input", "s.npy", "--out", "o") == 130
    assert sent and {"maps.npy", "report.html", "scores.json", "sample0.png", "sample1.png"} <= {
        p.name for p in (work / "o").iterdir()}


@pytest.mark.parametrize("args, message", [(["--spectrogram"], "--spectrogram does not apply"),
                                           (["--leads", "MLII"], "--leads does not apply"),
                                           (["--volume-index", "0"], "--volume-index does not apply"),
                                           (["--resample", "8000"], "--resample does not apply"),
                                           (["--fs", "100", "--stride", "1"], "--stride needs --window")])
def test_options_that_do_not_apply_are_refused_not_ignored(work, capsys, args, message):
    np.save("s.npy", np.random.rand(2, 2, 30).astype("float32"))
    assert run("--model", "clifactories:net1d", "--input", "s.npy", "--out", "o", *args) == 2
    assert message in capsys.readouterr().err
