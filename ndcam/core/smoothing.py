"""Augmentation smoothing for any rank: average the maps of transformed inputs, each mapped back.

For each combination of a flip (or none), a shift (or none) and an intensity scale, the input is transformed, the
method's raw map is computed (at the input's resolution) and the inverse spatial transform is applied to the map;
the mean over all combinations is the smoothed map. Targets are fixed on the original input first (the top-1 class
of the original input, not of each transformed one).

Defaults by rank (``Augmentations.default(rank)``):

* 1D (ECG, audio): shifts of +-2% of the length and scales 0.9 / 1.1, *no* time reversal (not a symmetry of ECG);
* 2D: horizontal flip and scales 1.0 / 1.1 (as the usual test-time augmentation of images);
* 3D: flip of the last axis and scales 1.0 / 1.1.

Shifts are circular (``torch.roll``) and undone exactly on the map.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .errors import InputError

__all__ = ["Augmentations"]


@dataclass(frozen=True)
class Augmentations:
    """Which transforms augmentation smoothing averages over.

    Attributes:
        flips: spatial axes to flip (0 = first spatial axis); each flip is one extra variant.
        shifts: ``(axis, amount)`` circular shifts in samples/pixels/voxels; each is one extra variant.
        scales: intensity factors applied to the input (1.0 keeps it).
    """

    flips: Sequence[int] = ()
    shifts: Sequence[tuple[int, int]] = ()
    scales: Sequence[float] = (1.0,)

    @classmethod
    def default(cls, rank: int, size: Sequence[int] | None = None) -> Augmentations:
        """Sensible defaults for a rank (see the module docstring)."""
        if rank == 1:
            step = max(1, int(round(0.02 * size[-1]))) if size else 4
            return cls(flips=(), shifts=((0, step), (0, -step)), scales=(0.9, 1.1))
        return cls(flips=(rank - 1,), shifts=(), scales=(1.0, 1.1))

    def validate(self, rank: int) -> None:
        for ax in self.flips:
            if not 0 <= ax < rank:
                raise InputError(
                    f"Augmentations.flips: axis {ax} is not a spatial axis of a rank-{rank} input (0..{rank - 1})"
                )
        for ax, _ in self.shifts:
            if not 0 <= ax < rank:
                raise InputError(f"Augmentations.shifts: axis {ax} is not a spatial axis of a rank-{rank} input")
        if not self.scales:
            raise InputError("Augmentations.scales must hold at least one factor (1.0 keeps the input)")

    def variants(self) -> list[tuple[tuple | None, float]]:
        """``(spatial op or None, intensity scale)`` pairs; the identity op comes first."""
        spatial = [None] + [("flip", a) for a in self.flips] + [("shift", s) for s in self.shifts]
        return list(itertools.product(spatial, self.scales))


def _apply(t: torch.Tensor, op, lead: int, inverse: bool) -> torch.Tensor:
    if op is None:
        return t
    kind, arg = op
    if kind == "flip":
        return t.flip(lead + arg)
    axis, amount = arg
    return t.roll(-amount if inverse else amount, dims=lead + axis)


def smooth(run, x: torch.Tensor, augment: Augmentations, k_axis: bool,
           identity: torch.Tensor | None = None) -> torch.Tensor:
    """Mean of ``inverse(run(transform(x)))`` over the variants; ``run`` returns raw maps at x's resolution.

    ``identity``: ``run(x)`` when the caller has it already (the untransformed variant is then not run again).
    """
    augment.validate(x.ndim - 2)
    lead = 2 if k_axis else 1
    maps = [identity if (op is None and scale == 1.0 and identity is not None)
            else _apply(run(_apply(x, op, 2, inverse=False) * scale), op, lead, inverse=True)
            for op, scale in augment.variants()]
    return torch.stack(maps).mean(0)
