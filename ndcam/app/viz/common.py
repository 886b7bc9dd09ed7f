"""Shared pieces of every view: array conversion, figures without pyplot, titles, colorbars, constant-map notes.

Figures are plain :class:`matplotlib.figure.Figure` objects: no pyplot, no global state, and the user's backend is
never switched. Save one with ``fig.savefig("map.png")``; show one in a notebook by leaving it as a cell's value.
"""

from __future__ import annotations

import io
import sys
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from ...core.errors import ConstantMapWarning, InputError

__all__ = ["png_bytes", "as_array", "new_figure", "describe", "layer_label", "map_colorbar", "constant_map_note",
           "note_constant_map", "rgba_to_array", "band_rgba", "MAP_LABEL"]

MAP_LABEL = "map (normalized)"
CONSTANT_HINT = "nothing to show -- try another target, layer or method"


def png_bytes(fig: Any, dpi: float | None = None) -> bytes:
    """Render a matplotlib Figure to PNG bytes (at the figure's own dpi unless given) and release it."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi if dpi is not None else fig.dpi)
    plt = sys.modules.get("matplotlib.pyplot")
    if plt is not None:  # a figure made with pyplot: forget it (closing never changes the backend)
        plt.close(fig)
    return buf.getvalue()


def as_array(t: Any, what: str = "array") -> np.ndarray:
    """Tensor or array-like to a float32 numpy array (``None`` is an :class:`ndcam.InputError` naming ``what``)."""
    if t is None:
        raise InputError(f"{what} is None; pass an array or a tensor")
    if hasattr(t, "detach"):
        t = t.detach().float().cpu().numpy()
    return np.asarray(t, dtype=np.float32)


def new_figure(width: float, height: float, dpi: float = 100.0) -> Figure:
    """A detached Figure of ``width x height`` inches (no pyplot: the caller's backend is untouched)."""
    return Figure(figsize=(float(width), float(height)), dpi=float(dpi))


def layer_label(layers: Sequence[str]) -> str:
    """``layer "layer4"`` / ``layers "a", "b"``; a bare numeric name (a ``Sequential`` index) reads ``module "9"``."""
    names = [str(n) for n in layers]
    if not names:
        return "layer (default)"
    if len(names) == 1:
        n = names[0]
        return f'module "{n}"' if n.isdigit() else f'layer "{n}"'
    return "layers " + ", ".join(f'"{n}"' for n in names)


def _item(t: Any, index: int, k: int) -> Any:
    if t is None:
        return None
    v = t[index]
    if getattr(v, "ndim", 0) >= 1:
        v = v[k]
    return v.item() if hasattr(v, "item") else v


def describe(exp: Any, index: int = 0, k: int = 0, labels: Sequence[str] | None = None) -> str:
    """One line naming the method, layer(s), target (class name through ``labels``) and score of one map."""
    parts = [str(getattr(exp, "method", "map"))]
    parts.append(layer_label(list(getattr(exp, "layers", []) or [])))
    target = _item(getattr(exp, "targets", None), index, k)
    if target is not None:
        t = int(target)
        name = labels[t] if labels is not None and 0 <= t < len(labels) else None
        parts.append(f"target {name} (class {t})" if name is not None else f"target class {t}")
    score = _item(getattr(exp, "scores", None), index, k)
    if score is not None:
        parts.append(f"score {float(score):.4g}")
    return " | ".join(parts)


def band_rgba(values: np.ndarray, cmap: str, alpha: float) -> np.ndarray:
    """``(1, n, 4)`` colours of a 1D map whose opacity grows with the value (``alpha * value``): low values leave
    what is behind (ECG paper, a spectrogram) visible.
    """
    from matplotlib import colormaps

    v = np.clip(np.nan_to_num(np.asarray(values, dtype=np.float64)), 0.0, 1.0)
    rgba = colormaps[cmap](v)
    rgba[..., 3] = alpha * v
    return rgba[None]


def map_colorbar(fig: Figure, mappable: Any, ax: Any = None, cax: Any = None, **kwargs: Any) -> Any:
    """The map's colorbar: 0..1, labelled ``map (normalized)``."""
    cb = fig.colorbar(mappable, ax=ax, cax=cax, **kwargs)
    cb.set_label(MAP_LABEL)
    cb.set_ticks([0, 0.25, 0.5, 0.75, 1.0])
    return cb


def constant_map_note(cam: np.ndarray) -> str | None:
    """``None`` for a map with contrast; else the sentence to print on the picture."""
    m = np.asarray(cam, dtype=np.float64)
    if m.size == 0:
        return f"map is empty: {CONSTANT_HINT}"
    if not np.isfinite(m).all():
        return f"map holds NaN/inf values: {CONSTANT_HINT}"
    lo, hi = float(m.min()), float(m.max())
    if hi - lo > 1e-8 * max(1.0, abs(hi)):
        return None
    what = "all zero" if hi == 0 else f"all {hi:.3g}"
    return f"map is constant ({what}): {CONSTANT_HINT}"


def note_constant_map(fig: Figure, cam: np.ndarray, stacklevel: int = 3) -> str | None:
    """Warn (:class:`ndcam.ConstantMapWarning`) and write the reason on ``fig`` when ``cam`` is constant."""
    note = constant_map_note(cam)
    if note is None:
        return None
    warnings.warn(note + " (a ReLU that removed every negative map, a target that does not depend on the layer, or "
                  "a constant input)", ConstantMapWarning, stacklevel=stacklevel)
    fig.text(0.5, 0.5, note, ha="center", va="center", fontsize=12, color="black", wrap=True,
             bbox={"boxstyle": "round", "facecolor": "#fff3b0", "edgecolor": "#b08800", "alpha": 0.95}, zorder=100)
    return note


def check_map(cam: np.ndarray, spatial: tuple[int, ...], what: str) -> None:
    """Clear error when a map's shape does not fit the data it is drawn on."""
    if tuple(cam.shape) != tuple(spatial):
        raise InputError(f"{what}: the map has shape {tuple(cam.shape)} but the data's spatial shape is "
                         f"{tuple(spatial)}; pass the map of this sample (and target), upsampled to the input")


def rgba_to_array(fig: Figure) -> np.ndarray:
    """Render ``fig`` with Agg (no backend switch) and return its pixels ``(H, W, 4)`` uint8."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba()).copy()
