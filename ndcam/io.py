"""Reading models and inputs from files for the command line, and writing maps back.

Models:

* ``package.module:factory`` (a callable returning an ``nn.Module``), with optional ``--weights`` (a state dict
  saved by ``torch.save``, or a checkpoint holding one under ``state_dict``/``model``);
* a ``torch.export`` archive (``.pt2``), unflattened so that its submodules keep their names and accept hooks;
* a TorchScript file is recognised and refused with an explanation: TorchScript modules cannot take forward hooks.

Inputs (``load_input``) give ``(x, info)`` with ``x`` float32 ``(N, C, *spatial)``:

* ``.npy`` / ``.npz`` (key ``x`` or the only array) / ``.pt`` (a tensor): arrays with 2 axes are one sample
  ``(C, L)``; with 3 or more axes a batch ``(N, C, *spatial)``, unless ``single=True`` (one sample ``(C, *spatial)``);
* PNG/JPEG images -> ``(1, C, H, W)`` in ``[0, 1]``;
* WAV audio -> waveform ``(1, channels, samples)`` or, with ``spectrogram=True``, log-power ``(1, channels, F, T)``;
* NIfTI ``.nii``/``.nii.gz`` (optional ``nibabel``) -> ``(1, 1, D, H, W)``; maps are written back with the same affine;
* WFDB records (optional ``wfdb``; give the ``.hea`` file) -> ``(1, leads, samples)`` with the sampling rate.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ._errors import InputError

__all__ = ["InputInfo", "load_model", "load_input", "save_maps"]

IMAGE_EXT = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}


@dataclass
class InputInfo:
    """What was read: kind (``array``, ``image``, ``audio``, ``spectrogram``, ``nifti``, ``wfdb``), sampling rate,
    channel names, NIfTI affine, and the source path.
    """

    kind: str
    path: str
    fs: float | None = None
    channels: list[str] | None = None
    affine: Any = None
    extra: dict = field(default_factory=dict)


def load_model(spec: str, weights: str | None = None, device: str = "cpu") -> nn.Module:
    """Load a model from ``package.module:factory`` (+ weights) or a ``torch.export`` archive (see module doc)."""
    path = Path(spec)
    if path.suffix == ".pt2" and path.exists():
        ep = torch.export.load(str(path))
        model = torch.export.unflatten(ep)
        _annotate_types(ep, model)
    elif path.exists():
        try:
            torch.jit.load(str(path), map_location="cpu")
        except Exception as err:
            raise InputError(f"cannot read model file {spec!r} ({type(err).__name__}); give a torch.export archive "
                             f"(.pt2) or package.module:factory with --weights") from err
        raise InputError(f"{spec!r} is a TorchScript model: TorchScript modules do not accept forward hooks, so no CAM "
                         f"can be read from their layers; export it with torch.export (.pt2) or pass "
                         f"package.module:factory with --weights")
    elif ":" in spec:
        mod_name, fn_name = spec.split(":", 1)
        try:
            factory = getattr(importlib.import_module(mod_name), fn_name)
        except (ImportError, AttributeError) as err:
            raise InputError(f"cannot import {spec!r}: {err}") from err
        model = factory()
        if not isinstance(model, nn.Module):
            raise InputError(f"{spec!r} returned {type(model).__name__}, not an nn.Module")
    else:
        raise InputError(f"model {spec!r} is neither an existing file (.pt2) nor package.module:factory")
    if weights:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        if isinstance(state, dict):
            for key in ("state_dict", "model"):
                if key in state and isinstance(state[key], dict):
                    state = state[key]
        try:
            model.load_state_dict(state)
        except Exception as err:
            raise InputError(f"weights {weights!r} do not fit the model: {str(err).splitlines()[0]}") from err
    return model.to(device).eval()


def _annotate_types(ep: Any, model: nn.Module) -> None:
    """Unflattened submodules lose their classes; keep the original class name (from the graph's module stack) as
    ``_ndcam_type`` so the automatic layer choice still recognizes convolutions.
    """
    for node in ep.graph.nodes:
        for fqn, type_name in (node.meta.get("nn_module_stack") or {}).values():
            try:
                sub = model.get_submodule(fqn) if fqn else None
            except AttributeError:
                continue
            if sub is not None:
                name = type_name if isinstance(type_name, str) else getattr(type_name, "__qualname__", str(type_name))
                sub._ndcam_type = name.rsplit(".", 1)[-1]


def _as_batch(arr: np.ndarray, single: bool) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(arr)).float()
    if t.ndim < 2:
        raise InputError(f"an input array needs at least 2 axes (C, L), got shape {tuple(t.shape)}")
    if t.ndim == 2 or single:
        t = t[None]
    return t.contiguous()


def load_input(path: str, *, single: bool = False, spectrogram: bool = False) -> tuple[torch.Tensor, InputInfo]:
    """Read an input file (see the module docstring) into ``(N, C, *spatial)`` float32."""
    p = Path(path)
    name = p.name.lower()
    if not p.exists():
        raise InputError(f"input file {path!r} does not exist")
    try:
        if name.endswith(".npy"):
            return _as_batch(np.load(p), single), InputInfo("array", path)
        if name.endswith(".npz"):
            with np.load(p) as z:
                keys = list(z.keys())
                key = "x" if "x" in keys else (keys[0] if len(keys) == 1 else None)
                if key is None:
                    raise InputError(f"{path!r} holds arrays {keys}; name the input 'x'")
                return _as_batch(z[key], single), InputInfo("array", path)
        if name.endswith(".pt") or name.endswith(".pth"):
            obj = torch.load(p, map_location="cpu", weights_only=True)
            if isinstance(obj, dict) and "x" in obj:
                obj = obj["x"]
            if not isinstance(obj, torch.Tensor):
                raise InputError(f"{path!r} does not hold a tensor (or a dict with key 'x')")
            return _as_batch(obj.numpy(), single), InputInfo("array", path)
        if p.suffix.lower() in IMAGE_EXT:
            from PIL import Image

            img = np.asarray(Image.open(p)).astype(np.float32)
            img = img / 255.0 if img.max() > 1 else img
            img = img[..., None] if img.ndim == 2 else img[..., :3]
            return torch.as_tensor(img).permute(2, 0, 1)[None].contiguous(), InputInfo("image", path)
        if name.endswith(".wav"):
            from scipy.io import wavfile

            fs, raw = wavfile.read(p)
            wav = raw.astype(np.float32)
            if np.issubdtype(raw.dtype, np.integer):
                wav /= float(np.iinfo(raw.dtype).max)
            wav = wav[:, None] if wav.ndim == 1 else wav
            sig = torch.as_tensor(wav.T)  # (channels, samples)
            if not spectrogram:
                return sig[None].contiguous(), InputInfo("audio", path, fs=float(fs))
            from scipy.signal import spectrogram as spec

            f, t, sxx = spec(sig.numpy(), fs=fs, nperseg=min(256, sig.shape[1]))
            logp = np.log10(sxx + 1e-10).astype(np.float32)
            return torch.as_tensor(logp)[None], InputInfo("spectrogram", path, fs=float(fs),
                                                          extra={"freqs": f.tolist(), "times": t.tolist()})
        if name.endswith(".nii") or name.endswith(".nii.gz"):
            try:
                import nibabel as nib
            except ImportError as err:
                raise InputError("reading NIfTI needs the optional package nibabel (pip install nibabel)") from err
            img = nib.load(str(p))
            vol = np.asarray(img.get_fdata(), dtype=np.float32)
            if vol.ndim == 4:
                vol = np.moveaxis(vol, -1, 0)  # channels last in NIfTI
            else:
                vol = vol[None]
            return torch.as_tensor(vol)[None].contiguous(), InputInfo("nifti", path, affine=img.affine)
        if name.endswith(".hea"):
            try:
                import wfdb
            except ImportError as err:
                raise InputError("reading WFDB records needs the optional package wfdb (pip install wfdb)") from err
            rec = wfdb.rdrecord(str(p.with_suffix("")))
            sig = np.nan_to_num(rec.p_signal.T.astype(np.float32))
            return torch.as_tensor(sig)[None].contiguous(), InputInfo("wfdb", path, fs=float(rec.fs),
                                                                      channels=list(rec.sig_name))
    except InputError:
        raise
    except Exception as err:
        raise InputError(f"cannot read {path!r}: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}") from err
    raise InputError(
        f"unknown input type {p.suffix!r} for {path!r}; give .npy/.npz/.pt arrays, PNG/JPEG images, WAV audio, "
        f"NIfTI (.nii/.nii.gz) or a WFDB header (.hea)"
    )


def save_maps(maps: torch.Tensor, info: InputInfo, out: Path) -> list[str]:
    """Write maps as ``maps.npy`` (always) and, for NIfTI inputs, ``maps.nii.gz`` with the input's affine."""
    written = []
    np.save(out / "maps.npy", maps.detach().cpu().numpy())
    written.append("maps.npy")
    if info.kind == "nifti":
        import nibabel as nib

        m = maps.detach().cpu().numpy()
        vol = m[0] if m.shape[0] == 1 else np.moveaxis(m, 0, -1)
        nib.save(nib.Nifti1Image(vol.astype(np.float32), info.affine), str(out / "maps.nii.gz"))
        written.append("maps.nii.gz")
    return written
