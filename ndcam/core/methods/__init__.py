"""CAM methods, one family per module, and the registry used by :func:`ndcam.explain`."""

from __future__ import annotations

from .activation import CAM, EigenCAM, EigenGradCAM
from .base import REGISTRY, BaseCAM, register
from .factorization import KPCACAM, DeepFeatureFactorization
from .fem import FEM
from .finer import FinerCAM
from .fullgrad import FullGrad
from .gradient import GradCAM, GradCAMElementWise, GradCAMPlusPlus, HiResCAM, LayerCAM, XGradCAM
from .guided import GuidedBackprop, GuidedGradCAM
from .legrad import AttentionGrid, LeGrad
from .perturbation import AblationCAM, ScoreCAM
from .random_cam import RandomCAM
from .shapley import ReST, ShapleyCAM
from .smooth import ISCAM, SSCAM, SmoothGradCAMpp

__all__ = [
    "BaseCAM",
    "register",
    "REGISTRY",
    "CAM",
    "GradCAM",
    "GradCAMPlusPlus",
    "XGradCAM",
    "HiResCAM",
    "GradCAMElementWise",
    "LayerCAM",
    "EigenCAM",
    "EigenGradCAM",
    "ScoreCAM",
    "AblationCAM",
    "FullGrad",
    "GuidedBackprop",
    "GuidedGradCAM",
    "FEM",
    "KPCACAM",
    "ShapleyCAM",
    "ReST",
    "FinerCAM",
    "DeepFeatureFactorization",
    "RandomCAM",
    "SSCAM",
    "ISCAM",
    "SmoothGradCAMpp",
    "LeGrad",
    "AttentionGrid",
    "methods",
    "get_method",
]


def methods() -> list[str]:
    """Canonical registry names accepted by ``ndcam.explain(method=...)``."""
    return sorted({cls.registry_name for cls in REGISTRY.values()})


def get_method(name: str | type[BaseCAM]) -> type[BaseCAM]:
    """Method class for a registry name (case-insensitive; ``_`` and ``-`` ignored) or a class."""
    if isinstance(name, type) and issubclass(name, BaseCAM):
        return name
    if not isinstance(name, str):
        raise TypeError(f"method must be a registry name or a BaseCAM subclass, got {type(name).__name__}")
    key = name.lower().replace("_", "").replace("-", "")
    table = {k.replace("-", ""): v for k, v in REGISTRY.items()}
    if key not in table:
        import difflib

        close = difflib.get_close_matches(key, table, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        from ..errors import InputError

        raise InputError(f"unknown method {name!r}{hint} (available: {', '.join(methods())})")
    return table[key]
