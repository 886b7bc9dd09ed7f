"""Multi-panel pictures: one sample under several maps (layers of a sweep, channels of a layer, leads of a signal).

Plain arrays in, a :class:`matplotlib.figure.Figure` out (no pyplot). Rank 1: stacked signal panels with each map as a
heat band (:func:`band_panels`, :func:`plot_leads`); rank 2: overlays in a row or grid (:func:`overlay_row`); rank 3:
slices through each map's peak and maximum-intensity projections (:func:`volume_rows`). The result objects of
:mod:`ndcam.sweep`, :mod:`ndcam.channels` and :mod:`ndcam.leadwise` draw with these; :func:`ndcam.report.html_section`
puts such a figure into a report section.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from matplotlib.figure import Figure

from ...core.errors import InputError
from .common import as_array, new_figure

__all__ = ["sample_under_maps", "band_panels", "overlay_row", "volume_rows", "plot_leads"]


def _subplots(rows: int, cols: int, figsize: tuple[float, float], **kwargs: Any) -> tuple[Figure, Any]:
    fig = new_figure(*figsize)
    return fig, fig.subplots(rows, cols, **kwargs)


def _draw_band(ax: Any, t: np.ndarray, sig: np.ndarray, cam: np.ndarray, cmap: str, lw: float = 0.8) -> Any:
    """The signal as a black trace over its map as a heat band filling the panel's height."""
    lo, hi = float(sig.min()), float(sig.max())
    pad = 0.08 * (hi - lo + 1e-9)
    im = ax.imshow(cam[None, :], aspect="auto", cmap=cmap, vmin=0, vmax=1, alpha=0.55,
                   extent=(float(t[0]), float(t[-1]), lo - pad, hi + pad), origin="lower", interpolation="nearest")
    ax.plot(t, sig, color="black", lw=lw)
    ax.set_ylim(lo - pad, hi + pad)
    return im


def band_panels(signal: np.ndarray, maps: np.ndarray, labels: list[str], *, fs: float | None = None,
                units: str | None = None, cmap: str = "jet", title: str | None = None, signals: Any = None):
    """Stacked panels: the signal ``(L,)`` (or one signal per panel, ``signals`` ``(P, L)``) with map ``p`` ``(L,)`` as a
    heat band behind panel ``p``; ``labels`` name the panels (left of each).
    """
    n = len(maps)
    sigs = np.broadcast_to(signal, (n, signal.shape[-1])) if signals is None else np.asarray(signals)
    t = np.arange(sigs.shape[-1]) / fs if fs else np.arange(sigs.shape[-1])
    fig, axes = _subplots(n, 1, figsize=(10, 0.9 + 1.15 * n), sharex=True, squeeze=False)
    im: Any = None
    for p in range(n):
        ax = axes[p, 0]
        im = _draw_band(ax, t, sigs[p], maps[p], cmap)
        ax.set_ylabel(labels[p], rotation=0, ha="right", va="center", fontsize=9)
        ax.tick_params(axis="y", labelsize=7)
    axes[-1, 0].set_xlabel("time (s)" if fs else "sample")
    if units:  # above the first panel's amplitude ticks
        axes[0, 0].annotate(units, xy=(0, 1), xycoords="axes fraction", xytext=(-3, 3), textcoords="offset points",
                            ha="right", va="bottom", fontsize=7)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout(rect=(0, 0, 0.9, 1))
    cax = fig.add_axes((0.92, 0.15, 0.012, 0.7))
    fig.colorbar(im, cax=cax, label="map (normalized)")
    return fig


def _grey(img: np.ndarray) -> np.ndarray:
    return (img - img.min()) / (img.max() - img.min() + 1e-12)


