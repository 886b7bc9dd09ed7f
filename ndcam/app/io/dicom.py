"""DICOM through pydicom: a folder of classic slices, or one file, into ``(1, 1, slices, rows, columns)`` float32 and
its RAS affine.

One file may be

* an enhanced multi-frame image (Enhanced CT / MR / PET, ...): the geometry and rescaling of each frame come from its
  functional groups -- the frame's item of ``PerFrameFunctionalGroupsSequence``, else the one item of
  ``SharedFunctionalGroupsSequence`` (``PlanePositionSequence``, ``PlaneOrientationSequence``,
  ``PixelMeasuresSequence``, ``PixelValueTransformationSequence``);
* a classic multi-frame image whose frames are planes at ``GridFrameOffsetVector`` (RT Dose; ``DoseGridScaling``
  rescales);
* a classic single-frame image (one slice).

Every form gets the same geometry as a classic series: frames are sorted by ``ImagePositionPatient`` along the slice
normal (row x column direction of ``ImageOrientationPatient``) and must be evenly spaced; ``RescaleSlope`` /
``RescaleIntercept`` are applied per frame; the affine maps (slice, row, column) to DICOM's LPS patient space from the
first position, the mean step between positions and ``PixelSpacing`` (between rows, between columns), then flips x and
y to RAS as nibabel does. A file whose frames form several volumes -- several stacks, orientations, time points,
echoes or any other non-spatial dimension of its ``DimensionIndexSequence`` -- is refused with the list of volumes;
``volume_index`` (``--volume-index``) picks one. The decoded size is checked from the header (rows x columns x frames)
before any pixel is decoded.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...core.errors import InputError
from .volumes import DEFAULT_MAX_BYTES, _check_size

__all__ = ["read_dicom_series", "read_dicom_file", "is_dicom_file"]

# dimension index pointers that order frames in space (the rest tell volumes apart)
_SPATIAL = {0x00200032, 0x00209057, 0x00201041}  # ImagePositionPatient, InStackPositionNumber, SliceLocation
_GRID_FRAME_OFFSET_VECTOR = 0x3004000C
_IOP_TOL = 1e-4  # two orientations closer than this (direction cosines) are one


def _pydicom() -> Any:
    try:
        import pydicom
    except ImportError as err:  # pragma: no cover - optional dependency
        raise InputError("reading DICOM needs the optional package pydicom (pip install 'ndcam[formats]')") from err
    return pydicom


def is_dicom_file(path: Path) -> bool:
    """Whether ``path`` starts with the DICOM Part 10 preamble (128 bytes, then ``DICM``)."""
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"


def _floats(value: Any, n: int, what: str, where: str) -> np.ndarray:
    try:
        arr = np.asarray([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise InputError(f"{where}: {what} {value!r} is not {n} numbers") from err
    if arr.shape != (n,) or not np.isfinite(arr).all():
        raise InputError(f"{where}: {what} {value!r} is not {n} finite numbers")
    return arr


def _number(value: Any) -> float | None:
    if value is None or value == "":
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if np.isfinite(v) else None


def _from_groups(groups: list[Any], sequence: str, attr: str) -> Any:
    """``attr`` from the first functional-group item (per-frame first, then shared) whose ``sequence`` holds it."""
    for g in groups:
        seq = g.get(sequence) if g is not None else None
        if seq and attr in seq[0] and seq[0][attr].value not in (None, ""):
            return seq[0][attr].value
    return None


def _directions(iop: np.ndarray, where: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    row, col = iop[:3], iop[3:]
    if abs(np.linalg.norm(row) - 1) > 1e-3 or abs(np.linalg.norm(col) - 1) > 1e-3 or abs(row @ col) > 1e-3:
        raise InputError(f"{where}: ImageOrientationPatient {list(iop)} is not two orthogonal unit directions")
    return row, col, np.cross(row, col)


def _stack_geometry(where: str, positions: np.ndarray, iop: np.ndarray, spacing: tuple[float, float],
                    single_step: float) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """Sort slices along the normal and build the RAS affine of (slice, row, column).

    Args:
        where: the file or folder, for messages.
        positions: ``(S, 3)`` ImagePositionPatient of the slices, in any order.
        iop: the six direction cosines (row direction, column direction).
        spacing: PixelSpacing (between rows, between columns), mm.
        single_step: the slice step (mm) of a one-slice stack.

    Returns:
        ``(order, affine, zooms)``: the slice order (indices into ``positions``), the 4x4 affine, the voxel size.
    """
    row, col, normal = _directions(iop, where)
    dr, dc = spacing
    if not (dr > 0 and dc > 0):
        raise InputError(f"{where}: PixelSpacing {list(spacing)} must be positive")
    along = positions @ normal
    order = np.argsort(along, kind="stable")
    pos = positions[order]
    n = len(pos)
    if n > 1:
        gaps = np.diff(along[order])
        if gaps.min() <= 1e-3:
            k = int(np.argmin(gaps))
            raise InputError(f"{where}: two slices lie at the same position {list(np.round(pos[k], 4))} along the "
                             f"slice normal; the frames are not one volume (several volumes, echoes or time points "
                             f"without a dimension that tells them apart?)")
        step = (pos[-1] - pos[0]) / (n - 1)
        off = np.linalg.norm(pos - (pos[0] + np.arange(n)[:, None] * step), axis=1).max()
        if off > 0.01 * np.linalg.norm(step) + 1e-3:
            raise InputError(f"{where}: slices are not evenly spaced (gaps from {gaps.min():.4g} to {gaps.max():.4g} mm "
                             f"along the normal; missing slices, or several series in one?); one affine needs an even "
                             f"grid")
    else:
        step = normal * single_step
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1], lps[:3, 2], lps[:3, 3] = step, col * dr, row * dc, pos[0]
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps
    return order, affine, (float(np.linalg.norm(step)), float(dr), float(dc))


def _single_step(thickness: Any, between: Any) -> float:
    for v in (thickness, between):
        f = _number(v)
        if f is not None and f > 0:
            return f
    return 1.0


def read_dicom_series(folder: str, *, max_bytes: int = DEFAULT_MAX_BYTES,
                      volume_index: int | None = None) -> tuple[np.ndarray, dict]:
    """Read a folder of DICOM slices into ``(1, 1, S, R, C)`` float32 (slices, rows, columns) with its RAS affine.

    Slices are sorted by ``ImagePositionPatient`` along the slice normal and must be evenly spaced and share one
    orientation; ``RescaleSlope``/``RescaleIntercept`` are applied (see the module doc for the affine). A folder
    that holds one multi-frame (enhanced) file and no single slices is read as that file (:func:`read_dicom_file`).
    Files that are not DICOM (notes, DICOMDIR without an image) are skipped.
    """
    pydicom = _pydicom()
    files = sorted(p for p in Path(folder).iterdir() if p.is_file())
    heads, multi = [], []
    for p in files:
        try:
            ds = pydicom.dcmread(str(p), stop_before_pixels=True)
        except Exception:  # noqa: BLE001 - not a DICOM file (DICOMDIR, notes): skip it
            continue
        if "Rows" not in ds:  # no image (DICOMDIR, structured report, ...)
            continue
        if int(_number(ds.get("NumberOfFrames")) or 1) > 1 or "PerFrameFunctionalGroupsSequence" in ds:
            multi.append(p)
        elif "ImagePositionPatient" in ds and "ImageOrientationPatient" in ds:
            heads.append((p, ds))
    if multi and not heads and len(multi) == 1:
        return read_dicom_file(str(multi[0]), max_bytes=max_bytes, volume_index=volume_index)
    if multi:
        raise InputError(f"{folder!r} holds {len(multi)} multi-frame DICOM file(s) ({', '.join(p.name for p in multi[:3])}"
                         f"{', ...' if len(multi) > 3 else ''}) and {len(heads)} single slice(s); give one multi-frame "
                         f"file itself as the input")
    if not heads:
        raise InputError(f"{folder!r} holds no DICOM slices with ImagePositionPatient/ImageOrientationPatient")
    if volume_index is not None:
        raise InputError(f"--volume-index does not apply to {folder!r}: a folder of single slices is one volume")
    series = {str(getattr(ds, "SeriesInstanceUID", "")) for _, ds in heads}
    if len(series) > 1:
        raise InputError(f"{folder!r} holds {len(series)} DICOM series; put one series per folder")
    ds0 = heads[0][1]
    iop = _floats(ds0.ImageOrientationPatient, 6, "ImageOrientationPatient", str(heads[0][0]))
    for p, ds in heads:
        if np.abs(_floats(ds.ImageOrientationPatient, 6, "ImageOrientationPatient", str(p)) - iop).max() > _IOP_TOL:
            raise InputError(f"{folder!r}: {p.name} has ImageOrientationPatient {list(ds.ImageOrientationPatient)}, "
                             f"{heads[0][0].name} has {list(iop)}; one volume has one orientation")
    positions = np.stack([_floats(ds.ImagePositionPatient, 3, "ImagePositionPatient", str(p)) for p, ds in heads])
    spacing = _floats(ds0.get("PixelSpacing", [1.0, 1.0]), 2, "PixelSpacing", str(heads[0][0]))
    order, affine, zooms = _stack_geometry(folder, positions, iop, (spacing[0], spacing[1]),
                                           _single_step(ds0.get("SliceThickness"), ds0.get("SpacingBetweenSlices")))
    heads = [heads[i] for i in order]
    rows, cols = int(ds0.Rows), int(ds0.Columns)
    _check_size(folder, (len(heads), rows, cols), int(ds0.BitsAllocated) // 8, "DICOM", max_bytes)
    vol = np.empty((len(heads), rows, cols), dtype=np.float32)
    for k, (p, _) in enumerate(heads):
        ds = pydicom.dcmread(str(p))
        arr = ds.pixel_array
        if arr.shape != (rows, cols):
            raise InputError(f"{str(p)!r}: pixel array {arr.shape} is not one grey {rows}x{cols} slice like the others")
        slope = float(getattr(ds, "RescaleSlope", 1.0) or 1.0)
        inter = float(getattr(ds, "RescaleIntercept", 0.0) or 0.0)
        vol[k] = arr.astype(np.float32) * np.float32(slope) + np.float32(inter)
    facts = {"affine": affine, "header": None, "zooms": zooms, "t_zoom": None, "dtype": "DICOM", "frames": len(heads)}
    return vol[None, None], facts


@dataclass
class _Frame:
    index: int  # as stored
    ipp: np.ndarray | None
    iop: np.ndarray | None
    spacing: np.ndarray | None
    thickness: Any
    between: Any
    slope: float
    inter: float
    key: tuple  # the non-spatial dimension values


def _dimensions(ds: Any) -> tuple[list[int], list[str]]:
    """Positions (in ``DimensionIndexValues``) of the non-spatial dimensions and their names."""
    from pydicom.datadict import keyword_for_tag

    keep, names = [], []
    for j, item in enumerate(ds.get("DimensionIndexSequence") or []):
        pointer = item.get("DimensionIndexPointer")
        if pointer is not None and int(pointer) in _SPATIAL:
            continue
        keep.append(j)
        label = item.get("DimensionDescriptionLabel") or (keyword_for_tag(int(pointer)) if pointer is not None else "")
        names.append(str(label or f"dimension {j + 1}"))
    return keep, names


def _frames(ds: Any, where: str) -> tuple[list[_Frame], list[str]]:
    """Geometry, rescaling and dimension key of every frame (header only), and the names of the key's parts."""
    n = int(_number(ds.get("NumberOfFrames")) or 1)
    per = ds.get("PerFrameFunctionalGroupsSequence")
    shared_seq = ds.get("SharedFunctionalGroupsSequence")
    shared = shared_seq[0] if shared_seq else None
    if per is not None and len(per) != n:
        raise InputError(f"{where}: PerFrameFunctionalGroupsSequence has {len(per)} items for NumberOfFrames {n}; "
                         f"the file is inconsistent")
    use_dims = bool(per) and "DimensionIndexSequence" in ds
    dims: list[int] = []
    names: list[str] = []
    if use_dims:
        dims, names = _dimensions(ds)
    elif per:  # no dimension index: tell stacks and time points apart by the frame content
        names = [a for a in ("StackID", "TemporalPositionIndex")
                 if any(_from_groups([g], "FrameContentSequence", a) is not None for g in per)]
    grid = None
    if per is None and n > 1 and "GridFrameOffsetVector" in ds:
        grid = _floats(ds.GridFrameOffsetVector, n, "GridFrameOffsetVector", where)
    top_ipp, top_iop = ds.get("ImagePositionPatient"), ds.get("ImageOrientationPatient")
    top_slope = _number(ds.get("RescaleSlope"))
    if top_slope is None:
        top_slope = _number(ds.get("DoseGridScaling"))  # RT Dose: dose = stored value x DoseGridScaling
    top_inter = _number(ds.get("RescaleIntercept"))
    frames = []
    for i in range(n):
        groups = [per[i] if per else None, shared]
        ipp = _from_groups(groups, "PlanePositionSequence", "ImagePositionPatient")
        iop = _from_groups(groups, "PlaneOrientationSequence", "ImageOrientationPatient")
        ipp = ipp if ipp is not None else top_ipp
        iop = iop if iop is not None else top_iop
        spacing = _from_groups(groups, "PixelMeasuresSequence", "PixelSpacing")
        spacing = spacing if spacing is not None else ds.get("PixelSpacing")
        thickness = _from_groups(groups, "PixelMeasuresSequence", "SliceThickness")
        between = _from_groups(groups, "PixelMeasuresSequence", "SpacingBetweenSlices")
        slope = _number(_from_groups(groups, "PixelValueTransformationSequence", "RescaleSlope"))
        inter = _number(_from_groups(groups, "PixelValueTransformationSequence", "RescaleIntercept"))
        frame_where = f"{where} frame {i + 1}"
        f = _Frame(index=i,
                   ipp=None if ipp is None else _floats(ipp, 3, "ImagePositionPatient", frame_where),
                   iop=None if iop is None else _floats(iop, 6, "ImageOrientationPatient", frame_where),
                   spacing=None if spacing is None else _floats(spacing, 2, "PixelSpacing", frame_where),
                   thickness=thickness if thickness is not None else ds.get("SliceThickness"),
                   between=between if between is not None else ds.get("SpacingBetweenSlices"),
                   slope=slope if slope is not None else (top_slope if top_slope is not None else 1.0),
                   inter=inter if inter is not None else (top_inter if top_inter is not None else 0.0),
                   key=())
        if grid is not None and f.ipp is not None and f.iop is not None:
            _, _, normal = _directions(f.iop, where)
            if grid[0] == 0:  # offsets along the normal from the first plane
                f.ipp = f.ipp + normal * grid[i]
            elif np.allclose(f.iop, [1, 0, 0, 0, 1, 0], atol=1e-6):  # absolute z of each plane (axial only)
                f.ipp = np.array([f.ipp[0], f.ipp[1], grid[i]])
            else:
                raise InputError(f"{where}: GridFrameOffsetVector starts at {grid[0]} (absolute z positions) but the "
                                 f"planes are not axial; the standard allows that only for axial planes")
        if use_dims:
            values = _from_groups([per[i]], "FrameContentSequence", "DimensionIndexValues")
            values = [values] if isinstance(values, int) else list(values or [])
            if len(values) != len(ds.DimensionIndexSequence):
                raise InputError(f"{frame_where}: DimensionIndexValues {values} do not match the "
                                 f"{len(ds.DimensionIndexSequence)} dimensions of DimensionIndexSequence")
            f.key = tuple(int(values[j]) for j in dims)
        elif per:
            f.key = tuple(_from_groups([per[i]], "FrameContentSequence", a) for a in names)
        frames.append(f)
    return frames, names


