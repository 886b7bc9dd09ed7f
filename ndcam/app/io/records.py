"""Long recordings: WFDB records (and annotations) through wfdb, and cutting a recording into windows.

``--window SECONDS [--stride SECONDS]`` cuts ``(C, L)`` into windows that form the batch, starting at 0, stride
(default: the window) apart; a last window that would run past the end is left out. With WFDB annotations,
``--around SYMBOLS`` centres one window on each annotated beat of those symbols; a window that would cross the
record's edge is skipped (``edge="skip"``, default) or zero-padded (``edge="pad"``).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from ...core.errors import InputError

__all__ = ["read_wfdb", "cut_windows", "beat_windows"]


def _pick_leads(names: list[str], leads: list[str] | None) -> list[int] | None:
    if not leads:
        return None
    idx = []
    for lead in leads:
        if lead in names:
            idx.append(names.index(lead))
        elif lead.lstrip("-").isdigit() and -len(names) <= int(lead) < len(names):
            idx.append(int(lead) % len(names))
        else:
            raise InputError(f"--leads: no lead {lead!r}; the record has {names} (give names or indices 0..{len(names) - 1})")
    return idx


def read_wfdb(path: str, *, leads: list[str] | None = None, annotations: str | None = None) -> tuple[np.ndarray, dict]:
    """Read a WFDB record (give its ``.hea`` file) into ``(leads, samples)`` float32 physical units.

    Returns:
        ``(signal, facts)``; facts hold ``fs``, ``channels`` (lead names), ``units`` (e.g. ``mV``) and, with
        ``annotations`` (an extension such as ``atr``), ``ann_samples`` and ``ann_symbols``.
    """
    try:
        import wfdb
    except ImportError as err:  # pragma: no cover - optional dependency
        raise InputError("reading WFDB records needs the optional package wfdb (pip install 'ndcam[formats]')") from err
    rec_name = str(Path(path).with_suffix(""))
    with warnings.catch_warnings():  # wfdb's own pandas deprecations are not the user's business
        warnings.filterwarnings("ignore", module=r"wfdb(\.|$)")
        head = wfdb.rdheader(rec_name)
        chans = _pick_leads(list(head.sig_name), leads)
        rec = wfdb.rdrecord(rec_name, channels=chans)
    sig = np.nan_to_num(np.asarray(rec.p_signal, dtype=np.float64).T).astype(np.float32)
    facts = {"fs": float(rec.fs), "channels": list(rec.sig_name), "units": list(rec.units)}
    if annotations:
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", module=r"wfdb(\.|$)")
                ann = wfdb.rdann(rec_name, annotations)
        except FileNotFoundError as err:
            raise InputError(f"no annotation file {rec_name}.{annotations} (--annotations {annotations})") from err
        facts["ann_samples"] = np.asarray(ann.sample, dtype=np.int64)
        facts["ann_symbols"] = list(ann.symbol)
    return np.ascontiguousarray(sig), facts


def cut_windows(sig: np.ndarray, fs: float, window: float, stride: float | None = None) -> tuple[np.ndarray, list[float]]:
    """Cut ``(C, L)`` into ``(N, C, W)`` windows of ``window`` seconds every ``stride`` seconds; returns the windows and
    their start times (s).
    """
    w = int(round(window * fs))
    s = int(round((stride or window) * fs))
    if w < 1 or s < 1:
        raise InputError(f"--window/--stride must be at least one sample long at {fs:g} Hz")
    if w > sig.shape[-1]:
        raise InputError(f"--window {window:g} s ({w} samples) is longer than the recording ({sig.shape[-1] / fs:g} s)")
    starts = np.arange(0, sig.shape[-1] - w + 1, s)
    return np.stack([sig[:, a:a + w] for a in starts]), [float(a / fs) for a in starts]


def beat_windows(sig: np.ndarray, fs: float, window: float, samples: np.ndarray, symbols: list[str],
                 around: list[str], edge: str = "skip") -> tuple[np.ndarray, list[float], list[dict]]:
    """One window of ``window`` seconds centred on each annotation whose symbol is in ``around``.

    The window starts at ``sample - W // 2`` (the beat sits at index ``W // 2``). Returns the windows ``(N, C, W)``,
    their start times (s, negative when padded at the start) and ``[{"symbol", "sample"}]`` per window.
    """
    if edge not in ("skip", "pad"):
        raise InputError(f"--edge must be skip or pad, got {edge!r}")
    w = int(round(window * fs))
    n = sig.shape[-1]
    wins, offsets, beats = [], [], []
    for smp, sym in zip(samples, symbols):
        if sym not in around:
            continue
        a = int(smp) - w // 2
        if a < 0 or a + w > n:
            if edge == "skip":
                continue
            win = np.zeros((sig.shape[0], w), dtype=sig.dtype)
            lo, hi = max(a, 0), min(a + w, n)
            win[:, lo - a:hi - a] = sig[:, lo:hi]
        else:
            win = sig[:, a:a + w]
        wins.append(win)
        offsets.append(float(a / fs))
        beats.append({"symbol": sym, "sample": int(smp)})
    if not wins:
        found = sorted(set(symbols))
        raise InputError(f"--around {','.join(around)}: no annotated beat of those symbols"
                         f"{' fits a whole window' if any(s in around for s in symbols) else ''}; the annotations "
                         f"hold {found}")
    return np.stack(wins), offsets, beats
