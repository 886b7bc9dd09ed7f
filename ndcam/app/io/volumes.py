"""Volumes: NIfTI through nibabel (in the file's dtype, size checked before allocation); maps written back as NIfTI on
the input's grid with the input's whole header. DICOM (series folders and multi-frame files) is read in :mod:`.dicom`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ...core.errors import InputError

__all__ = ["read_nifti", "write_nifti", "DEFAULT_MAX_BYTES", "human_bytes"]

DEFAULT_MAX_BYTES = 2 * 1024**3


def human_bytes(n: float) -> str:
    """``1.0 GiB``-style size."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


def _check_size(path: str, shape: tuple[int, ...], itemsize: int, dtype: Any, max_bytes: int) -> None:
    voxels = int(np.prod(shape, dtype=np.int64))
    decoded = voxels * max(4, itemsize)
    if decoded > max_bytes:
        raise InputError(f"{path!r}: the header promises {'x'.join(map(str, shape))} {dtype} voxels = "
                         f"{human_bytes(decoded)} decoded (float32), more than the limit {human_bytes(max_bytes)}; "
                         f"raise it with --max-bytes {decoded} (or crop/downsample the volume first)")


def read_nifti(path: str, *, max_bytes: int = DEFAULT_MAX_BYTES, volume_index: int | None = None,
               volumes_as: str = "channels") -> tuple[np.ndarray, dict]:
    """Read a NIfTI file into ``(N, C, X, Y, Z)`` float32, as stored (no reorientation).

    The size is checked from the header (shape x dtype) before any voxel is read; the data are read in the file's
    dtype (``dataobj.get_unscaled``) and only then scaled (``scl_slope``/``scl_inter``) in float32. A 4D file becomes
    ``C = T`` channels of one sample (``volumes_as="channels"``, default), ``N = T`` samples (``"batch"``), or the
    single volume ``volume_index``.

    Returns:
        ``(x, facts)`` with ``facts = {"affine", "header", "zooms", "t_zoom"}``.
    """
    try:
        import nibabel as nib
    except ImportError as err:  # pragma: no cover - optional dependency
        raise InputError("reading NIfTI needs the optional package nibabel (pip install 'ndcam[formats]')") from err
    img: Any = nib.load(path)
    hdr = img.header
    shape = tuple(int(s) for s in img.shape)
    dtype = hdr.get_data_dtype()
    if len(shape) > 4 or len(shape) < 3:
        raise InputError(f"{path!r} has shape {shape}; ndcam reads 3D volumes or 4D series (X, Y, Z[, T])")
    if len(shape) == 4 and volume_index is not None:
        if not -shape[3] <= volume_index < shape[3]:
            raise InputError(f"--volume-index {volume_index} is out of range for {shape[3]} volumes in {path!r}")
        read_shape: tuple[int, ...] = shape[:3]
    else:
        read_shape = shape
    _check_size(path, read_shape, dtype.itemsize, dtype, max_bytes)
    proxy = img.dataobj
    if hasattr(proxy, "get_unscaled"):
        slope, inter = getattr(proxy, "slope", 1.0), getattr(proxy, "inter", 0.0)
        if len(shape) == 4 and volume_index is not None:
            raw = np.asanyarray(_unscaled_slice(proxy, volume_index))
        else:
            raw = np.asanyarray(proxy.get_unscaled())
        vol = raw.astype(np.float32)
        if slope not in (None, 1.0) and np.isfinite(slope):
            vol *= np.float32(slope)
        if inter not in (None, 0.0) and np.isfinite(inter):
            vol += np.float32(inter)
    else:  # an in-memory image
        vol = np.asarray(proxy, dtype=np.float32)
        if len(shape) == 4 and volume_index is not None:
            vol = vol[..., volume_index]
    zooms = tuple(float(z) for z in hdr.get_zooms())
    if vol.ndim == 3:
        x = vol[None, None]
    elif volumes_as == "batch":
        x = np.moveaxis(vol, -1, 0)[:, None]
    elif volumes_as == "channels":
        x = np.moveaxis(vol, -1, 0)[None]
    else:
        raise InputError(f"--volumes-as must be channels or batch, got {volumes_as!r}")
    facts = {"affine": np.asarray(img.affine, dtype=np.float64), "header": hdr.copy(), "zooms": zooms[:3],
             "t_zoom": zooms[3] if len(zooms) > 3 else None, "dtype": str(dtype)}
    return np.ascontiguousarray(x, dtype=np.float32), facts


def _unscaled_slice(proxy: Any, index: int) -> np.ndarray:
    """One volume of a 4D proxy in the file's dtype (nibabel reads only that part of an uncompressed file)."""
    if hasattr(proxy, "_get_unscaled"):
        return proxy._get_unscaled((Ellipsis, index))
    return np.asanyarray(proxy.get_unscaled())[..., index]  # pragma: no cover - older nibabel


def write_nifti(maps: np.ndarray, facts: dict, path: Path) -> None:
    """Write maps ``(N[, K], X, Y, Z)`` as float32 NIfTI on the input's grid with the input's header (affine, qform and
    sform codes, xyzt units, zooms). One 3D map for ``N*K == 1``, else the maps stacked on the 4th axis.
    """
    import nibabel as nib

    m = np.asarray(maps, dtype=np.float32)
    vol = m.reshape(-1, *m.shape[-3:])
    data = vol[0] if vol.shape[0] == 1 else np.moveaxis(vol, 0, -1)
    hdr = facts.get("header")
    if hdr is None:  # DICOM or a plain affine: build a header in scanner space, millimetres
        img = nib.Nifti1Image(data, facts["affine"])
        img.set_qform(facts["affine"], code=1)
        img.set_sform(facts["affine"], code=1)
        img.header.set_xyzt_units("mm", "sec")
    else:
        hdr = hdr.copy()
        qform, qcode = hdr.get_qform(coded=True)
        sform, scode = hdr.get_sform(coded=True)
        img = nib.Nifti1Image(data, None, hdr)
        img.header.set_data_dtype(np.float32)
        img.header.set_slope_inter(np.nan, np.nan)
        img.set_qform(qform if qform is not None else facts["affine"], code=int(qcode))
        img.set_sform(sform if sform is not None else facts["affine"], code=int(scode))
        zooms = list(facts["zooms"])
        if data.ndim == 4:
            zooms.append(facts.get("t_zoom") or 1.0)
        img.header.set_zooms(zooms)
    img.header["cal_min"], img.header["cal_max"] = 0, 0
    nib.save(img, str(path))
