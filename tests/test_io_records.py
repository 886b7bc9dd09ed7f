"""Long recordings through the command line: windows, beat-centred windows, leads, units, offsets."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ndcam.app import cli
from ndcam.io import load_input
from tests import cli_models

wfdb = pytest.importorskip("wfdb")

FS = 360
MITDB = Path("/work/shared/data/mitdb")


@pytest.fixture()
def record(tmp_path, monkeypatch):
    """20 s, two leads (MLII, V1) in mV, beats annotated N/V/A, one V 0.1 s from each edge."""
    monkeypatch.chdir(tmp_path)
    t = np.arange(20 * FS) / FS
    sig = np.stack([np.sin(2 * np.pi * 1.1 * t), 0.5 * np.cos(2 * np.pi * 0.7 * t)], 1)
    wfdb.wrsamp("rec", fs=FS, units=["mV", "mV"], sig_name=["MLII", "V1"], p_signal=sig, fmt=["16", "16"],
                adc_gain=[1000.0, 1000.0], baseline=[0, 0])
    samples = np.array([36, 400, 1000, 1800, 2500, 3600, 4000, 5000, 6000, 7164])
    symbols = ["V", "N", "V", "N", "A", "V", "N", "V", "A", "V"]
    wfdb.wrann("rec", "atr", samples, symbols)
    return tmp_path, samples, symbols


def run(*args, out="out"):
    cli_models.SEEN.clear()
    assert cli.main(["explain", "--model", "tests.cli_models:rec1d", "--input", "rec.hea", "--out", out,
                     "--max-pictures", "2", *args]) == 0
    rows = json.loads((Path(out) / "scores.json").read_text())["rows"]
    return cli_models.first_input(), rows


def test_sliding_windows_count_and_offsets(record):
    got, rows = run("--window", "2", "--stride", "1")
    assert got.shape == (19, 2, 2 * FS)  # starts 0..18 s; a window past the end is left out
    assert [r["offset"] for r in rows] == [float(i) for i in range(19)]
    held = wfdb.rdrecord("rec").p_signal.T.astype(np.float32)
    np.testing.assert_allclose(got[5].numpy(), held[:, 5 * FS:7 * FS], atol=1e-6)
    assert np.load("out/maps.npy").shape == (19, 2 * FS)
    got, rows = run("--window", "3")
    assert got.shape == (6, 2, 3 * FS) and [r["offset"] for r in rows] == [0.0, 3.0, 6.0, 9.0, 12.0, 15.0]


def test_beat_centred_windows_skip_or_pad_at_the_edge(record):
    _, samples, symbols = record
    got, rows = run("--annotations", "atr", "--around", "V", "--window", "1")
    inner = [s for s, y in zip(samples, symbols) if y == "V" and s - FS // 2 >= 0 and s - FS // 2 + FS <= 20 * FS]
    assert len(inner) == 3 and got.shape == (3, 2, FS)
    assert [r["beat_sample"] for r in rows] == inner and [r["sample"] for r in rows] == [0, 1, 2]
    assert {r["symbol"] for r in rows} == {"V"}
    assert [r["offset"] for r in rows] == [(s - FS // 2) / FS for s in inner]
    held = wfdb.rdrecord("rec").p_signal.T.astype(np.float32)
    np.testing.assert_allclose(got[0, :, FS // 2].numpy(), held[:, inner[0]], atol=1e-6)  # the beat sits mid-window
    got, rows = run("--annotations", "atr", "--around", "V,A", "--window", "1", "--edge", "pad")
    assert got.shape == (7, 2, FS) and [r["symbol"] for r in rows] == ["V", "V", "A", "V", "V", "A", "V"]
    assert rows[0]["offset"] == pytest.approx((36 - 180) / FS) and float(got[0, :, :144].abs().max()) == 0.0


def test_leads_by_name_and_index_and_units(record):
    got, _ = run("--leads", "V1")
    held = wfdb.rdrecord("rec").p_signal.T.astype(np.float32)
    assert got.shape == (1, 1, 20 * FS)
    np.testing.assert_allclose(got[0, 0].numpy(), held[1], atol=1e-6)
    x, info = load_input("rec.hea", leads=["1", "MLII"])
    assert info.channels == ["V1", "MLII"] and info.units == ["mV", "mV"] and info.fs == FS
    np.testing.assert_allclose(x[0].numpy(), held[[1, 0]], atol=1e-6)
    kw = info.plot_kwargs(0)
    assert kw["units"] == ["mV", "mV"] and kw["fs"] == FS and kw["offset"] == 0.0 and kw["kind"] == "signal"


@pytest.mark.parametrize("args, message", [(["--leads", "V5"], "no lead 'V5'"),
                                           (["--around", "V", "--window", "1"], "--around needs WFDB annotations"),
                                           (["--annotations", "atr", "--around", "Q", "--window", "1"], "no annotated beat"),
                                           (["--window", "30"], "longer than the recording")])
def test_bad_record_options(record, capsys, args, message):
    assert cli.main(["explain", "--model", "tests.cli_models:rec1d", "--input", "rec.hea", "--out", "o", *args]) == 2
    assert message in capsys.readouterr().err
    assert not Path("o").exists()


def test_array_windows_need_fs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    np.save("s.npy", np.random.rand(2, 1000).astype("float32"))
    assert cli.main(["explain", "--model", "tests.cli_models:rec1d", "--input", "s.npy", "--window", "1"]) == 2
    assert "--fs" in capsys.readouterr().err
    cli_models.SEEN.clear()
    assert cli.main(["explain", "--model", "tests.cli_models:rec1d", "--input", "s.npy", "--window", "2", "--fs",
                     "100", "--stride", "1.5", "--max-pictures", "0", "--out", "o"]) == 0
    assert cli_models.first_input().shape == (6, 2, 200)
    rows = json.loads(Path("o/scores.json").read_text())["rows"]
    assert [r["offset"] for r in rows] == [0.0, 1.5, 3.0, 4.5, 6.0, 7.5]


def test_real_mitdb_record_208_premature_ventricular_beats(tmp_path, monkeypatch):
    if not (MITDB / "208.hea").exists():
        pytest.skip("MIT-BIH record 208 not available")
    monkeypatch.chdir(tmp_path)
    ann = wfdb.rdann(str(MITDB / "208"), "atr")
    n = int(sum(1 for s, y in zip(ann.sample, ann.symbol) if y == "V" and s >= 360 and s + 360 <= 650000))
    x, info = load_input(str(MITDB / "208.hea"), annotations="atr", around=["V"], window=2.0)
    assert x.shape == (n, 2, 720) and n > 900 and info.units == ["mV", "mV"]
    assert all(b["symbol"] == "V" for b in info.beats)
    cli_models.SEEN.clear()
    assert cli.main(["explain", "--model", "tests.cli_models:rec1d", "--input", str(MITDB / "208.hea"), "--annotations",
                     "atr", "--around", "V", "--window", "2", "--leads", "MLII", "--max-pictures", "2",
                     "--out", "o"]) == 0
    assert len(json.loads(Path("o/scores.json").read_text())["rows"]) == n
