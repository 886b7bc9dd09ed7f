"""Pictures for every rank: signal view (1D), image overlay (2D), orthogonal slices through the peak (3D).

Every function returns a matplotlib ``Figure`` (the Agg backend is used when no display is set) and never shows it;
save it with ``fig.savefig("map.png")``. Depends on nothing of ndcam but plain tensors/arrays.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["plot_signal", "plot_image", "plot_spectrogram", "plot_volume", "plot_montage", "plot_explanation",
           "plot_grid"]


def _np(t: Any) -> np.ndarray:
    if t is None:
        return None
    if hasattr(t, "detach"):
        t = t.detach().float().cpu().numpy()
    return np.asarray(t, dtype=np.float32)


def _plt():
    import matplotlib

    if matplotlib.get_backend().lower() not in ("agg", "module://matplotlib_inline.backend_inline"):
        try:
            matplotlib.use("Agg", force=False)
        except Exception:  # pragma: no cover - a backend already in use is fine
            pass
    import matplotlib.pyplot as plt

    return plt


def plot_signal(signal: Any, cam: Any, *, fs: float | None = None, leads: list[str] | None = None,
                cmap: str = "jet", title: str | None = None, max_leads: int = 12):
    """Stacked leads ``(C, L)`` with the map ``(L,)`` as a heat band behind each lead.

    Args:
        signal: ``(C, L)`` or ``(L,)`` signal.
        cam: ``(L,)`` map in ``[0, 1]``.
        fs: sampling rate in Hz (time axis in seconds when given, else samples).
        leads: lead names.
        cmap: colormap of the heat band.
        title: figure title.
        max_leads: draw at most this many leads.
    """
    plt = _plt()
    sig = _np(signal)
    sig = sig[None] if sig.ndim == 1 else sig
    cam = _np(cam).reshape(-1)
    c = min(sig.shape[0], max_leads)
    t = np.arange(sig.shape[1]) / fs if fs else np.arange(sig.shape[1])
    fig, axes = plt.subplots(c, 1, figsize=(10, 1.2 + 1.1 * c), sharex=True, squeeze=False)
    for i in range(c):
        ax = axes[i, 0]
        lo, hi = float(sig[i].min()), float(sig[i].max())
        pad = 0.05 * (hi - lo + 1e-9)
        ax.imshow(cam[None, :], aspect="auto", cmap=cmap, vmin=0, vmax=1, alpha=0.55,
                  extent=(t[0], t[-1], lo - pad, hi + pad), origin="lower")
        ax.plot(t, sig[i], color="black", lw=0.8)
        ax.set_ylabel(leads[i] if leads and i < len(leads) else f"ch {i}", rotation=0, ha="right", va="center")
        ax.set_yticks([])
    axes[-1, 0].set_xlabel("time (s)" if fs else "sample")
    if title:
        axes[0, 0].set_title(title)
    fig.tight_layout()
    return fig


def plot_image(image: Any, cam: Any, *, alpha: float = 0.5, cmap: str = "jet", title: str | None = None,
               colorbar: bool = True):
    """Overlay of the map ``(H, W)`` on an image ``(C, H, W)`` / ``(H, W)`` (grey or RGB, any value range)."""
    plt = _plt()
    img = _np(image)
    if img.ndim == 3:
        img = img[0] if img.shape[0] not in (3, 4) else np.moveaxis(img[:3], 0, -1)
    img = (img - img.min()) / (img.max() - img.min() + 1e-12)
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.imshow(img, cmap="gray" if img.ndim == 2 else None)
    im = ax.imshow(_np(cam), cmap=cmap, alpha=alpha, vmin=0, vmax=1)
    ax.set_axis_off()
    if colorbar:
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig


def plot_spectrogram(spec: Any, cam: Any, *, freqs: Any = None, times: Any = None, alpha: float = 0.45,
                     cmap: str = "jet", title: str | None = None):
    """Spectrogram ``(F, T)`` (or ``(C, F, T)``, first channel) with the map overlaid; frequency upwards, axes in Hz and
    seconds when ``freqs``/``times`` are given.
    """
    plt = _plt()
    sp = _np(spec)
    sp = sp[0] if sp.ndim == 3 else sp
    m = _np(cam)
    f = np.asarray(freqs) if freqs is not None else np.arange(sp.shape[0])
    t = np.asarray(times) if times is not None else np.arange(sp.shape[1])
    extent = (float(t[0]), float(t[-1]), float(f[0]), float(f[-1]))
    fig, ax = plt.subplots(figsize=(9, 4))
    ax.imshow(sp, origin="lower", aspect="auto", cmap="magma", extent=extent)
    im = ax.imshow(m, origin="lower", aspect="auto", cmap=cmap, alpha=alpha, vmin=0, vmax=1, extent=extent)
    ax.set_xlabel("time (s)" if times is not None else "frame")
    ax.set_ylabel("frequency (Hz)" if freqs is not None else "bin")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig


def plot_montage(volume: Any, cam: Any, *, axis: int = 0, n: int = 12, cols: int = 6, alpha: float = 0.5,
                 cmap: str = "jet", title: str | None = None):
    """Montage of ``n`` evenly spaced slices along ``axis`` with the map overlaid."""
    plt = _plt()
    vol = _np(volume)
    vol = vol[0] if vol.ndim == 4 else vol
    m = _np(cam)
    idx = np.unique(np.linspace(0, vol.shape[axis] - 1, min(n, vol.shape[axis])).round().astype(int))
    rows = int(np.ceil(len(idx) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(2 * cols, 2.1 * rows), squeeze=False)
    for k, ax in enumerate(axes.ravel()):
        ax.set_axis_off()
        if k < len(idx):
            ax.imshow(np.take(vol, idx[k], axis=axis), cmap="gray")
            ax.imshow(np.take(m, idx[k], axis=axis), cmap=cmap, alpha=alpha, vmin=0, vmax=1)
            ax.set_title(f"{idx[k]}", fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_volume(volume: Any, cam: Any, *, alpha: float = 0.5, cmap: str = "jet", title: str | None = None):
    """Three orthogonal slices through the map's peak, plus maximum-intensity projections of the map."""
    plt = _plt()
    vol = _np(volume)
    vol = vol[0] if vol.ndim == 4 else vol
    m = _np(cam)
    peak = np.unravel_index(int(np.argmax(m)), m.shape)
    fig, axes = plt.subplots(2, 3, figsize=(11, 7.5))
    names = ("axial (d)", "coronal (h)", "sagittal (w)")
    for ax_i in range(3):
        sl = [slice(None)] * 3
        sl[ax_i] = peak[ax_i]
        ax = axes[0, ax_i]
        ax.imshow(vol[tuple(sl)], cmap="gray")
        ax.imshow(m[tuple(sl)], cmap=cmap, alpha=alpha, vmin=0, vmax=1)
        ax.set_title(f"{names[ax_i]} slice {peak[ax_i]}")
        ax.set_axis_off()
        ax = axes[1, ax_i]
        ax.imshow(vol.max(axis=ax_i), cmap="gray")
        ax.imshow(m.max(axis=ax_i), cmap=cmap, alpha=alpha, vmin=0, vmax=1)
        ax.set_title(f"MIP along {names[ax_i].split()[1]}")
        ax.set_axis_off()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_explanation(exp: Any, x: Any = None, index: int = 0, k: int = 0, *, kind: str | None = None,
                     fs: float | None = None, units: Any = None, channels: Any = None, freqs: Any = None,
                     times: Any = None, freq_scale: str | None = None, affine: Any = None, offset: float = 0.0,
                     labels: Any = None, cmap: str = "jet", title: str | None = None, **kwargs: Any):
    """Pick the view by rank (or ``kind``) for sample ``index`` (and target ``k`` when there are K maps per sample).

    Keyword contract (what the command line passes from the input file): ``kind`` (``"signal"``, ``"image"``,
    ``"spectrogram"``, ``"volume"``), ``fs`` (Hz), ``units`` (per channel), ``channels`` (names), ``freqs``/``times``
    (spectrogram axes), ``freq_scale`` (``"linear"``, ``"log"``, ``"mel"``), ``affine`` (4x4 voxel-to-world),
    ``offset`` (seconds: the window's start in the recording), ``labels`` (class names), ``cmap``, ``title``.
    """
    maps = exp.maps[index]
    if exp.scores.ndim == 2:
        maps = maps[k]
    rank = exp.rank
    sample = None if x is None else x[index]
    target = "" if exp.targets is None else f" target {exp.targets[index].tolist()}"
    title = title if title is not None else f"{exp.method} on {', '.join(exp.layers)}{target}"
    if kind == "spectrogram":
        spec = sample if sample is not None else np.zeros(tuple(maps.shape))
        return plot_spectrogram(spec, maps, freqs=freqs, times=times, title=title, cmap=cmap)
    if rank == 1:
        sig = sample if sample is not None else _np(maps)[None]
        return plot_signal(sig, maps, title=title, fs=fs, leads=channels, cmap=cmap)
    if rank == 2:
        img = sample if sample is not None else np.zeros(tuple(maps.shape))
        return plot_image(img, maps, title=title, cmap=cmap)
    if rank == 3:
        vol = sample if sample is not None else np.zeros(tuple(maps.shape))
        return plot_volume(vol, maps, title=title, cmap=cmap)
    raise ValueError(f"no view for spatial rank {rank}; plot slices of exp.maps yourself")


