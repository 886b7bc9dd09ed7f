"""Reading models and inputs from files for the command line, and writing maps back.

Every format is decoded by the library made for it (optional extra ``pip install "ndcam[formats]"``): Pillow and,
for 16-bit colour PNGs, pypng (:mod:`.images`), soundfile (:mod:`.audio`), nibabel (:mod:`.volumes`), pydicom
(:mod:`.dicom`), wfdb (:mod:`.records`).
:func:`load_input` gives ``(x, info)`` with ``x`` float32 ``(N, C, *spatial)`` and an :class:`InputInfo` that carries
what pictures and written maps need (sampling rate, units, axes, affine and header, window offsets).

* ``.npy`` / ``.npz`` (key ``x`` or the only array) / ``.pt`` (a tensor): arrays with 2 axes are one sample
  ``(C, L)``; with 3 or more axes a batch ``(N, C, *spatial)``, unless ``single=True``;
* images -> ``(1, C, H, W)`` (see :mod:`ndcam.io.images`: palette through the palette, alpha dropped, 8-bit / 255,
  16-bit / 65535 (16-bit colour PNGs at full precision through the optional pypng), EXIF orientation applied);
* WAV/FLAC/OGG audio -> ``(1, channels, samples)`` in ``[-1, 1)``, or a spectrogram ``(1, channels, F, T)``;
* NIfTI -> ``(1, 1, X, Y, Z)`` as stored (4D: the 4th axis as channels, or one volume, or a batch); a folder of DICOM
  slices, or one DICOM file (enhanced multi-frame, RT Dose grid, or one slice) -> ``(1, 1, slices, rows, columns)``
  (see :mod:`ndcam.io.dicom`; ``volume_index`` picks one volume of a file that holds several);
* WFDB records (give the ``.hea`` file) -> ``(1, leads, samples)`` in the record's units;
* long recordings (WFDB, audio, 2-axis arrays with ``fs``) can be cut into windows (``window``/``stride``) or
  beat-centred windows (``around`` with WFDB ``annotations``) that form the batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ...core.errors import InputError
from .models import check_pt2, import_object, load_model, quiet_torch
from .volumes import DEFAULT_MAX_BYTES

__all__ = ["InputInfo", "ReadOptions", "load_model", "load_input", "save_maps", "check_pt2", "import_object"]

IMAGE_EXT = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp"}
DICOM_EXT = {".dcm", ".dicom", ".ima"}
AUDIO_EXT = {".wav", ".flac", ".ogg", ".aiff", ".aif"}


@dataclass
class InputInfo:
    """What was read, for pictures and for writing maps back.

    Attributes:
        kind: the view: ``"signal"``, ``"image"``, ``"spectrogram"`` or ``"volume"``.
        path: the source path.
        source: the format (``"array"``, ``"image"``, ``"audio"``, ``"nifti"``, ``"dicom"``, ``"wfdb"``).
        fs: sampling rate (Hz) of signals.
        channels: channel / lead names.
        units: physical unit per channel (e.g. ``"mV"``).
        freqs, times: spectrogram axes (Hz per row, s per column); ``freq_scale`` ``"linear"``/``"log"``/``"mel"``.
        affine: 4x4 voxel-to-world (RAS, mm) of volumes; ``header``: the NIfTI header (maps are written with it).
        zooms: voxel size (mm); ``t_zoom``: the 4th-axis step of a 4D NIfTI.
        offsets: start (s) of each batch sample in the recording (windows), one per sample.
        beats: per batch sample ``{"symbol", "sample"}`` of the annotated beat it is centred on.
        labels: class names; ``cmap``: colormap name (both set by the command line).
        notes: what reading did that a user should know (alpha dropped, resampled, ...).
    """

    kind: str
    path: str
    source: str = "array"
    fs: float | None = None
    channels: list[str] | None = None
    units: list[str] | None = None
    freqs: np.ndarray | None = None
    times: np.ndarray | None = None
    freq_scale: str | None = None
    affine: np.ndarray | None = None
    header: Any = None
    zooms: tuple | None = None
    t_zoom: float | None = None
    offsets: list[float] | None = None
    beats: list[dict] | None = None
    labels: list[str] | None = None
    cmap: str | None = None
    notes: list[str] = field(default_factory=list)
    extra: dict = field(default_factory=dict)

    def plot_kwargs(self, index: int = 0) -> dict:
        """The keywords of :func:`ndcam.viz.plot_explanation` this input knows, for batch sample ``index``."""
        kw: dict[str, Any] = {"kind": self.kind}
        for key in ("fs", "units", "channels", "freqs", "times", "freq_scale", "affine", "labels", "cmap"):
            val = getattr(self, key)
            if val is not None:
                kw[key] = val
        if self.offsets is not None and index < len(self.offsets):
            kw["offset"] = float(self.offsets[index])
        return kw


@dataclass
class ReadOptions:
    """How :func:`load_input` reads and prepares an input (the ``ndcam explain`` flags of the same names)."""

    single: bool = False
    channels: int | None = None
    resize: tuple[int, ...] | None = None
    mean: list[float] | None = None
    std: list[float] | None = None
    preprocess: Callable | str | None = None
    spectrogram: str | None = None
    stft_window: str = "hann"
    nfft: int = 256
    hop: int | None = None
    db: bool = True
    n_mels: int = 64
    resample: float | None = None
    fs: float | None = None
    window: float | None = None
    stride: float | None = None
    annotations: str | None = None
    around: list[str] | None = None
    edge: str = "skip"
    leads: list[str] | None = None
    volume_index: int | None = None
    volumes_as: str = "channels"
    max_bytes: int = DEFAULT_MAX_BYTES


def _as_batch(arr: np.ndarray, single: bool) -> np.ndarray:
    a = np.asarray(arr)
    if a.dtype.kind not in "biuf":
        raise InputError(f"an input array must be numeric, got dtype {a.dtype}")
    if a.ndim < 2:
        raise InputError(f"an input array needs at least 2 axes (C, L), got shape {a.shape}")
    if a.ndim == 2 or single:
        a = a[None]
    return a.astype(np.float32, copy=False)


def _read_array(p: Path, single: bool) -> np.ndarray:
    name = p.name.lower()
    if name.endswith(".npy"):
        return _as_batch(np.load(p, allow_pickle=False), single)
    if name.endswith(".npz"):
        with np.load(p, allow_pickle=False) as z:
            keys = list(z.keys())
            key = "x" if "x" in keys else (keys[0] if len(keys) == 1 else None)
            if key is None:
                raise InputError(f"{str(p)!r} holds arrays {keys}; name the input 'x'")
            return _as_batch(z[key], single)
    with quiet_torch():
        obj = torch.load(p, map_location="cpu", weights_only=True)
    if isinstance(obj, dict) and "x" in obj:
        obj = obj["x"]
    if not isinstance(obj, torch.Tensor):
        raise InputError(f"{str(p)!r} does not hold a tensor (or a dict with key 'x')")
    return _as_batch(obj.float().numpy(), single)


def _kind_for_rank(rank: int) -> str:
    return {1: "signal", 2: "image", 3: "volume"}.get(rank, "array")


def _windows(sig: np.ndarray, info: InputInfo, opt: ReadOptions, facts: dict | None = None) -> np.ndarray:
    """``(C, L)`` -> ``(N, C, W)`` windows (or ``(1, C, L)``), recording offsets and beats in ``info``."""
    from .records import beat_windows, cut_windows

    if opt.around:
        if not (facts and "ann_samples" in facts):
            raise InputError("--around needs WFDB annotations: give a .hea record and --annotations EXT (e.g. atr)")
        if not opt.window:
            raise InputError("--around needs --window SECONDS (the length of each beat-centred window)")
        x, info.offsets, info.beats = beat_windows(sig, float(info.fs or 0), opt.window, facts["ann_samples"],
                                                   facts["ann_symbols"], opt.around, opt.edge)
        return x
    if opt.window:
        if not info.fs:
            raise InputError("--window needs the sampling rate: give --fs HZ for arrays")
        x, info.offsets = cut_windows(sig, info.fs, opt.window, opt.stride)
        return x
    info.offsets = [0.0]
    return sig[None]


def load_input(path: str, options: ReadOptions | None = None, **kw: Any) -> tuple[torch.Tensor, InputInfo]:
    """Read an input file (see the module docstring) into ``(N, C, *spatial)`` float32 and its :class:`InputInfo`.

    Args:
        path: the file (or a folder of DICOM slices).
        options: a :class:`ReadOptions`.
        **kw: fields of :class:`ReadOptions` that override ``options`` (``single=True``, ``spectrogram="mel"``, ...).
    """
    opt = ReadOptions(**{**(options.__dict__ if options else {}), **kw})
    if opt.spectrogram is True:
        opt.spectrogram = "linear"
    elif opt.spectrogram is False:
        opt.spectrogram = None
    p = Path(path)
    name = p.name.lower()
    if not p.exists():
        raise InputError(f"input file {path!r} does not exist")
    try:
        x, info = _read(p, name, opt)
    except InputError:
        raise
    except Exception as err:
        msg = str(err).splitlines()[0] if str(err) else ""
        raise InputError(f"cannot read {path!r}: {type(err).__name__}: {msg}") from err
    x = _prepare(x, info, opt)
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)), info


def _source_of(p: Path, name: str) -> str | None:
    if p.is_dir():
        return "dicom"
    if name.endswith((".npy", ".npz", ".pt", ".pth")):
        return "array"
    if p.suffix.lower() in IMAGE_EXT:
        return "image"
    if p.suffix.lower() in AUDIO_EXT:
        return "audio"
    if name.endswith((".nii", ".nii.gz")):
        return "nifti"
    if name.endswith(".hea"):
        return "wfdb"
    if p.suffix.lower() in DICOM_EXT or (p.is_file() and _is_dicom(p)):
        return "dicom"
    return None


def _is_dicom(p: Path) -> bool:
    from .dicom import is_dicom_file

    return is_dicom_file(p)


# option -> the sources it applies to (anything else is refused rather than silently ignored)
_APPLIES = {
    "spectrogram": ("audio",), "resample": ("audio",), "fs": ("array",), "window": ("array", "audio", "wfdb"),
    "stride": ("array", "audio", "wfdb"), "around": ("wfdb",), "annotations": ("wfdb",), "leads": ("wfdb",),
    "volume_index": ("nifti", "dicom"), "single": ("array",),
}


def _check_applies(source: str | None, opt: ReadOptions, path: str) -> None:
    if source is None:
        return
    for key, sources in _APPLIES.items():
        val = getattr(opt, key)
        if val is not None and val is not False and source not in sources:
            flag = "--" + key.replace("_", "-")
            raise InputError(f"{flag} does not apply to {path!r} ({source} input); it is for "
                             f"{' / '.join(sources)} inputs")
    if opt.volumes_as != "channels" and source != "nifti":
        raise InputError(f"--volumes-as does not apply to {path!r} ({source} input); it is for 4D NIfTI")
    if opt.stride and not opt.window:
        raise InputError("--stride needs --window SECONDS")


def _read(p: Path, name: str, opt: ReadOptions) -> tuple[np.ndarray, InputInfo]:
    path = str(p)
    source = _source_of(p, name)
    _check_applies(source, opt, path)
    if source == "dicom":
        from .dicom import read_dicom_file, read_dicom_series

        read = read_dicom_series if p.is_dir() else read_dicom_file
        x, facts = read(path, max_bytes=opt.max_bytes, volume_index=opt.volume_index)
        info = InputInfo("volume", path, "dicom", affine=facts["affine"], zooms=facts["zooms"], extra=facts)
        if facts.get("volumes", 1) > 1:
            info.notes.append(f"DICOM file with {facts['volumes']} volumes: explaining volume {opt.volume_index} "
                              f"({facts['volume']})")
        return x, info
    if name.endswith((".npy", ".npz", ".pt", ".pth")):
        x = _read_array(p, opt.single)
        info = InputInfo(_kind_for_rank(x.ndim - 2), path, "array", fs=opt.fs)
        if opt.window or opt.around:
            if x.shape[0] != 1 or x.ndim != 3:
                shape = x.shape[1:] if x.shape[0] == 1 else x.shape
                raise InputError(f"--window cuts one recording (C, L); {path!r} holds shape {shape}")
            x = _windows(x[0], info, opt)
        return x, info
    if p.suffix.lower() in IMAGE_EXT:
        from .images import read_image

        img, facts = read_image(path, opt.channels)
        info = InputInfo("image", path, "image", extra=facts)
        if facts.get("alpha"):
            info.notes.append(f"{facts['mode']} image: alpha channel dropped (colour values kept as stored)")
        if facts.get("precision"):
            info.notes.append(f"{facts['mode']} image read at {facts['precision']}: install pypng for full precision")
        return img[None], info
    if p.suffix.lower() in AUDIO_EXT:
        from .audio import read_audio, resample, spectrogram

        sig, fs, facts = read_audio(path)
        if opt.resample:
            sig = resample(sig, fs, opt.resample)
            fs = float(opt.resample)
        info = InputInfo("signal", path, "audio", fs=fs, channels=[f"ch {i}" for i in range(sig.shape[0])],
                         extra=facts)
        x = _windows(sig, info, opt)
        if opt.spectrogram:
            specs = []
            for w in x:
                s, axes = spectrogram(w, fs, scale=opt.spectrogram, window=opt.stft_window, nfft=opt.nfft, hop=opt.hop,
                                      db=opt.db, n_mels=opt.n_mels)
                specs.append(s)
            x = np.stack(specs)
            info.kind, info.freqs, info.times, info.freq_scale = "spectrogram", axes["freqs"], axes["times"], \
                axes["freq_scale"]
            info.units = ["dB" if opt.db else "power"] * x.shape[1]
        return x, info
    if name.endswith((".nii", ".nii.gz")):
        from .volumes import read_nifti

        x, facts = read_nifti(path, max_bytes=opt.max_bytes, volume_index=opt.volume_index, volumes_as=opt.volumes_as)
        info = InputInfo("volume", path, "nifti", affine=facts["affine"], header=facts["header"], zooms=facts["zooms"],
                         t_zoom=facts["t_zoom"], extra={"dtype": facts["dtype"]})
        if x.shape[1] > 1:
            info.notes.append(f"4D NIfTI: its {x.shape[1]} volumes are the channels of one sample "
                              f"(--volume-index I picks one, --volumes-as batch makes them samples)")
        return x, info
    if name.endswith(".hea"):
        from .records import read_wfdb

        sig, facts = read_wfdb(path, leads=opt.leads, annotations=opt.annotations)
        fs = facts["fs"]
        if opt.resample:
            raise InputError("--resample is for audio; WFDB records are explained at their own rate")
        info = InputInfo("signal", path, "wfdb", fs=fs, channels=facts["channels"], units=facts["units"])
        return _windows(sig, info, opt, facts), info
    raise InputError(f"unknown input type {p.suffix!r} for {path!r}; give .npy/.npz/.pt arrays, images (PNG/JPEG/TIFF), "
                     f"audio (WAV/FLAC), NIfTI (.nii/.nii.gz), DICOM (.dcm, or a folder of slices) or a WFDB header (.hea)")


def _prepare(x: np.ndarray, info: InputInfo, opt: ReadOptions) -> np.ndarray:
    """``--channels`` (non-image), ``--resize``, ``--mean``/``--std``, then ``--preprocess``."""
    if opt.channels is not None and info.source != "image":
        c = x.shape[1]
        if opt.channels == c:
            pass
        elif opt.channels == 1:
            x = x.mean(axis=1, keepdims=True)
            info.notes.append(f"{c} channels averaged into 1 (--channels 1)")
        elif c == 1:
            x = np.repeat(x, opt.channels, axis=1)
        else:
            raise InputError(f"--channels {opt.channels}: cannot turn {c} channels into {opt.channels}")
    if opt.resize:
        import torch.nn.functional as F

        spatial = x.shape[2:]
        size = tuple(opt.resize) * (len(spatial) if len(opt.resize) == 1 else 1)
        if len(size) != len(spatial):
            raise InputError(f"--resize {','.join(map(str, opt.resize))} has {len(size)} sizes for {len(spatial)} "
                             f"spatial axes {tuple(spatial)}")
        mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[len(spatial)]
        t = torch.from_numpy(np.ascontiguousarray(x))
        x = F.interpolate(t, size=size, mode=mode, align_corners=False, antialias=len(spatial) == 2).numpy()
        info.notes.append(f"resized from {tuple(spatial)} to {size}")
        if info.kind == "spectrogram" and info.freqs is not None and info.times is not None:
            info.freqs = np.interp(np.linspace(0, len(info.freqs) - 1, size[0]), np.arange(len(info.freqs)), info.freqs)
            info.times = np.interp(np.linspace(0, len(info.times) - 1, size[1]), np.arange(len(info.times)), info.times)
        if info.fs and len(spatial) == 1:
            info.fs = info.fs * size[0] / spatial[0]
    for name, vals in (("mean", opt.mean), ("std", opt.std)):
        if vals is not None and len(vals) not in (1, x.shape[1]):
            raise InputError(f"--{name} gives {len(vals)} values for {x.shape[1]} channels (give 1 or {x.shape[1]})")
    if opt.mean is not None or opt.std is not None:
        shape = (1, -1) + (1,) * (x.ndim - 2)
        mean = np.asarray(opt.mean if opt.mean is not None else [0.0], dtype=np.float32).reshape(shape)
        std = np.asarray(opt.std if opt.std is not None else [1.0], dtype=np.float32).reshape(shape)
        if (std == 0).any():
            raise InputError("--std values must not be 0")
        x = (x - mean) / std
    if opt.preprocess is not None:
        fn = import_object(opt.preprocess, "--preprocess") if isinstance(opt.preprocess, str) else opt.preprocess
        if not callable(fn):
            raise InputError(f"--preprocess {opt.preprocess!r} is not callable")
        out = fn(torch.from_numpy(np.ascontiguousarray(x)))
        x = (out.detach().cpu().float().numpy() if isinstance(out, torch.Tensor) else np.asarray(out, dtype=np.float32))
        if x.ndim < 3:
            raise InputError(f"--preprocess must return a batch (N, C, *spatial), got shape {x.shape}")
    return x


def save_maps(maps: torch.Tensor, info: InputInfo, out: Path) -> list[str]:
    """Write ``maps.npy`` (always) and, for NIfTI or DICOM inputs, ``maps.nii.gz`` on the input's grid with the
    input's header (affine, qform/sform codes, units, zooms; float32 data). Returns the file names written.
    """
    m = maps.detach().cpu().float().numpy()
    np.save(out / "maps.npy", m)
    written = ["maps.npy"]
    if info.source in ("nifti", "dicom") and m.ndim >= 4:
        from .volumes import write_nifti

        write_nifti(m, {"affine": info.affine, "header": info.header, "zooms": info.zooms or (1.0, 1.0, 1.0),
                        "t_zoom": info.t_zoom}, out / "maps.nii.gz")
        written.append("maps.nii.gz")
    return written
