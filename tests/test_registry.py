"""The registry is the one list of methods: what ``ndcam`` exports, what ``ndcam methods`` prints, what the generic
tests run and what the README names all follow from it (issue 10)."""

from __future__ import annotations

from pathlib import Path

import ndcam
import ndcam.app.cli
from ndcam.methods.base import REGISTRY

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


def test_every_method_file_is_imported_by_the_package():
    """A built-in method is one file in ``ndcam/core/methods/`` plus the import line that exports it (kept static so
    type checkers see ``ndcam.GradCAM``): a file whose registered classes ndcam does not export fails here."""
    import importlib
    import pkgutil

    import ndcam.core.methods as package

    for info in pkgutil.iter_modules(package.__path__):
        module = importlib.import_module(f"{package.__name__}.{info.name}")
        for name, obj in vars(module).items():
            if (isinstance(obj, type) and issubclass(obj, ndcam.BaseCAM) and obj.__module__ == module.__name__
                    and not name.startswith("_") and obj is not ndcam.BaseCAM):
                assert obj in REGISTRY.values(), f"{module.__name__}.{name} is a method class but not registered"
                assert getattr(ndcam, name, None) is obj and name in ndcam.__all__, (
                    f"{module.__name__}.{name} is registered but not exported: add it to ndcam/core/methods/__init__.py"
                )


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
