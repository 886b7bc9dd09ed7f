"""The registry is the one list of methods: what ``ndcam`` exports, what ``ndcam methods`` prints, what the generic
tests run and what the README names all follow from it (issue 10)."""

from __future__ import annotations

from pathlib import Path

from ndcam.methods.base import REGISTRY

import ndcam
import ndcam.app.cli

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_every_registered_method_is_exported_listed_and_documented(capsys):
    classes = {cls for cls in REGISTRY.values() if cls.__module__.startswith("ndcam.")}
    assert ndcam.app.cli.main(["methods"]) == 0
    listed = capsys.readouterr().out.split()
    for cls in classes:
        assert getattr(ndcam, cls.__name__) is cls, cls.__name__
        assert cls.__name__ in ndcam.__all__, cls.__name__
        assert cls.registry_name in listed and cls.registry_name in ndcam.methods(), cls.registry_name
        assert f"`{cls.__name__}`" in README, f"README does not name {cls.__name__}"
        assert cls.__doc__ and "http" in cls.__doc__, f"{cls.__name__}'s docstring does not link its paper"


def test_ready_made_targets_are_reachable_from_ndcam_targets():
    from ndcam.detection import DetectionTarget
    from ndcam.methods.shapley import ReST

    assert ndcam.targets.Detection is DetectionTarget and ndcam.targets.ReST is ReST


def test_import_ndcam_stays_light():
    import subprocess
    import sys

    code = "import sys, ndcam; print(any(m in sys.modules for m in ('zarr', 'matplotlib.pyplot', 'nibabel', 'wfdb')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False"