def _sort_key(key: tuple) -> tuple:
    return tuple((0, float(v), "") if isinstance(v, (int, float)) else (1, 0.0, str(v)) for v in key)


def _volumes(frames: list[_Frame], names: list[str]) -> list[tuple[str, list[_Frame]]]:
    """Frames grouped into volumes: by dimension key, then by orientation. Each with a description."""
    by_key: dict[tuple, list[_Frame]] = {}
    for f in frames:
        by_key.setdefault(f.key, []).append(f)
    out = []
    for key in sorted(by_key, key=_sort_key):
        orientations: list[tuple[np.ndarray | None, list[_Frame]]] = []
        for f in by_key[key]:
            for iop, members in orientations:
                if (iop is None and f.iop is None) or (iop is not None and f.iop is not None
                                                       and np.abs(iop - f.iop).max() <= _IOP_TOL):
                    members.append(f)
                    break
            else:
                orientations.append((f.iop, [f]))
        label = ", ".join(f"{n}={v}" for n, v in zip(names, key))
        for iop, members in orientations:
            text = label
            if len(orientations) > 1:
                text = (text + ", " if text else "") + f"orientation {list(np.round(iop, 4)) if iop is not None else None}"
            out.append((text or "all frames", members))
    return out


def _iter_frames(path: str, indices: list[int], n: int) -> Iterator[np.ndarray]:
    """Decoded frames ``indices`` (stored order) one at a time; pydicom < 3 decodes the whole array first."""
    try:
        from pydicom.pixels import iter_pixels
    except ImportError:  # pragma: no cover - pydicom 2.x
        arr = _pydicom().dcmread(path).pixel_array
        arr = arr[None] if n == 1 else arr
        for i in indices:
            yield arr[i]
        return
    yield from iter_pixels(path, indices=indices)


