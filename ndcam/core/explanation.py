"""The result of :func:`ndcam.explain`: maps together with what they explain."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from . import ops

__all__ = ["Explanation"]


@dataclass
class Explanation:
    """Maps and their context.

    Attributes:
        maps: ``(N, *spatial)`` or ``(N, K, *spatial)`` float32 maps (normalized to ``[0, 1]`` unless asked otherwise).
        scores: the explained target scores, ``(N,)`` or ``(N, K)``.
        targets: class indices ``(N,)`` / ``(N, K)`` when targets were classes (or the top-1 class), else ``None``.
        layers: names of the layers whose maps were fused.
        method: registry name of the method.
        raw_min, raw_max: per-map range of the raw (unnormalized) map, same leading shape as ``scores``.
        input_shape: shape of the explained input.
        warnings: what the call warned about (e.g. constant maps), as text; empty when all went well.
    """

    maps: torch.Tensor
    scores: torch.Tensor
    targets: torch.Tensor | None
    layers: list[str]
    method: str
    raw_min: torch.Tensor
    raw_max: torch.Tensor
    input_shape: tuple[int, ...] = ()
    warnings: list[str] = field(default_factory=list)

    @property
    def rank(self) -> int:
        """Spatial rank of the explained input (1 signal, 2 image, 3 volume)."""
        return len(self.input_shape) - 2 if self.input_shape else self.maps.ndim - 1

    def raw(self) -> torch.Tensor:
        """Maps scaled back to their raw range (exact for single-layer maps: ``min + map * (max - min)``)."""
        return ops.expand_like(self.raw_min, self.maps) + self.maps * ops.expand_like(self.raw_max - self.raw_min, self.maps)

    def plot(self, x: torch.Tensor | None = None, index: int = 0, **kwargs: Any):
        """Draw sample ``index`` with the view that fits the rank (signal, image, volume); returns a Figure."""
        from ..app import viz

        return viz.plot_explanation(self, x, index=index, **kwargs)

    def to(self, device: str | torch.device) -> Explanation:
        """Move all tensors to ``device``."""
        return Explanation(self.maps.to(device), self.scores.to(device),
                           None if self.targets is None else self.targets.to(device), self.layers, self.method,
                           self.raw_min.to(device), self.raw_max.to(device), self.input_shape, list(self.warnings))
