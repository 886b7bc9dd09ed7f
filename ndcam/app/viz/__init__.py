"""Pictures of maps for every rank, each naming method, layer, target and score, with a colorbar and real units.

Views (each returns a :class:`matplotlib.figure.Figure`, never shows it, never touches pyplot or the backend):

- :func:`plot_signal` -- 1D leads on their own amplitude axes, the map as a colour band; ECG paper with voltage units;
  long recordings wrap, :func:`signal_pages` pages through them.
- :func:`plot_ecg12` -- a 12-lead ECG in the standard 3x4 layout with a rhythm strip, on ECG paper.
- :func:`plot_image` / :func:`overlay` -- 2D at native resolution; ``overlay`` returns the blended ``uint8`` pixels.
- :func:`plot_spectrogram` -- frequency up, Hz and seconds, map in colour over the spectrogram in greys.
- :func:`plot_volume` / :func:`plot_montage` -- anatomical planes through the peak in world orientation, projections.
- :func:`plot_explanation` -- picks the view for an :class:`ndcam.Explanation` (``exp.plot(x, ...)`` calls it).
- :func:`plot_grid` -- several methods side by side.
- :func:`plot_leads` -- every lead of a signal with its own map (lead-wise maps); :mod:`ndcam.viz.panels` draws the
  layer-sweep and channel pictures.

A constant map (e.g. all zero) gets a sentence on the figure and a :class:`ndcam.ConstantMapWarning`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from ...core.errors import InputError
from .common import as_array, constant_map_note, describe, layer_label, map_colorbar, new_figure, note_constant_map
from .ecg import STANDARD_LEADS, plot_ecg12, twelve_lead_order
from .image import overlay, plot_image, resize_map, to_display_image
from .panels import plot_leads
from .signal import plot_signal, signal_pages
from .spectrogram import plot_spectrogram, spectrogram_axes
from .volume import plane_slice, plot_montage, plot_volume, to_ras, volume_planes

__all__ = ["plot_signal", "signal_pages", "plot_ecg12", "plot_image", "overlay", "plot_spectrogram", "plot_volume",
           "plot_montage", "plot_explanation", "plot_grid", "describe", "layer_label", "to_ras", "volume_planes",
           "plane_slice", "spectrogram_axes", "twelve_lead_order", "STANDARD_LEADS", "to_display_image",
           "resize_map", "constant_map_note", "note_constant_map", "plot_leads"]

KINDS = ("signal", "image", "spectrogram", "volume")


def plot_explanation(exp: Any, x: Any = None, index: int = 0, k: int = 0, *, kind: str | None = None,
                     fs: float | None = None, units: Any = None, channels: Any = None, freqs: Any = None,
                     times: Any = None, freq_scale: str | None = None, affine: Any = None, offset: float = 0.0,
                     labels: Sequence[str] | None = None, cmap: str = "jet", title: str | None = None,
                     **kwargs: Any) -> Figure:
    """Draw map ``k`` of sample ``index`` with the view that fits (``kind``, or by the input's rank).

    Args:
        exp: an :class:`ndcam.Explanation`.
        x: the explained input ``(N, C, *spatial)``; without it the map is drawn alone.
        index: sample.
        k: target, when there are K maps per sample.
        kind: ``"signal"``, ``"image"``, ``"spectrogram"`` or ``"volume"`` (default by rank 1/2/3).
        fs: sampling rate in Hz (signal time axis, ECG paper; spectrogram axes when ``freqs``/``times`` are absent).
        units: amplitude unit per channel (or one for all), e.g. ``"mV"``.
        channels: channel (lead) names; the 12 standard leads with ``fs`` give the 12-lead layout. ``leads=`` works too.
        freqs: spectrogram row frequencies in Hz.
        times: spectrogram frame times in s.
        freq_scale: ``"linear"``, ``"log"`` or ``"mel"`` frequency axis.
        affine: 4x4 voxel-to-world matrix (NIfTI RAS+) for volumes.
        offset: seconds of the window's start in a longer recording.
        labels: class names (the title names the target by them).
        cmap: colormap of the map.
        title: extra first line of the title (method, layer, target and score are always named).
        **kwargs: passed to the view (``alpha``, ``convention``, ``row_seconds``, ...).
    """
    if "leads" in kwargs:
        leads = kwargs.pop("leads")
        channels = channels if channels is not None else leads
    maps = exp.maps[index]
    if getattr(exp.scores, "ndim", 1) == 2:
        maps = maps[k]
    rank = exp.rank
    kind = kind or {1: "signal", 2: "image", 3: "volume"}.get(rank)
    if kind not in KINDS:
        raise InputError(f"no view for spatial rank {rank}; pass kind= one of {KINDS} or plot slices of exp.maps "
                         "yourself")
    desc = describe(exp, index, k, labels)
    head = f"{title}\n{desc}" if title else desc
    sample = None if x is None else as_array(x[index])
    m = as_array(maps)
    if kind == "signal":
        sig = sample if sample is not None else m.reshape(-1, m.shape[-1])[:1]
        if twelve_lead_order(channels) is not None and fs and sig.shape[0] == 12:
            return plot_ecg12(sig, m, fs=fs, channels=channels, units=units if units is not None else "mV",
                              offset=offset, cmap=cmap, title=head, **kwargs)
        return plot_signal(sig, m, fs=fs, channels=channels, units=units, offset=offset, cmap=cmap, title=head,
                           **kwargs)
    if kind == "spectrogram":
        spec = sample if sample is not None else np.zeros(m.shape, dtype=np.float32)
        return plot_spectrogram(spec, m, freqs=freqs, times=times, fs=fs, freq_scale=freq_scale, offset=offset,
                                cmap=cmap, title=head, **kwargs)
    if kind == "image":
        img = sample if sample is not None else np.zeros(m.shape, dtype=np.float32)
        return plot_image(img, m, cmap=cmap, title=head, **kwargs)
    vol = sample if sample is not None else np.zeros(m.shape, dtype=np.float32)
    return plot_volume(vol, m, affine=affine, cmap=cmap, title=head, **kwargs)


def plot_grid(x: Any, maps: dict[str, Any], index: int = 0, *, cmap: str = "jet", fs: float | None = None,
              title: str | None = None, alpha: float = 0.5) -> Figure:
    """Compare methods side by side for one sample: ``maps`` maps a method name to its ``(N, *spatial)`` maps.

    1D: one row per method (time in s with ``fs``); 2D: one overlay per method; 3D: maximum projections along array
    axis 0. Each panel names its method; one colorbar for all.
    """
    xs = as_array(x)[index]
    rank = xs.ndim - 1
    names = list(maps)
    if not names:
        raise InputError("plot_grid: maps is empty; pass {method name: (N, *spatial) maps}")
    if rank == 1:
        fig = new_figure(11, 1.3 * len(names) + 1.0)
        axes = fig.subplots(len(names), 1, squeeze=False, sharex=True)[:, 0]
    else:
        fig = new_figure(2.9 * len(names) + 0.9, 3.6)
        axes = fig.subplots(1, len(names), squeeze=False)[0]
    fig.set_layout_engine("constrained")
    for i, name in enumerate(names):
        m = as_array(maps[name])[index]
        ax = axes[i]
        if rank == 1:
            t = np.arange(xs.shape[-1]) / fs if fs else np.arange(xs.shape[-1])
            lo, hi = float(xs[0].min()), float(xs[0].max())
            pad = 0.05 * (hi - lo) + 1e-6
            band = m.reshape(-1, m.shape[-1])[0]
            ax.imshow(band[None], aspect="auto", cmap=cmap, vmin=0, vmax=1, alpha=0.55, origin="lower",
                      extent=(t[0], t[-1], lo - pad, hi + pad), interpolation="nearest")
            ax.plot(t, xs[0], color="black", lw=0.8)
            ax.set_ylabel(f"{name}\n(amplitude)", fontsize=8)
            ax.tick_params(labelsize=7)
        elif rank == 2:
            ax.imshow(overlay(xs, m, alpha=alpha, cmap=cmap), interpolation="nearest")
            ax.set_title(name, fontsize=9)
            ax.set_axis_off()
        else:
            ax.imshow(xs[0].max(0), cmap="gray")
            ax.imshow(resize_map(m, xs.shape[1:]).max(0), cmap=cmap, alpha=alpha, vmin=0, vmax=1)
            ax.set_title(f"{name}\n(max. projection, array axis 0)", fontsize=8)
            ax.set_axis_off()
        if constant_map_note(m):
            ax.text(0.5, 0.5, "constant map", transform=ax.transAxes, ha="center", va="center", fontsize=9,
                    bbox={"facecolor": "#fff3b0", "edgecolor": "#b08800"})
    if rank == 1:
        axes[-1].set_xlabel("time (s)" if fs else "sample", fontsize=8)
    map_colorbar(fig, ScalarMappable(Normalize(0, 1), colormaps[cmap]), ax=list(axes), fraction=0.03, pad=0.01)
    if title:
        fig.suptitle(title, fontsize=9)
    return fig

