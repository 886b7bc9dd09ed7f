"""1D view: each lead on its own amplitude axis (with its units) and the map as a colour band behind the trace.

Long recordings wrap: the time axis is cut into rows of ``row_seconds`` (at most ``max_rows`` rows per figure; the
rest is named on the figure), and :func:`signal_pages` yields one figure per page to walk through all of it. With a
sampling rate and voltage units (mV, uV, V) the leads are drawn on ECG paper: 25 mm/s, 10 mm/mV, 1 mm minor and
5 mm major grid.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from ...core.errors import InputError
from .common import as_array, band_rgba, map_colorbar, new_figure, note_constant_map

__all__ = ["plot_signal", "signal_pages", "to_millivolt", "draw_paper", "PAPER_MINOR", "PAPER_MAJOR"]

PAPER_MINOR = "#f4c7c7"
PAPER_MAJOR = "#e48f8f"
MM_PER_S = 25.0
MM_PER_MV = 10.0
_TO_MV = {"mv": 1.0, "uv": 1e-3, "µv": 1e-3, "μv": 1e-3, "v": 1e3, "millivolt": 1.0, "microvolt": 1e-3, "volt": 1e3}


def to_millivolt(unit: str | None) -> float | None:
    """Factor that turns values in ``unit`` into mV, or ``None`` when ``unit`` is not a voltage."""
    if unit is None:
        return None
    return _TO_MV.get(str(unit).strip().lower())


def _per_channel(value: Any, c: int, default: Any) -> list[Any]:
    if value is None:
        return [default(i) for i in range(c)]
    if isinstance(value, str):
        return [value] * c
    vals = list(value)
    return [vals[i] if i < len(vals) else default(i) for i in range(c)]


def draw_paper(ax: Any, x0: float, x1: float, y0: float, y1: float) -> None:
    """ECG paper grid over ``[x0, x1] s x [y0, y1] mV``: 0.04 s / 0.1 mV minor (1 mm), 0.2 s / 0.5 mV major (5 mm)."""
    for step, color, lw in ((0.04, PAPER_MINOR, 0.35), (0.2, PAPER_MAJOR, 0.7)):
        xs = np.arange(math.ceil(x0 / step - 1e-9), math.floor(x1 / step + 1e-9) + 1) * step
        ystep = step * 2.5  # 0.1 mV and 0.5 mV
        ys = np.arange(math.ceil(y0 / ystep - 1e-9), math.floor(y1 / ystep + 1e-9) + 1) * ystep
        ax.vlines(xs, y0, y1, colors=color, linewidth=lw, zorder=1)
        ax.hlines(ys, x0, x1, colors=color, linewidth=lw, zorder=1)


def _prepare(signal: Any, cam: Any) -> tuple[np.ndarray, np.ndarray]:
    sig = as_array(signal)
    if sig is None or sig.ndim not in (1, 2):
        raise InputError(f"plot_signal: signal must be (C, L) or (L,), got shape {None if sig is None else sig.shape}")
    sig = sig[None] if sig.ndim == 1 else sig
    m = as_array(cam)
    if m is None:
        raise InputError("plot_signal: cam is None; pass the (L,) or (C, L) map")
    m = m[None] if m.ndim == 1 else m
    if m.ndim != 2 or m.shape[-1] != sig.shape[-1] or m.shape[0] not in (1, sig.shape[0]):
        raise InputError(f"plot_signal: the map has shape {tuple(as_array(cam).shape)} but the signal is "
                         f"{tuple(sig.shape)}; pass an (L,) map or one (C, L) map per lead with L = {sig.shape[-1]}")
    return sig, m


def plot_signal(signal: Any, cam: Any, *, fs: float | None = None, leads: Sequence[str] | None = None,
                channels: Sequence[str] | None = None, units: Any = None, offset: float = 0.0, cmap: str = "jet",
                title: str | None = None, max_leads: int = 12, row_seconds: float | None = None,
                max_rows: int = 6, paper: bool | None = None, alpha: float | None = None) -> Figure:
    """Leads ``(C, L)`` with the map (``(L,)`` shared, or ``(C, L)`` one band per lead) behind each trace.

    Args:
        signal: ``(C, L)`` or ``(L,)``.
        cam: ``(L,)`` or ``(C, L)`` map in ``[0, 1]``.
        fs: sampling rate in Hz; the time axis is in seconds when given, else in samples.
        leads: lead names.
        channels: the same as ``leads`` (the command line's name); ``leads`` wins when both are given.
        units: amplitude unit per lead (one string for all), e.g. ``"mV"``.
        offset: seconds (or samples without ``fs``) of the first sample in the whole recording.
        cmap: colormap of the band.
        title: figure title (e.g. :func:`ndcam.viz.describe` of the explanation).
        max_leads: draw at most this many leads.
        row_seconds: length of one row; longer signals wrap onto more rows (default 10 s, or 2000 samples).
        max_rows: rows per figure; a longer signal shows its start and says so (see :func:`signal_pages`).
        paper: ECG paper (25 mm/s, 10 mm/mV); default: on when ``fs`` is known and every unit is a voltage.
        alpha: band opacity (default 0.55; on paper 0.6 times the map value, so low values leave the paper visible).

    Returns:
        A :class:`matplotlib.figure.Figure`.
    """
    sig, m = _prepare(signal, cam)
    names = _per_channel(leads if leads is not None else channels, sig.shape[0], lambda i: f"ch {i}")
    unit_list = _per_channel(units, sig.shape[0], lambda i: None)
    c = min(sig.shape[0], max_leads)
    factors = [to_millivolt(u) for u in unit_list[:c]]
    if paper is None:
        paper = bool(fs) and all(f is not None for f in factors)
    if paper and not fs:
        raise InputError("plot_signal: ECG paper needs the sampling rate; pass fs=... in Hz")
    if paper:
        sig = sig[:c] * np.asarray([f if f is not None else 1.0 for f in factors], dtype=np.float32)[:, None]
        unit_list = ["mV"] * c
    alpha = (0.6 if paper else 0.55) if alpha is None else alpha
    n = sig.shape[1]
    step = 1.0 / fs if fs else 1.0
    row_len = int(round((row_seconds if row_seconds else (10.0 if fs else 2000 * step)) / step))
    row_len = max(1, min(n, row_len))
    n_rows_all = math.ceil(n / row_len)
    if n_rows_all > 1 and n <= 1.2 * row_len:  # a little over one row: keep one row
        row_len, n_rows_all = n, 1
    n_rows = min(n_rows_all, max_rows)
    t_unit = "s" if fs else "sample"

    lims = []
    for i in range(c):
        lo, hi = float(np.nanmin(sig[i])), float(np.nanmax(sig[i]))
        pad = 0.08 * (hi - lo) + (0.1 if paper else 1e-6)
        lims.append((lo - pad, hi + pad))
    if paper:
        width = row_len * step * MM_PER_S / 25.4 + 2.4
        heights = [max(1.0, (hi - lo) * MM_PER_MV / 25.4) for lo, hi in lims]
    else:
        width = 12.0
        heights = [1.25] * c
    total = sum(heights) * n_rows + 0.35 * (n_rows - 1) + 1.3
    fig = new_figure(width, total)
    fig.set_layout_engine("constrained")
    ratios = [h for _ in range(n_rows) for h in heights]
    axes = fig.subplots(n_rows * c, 1, squeeze=False, gridspec_kw={"height_ratios": ratios})[:, 0]
    im = None
    for r in range(n_rows):
        a, b = r * row_len, min(n, (r + 1) * row_len)
        t = offset + np.arange(a, b) * step
        x0, x1 = offset + (a - 0.5) * step, offset + (b - 0.5) * step
        for i in range(c):
            ax = axes[r * c + i]
            lo, hi = lims[i]
            band = m[i if m.shape[0] > 1 else 0, a:b]
            if paper:  # opacity grows with the map: the paper stays visible where the map is low
                ax.imshow(band_rgba(band, cmap, alpha), aspect="auto", extent=(x0, x1, lo, hi), origin="lower",
                          interpolation="nearest", zorder=2)
            else:
                im = ax.imshow(band[None], aspect="auto", cmap=cmap, vmin=0, vmax=1, alpha=alpha,
                               extent=(x0, x1, lo, hi), origin="lower", interpolation="nearest", zorder=0)
            if paper:
                draw_paper(ax, x0, x1, lo, hi)
                ax.set_aspect(MM_PER_MV / MM_PER_S, adjustable="box")
            ax.plot(t, sig[i, a:b], color="black", lw=0.8, zorder=3)
            ax.set_xlim(x0, x1)
            ax.set_ylim(lo, hi)
            unit = unit_list[i]
            ax.set_ylabel(f"{names[i]}\n({unit})" if unit else f"{names[i]}\n(amplitude)", fontsize=8)
            ax.tick_params(labelsize=7)
            if i < c - 1:
                ax.tick_params(labelbottom=False)
            if paper:
                ax.set_xticks(np.arange(math.ceil(x0), math.floor(x1) + 1, 1.0))
        axes[r * c + c - 1].set_xlabel(f"time ({t_unit})", fontsize=8)
    mappable = im if im is not None else ScalarMappable(Normalize(0, 1), cmap)
    map_colorbar(fig, mappable, ax=list(axes), fraction=0.02, pad=0.01, aspect=40)
    head = title or ""
    if paper:
        head += ("\n" if head else "") + "ECG paper: 25 mm/s, 10 mm/mV (grid 1 mm = 0.04 s x 0.1 mV)"
    if n_rows < n_rows_all:
        shown = n_rows * row_len * step
        head += ("\n" if head else "") + (f"first {shown:g} {t_unit} of {n * step:g} {t_unit} shown: "
                                          "ndcam.viz.signal_pages draws every page")
    if head:
        fig.suptitle(head, fontsize=9)
    note_constant_map(fig, m[:, : n_rows * row_len])
    return fig


def signal_pages(signal: Any, cam: Any, *, fs: float | None = None, page_seconds: float = 10.0, rows: int = 1,
                 offset: float = 0.0, title: str | None = None, **kwargs: Any) -> Iterator[Figure]:
    """One figure per page of a long recording: ``rows`` rows of ``page_seconds`` each (samples without ``fs``).

    Each page keeps its time offset in the recording. Keyword arguments go to :func:`plot_signal`.
    """
    sig, m = _prepare(signal, cam)
    step = 1.0 / fs if fs else 1.0
    per_row = max(1, int(round(page_seconds / step)))
    per_page = per_row * rows
    pages = math.ceil(sig.shape[1] / per_page)
    for p in range(pages):
        a, b = p * per_page, min(sig.shape[1], (p + 1) * per_page)
        head = f"{title}\n" if title else ""
        yield plot_signal(sig[:, a:b], m[:, a:b], fs=fs, offset=offset + a * step, row_seconds=page_seconds,
                          max_rows=rows, title=f"{head}page {p + 1} of {pages}", **kwargs)
