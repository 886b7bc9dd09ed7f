"""The main job (``ndcam demo``), the other commands, the examples, and style."""

from __future__ import annotations

import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

from ndcam.app import cli

ROOT = Path(__file__).resolve().parents[1]


class _Images(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs)["src"])


def test_demo_writes_pictures_and_a_self_contained_report(tmp_path, capsys):
    out = tmp_path / "demo"
    assert cli.main(["demo", "--out", str(out), "--quick"]) == 0
    files = sorted(p.name for p in out.iterdir())
    assert files == sorted([f"rank{r}_{k}.png" for r in (1, 2, 3) for k in ("gradcam", "methods")] + ["report.html"])
    for p in out.iterdir():
        assert p.stat().st_size > 1000, p
        if p.suffix == ".png":
            assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    parser = _Images()
    parser.feed((out / "report.html").read_text())
    assert len(parser.images) >= 6 and all(src.startswith("data:image/png;base64,") for src in parser.images)
    page = (out / "report.html").read_text()
    assert 'type="range"' in page and page.count("<canvas") == 3  # the 3D viewer: one canvas and slider per plane
    assert "http" not in (out / "report.html").read_text().replace("http-equiv", "")
    log = capsys.readouterr().out
    assert "[1D]" in log and "[3D]" in log
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".ndcam-")], "temporary folder left behind"


def test_methods_command(capsys):
    assert cli.main(["methods"]) == 0
    assert "gradcam++" in capsys.readouterr().out.split()


def test_layers_command_and_clean_errors(capsys):
    assert cli.main(["layers", "--model", "ndcam.models:ecg_net", "--shape", "1,12,1000"]) == 0
    out = capsys.readouterr().out
    assert "layer4" in out and "Conv1d" in out
    assert cli.main(["layers", "--model", "no_colon", "--shape", "1,1,10"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ndcam: error:") and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_python_dash_m_entry_point():
    res = subprocess.run([sys.executable, "-m", "ndcam", "methods"], capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0 and "layercam" in res.stdout


def test_quickstart_example_runs(tmp_path):
    res = subprocess.run([sys.executable, str(ROOT / "examples" / "quickstart.py"), "--out", str(tmp_path)],
                         capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gradcam_1d.png", "gradcam_2d.png", "gradcam_3d.png"]


@pytest.mark.slow
def test_package_type_checks():
    """The package ships ``py.typed``: its annotations must hold (mypy, configured in pyproject.toml)."""
    pytest.importorskip("mypy")
    res = subprocess.run([sys.executable, "-m", "mypy", "ndcam"], capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0, res.stdout[-3000:]


def test_ruff_clean():
    ruff = shutil.which("ruff") or (str(Path(sys.executable).parent / "ruff"))
    if not Path(ruff).exists():
        pytest.skip("ruff not installed")
    res = subprocess.run([ruff, "check", "ndcam", "tests", "benchmarks", "examples"], capture_output=True, text=True,
                         cwd=ROOT)
    assert res.returncode == 0, res.stdout[-3000:]


def test_ecg_mitdb_example_skips_cleanly_without_a_record():
    for extra in ([], ["/nonexistent/208"]):
        res = subprocess.run([sys.executable, str(ROOT / "examples" / "ecg_mitdb.py"), *extra], capture_output=True,
                             text=True, cwd=ROOT, timeout=120)
        assert res.returncode == 0 and "skipping" in res.stdout
