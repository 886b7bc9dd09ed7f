"""Reading one dataset item: a tensor ``x``, a pair ``(x, y)``, or a dict with ``x`` and optional ``y``, ``mask``,
``key`` and ``affine``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ...core.errors import InputError, InputTypeError

__all__ = ["Item", "parse_item"]


@dataclass
class Item:
    x: torch.Tensor  # (C, *spatial) float32
    y: int | None = None
    mask: torch.Tensor | None = None  # (*spatial) bool
    key: str | None = None
    affine: list | None = None  # 4x4 voxel-to-world (NIfTI geometry)


def _tensor(v: Any, what: str, index: int) -> torch.Tensor:
    if isinstance(v, torch.Tensor):
        return v
    if isinstance(v, np.ndarray):
        return torch.from_numpy(v)
    raise InputTypeError(f"dataset item {index}: {what} is {type(v).__name__}; give a torch.Tensor or numpy array")


def _label(y: Any, index: int) -> int | None:
    if y is None:
        return None
    t = torch.as_tensor(np.asarray(y) if not isinstance(y, torch.Tensor) else y)
    if t.numel() != 1 or t.dtype.is_floating_point and float(t) != int(t) or t.dtype == torch.bool:
        raise InputError(f"dataset item {index}: the label y must be one integer class, got {y!r}")
    return int(t)


def parse_item(item: Any, index: int) -> Item:
    """Normalize a dataset item (see module doc); ``index`` is only used in error messages."""
    if isinstance(item, dict):
        if "x" not in item:
            raise InputError(f"dataset item {index} is a dict without key 'x' (keys: {sorted(item)}); the input must "
                             f"be under 'x' (optional: 'y', 'mask', 'key', 'affine')")
        x, y, mask = item["x"], item.get("y"), item.get("mask")
        key, affine = item.get("key"), item.get("affine")
    elif isinstance(item, (tuple, list)):
        if len(item) != 2:
            raise InputError(f"dataset item {index} is a sequence of {len(item)}; give x, (x, y) or a dict")
        (x, y), mask, key, affine = item, None, None, None
    else:
        x, y, mask, key, affine = item, None, None, None, None
    x = _tensor(x, "x", index).float()
    if x.ndim not in (2, 3, 4):
        raise InputError(f"dataset item {index}: x has shape {tuple(x.shape)}; a sample must be (C, *spatial) with "
                         f"1 to 3 spatial axes (no batch axis)")
    if mask is not None:
        mask = _tensor(mask, "mask", index).bool()
        if mask.ndim == x.ndim:
            mask = mask.any(0)
        if tuple(mask.shape) != tuple(x.shape[1:]):
            raise InputError(f"dataset item {index}: mask {tuple(mask.shape)} must have the input's spatial shape "
                             f"{tuple(x.shape[1:])}")
    if affine is not None:
        affine = np.asarray(affine, dtype=np.float64)
        if affine.shape != (4, 4):
            raise InputError(f"dataset item {index}: affine must be 4x4, got {affine.shape}")
        affine = affine.tolist()
    return Item(x.contiguous(), _label(y, index), mask, None if key is None else str(key), affine)
