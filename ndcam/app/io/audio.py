"""Audio through soundfile, resampling, and spectrograms with their frequency and time axes.

``soundfile`` decodes every PCM width (unsigned 8-bit centred, 16/24/32-bit) and float to float32 in ``[-1, 1)``;
channels stay channels: ``(channels, samples)``.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np

from ...core.errors import InputError

__all__ = ["read_audio", "resample", "spectrogram", "mel_filterbank"]


def read_audio(path: str) -> tuple[np.ndarray, float, dict]:
    """Read audio into ``(channels, samples)`` float32 and its sampling rate."""
    try:
        import soundfile as sf
    except ImportError as err:  # pragma: no cover - optional dependency
        raise InputError("reading audio needs the optional package soundfile (pip install 'ndcam[formats]')") from err
    data, fs = sf.read(path, dtype="float32", always_2d=True)
    info = sf.info(path)
    return np.ascontiguousarray(data.T), float(fs), {"subtype": info.subtype, "format": info.format}


def resample(sig: np.ndarray, fs: float, new_fs: float) -> np.ndarray:
    """Polyphase resampling (``scipy.signal.resample_poly``) along the last axis from ``fs`` to ``new_fs``."""
    from scipy.signal import resample_poly

    if new_fs <= 0:
        raise InputError(f"--resample must be a positive rate in Hz, got {new_fs}")
    ratio = Fraction(new_fs / fs).limit_denominator(1000)
    if ratio == 1:
        return sig
    return resample_poly(sig, ratio.numerator, ratio.denominator, axis=-1).astype(np.float32)


def _hz_to_mel(f):
    return 2595.0 * np.log10(1.0 + np.asarray(f, dtype=np.float64) / 700.0)


def _mel_to_hz(m):
    return 700.0 * (10.0 ** (np.asarray(m, dtype=np.float64) / 2595.0) - 1.0)


def mel_filterbank(freqs: np.ndarray, n_mels: int, fmin: float = 0.0, fmax: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Triangular filters on the HTK mel scale (``mel = 2595 log10(1 + f/700)``) over the STFT bins ``freqs``.

    Returns ``(weights (n_mels, F), centre frequencies (n_mels,) in Hz)``.
    """
    fmax = float(freqs[-1]) if fmax is None else fmax
    edges = _mel_to_hz(np.linspace(_hz_to_mel(fmin), _hz_to_mel(fmax), n_mels + 2))
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    f = np.asarray(freqs, dtype=np.float64)[None]
    up = (f - lo) / np.maximum(mid - lo, 1e-12)
    down = (hi - f) / np.maximum(hi - mid, 1e-12)
    return np.clip(np.minimum(up, down), 0, None), edges[1:-1]


def spectrogram(sig: np.ndarray, fs: float, *, scale: str = "linear", window: str = "hann", nfft: int = 256,
                hop: int | None = None, db: bool = True, n_mels: int = 64) -> tuple[np.ndarray, dict]:
    """Power spectrogram ``(channels, F, T)`` of ``(channels, samples)``, with its axes.

    Args:
        sig: waveform ``(channels, samples)``.
        fs: sampling rate (Hz).
        scale: frequency axis: ``"linear"`` (STFT bins), ``"log"`` (bins resampled onto ``nfft//2+1`` log-spaced
            frequencies from the first non-zero bin), ``"mel"`` (``n_mels`` HTK mel bands).
        window: scipy window name.
        nfft: segment length (samples, also the FFT length).
        hop: hop between segments (default ``nfft // 4``).
        db: ``10 log10(power + 1e-10)`` when true, power otherwise.
        n_mels: number of mel bands.

    Returns:
        ``(spec, axes)`` with ``axes = {"freqs": Hz per row, "times": s per column (segment centres), "freq_scale"}``.
    """
    from scipy.signal import spectrogram as sp

    if scale not in ("linear", "log", "mel"):
        raise InputError(f"--spectrogram must be linear, log or mel, got {scale!r}")
    nfft = min(int(nfft), sig.shape[-1])
    hop = int(hop) if hop else max(1, nfft // 4)
    if not 0 < hop <= nfft:
        raise InputError(f"--hop must be between 1 and --nfft ({nfft}), got {hop}")
    try:
        f, t, p = sp(sig.astype(np.float64), fs=fs, window=window, nperseg=nfft, noverlap=nfft - hop,
                     scaling="spectrum", mode="psd")
    except ValueError as err:
        raise InputError(f"cannot compute the spectrogram: {err}") from err
    if scale == "mel":
        w, f = mel_filterbank(f, n_mels)
        p = np.einsum("mf,cft->cmt", w, p)
    elif scale == "log":
        target = np.geomspace(max(f[1], 1e-3), f[-1], len(f))
        p = np.stack([np.stack([np.interp(target, f, p[c, :, j]) for j in range(p.shape[2])], 1)
                      for c in range(p.shape[0])])
        f = target
    out = 10.0 * np.log10(p + 1e-10) if db else p
    return out.astype(np.float32), {"freqs": np.asarray(f, dtype=np.float64), "times": np.asarray(t, dtype=np.float64),
                                    "freq_scale": scale}
