"""12-lead ECG view: the standard 3x4 layout (I, II, III | aVR, aVL, aVF | V1-V3 | V4-V6, 2.5 s each) with a lead II
rhythm strip, on ECG paper at its physical scale (25 mm/s, 10 mm/mV; the figure's inches are the paper's), with the
map as a colour band behind each segment and a 1 mV calibration pulse at each row's start.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from ...core.errors import InputError
from .common import as_array, band_rgba, map_colorbar, new_figure, note_constant_map
from .signal import MM_PER_MV, MM_PER_S, draw_paper, to_millivolt

__all__ = ["plot_ecg12", "twelve_lead_order", "STANDARD_LEADS", "LAYOUT"]

STANDARD_LEADS = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")
LAYOUT = (("I", "aVR", "V1", "V4"), ("II", "aVL", "V2", "V5"), ("III", "aVF", "V3", "V6"))
_CANON = {name.upper(): name for name in STANDARD_LEADS}
ROW_MV = 3.2  # height of one row on the paper (32 mm)
CAL_S = 0.36  # room on the left for the calibration pulse


def _canon(name: Any) -> str:
    s = str(name).strip().upper().replace(" ", "").replace("LEAD", "")
    return _CANON.get(s, s)


def twelve_lead_order(channels: Sequence[str] | None) -> dict[str, int] | None:
    """``{standard lead name: channel index}`` when ``channels`` name exactly the 12 standard leads (any order or
    case), else ``None``.
    """
    if channels is None or len(channels) != 12:
        return None
    idx = {_canon(c): i for i, c in enumerate(channels)}
    return idx if set(idx) == set(STANDARD_LEADS) else None


def plot_ecg12(signal: Any, cam: Any, *, fs: float, channels: Sequence[str], units: Any = "mV", offset: float = 0.0,
               cmap: str = "jet", title: str | None = None, alpha: float = 0.6, rhythm: str = "II",
               seconds: float = 10.0) -> Figure:
    """Twelve leads in the 3x4 layout with a rhythm strip, on ECG paper.

    Args:
        signal: ``(12, L)``; channel order is free, ``channels`` names them (I, II, III, aVR, aVL, aVF, V1..V6).
        cam: ``(L,)`` map, or ``(12, L)`` one per lead, in ``[0, 1]``.
        fs: sampling rate in Hz (required: paper speed is 25 mm/s).
        channels: the 12 lead names, any order and case.
        units: amplitude unit (one for all, or one per lead): mV, uV or V; anything else is drawn as if mV and said.
        offset: seconds of the first sample in the recording (the time axis starts there).
        cmap: colormap of the band.
        title: figure title.
        alpha: band opacity where the map is 1 (it is ``alpha * map``: the paper shows where the map is low).
        rhythm: lead of the rhythm strip.
        seconds: length drawn (the standard 10 s; a longer input shows its first ``seconds`` and says so).
    """
    order = twelve_lead_order(channels)
    if order is None:
        raise InputError(f"plot_ecg12: channels must name the 12 standard leads {STANDARD_LEADS} (any order or case), "
                         f"got {list(channels) if channels is not None else None}")
    if not fs or fs <= 0:
        raise InputError("plot_ecg12: the sampling rate fs (Hz) is required to draw at 25 mm/s")
    sig = as_array(signal)
    m = as_array(cam)
    if sig is None or sig.ndim != 2 or sig.shape[0] != 12:
        raise InputError(f"plot_ecg12: signal must be (12, L), got {None if sig is None else tuple(sig.shape)}")
    m = m[None] if m.ndim == 1 else m
    if m.shape[-1] != sig.shape[1] or m.shape[0] not in (1, 12):
        raise InputError(f"plot_ecg12: map of shape {tuple(m.shape)} does not fit the signal {tuple(sig.shape)}")
    unit_list = [units] * 12 if units is None or isinstance(units, str) else list(units)
    factors = [to_millivolt(u) for u in unit_list]
    assumed = any(f is None for f in factors)
    sig = sig * np.asarray([f if f is not None else 1.0 for f in factors], dtype=np.float32)[:, None]
    n = min(sig.shape[1], int(round(seconds * fs)))
    dur = n / fs
    col = dur / 4.0
    rows = [list(r) for r in LAYOUT] + [[_canon(rhythm)]]
    y_top = 0.0
    y_bottom = -ROW_MV * len(rows) - 0.4
    x_left = -CAL_S
    width_mm = (dur - x_left) * MM_PER_S
    height_mm = (y_top - y_bottom) * MM_PER_MV
    left_in, right_in, top_in, bottom_in = 0.35, 1.05, 0.75, 0.45
    w_in, h_in = width_mm / 25.4, height_mm / 25.4
    fig = new_figure(w_in + left_in + right_in, h_in + top_in + bottom_in)
    fw, fh = fig.get_size_inches()
    ax = fig.add_axes((left_in / fw, bottom_in / fh, w_in / fw, h_in / fh))
    cax = fig.add_axes(((left_in + w_in + 0.15) / fw, bottom_in / fh, 0.12 / fw, h_in / fh))
    draw_paper(ax, x_left, dur, y_bottom, y_top)
    for r, names in enumerate(rows):
        base = y_top - ROW_MV * (r + 0.62)
        seg = col if len(names) > 1 else dur
        # calibration pulse: 1 mV for 0.2 s
        cx = np.array([x_left + 0.04, x_left + 0.1, x_left + 0.1, x_left + 0.3, x_left + 0.3, x_left + 0.34])
        cy = base + np.array([0, 0, 1, 1, 0, 0])
        ax.plot(cx, cy, color="black", lw=0.9, zorder=3)
        for j, name in enumerate(names):
            ch = order[name]
            a = int(round(j * seg * fs))
            b = min(n, int(round((j + 1) * seg * fs)))
            t = np.arange(a, b) / fs
            band = m[ch if m.shape[0] > 1 else 0, a:b]
            y0, y1 = y_top - ROW_MV * (r + 1), y_top - ROW_MV * r
            ax.imshow(band_rgba(band, cmap, alpha), aspect="auto", origin="lower", interpolation="nearest",
                      extent=((a - 0.5) / fs, (b - 0.5) / fs, y0, y1), zorder=2)
            trace = sig[ch, a:b] - float(np.median(sig[ch, :n]))
            ax.plot(t, base + trace, color="black", lw=0.8, zorder=3, clip_on=True)
            ax.text(a / fs + 0.04, y1 - 0.35, name, fontsize=9, fontweight="bold", va="top", zorder=4)
            if j > 0:
                ax.vlines(a / fs, base - 0.5, base + 0.5, colors="black", lw=1.0, zorder=3)
    ax.set_xlim(x_left, dur)
    ax.set_ylim(y_bottom, y_top)
    ax.set_aspect(MM_PER_MV / MM_PER_S)
    ticks = np.arange(0, np.floor(dur + 1e-9) + 1, 1.0)
    ax.set_xticks(ticks, [f"{offset + v:g}" for v in ticks])
    ax.set_xlabel("time (s)", fontsize=8)
    ax.set_yticks([])
    ax.tick_params(labelsize=7)
    map_colorbar(fig, ScalarMappable(Normalize(0, 1), cmap), cax=cax)
    head = (title + "\n") if title else ""
    head += "12-lead ECG, 25 mm/s, 10 mm/mV (grid 1 mm = 0.04 s x 0.1 mV); rhythm strip: lead " + _canon(rhythm)
    if assumed:
        head += f"\namplitude units {sorted({str(u) for u, f in zip(unit_list, factors) if f is None})} unknown: " \
                "drawn as if mV"
    if sig.shape[1] > n:
        head += f"\nfirst {dur:g} s of {sig.shape[1] / fs:g} s shown"
    fig.suptitle(head, fontsize=9, y=1 - 0.08 / fh, va="top")
    note_constant_map(fig, m[:, :n])
    return fig
