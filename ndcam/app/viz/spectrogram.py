"""Spectrogram view: frequency up, axes in Hz and seconds, the spectrogram in greys and the map in colour on top.

The map is drawn with an opacity that grows with its value (low values leave the spectrogram visible) and contour
lines at 0.5 and 0.8, so both stay readable. Without ``freqs``/``times`` the axes come from ``fs`` under the usual
one-sided STFT assumption: ``F`` bins spaced linearly from 0 to ``fs / 2`` (``n_fft = 2 (F - 1)``) and frames every
``hop`` samples (default ``n_fft // 4``), the first one centred at ``offset``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from ...core.errors import InputError
from .common import as_array, map_colorbar, new_figure, note_constant_map
from .image import resize_map

__all__ = ["plot_spectrogram", "spectrogram_axes"]


def spectrogram_axes(n_freq: int, n_time: int, fs: float, hop: int | None = None,
                     offset: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """``(freqs in Hz, times in s)`` of a one-sided linear STFT with ``n_freq`` bins and ``n_time`` frames."""
    n_fft = max(2, 2 * (n_freq - 1))
    hop = hop or max(1, n_fft // 4)
    return np.linspace(0.0, fs / 2.0, n_freq), offset + np.arange(n_time) * hop / fs


def _edges(c: np.ndarray) -> np.ndarray:
    c = np.asarray(c, dtype=np.float64)
    if c.size == 1:
        return np.array([c[0] - 0.5, c[0] + 0.5])
    mid = (c[1:] + c[:-1]) / 2
    return np.concatenate([[c[0] - (mid[0] - c[0])], mid, [c[-1] + (c[-1] - mid[-1])]])


def _hz_to_mel(f: np.ndarray) -> np.ndarray:
    return 2595.0 * np.log10(1.0 + np.maximum(f, 0.0) / 700.0)


def _mel_to_hz(m: np.ndarray) -> np.ndarray:
    return 700.0 * (10.0 ** (np.asarray(m) / 2595.0) - 1.0)


def plot_spectrogram(spec: Any, cam: Any, *, freqs: Any = None, times: Any = None, fs: float | None = None,
                     hop: int | None = None, freq_scale: str | None = None, offset: float = 0.0, alpha: float = 0.7,
                     cmap: str = "jet", title: str | None = None, contours: bool = True) -> Figure:
    """Spectrogram ``(F, T)`` (or ``(C, F, T)``, first channel) with the map ``(F, T)`` over it, frequency up.

    Args:
        spec: the spectrogram as the model saw it (power, magnitude or dB: drawn in greys, 1-99.5 percentile).
        cam: the map; resized to ``(F, T)`` when its size differs.
        freqs: ``(F,)`` centre frequency of each row in Hz (any monotonic spacing: linear, log, mel).
        times: ``(T,)`` centre time of each frame in s.
        fs: sampling rate of the audio, used for the axes when ``freqs``/``times`` are not given (see module doc).
        hop: STFT hop in samples for the default time axis.
        freq_scale: ``"linear"``, ``"log"`` or ``"mel"``: how the frequency axis is drawn (Hz labels either way).
        offset: seconds of the first frame in the recording (only for the default time axis).
        alpha: largest map opacity (reached where the map is 1).
        cmap: colormap of the map.
        title: figure title.
        contours: draw map contours at 0.5 and 0.8.
    """
    sp = as_array(spec)
    if sp is None or sp.ndim not in (2, 3):
        raise InputError(f"plot_spectrogram: spec must be (F, T) or (C, F, T), got "
                         f"{None if sp is None else tuple(sp.shape)}")
    sp = sp[0] if sp.ndim == 3 else sp
    n_f, n_t = sp.shape
    m = np.clip(np.nan_to_num(resize_map(as_array(cam), (n_f, n_t))), 0, 1)
    scale = (freq_scale or "linear").lower()
    if scale not in ("linear", "log", "mel"):
        raise InputError(f"plot_spectrogram: freq_scale must be 'linear', 'log' or 'mel', got {freq_scale!r}")
    notes = []
    f = None if freqs is None else np.asarray(freqs, dtype=np.float64).reshape(-1)
    t = None if times is None else np.asarray(times, dtype=np.float64).reshape(-1)
    if fs:
        df, dt = spectrogram_axes(n_f, n_t, fs, hop, offset)
        if f is None and scale == "linear":
            f = df
            notes.append(f"frequency axis assumed linear 0..{fs / 2:g} Hz")
        if t is None:
            t = dt
            notes.append(f"time axis assumed hop {hop or max(1, 2 * (n_f - 1) // 4)} samples at {fs:g} Hz")
    for name, v, n in (("freqs", f, n_f), ("times", t, n_t)):
        if v is not None and v.size != n:
            raise InputError(f"plot_spectrogram: {name} has {v.size} values but the spectrogram has {n} along it")
    f_label = "frequency (Hz)" if f is not None else f"frequency bin ({scale})"
    t_label = "time (s)" if t is not None else "frame"
    f = f if f is not None else np.arange(n_f, dtype=np.float64)
    t = t if t is not None else np.arange(n_t, dtype=np.float64)
    if f[0] > f[-1]:  # rows stored from high to low: flip so that frequency goes up
        f, sp, m = f[::-1], sp[::-1], m[::-1]
    fe, te = _edges(f), _edges(t)

    fig = new_figure(10, 4.6)
    fig.set_layout_engine("constrained")
    ax = fig.add_subplot()
    finite = sp[np.isfinite(sp)]
    lo, hi = (np.percentile(finite, [1, 99.5]) if finite.size else (0.0, 1.0))
    ax.pcolormesh(te, fe, sp, cmap="gray", vmin=lo, vmax=hi if hi > lo else lo + 1, shading="flat", rasterized=True)
    rgba = colormaps[cmap](m)
    rgba[..., 3] = alpha * m
    ax.pcolormesh(te, fe, rgba, shading="flat", rasterized=True)
    if contours and float(m.max()) > float(m.min()):
        ax.contour(t, f, m, levels=[0.5, 0.8], cmap=cmap, vmin=0, vmax=1, linewidths=1.1)
    if f_label.startswith("frequency (Hz)"):
        if scale == "log":
            ax.set_yscale("log")
            ax.set_ylim(max(fe[0], fe[1] / 2 if fe[1] > 0 else 1.0), fe[-1])
        elif scale == "mel":
            ax.set_yscale("function", functions=(_hz_to_mel, _mel_to_hz))
            ax.set_ylim(max(fe[0], 0.0), fe[-1])
    ax.set_xlabel(t_label)
    ax.set_ylabel(f_label)
    map_colorbar(fig, ScalarMappable(Normalize(0, 1), cmap), ax=ax, fraction=0.04, pad=0.01)
    head = (title + "\n") if title else ""
    head += f"spectrogram in greys, map in colour (opacity up to {alpha:g}, contours 0.5 and 0.8)"
    if notes:
        head += "\n" + "; ".join(notes)
    fig.suptitle(head, fontsize=9)
    note_constant_map(fig, m)
    return fig