def plot_grid(x: Any, maps: dict[str, Any], index: int = 0, *, cmap: str = "jet", fs: float | None = None):
    """Compare methods side by side for one sample: ``maps`` maps a method name to its ``(N, *spatial)`` maps."""
    plt = _plt()
    xs = _np(x)[index]
    rank = xs.ndim - 1
    names = list(maps)
    fig, axes = plt.subplots(len(names), 1, figsize=(10, 1.4 * len(names) + 0.6), squeeze=False) if rank == 1 else \
        plt.subplots(1, len(names), figsize=(3 * len(names), 3.3), squeeze=False)
    for i, name in enumerate(names):
        m = _np(maps[name])[index]
        ax = axes[i, 0] if rank == 1 else axes[0, i]
        if rank == 1:
            t = np.arange(xs.shape[-1]) / fs if fs else np.arange(xs.shape[-1])
            lo, hi = float(xs[0].min()), float(xs[0].max())
            ax.imshow(m[None], aspect="auto", cmap=cmap, vmin=0, vmax=1, alpha=0.55, extent=(t[0], t[-1], lo, hi),
                      origin="lower")
            ax.plot(t, xs[0], color="black", lw=0.8)
            ax.set_ylabel(name, rotation=0, ha="right", va="center")
            ax.set_yticks([])
        else:
            img = xs[0] if rank == 2 else xs[0].max(0)
            ax.imshow(img, cmap="gray")
            ax.imshow(m if rank == 2 else m.max(0), cmap=cmap, alpha=0.5, vmin=0, vmax=1)
            ax.set_title(name)
            ax.set_axis_off()
    fig.tight_layout()
    return fig
