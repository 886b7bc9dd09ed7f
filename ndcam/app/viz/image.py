"""2D view: the overlay drawn at the image's own resolution and aspect, and :func:`overlay` for your own figures."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from ...core.errors import InputError
from .common import as_array, map_colorbar, new_figure, note_constant_map

__all__ = ["overlay", "plot_image", "to_display_image", "resize_map"]


def to_display_image(image: Any) -> np.ndarray:
    """Image as ``(H, W)`` grey or ``(H, W, 3)`` RGB float in ``[0, 1]``.

    Accepts ``(H, W)``, ``(H, W, 3|4)`` and ``(C, H, W)`` (the model's layout: 3/4 channels are RGB(A), any other
    count shows the first channel). ``uint8`` is divided by 255 and ``uint16`` by 65535; floats are stretched from
    their minimum to their maximum. Alpha is dropped.
    """
    raw = image.detach().cpu().numpy() if hasattr(image, "detach") else np.asarray(image)
    if raw.ndim == 3:
        chan_first = raw.shape[0] in (1, 2, 3, 4) and not (raw.shape[-1] in (3, 4) and raw.shape[0] not in (1, 3, 4))
        if not chan_first:
            raw = np.moveaxis(raw, -1, 0)
        raw = raw[:3] if raw.shape[0] in (3, 4) else raw[0]
        if raw.ndim == 3:
            raw = np.moveaxis(raw, 0, -1)
    if raw.ndim != 2 and not (raw.ndim == 3 and raw.shape[-1] == 3):
        raise InputError(f"an image must be (H, W), (H, W, 3|4) or (C, H, W), got shape {tuple(raw.shape)}")
    if raw.dtype == np.uint8:
        return raw.astype(np.float32) / 255.0
    if raw.dtype == np.uint16:
        return raw.astype(np.float32) / 65535.0
    img = raw.astype(np.float32)
    finite = np.isfinite(img)
    if not finite.any():
        return np.zeros_like(img)
    lo, hi = float(img[finite].min()), float(img[finite].max())
    return np.clip(np.nan_to_num((img - lo) / (hi - lo) if hi > lo else img * 0), 0.0, 1.0)


def resize_map(cam: Any, size: tuple[int, ...]) -> np.ndarray:
    """Bilinear/trilinear resize of a map to ``size`` (what ndcam uses to upsample maps), as float32 numpy."""
    m = as_array(cam)
    if tuple(m.shape) == tuple(size):
        return m
    import torch
    import torch.nn.functional as F

    mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[len(size)]
    t = torch.as_tensor(m)[None, None]
    return F.interpolate(t, size=tuple(size), mode=mode, align_corners=False)[0, 0].numpy()


def overlay(image: Any, cam: Any, alpha: float = 0.5, cmap: str = "jet") -> np.ndarray:
    """Blend the map's colours onto the image at the image's own size: ``uint8 (H, W, 3)``.

    Args:
        image: grey ``(H, W)``, RGB(A) ``(H, W, 3|4)`` or ``(C, H, W)``, any value range (see
            :func:`to_display_image`).
        cam: ``(h, w)`` map in ``[0, 1]``; resized (bilinear) to ``(H, W)`` when its size differs.
        alpha: weight of the map colour: ``out = (1 - alpha) * image + alpha * cmap(map)``.
        cmap: matplotlib colormap name.

    Returns:
        ``uint8`` array ``(H, W, 3)``, ready for ``PIL.Image.fromarray`` or ``imshow``.
    """
    if not 0.0 <= alpha <= 1.0:
        raise InputError(f"overlay: alpha must be in [0, 1], got {alpha}")
    img = to_display_image(image)
    rgb = np.repeat(img[..., None], 3, axis=-1) if img.ndim == 2 else img
    m = as_array(cam)
    if m is None or m.ndim != 2:
        raise InputError(f"overlay: the map must be (h, w), got shape {None if m is None else tuple(m.shape)}")
    m = np.clip(np.nan_to_num(resize_map(m, rgb.shape[:2])), 0.0, 1.0)
    heat = colormaps[cmap](m)[..., :3]
    out = (1.0 - alpha) * rgb + alpha * heat
    return np.clip(np.round(out * 255.0), 0, 255).astype(np.uint8)


def plot_image(image: Any, cam: Any, *, alpha: float = 0.5, cmap: str = "jet", title: str | None = None,
               colorbar: bool = True, dpi: float = 100.0, min_pixels: int = 320) -> Figure:
    """The overlay at native resolution: one image pixel is one (or an integer number of) screen pixels.

    The figure's size comes from the image (plus margins for the title, pixel axes and colorbar); images smaller
    than ``min_pixels`` on their long side are magnified by a whole factor (nearest neighbour), larger ones are never
    shrunk. Save with ``fig.savefig(path, dpi=fig.dpi)`` to keep the 1:1 pixels.
    """
    shown = overlay(image, cam, alpha=alpha, cmap=cmap)
    h, w = shown.shape[:2]
    scale = max(1, math.ceil(min_pixels / max(h, w)))
    w_in, h_in = w * scale / dpi, h * scale / dpi
    left, right, bottom = 0.55, (1.15 if colorbar else 0.25), 0.45
    lines = 1 + (title.count("\n") + 1 if title else 0)
    top = 0.25 + 0.2 * lines
    fig_w = max(w_in + left + right, 4.5)
    left = left + (fig_w - (w_in + left + right)) / 2
    fig = new_figure(fig_w, h_in + top + bottom, dpi=dpi)
    fw, fh = fig.get_size_inches()
    ax = fig.add_axes((left / fw, bottom / fh, w_in / fw, h_in / fh))
    ax.imshow(shown, interpolation="nearest", extent=(-0.5, w - 0.5, h - 0.5, -0.5))
    ax.set_xlabel("x (pixel)", fontsize=7)
    ax.set_ylabel("y (pixel)", fontsize=7)
    ax.tick_params(labelsize=7)
    if colorbar:
        cax = fig.add_axes(((left + w_in + 0.12) / fw, bottom / fh, 0.12 / fw, h_in / fh))
        map_colorbar(fig, ScalarMappable(Normalize(0, 1), cmap), cax=cax)
    head = (title + "\n") if title else ""
    head += f"{w} x {h} pixels" + (f", shown at {scale}x" if scale > 1 else ", 1:1") + f", map opacity {alpha:g}"
    fig.suptitle(head, fontsize=8, y=1 - 0.06 / fh, va="top")
    note_constant_map(fig, resize_map(as_array(cam), (h, w)))
    return fig