def overlay_row(image: np.ndarray, maps: np.ndarray, labels: list[str], *, cmap: str = "jet",
                title: str | None = None, cols: int | None = None, input_panel: bool = True):
    """The image ``(H, W)`` then one overlay per map ``(P, H, W)``, in a row (or a grid of ``cols`` columns)."""
    panels = len(maps) + int(input_panel)
    cols = cols or panels
    rows = -(-panels // cols)
    fig, axes = _subplots(rows, cols, figsize=(2.6 * cols + 0.6, 2.75 * rows + 0.5), squeeze=False)
    img = _grey(image)
    for ax in axes.ravel():
        ax.set_axis_off()
    flat = axes.ravel()
    if input_panel:
        flat[0].imshow(img, cmap="gray")
        flat[0].set_title("input", fontsize=9)
    im: Any = None
    for p, m in enumerate(maps):
        ax = flat[p + int(input_panel)]
        ax.imshow(img, cmap="gray")
        im = ax.imshow(m, cmap=cmap, alpha=0.5, vmin=0, vmax=1)
        ax.set_title(labels[p], fontsize=9)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout(rect=(0, 0, 0.93, 1))
    fig.colorbar(im, cax=fig.add_axes((0.94, 0.15, 0.012, 0.65)))
    return fig


def volume_rows(volume: np.ndarray, maps: np.ndarray, labels: list[str], *, cmap: str = "jet",
                title: str | None = None, mip: bool = True, cols: int | None = None, ref: int = -1):
    """The input, then for each map ``(P, D, H, W)`` the axial slice through its peak and, if ``mip``, below it the
    maximum-intensity projections along D of the volume and of the map. Without ``mip`` the slices fill a grid of
    ``cols`` columns.

    The input panel shows the slice through the peak of map ``ref`` (default the last; and the volume's MIP).
    """
    n = len(maps) + 1
    if mip:
        rows, cols = 2, n
    else:
        cols = min(cols or n, n)
        rows = -(-n // cols)
    fig, axes = _subplots(rows, cols, figsize=(2.6 * cols + 0.6, 2.95 * rows + 0.5), squeeze=False)
    vol = _grey(volume)
    panels = axes.T.ravel() if mip else axes.ravel()
    d_last = int(np.unravel_index(int(np.argmax(maps[ref])), maps[ref].shape)[0])
    first = axes[0, 0]
    first.imshow(vol[d_last], cmap="gray")
    first.set_title(f"input\nslice d={d_last}", fontsize=9)
    if mip:
        axes[1, 0].imshow(vol.max(0), cmap="gray")
        axes[1, 0].set_title("input MIP along d", fontsize=9)
    im: Any = None
    for p, m in enumerate(maps):
        d = int(np.unravel_index(int(np.argmax(m)), m.shape)[0])
        ax = axes[0, p + 1] if mip else panels[p + 1]
        ax.imshow(vol[d], cmap="gray")
        im = ax.imshow(m[d], cmap=cmap, alpha=0.5, vmin=0, vmax=1)
        ax.set_title(f"{labels[p]}\npeak slice d={d}", fontsize=9)
        if mip:
            ax = axes[1, p + 1]
            ax.imshow(vol.max(0), cmap="gray")
            ax.imshow(m.max(0), cmap=cmap, alpha=0.5, vmin=0, vmax=1)
            ax.set_title("MIP along d", fontsize=9)
    for ax in axes.ravel():
        ax.set_axis_off()
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout(rect=(0, 0, 0.93, 1))
    fig.colorbar(im, cax=fig.add_axes((0.94, 0.15, 0.012, 0.65)))
    return fig


def plot_leads(signal: Any, maps: Any, *, fs: float | None = None, leads: list[str] | None = None,
               units: Any = None, cmap: str = "jet", title: str | None = None, energy: Any = None,
               max_leads: int = 12):
    """Stacked leads ``(C, L)``, each with its own map ``(C, L)`` as a heat band (one color scale for all leads).

    Args:
        signal: ``(C, L)`` signal.
        maps: ``(C, L)`` lead-wise maps in ``[0, 1]`` (normalized jointly, so bands compare across leads).
        fs: sampling rate in Hz (time axis in seconds when given).
        leads: lead names (default ``ch 0``, ``ch 1``, ...).
        units: signal units, one string for all leads or one per lead (e.g. ``"mV"``).
        cmap: colormap of the bands.
        title: figure title.
        energy: optional ``(C,)`` share of the map per lead, printed under each lead's name.
        max_leads: draw at most this many leads.
    """
    sig, m = as_array(signal), as_array(maps)
    if sig.ndim != 2 or m.shape != sig.shape:
        raise InputError(f"plot_leads needs signal and maps of the same shape (C, L); got {sig.shape} and {m.shape}")
    c = min(sig.shape[0], max_leads)
    t = np.arange(sig.shape[1]) / fs if fs else np.arange(sig.shape[1])
    share = None if energy is None else as_array(energy).reshape(-1)
    fig, axes = _subplots(c, 1, figsize=(11, 1.0 + 1.15 * c), sharex=True, squeeze=False)
    im: Any = None
    for i in range(c):
        ax = axes[i, 0]
        im = _draw_band(ax, t, sig[i], m[i], cmap, lw=0.7)
        name = leads[i] if leads and i < len(leads) else f"ch {i}"
        unit = units[i] if isinstance(units, (list, tuple)) else units
        label = name + (f" ({unit})" if unit else "")
        if share is not None:
            label += f"\n{100 * float(share[i]):.0f}% of map"
        ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=9)
        ax.tick_params(axis="y", labelsize=7)
    axes[-1, 0].set_xlabel("time (s)" if fs else "sample")
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout(rect=(0, 0, 0.91, 1))
    fig.colorbar(im, cax=fig.add_axes((0.925, 0.15, 0.012, 0.7)), label="lead-wise map (joint scale)")
    return fig


def sample_under_maps(sample: np.ndarray, maps: np.ndarray, labels: list[str], *, fs: float | None = None,
                      units: str | None = None, cmap: str = "jet", title: str | None = None, grid: bool = False,
                      cols: int | None = None, what: str = "the maps") -> Figure:
    """One sample under several maps ``(P, *S)``, the view chosen by the maps' spatial rank: stacked heat bands
    (:func:`band_panels`, rank 1), overlays (:func:`overlay_row`, rank 2), slices through each map's peak
    (:func:`volume_rows`, rank 3). ``grid=True`` lays ranks 2 and 3 out in ``cols`` columns (default about square),
    the volume without projections and its input slice through the first map's peak; ``False`` keeps one row (with
    projections for rank 3). ``what`` names the maps in the error for other ranks.
    """
    rank = maps.ndim - 1
    if grid:
        cols = cols or int(np.ceil(np.sqrt(len(labels) + 1)))
    if rank == 1:
        return band_panels(sample, maps, labels, fs=fs, units=units, cmap=cmap, title=title)
    if rank == 2:
        return overlay_row(sample, maps, labels, cmap=cmap, title=title, cols=cols)
    if rank == 3:
        return volume_rows(sample, maps, labels, cmap=cmap, title=title, mip=not grid, cols=cols,
                           ref=0 if grid else -1)
    raise InputError(f"no picture for spatial rank {rank}; draw slices of {what} yourself")
