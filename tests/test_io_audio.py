"""Audio through the command line: every PCM width and float, channels kept, resampling, spectrograms with axes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ndcam.app import cli
from ndcam.io import load_input
from tests import cli_models

sf = pytest.importorskip("soundfile")

FS = 8000


@pytest.fixture()
def work(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def explain(path, *extra, model="tests.cli_models:rec1d"):
    cli_models.SEEN.clear()
    assert cli.main(["explain", "--model", model, "--input", str(path), "--out", "out", *extra]) == 0
    return cli_models.first_input()


def tone(n=2000, f=440.0, amp=0.6):
    return (amp * np.sin(2 * np.pi * f * np.arange(n) / FS)).astype(np.float64)


@pytest.mark.parametrize("subtype, tol", [("PCM_U8", 1 / 128), ("PCM_16", 2**-15), ("PCM_24", 2**-23),
                                          ("PCM_32", 2**-31 + 1e-7), ("FLOAT", 1e-7)])
def test_every_width_arrives_centred_and_scaled(work, subtype, tol):
    sig = tone()
    sf.write("a.wav", sig, FS, subtype=subtype)
    assert sf.info("a.wav").subtype == subtype
    got = explain("a.wav")
    assert got.shape == (1, 1, len(sig))
    held, _ = sf.read("a.wav", dtype="float32", always_2d=True)
    np.testing.assert_array_equal(got[0].numpy(), held.T)  # exactly what soundfile decodes
    assert np.abs(got[0, 0].numpy() - sig).max() <= tol  # and that is the written signal, centred
    assert abs(float(got.mean())) < 0.01


def test_unsigned_8bit_wav_is_centred(work):
    sf.write("u8.wav", np.zeros(1000), FS, subtype="PCM_U8")
    raw = (work / "u8.wav").read_bytes()[44:]
    assert set(raw) == {128}  # unsigned: silence is stored as 128
    got = explain("u8.wav")
    assert float(got.abs().max()) == 0.0


def test_stereo_keeps_channels(work):
    st = np.stack([tone(), -0.5 * tone()], 1)
    sf.write("st.wav", st, FS, subtype="PCM_16")
    got = explain("st.wav")
    assert got.shape == (1, 2, 2000)
    np.testing.assert_allclose(got[0].numpy(), st.T, atol=2**-15)
    _, info = load_input("st.wav")
    assert info.fs == FS and info.channels == ["ch 0", "ch 1"]


def test_resample(work):
    sf.write("a.wav", tone(4000), FS, subtype="FLOAT")
    got = explain("a.wav", "--resample", "16000")
    assert got.shape == (1, 1, 8000)
    want = 0.6 * np.sin(2 * np.pi * 440 * np.arange(8000) / 16000)
    assert np.abs(got[0, 0, 200:-200].numpy() - want[200:-200]).max() < 0.01
    scores = json.loads((work / "out" / "scores.json").read_text())
    assert scores["fs"] == 16000


@pytest.mark.parametrize("scale", ["linear", "log", "mel"])
def test_spectrogram_axes_follow_the_tone(work, scale):
    sf.write("t.wav", tone(8000, f=1000.0), FS, subtype="PCM_16")
    x, info = load_input("t.wav", spectrogram=scale, nfft=256, hop=64, n_mels=40)
    assert info.kind == "spectrogram" and info.freq_scale == scale
    assert x.shape[:2] == (1, 1) and x.shape[2] == len(info.freqs) and x.shape[3] == len(info.times)
    assert x.shape[2] == (40 if scale == "mel" else 129)
    assert np.all(np.diff(info.freqs) > 0) and np.all(np.diff(info.times) > 0)
    assert abs(info.times[1] - info.times[0] - 64 / FS) < 1e-9
    peak = info.freqs[int(x[0, 0].mean(-1).argmax())]
    assert abs(peak - 1000) < (100 if scale == "mel" else 40), peak
    kw = info.plot_kwargs()
    assert kw["kind"] == "spectrogram" and kw["freq_scale"] == scale and len(kw["freqs"]) == x.shape[2]
    got = explain("t.wav", "--spectrogram", scale, "--n-mels", "40", model="tests.cli_models:rec2d")
    assert got.shape == x.shape


def test_spectrogram_db_and_power(work):
    sf.write("t.wav", tone(4000), FS, subtype="FLOAT")
    p, _ = load_input("t.wav", spectrogram="linear", db=False)
    d, info = load_input("t.wav", spectrogram="linear")
    np.testing.assert_allclose(d.numpy(), 10 * np.log10(p.numpy().astype(np.float64) + 1e-10), rtol=1e-4, atol=1e-3)
    assert info.units == ["dB"]


def test_audio_windows(work):
    sf.write("long.wav", tone(FS * 5), FS, subtype="PCM_16")
    got = explain("long.wav", "--window", "1", "--stride", "0.5")
    assert got.shape == (9, 1, FS)
    held, _ = sf.read("long.wav", dtype="float32")
    np.testing.assert_array_equal(got[3, 0].numpy(), held[3 * FS // 2:3 * FS // 2 + FS])
    rows = json.loads((work / "out" / "scores.json").read_text())["rows"]
    assert [r["offset"] for r in rows] == [0.5 * i for i in range(9)]
