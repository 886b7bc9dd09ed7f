"""The runnable examples: each runs from a clean checkout, writes its pictures, and the stories they tell hold (the
model learns the task and the map points at the evidence)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(tmp_path: Path, script: str, *args: str) -> str:
    res = subprocess.run([sys.executable, str(ROOT / "examples" / script), "--out", str(tmp_path), *args],
                         capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return res.stdout


def _result(stdout: str) -> dict[str, float]:
    line = re.search(r"^RESULT (.*)$", stdout, re.M)
    assert line, stdout[-2000:]
    return {k: float(v) for k, v in (kv.split("=") for kv in line.group(1).split())}


def test_audio_waveform_learns_and_points_at_the_burst(tmp_path):
    res = _result(_run(tmp_path, "audio_tones.py", "--n", "128"))
    assert res["accuracy"] >= 0.9 and res["pointing"] >= 0.8
    assert (tmp_path / "audio_waveform.png").stat().st_size > 1000


@pytest.mark.slow
def test_audio_spectrogram_learns_and_points_at_the_burst(tmp_path):
    # the tone's frames AND its frequency band (1 kHz +- 150 Hz): a map that lit the whole column would miss
    res = _result(_run(tmp_path, "audio_tones.py", "--spectrogram"))  # the example's own 256 training clips
    assert res["accuracy"] >= 0.9 and res["pointing"] >= 0.8
    assert (tmp_path / "audio_spectrogram.png").stat().st_size > 1000


@pytest.mark.slow
def test_volume_lesion_learns_and_points_at_the_lesion(tmp_path):
    res = _result(_run(tmp_path, "volume_lesion.py"))
    assert res["accuracy"] >= 0.9 and res["pointing"] >= 0.8
    assert (tmp_path / "report.html").stat().st_size > 1000
    assert (tmp_path / "volume_views.png").stat().st_size > 1000


def test_image_scene_runs(tmp_path):
    _run(tmp_path, "image_scene.py")
    assert (tmp_path / "methods_0.png").stat().st_size > 1000
