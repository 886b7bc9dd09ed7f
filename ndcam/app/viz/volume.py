"""3D view: the three anatomical planes through the map's peak in world orientation, projections, montage.

With a voxel-to-world ``affine`` (4x4, NIfTI convention: world axes x to the patient's Right, y Anterior, z
Superior, "RAS+") each voxel axis is matched to the world axis it runs along most closely (and its sign), and the
arrays are transposed/flipped for display only (the model's array is never touched):

- axial: an S slice seen from the feet, anterior up, patient's right on the image's left (**radiological**; pass
  ``convention="neurological"`` for the patient's left on the left);
- coronal: an A slice, superior up, right/left as in axial;
- sagittal: an R slice, superior up, anterior on the image's left.

Each panel's sides are lettered (R/L, A/P, S/I), its axes are world coordinates in mm and its aspect follows the
voxel spacing (the affine's column norms). The same anatomy stored in another orientation (data permuted or flipped
with the affine changed to match) gives the same picture. An oblique affine is drawn along the nearest axes (said on
the figure). Without an affine the panels are plain array slices, labelled "voxel axes (no orientation)".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from ...core.errors import InputError
from .common import as_array, map_colorbar, new_figure, note_constant_map
from .image import resize_map

__all__ = ["plot_volume", "plot_montage", "to_ras", "Oriented", "plane_slice", "volume_planes", "PLANES"]

PLANES = ("axial", "coronal", "sagittal")
_PLANE_AXIS = {"axial": 2, "coronal": 1, "sagittal": 0}


@dataclass
class Oriented:
    """A volume reordered so that its axes run toward Right, Anterior, Superior.

    Attributes:
        data: ``(X, Y, Z)`` array (index increasing toward R, A, S), or the input as-is without an affine.
        spacing: voxel size along each displayed axis in mm (``1`` without an affine).
        origin: world coordinate (mm) of ``data[0, 0, 0]`` (``0`` without an affine).
        oriented: whether an affine was given.
        oblique: whether the affine had rotations that were rounded to the nearest axes.
        perm, flip: ``data = flip(transpose(volume, perm), axes where flip)``.
    """

    data: np.ndarray
    spacing: np.ndarray
    origin: np.ndarray
    oriented: bool
    oblique: bool
    perm: tuple[int, int, int]
    flip: tuple[bool, bool, bool]


def _axis_codes(affine: np.ndarray) -> tuple[tuple[int, int, int], tuple[bool, bool, bool], np.ndarray, bool]:
    m = np.asarray(affine, dtype=np.float64)[:3, :3]
    zooms = np.linalg.norm(m, axis=0)
    if not np.all(np.isfinite(m)) or np.any(zooms <= 0):
        raise InputError(f"affine: the 3x3 part must be finite with non-zero columns, got\n{np.asarray(affine)}")
    cos = np.abs(m / zooms)  # cos[w, i]: how much voxel axis i runs along world axis w
    perm = [-1, -1, -1]
    used_w: set[int] = set()
    used_i: set[int] = set()
    for flat in np.argsort(-cos, axis=None):
        w, i = divmod(int(flat), 3)
        if w in used_w or i in used_i:
            continue
        perm[w] = i
        used_w.add(w)
        used_i.add(i)
    flip = tuple(bool(m[w, perm[w]] < 0) for w in range(3))
    oblique = bool(np.any(np.abs(cos[[0, 1, 2], perm] - 1.0) > 1e-3))
    return (perm[0], perm[1], perm[2]), flip, zooms, oblique  # type: ignore[return-value]


def to_ras(volume: Any, affine: Any = None) -> Oriented:
    """Reorder a ``(D, H, W)`` volume (or ``(C, D, H, W)``: first channel) to R, A, S axes using ``affine``.

    Only numpy: the affine is the 4x4 voxel-to-world matrix (e.g. ``nibabel``'s ``img.affine``).
    """
    vol = as_array(volume)
    if vol is None or vol.ndim not in (3, 4):
        raise InputError(f"a volume must be (D, H, W) or (C, D, H, W), got {None if vol is None else vol.shape}")
    vol = vol[0] if vol.ndim == 4 else vol
    if affine is None:
        return Oriented(vol, np.ones(3), np.zeros(3), False, False, (0, 1, 2), (False, False, False))
    aff = np.asarray(affine, dtype=np.float64)
    if aff.shape != (4, 4):
        raise InputError(f"affine must be 4x4 (voxel to world), got shape {aff.shape}")
    perm, flip, zooms, oblique = _axis_codes(aff)
    data = np.transpose(vol, perm)
    for w in range(3):
        if flip[w]:
            data = np.flip(data, w)
    corner = np.array([(vol.shape[perm[w]] - 1) if flip[w] else 0 for w in range(3)], dtype=np.float64)
    idx = np.zeros(3)
    for w in range(3):
        idx[perm[w]] = corner[w]
    origin = (aff @ np.append(idx, 1.0))[:3]
    return Oriented(np.ascontiguousarray(data), zooms[list(perm)], origin, True, oblique, perm, flip)


def plane_slice(o: Oriented, plane: str, index: int, convention: str = "radiological") -> dict[str, Any]:
    """One display slice: ``image`` (rows top to bottom), ``extent`` in mm, side ``letters`` (left, right, top,
    bottom) and axis labels. ``plane`` is axial/coronal/sagittal (array axes 0/1/2 without orientation).
    """
    if convention not in ("radiological", "neurological"):
        raise InputError(f"convention must be 'radiological' or 'neurological', got {convention!r}")
    axis = _PLANE_AXIS[plane] if o.oriented else PLANES.index(plane)
    sl = np.take(o.data, index, axis=axis)
    if not o.oriented:
        h, w = sl.shape
        rem = [a for a in range(3) if a != axis]
        return {"image": sl, "extent": (-0.5, w - 0.5, h - 0.5, -0.5), "letters": None,
                "xlabel": f"array axis {rem[1]} (voxel)", "ylabel": f"array axis {rem[0]} (voxel)",
                "name": f"array axis {axis} = {index}"}
    # remaining two world axes, the vertical one last
    horiz, vert = [a for a in range(3) if a != axis]
    img = sl.T[::-1]  # rows: vert descending (A or S at the top)
    flip_h = True if horiz == 1 else convention == "radiological"  # sagittal: anterior left; R/L by convention
    if flip_h:
        img = img[:, ::-1]
    sp, org = o.spacing, o.origin
    lo_h, hi_h = org[horiz] - sp[horiz] / 2, org[horiz] + (o.data.shape[horiz] - 0.5) * sp[horiz]
    lo_v, hi_v = org[vert] - sp[vert] / 2, org[vert] + (o.data.shape[vert] - 0.5) * sp[vert]
    extent = (hi_h, lo_h, lo_v, hi_v) if flip_h else (lo_h, hi_h, lo_v, hi_v)
    pos_letter, neg_letter = {0: ("R", "L"), 1: ("A", "P"), 2: ("S", "I")}[horiz], {2: ("S", "I"), 1: ("A", "P")}[vert]
    letters = (pos_letter[0], pos_letter[1]) if flip_h else (pos_letter[1], pos_letter[0])
    world = org[axis] + index * sp[axis]
    name = {2: "axial", 1: "coronal", 0: "sagittal"}[axis]
    return {"image": img, "extent": extent, "letters": (*letters, neg_letter[0], neg_letter[1]),
            "xlabel": f"{'xyz'[horiz]} (mm)", "ylabel": f"{'xyz'[vert]} (mm)",
            "name": f"{name} {'xyz'[axis]} = {world:.1f} mm"}


def volume_planes(volume: Any, cam: Any, affine: Any = None, convention: str = "radiological",
                  index: tuple[int, int, int] | None = None) -> list[dict[str, Any]]:
    """The three displayed slices through ``index`` (default: the map's peak) as drawn by :func:`plot_volume`:
    dicts with ``image``, ``map``, ``extent``, ``letters``, ``name``.
    """
    vol = to_ras(volume, affine)
    m = as_array(cam)
    m = resize_map(m, as_array(volume).shape[-3:]) if m.shape != as_array(volume).shape[-3:] else m
    mo = to_ras(m, affine)
    peak = index if index is not None else np.unravel_index(int(np.argmax(np.nan_to_num(mo.data))), mo.data.shape)
    out = []
    for plane in PLANES:
        axis = _PLANE_AXIS[plane] if vol.oriented else PLANES.index(plane)
        s = plane_slice(vol, plane, int(peak[axis]), convention)
        s["map"] = plane_slice(mo, plane, int(peak[axis]), convention)["image"]
        s["peak"] = tuple(int(p) for p in peak)
        out.append(s)
    return out


def _window(v: np.ndarray) -> tuple[float, float]:
    finite = v[np.isfinite(v)]
    if finite.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(finite, [0.5, 99.5])
    return float(lo), float(hi if hi > lo else lo + 1)


def _letters(ax: Any, letters: tuple[str, str, str, str] | None) -> None:
    if letters is None:
        return
    kw = {"transform": ax.transAxes, "color": "yellow", "fontsize": 10, "fontweight": "bold", "zorder": 5}
    left, right, top, bottom = letters
    ax.text(0.02, 0.5, left, ha="left", va="center", **kw)
    ax.text(0.98, 0.5, right, ha="right", va="center", **kw)
    ax.text(0.5, 0.98, top, ha="center", va="top", **kw)
    ax.text(0.5, 0.02, bottom, ha="center", va="bottom", **kw)


def _mip(o: Oriented, axis: int, convention: str) -> dict[str, Any]:
    proj = Oriented(o.data.max(axis=axis, keepdims=True), o.spacing, o.origin, o.oriented, o.oblique, o.perm, o.flip)
    plane = ({2: "axial", 1: "coronal", 0: "sagittal"}[axis]) if o.oriented else PLANES[axis]
    return plane_slice(proj, plane, 0, convention)


def plot_volume(volume: Any, cam: Any, *, affine: Any = None, convention: str = "radiological", alpha: float = 0.45,
                cmap: str = "jet", title: str | None = None, mips: bool = True) -> Figure:
    """Axial, coronal and sagittal slices through the map's peak (top) and maximum-intensity projections (bottom).

    Args:
        volume: ``(D, H, W)`` or ``(C, D, H, W)`` (first channel) as stored (the model's array).
        cam: map of the same spatial shape (resized when it differs), in ``[0, 1]``.
        affine: 4x4 voxel-to-world matrix (NIfTI/RAS+); without it the panels are array slices.
        convention: ``"radiological"`` (patient's right on the image's left) or ``"neurological"``.
        alpha: map opacity.
        cmap: colormap of the map.
        title: figure title.
        mips: add the row of projections (volume MIP in greys, map MIP in colour).
    """
    vol = as_array(volume)
    if vol is None or vol.ndim not in (3, 4):
        raise InputError(f"plot_volume: volume must be (D, H, W) or (C, D, H, W), got "
                         f"{None if vol is None else tuple(vol.shape)}")
    m = resize_map(as_array(cam), vol.shape[-3:])
    planes = volume_planes(vol, m, affine, convention)
    ov, om = to_ras(vol, affine), to_ras(m, affine)
    lo, hi = _window(ov.data)
    rows = 2 if mips else 1
    widths = [abs(p["extent"][1] - p["extent"][0]) for p in planes]
    panel_w = 12.0 * np.asarray(widths) / sum(widths)  # panels share the width in proportion to their mm width
    panel_h = max(pw * abs(p["extent"][3] - p["extent"][2]) / w for p, w, pw in zip(planes, widths, panel_w))
    height = min(max(2.5, float(panel_h)), 6.0) * rows + 1.3
    fig = new_figure(13, height)
    fig.set_layout_engine("constrained")
    axes = fig.subplots(rows, 3, squeeze=False, gridspec_kw={"width_ratios": widths})
    for j, s in enumerate(planes):
        ax = axes[0, j]
        ax.imshow(s["image"], cmap="gray", vmin=lo, vmax=hi, extent=s["extent"], interpolation="nearest")
        ax.imshow(s["map"], cmap=cmap, alpha=alpha, vmin=0, vmax=1, extent=s["extent"], interpolation="nearest")
        ax.set_title(s["name"] if ov.oriented else f"{s['name']}\nvoxel axes (no orientation)", fontsize=9)
        ax.set_xlabel(s["xlabel"], fontsize=8)
        ax.set_ylabel(s["ylabel"], fontsize=8)
        ax.tick_params(labelsize=7)
        _letters(ax, s["letters"])
        a = _PLANE_AXIS[PLANES[j]] if ov.oriented else j
        rem = [q for q in range(3) if q != a]
        pk = s["peak"]
        if ov.oriented:  # crosshair through the peak, in world mm
            cx, cy = ov.origin[rem[0]] + pk[rem[0]] * ov.spacing[rem[0]], ov.origin[rem[1]] + pk[rem[1]] * ov.spacing[rem[1]]
        else:
            cx, cy = pk[rem[1]], pk[rem[0]]
        ax.axvline(cx, color="white", lw=0.6, ls=(0, (3, 3)), alpha=0.7)
        ax.axhline(cy, color="white", lw=0.6, ls=(0, (3, 3)), alpha=0.7)
    if mips:
        for j in range(3):
            axis = _PLANE_AXIS[PLANES[j]] if ov.oriented else j
            sv, sm = _mip(ov, axis, convention), _mip(om, axis, convention)
            ax = axes[1, j]
            ax.imshow(sv["image"], cmap="gray", vmin=lo, vmax=hi, extent=sv["extent"], interpolation="nearest")
            ax.imshow(sm["image"], cmap=cmap, alpha=alpha, vmin=0, vmax=1, extent=sv["extent"],
                      interpolation="nearest")
            what = PLANES[j] if ov.oriented else f"along array axis {j}"
            ax.set_title(f"maximum projection, {what}", fontsize=9)
            ax.set_xlabel(sv["xlabel"], fontsize=8)
            ax.set_ylabel(sv["ylabel"], fontsize=8)
            ax.tick_params(labelsize=7)
            _letters(ax, sv["letters"])
    map_colorbar(fig, ScalarMappable(Normalize(0, 1), cmap), ax=list(axes.ravel()), fraction=0.02, pad=0.01,
                 aspect=40)
    head = (title + "\n") if title else ""
    if ov.oriented:
        pk = planes[0]["peak"]
        world = ov.origin + np.asarray(pk) * ov.spacing
        head += (f"world orientation (RAS, {convention}), voxel {ov.spacing[0]:.3g} x {ov.spacing[1]:.3g} x "
                 f"{ov.spacing[2]:.3g} mm; map peak at ({world[0]:.1f}, {world[1]:.1f}, {world[2]:.1f}) mm")
        if ov.oblique:
            head += "; oblique affine drawn along the nearest axes"
    else:
        head += "voxel axes (no orientation): pass affine= to draw axial/coronal/sagittal in world orientation"
    fig.suptitle(head, fontsize=9)
    note_constant_map(fig, m)
    return fig


def plot_montage(volume: Any, cam: Any, *, axis: int = 0, plane: str | None = None, affine: Any = None,
                 convention: str = "radiological", n: int = 12, cols: int = 6, alpha: float = 0.45, cmap: str = "jet",
                 title: str | None = None) -> Figure:
    """``n`` evenly spaced slices with the map overlaid: the anatomical ``plane`` (default axial) with an ``affine``,
    else slices along array ``axis``.
    """
    vol = as_array(volume)
    if vol is None or vol.ndim not in (3, 4):
        raise InputError(f"plot_montage: volume must be (D, H, W) or (C, D, H, W), got "
                         f"{None if vol is None else tuple(vol.shape)}")
    m = resize_map(as_array(cam), vol.shape[-3:])
    ov, om = to_ras(vol, affine), to_ras(m, affine)
    if ov.oriented:
        plane = plane or "axial"
        if plane not in PLANES:
            raise InputError(f"plot_montage: plane must be one of {PLANES}, got {plane!r}")
        ax_i = _PLANE_AXIS[plane]
    else:
        if axis not in (0, 1, 2):
            raise InputError(f"plot_montage: axis must be 0, 1 or 2, got {axis}")
        ax_i, plane = axis, PLANES[axis]
    count = ov.data.shape[ax_i]
    idx = np.unique(np.linspace(0, count - 1, min(n, count)).round().astype(int))
    rows = int(np.ceil(len(idx) / cols))
    fig = new_figure(2.2 * cols + 0.8, 2.3 * rows + 0.8)
    fig.set_layout_engine("constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    lo, hi = _window(ov.data)
    for k, ax in enumerate(axes.ravel()):
        ax.set_axis_off()
        if k >= len(idx):
            continue
        s, sm = plane_slice(ov, plane, int(idx[k]), convention), plane_slice(om, plane, int(idx[k]), convention)
        ax.imshow(s["image"], cmap="gray", vmin=lo, vmax=hi, extent=s["extent"], interpolation="nearest")
        ax.imshow(sm["image"], cmap=cmap, alpha=alpha, vmin=0, vmax=1, extent=s["extent"],
                       interpolation="nearest")
        ax.set_title(s["name"] if ov.oriented else f"axis {ax_i} = {idx[k]}", fontsize=7)
        _letters(ax, s["letters"])
    map_colorbar(fig, ScalarMappable(Normalize(0, 1), cmap), ax=list(axes.ravel()), fraction=0.02, pad=0.01,
                 aspect=40)
    head = (title + "\n") if title else ""
    head += (f"{plane} slices, world orientation ({convention})" if ov.oriented else
             f"slices along array axis {ax_i}, voxel axes (no orientation)")
    fig.suptitle(head, fontsize=9)
    note_constant_map(fig, m)
    return fig
