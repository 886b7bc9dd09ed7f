"""The public module names (``ndcam.ops``, ``ndcam.viz``, ...) and the folders they live in.

The folders show the architecture -- :mod:`ndcam.core` (the engine), :mod:`ndcam.analysis` (built on it),
:mod:`ndcam.app` (files, pictures, reports, the command line) and :mod:`ndcam.synthetic` (the demo's tasks) -- while
users keep one short, stable name per module. :func:`register` makes each short name the *same module object* as its
home (``ndcam.viz is ndcam.app.viz``), submodules included, so ``import ndcam.viz.ecg`` never loads a second copy.
Type checkers find modules by their files: ``ndcam/<name>.pyi`` re-export each home for them (written by
``scripts/make_public_stubs.py``).
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
from types import ModuleType

#: short public name -> home under ``ndcam`` (dotted)
PUBLIC_MODULES: dict[str, str] = {
    "ranks": "core.ranks",
    "ops": "core.ops",
    "capture": "core.capture",
    "layers": "core.layers",
    "targets": "core.targets",
    "detection": "core.detection",
    "explanation": "core.explanation",
    "smoothing": "core.smoothing",
    "methods": "core.methods",
    "explain": "core.explain",
    "metrics": "analysis.metrics",
    "sweep": "analysis.sweep",
    "channels": "analysis.channels",
    "leadwise": "analysis.leadwise",
    "sliding": "analysis.sliding",
    "dataset": "analysis.dataset",
    "io": "app.io",
    "viz": "app.viz",
    "report": "app.report",
    "data": "synthetic.data",
    "models": "synthetic.models",
}

#: short names that are functions on ``ndcam`` (``ndcam.explain``, ``ndcam.methods``): no stub for type checkers, who
#: would take the name for the module; import those modules by their homes
STUBLESS = frozenset({"explain", "methods"})


def public_name(module: str) -> str:
    """The public spelling of a module name: ``ndcam.core.targets`` -> ``ndcam.targets`` (what fingerprints and
    messages record, so that they do not depend on the folder layout); other names are returned as they are.
    """
    for short, home in PUBLIC_MODULES.items():
        full = f"ndcam.{home}"
        if module == full or module.startswith(full + "."):
            return f"ndcam.{short}{module[len(full):]}"
    return module


def _alias(name: str, module: ModuleType) -> None:
    sys.modules.setdefault(name, module)
    for info in pkgutil.iter_modules(getattr(module, "__path__", [])):
        _alias(f"{name}.{info.name}", importlib.import_module(f"{module.__name__}.{info.name}"))


def register(package: ModuleType) -> None:
    """Bind every public module's short name in ``sys.modules`` to its home, submodules included. The attributes on
    ``package`` are its own imports (``ndcam/__init__.py`` imports each module by name, so type checkers see them).
    """
    for short, home in PUBLIC_MODULES.items():
        _alias(f"{package.__name__}.{short}", importlib.import_module(f"{package.__name__}.{home}"))