def read_dicom_file(path: str, *, max_bytes: int = DEFAULT_MAX_BYTES,
                    volume_index: int | None = None) -> tuple[np.ndarray, dict]:
    """Read one DICOM file (enhanced multi-frame, classic multi-frame with a grid of planes, or one slice) into
    ``(1, 1, S, R, C)`` float32 with its RAS affine (see the module doc).

    Args:
        path: the file.
        max_bytes: refuse when the decoded float32 volume would be larger (checked before any pixel is decoded).
        volume_index: which volume, when the frames form several (stacks, orientations, time points, ...).

    Returns:
        ``(x, facts)`` with ``facts = {"affine", "header": None, "zooms", "t_zoom": None, "dtype", "frames",
        "volumes", "volume"}`` (``volumes``: how many the file holds; ``volume``: the description of the one read).
    """
    pydicom = _pydicom()
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    if "Rows" not in ds or "Columns" not in ds:
        raise InputError(f"{path!r} is a DICOM file without an image (no Rows/Columns)")
    spp = int(_number(ds.get("SamplesPerPixel")) or 1)
    if spp != 1:
        raise InputError(f"{path!r} holds colour pixels ({spp} samples per pixel, "
                         f"{ds.get('PhotometricInterpretation', '?')}); ndcam reads grey DICOM volumes")
    frames, names = _frames(ds, repr(path))
    n = len(frames)
    sop = getattr(ds.get("SOPClassUID"), "name", None) or str(ds.get("SOPClassUID", "?"))
    if n > 1 and all(f.ipp is None for f in frames):
        pointer = ds.get("FrameIncrementPointer")
        from pydicom.datadict import keyword_for_tag

        varies = ", ".join(keyword_for_tag(int(t)) or str(t) for t in (pointer if isinstance(pointer, list) else
                                                                         [pointer])) if pointer is not None else ""
        raise InputError(f"{path!r} ({sop}) holds {n} frames without a patient position for each "
                         f"(no PlanePositionSequence / GridFrameOffsetVector"
                         f"{'; the frames vary by ' + varies if varies else ''}): they are not a volume ndcam can "
                         f"place; export them as images or one volume")
    volumes = _volumes(frames, names)
    if len(volumes) > 1 and volume_index is None:
        listing = "; ".join(f"{i} = {text} ({len(m)} frames)" for i, (text, m) in enumerate(volumes[:12]))
        raise InputError(f"{path!r} holds {len(volumes)} volumes in its {n} frames ({listing}"
                         f"{'; ...' if len(volumes) > 12 else ''}); ndcam explains one volume: pick it with "
                         f"--volume-index I (0..{len(volumes) - 1})")
    if volume_index is not None and not -len(volumes) <= volume_index < len(volumes):
        raise InputError(f"--volume-index {volume_index} is out of range for the {len(volumes)} volume(s) in {path!r}")
    text, members = volumes[volume_index or 0]
    first = members[0]
    if first.ipp is None or first.iop is None or any(f.ipp is None or f.iop is None for f in members):
        raise InputError(f"{path!r} ({sop}) has no ImagePositionPatient/ImageOrientationPatient for its frames (per "
                         f"frame, shared or at the top level); ndcam reads DICOM images placed in the patient (CT, MR, "
                         f"PET, ...) as volumes -- export a projection or secondary-capture image as an image file")
    spacing = first.spacing if first.spacing is not None else np.ones(2)
    for f in members:
        if f.spacing is not None and np.abs(f.spacing - spacing).max() > 1e-6:
            raise InputError(f"{path!r}: frames {first.index + 1} and {f.index + 1} have different PixelSpacing "
                             f"({list(spacing)} and {list(f.spacing)}); one volume has one pixel spacing")
    positions = np.stack([f.ipp for f in members])  # type: ignore[misc]
    order, affine, zooms = _stack_geometry(repr(path), positions, first.iop, (spacing[0], spacing[1]),
                                           _single_step(first.thickness, first.between))
    members = [members[i] for i in order]
    rows, cols = int(ds.Rows), int(ds.Columns)
    _check_size(path, (len(members), rows, cols), int(_number(ds.get("BitsAllocated")) or 16) // 8, "DICOM",
                max_bytes)
    vol = np.empty((len(members), rows, cols), dtype=np.float32)
    for k, arr in enumerate(_iter_frames(path, [f.index for f in members], n)):
        if arr.shape != (rows, cols):
            raise InputError(f"{path!r}: frame {members[k].index + 1} decodes to {arr.shape}, not {rows}x{cols}")
        vol[k] = arr.astype(np.float32) * np.float32(members[k].slope) + np.float32(members[k].inter)
    facts = {"affine": affine, "header": None, "zooms": zooms, "t_zoom": None, "dtype": "DICOM",
             "frames": len(members), "volumes": len(volumes), "volume": text}
    return vol[None, None], facts
