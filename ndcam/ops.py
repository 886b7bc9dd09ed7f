"""Rank-agnostic spatial math on ``(N, C, *spatial)`` tensors.

Everything here is written over "the spatial axes" with einops ``...`` patterns, so the same line serves a 1D signal
``(N, C, L)``, an image ``(N, C, H, W)``, a volume ``(N, C, D, H, W)`` and any higher rank. The only place that looks
at the rank is :func:`upsample`, which picks torch's native interpolation mode (linear, bilinear, trilinear) and falls
back to separable linear passes beyond rank 3.

Example:
    >>> import torch
    >>> from ndcam import ops
    >>> g = torch.randn(2, 8, 5, 6, 7)
    >>> ops.spatial_mean(g).shape
    torch.Size([2, 8])
    >>> ops.upsample(torch.rand(2, 5, 6, 7), (10, 12, 14)).shape
    torch.Size([2, 10, 12, 14])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange, reduce

__all__ = [
    "spatial_mean",
    "spatial_sum",
    "weighted_sum",
    "channel_sum",
    "upsample",
    "minmax_normalize",
    "spatial_minmax",
    "first_principal_component",
]

_NATIVE_MODES = {1: "linear", 2: "bilinear", 3: "trilinear"}


def spatial_mean(t: torch.Tensor) -> torch.Tensor:
    """Mean over the spatial axes: ``(N, C, *S) -> (N, C)``."""
    return reduce(t, "n c ... -> n c", "mean")


def spatial_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum over the spatial axes: ``(N, C, *S) -> (N, C)``."""
    return reduce(t, "n c ... -> n c", "sum")


def weighted_sum(weights: torch.Tensor, activations: torch.Tensor) -> torch.Tensor:
    """Channel-weighted sum of activation maps: ``sum_c w[n, c] * A[n, c, ...]``.

    Args:
        weights: ``(N, C)`` channel weights.
        activations: ``(N, C, *S)`` activations.

    Returns:
        ``(N, *S)`` map.
    """
    flat = rearrange(activations, "n c ... -> n c (...)")
    out = torch.einsum("nc,ncs->ns", weights, flat)
    return out.reshape(activations.shape[:1] + activations.shape[2:])


def channel_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum over channels: ``(N, C, *S) -> (N, *S)``."""
    return t.sum(dim=1)


def _linear_along(t: torch.Tensor, dim: int, size: int) -> torch.Tensor:
    """Linear interpolation (``align_corners=False``) of one axis of ``t`` to ``size`` samples."""
    if t.shape[dim] == size:
        return t
    moved = t.movedim(dim, -1)
    lead = moved.shape[:-1]
    flat = moved.reshape(-1, 1, moved.shape[-1])
    out = F.interpolate(flat, size=size, mode="linear", align_corners=False)
    return out.reshape(*lead, size).movedim(-1, dim)


def upsample(maps: torch.Tensor, size: Sequence[int], *, separable: bool = False) -> torch.Tensor:
    """Resize maps ``(B, *S)`` to ``(B, *size)`` with (multi-)linear interpolation, ``align_corners=False``.

    The mode is chosen by rank: ``linear`` (1D), ``bilinear`` (2D), ``trilinear`` (3D). Beyond rank 3 (or with
    ``separable=True``) the map is resized one axis at a time with linear passes; multilinear interpolation is
    separable, so for ranks 1 to 3 this equals the native modes.

    Args:
        maps: ``(B, *S)`` tensor, any number of spatial axes.
        size: target spatial size, one entry per spatial axis.
        separable: force the separable path (used to test it against the native modes).

    Returns:
        ``(B, *size)`` tensor of the same dtype.
    """
    size = tuple(int(s) for s in size)
    rank = maps.ndim - 1
    if len(size) != rank:
        raise ValueError(f"upsample: maps have {rank} spatial axes {tuple(maps.shape[1:])} but size has {len(size)}: {size}")
    if tuple(maps.shape[1:]) == size:
        return maps
    if rank in _NATIVE_MODES and not separable:
        return F.interpolate(maps.unsqueeze(1), size=size, mode=_NATIVE_MODES[rank], align_corners=False).squeeze(1)
    out = maps
    for axis, s in enumerate(size):
        out = _linear_along(out, axis + 1, s)
    return out


def spatial_minmax(maps: torch.Tensor, batch_dims: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-map minimum and maximum over everything after the first ``batch_dims`` axes."""
    flat = maps.reshape(*maps.shape[:batch_dims], -1)
    return flat.amin(dim=-1), flat.amax(dim=-1)


def minmax_normalize(maps: torch.Tensor, batch_dims: int = 1) -> torch.Tensor:
    """Scale each map to ``[0, 1]`` by its own minimum and maximum.

    A map whose range is zero (or below a few float roundings of its magnitude) is constant: it becomes all-zero,
    never NaN.

    Args:
        maps: ``(*B, *S)`` tensor; the first ``batch_dims`` axes index maps, the rest are spatial.
        batch_dims: number of leading axes that index separate maps (1 for ``(N, *S)``, 2 for ``(N, K, *S)``).
    """
    lo, hi = spatial_minmax(maps, batch_dims)
    rng = hi - lo
    scale = torch.maximum(hi.abs(), lo.abs())
    tiny = 4 * torch.finfo(maps.dtype).eps * scale
    constant = ~(rng > tiny)
    shape = (*maps.shape[:batch_dims],) + (1,) * (maps.ndim - batch_dims)
    denom = torch.where(constant, torch.ones_like(rng), rng).reshape(shape)
    out = (maps - lo.reshape(shape)) / denom
    out = torch.where(constant.reshape(shape), torch.zeros_like(out), out)
    return out.clamp_(0.0, 1.0)


def first_principal_component(t: torch.Tensor, reference: torch.Tensor | None = None) -> torch.Tensor:
    """Projection of each sample's spatial positions on the first principal component of its channels.

    For every sample the ``(S, C)`` matrix of channel vectors (one row per spatial position) is centred over the
    positions, and the rows are projected on the first right singular vector (Eigen-CAM, Muhammad & Yeasin 2020,
    https://arxiv.org/abs/2008.00299). The sign of a singular vector is arbitrary; it is fixed so that the projection
    correlates positively with ``reference`` (default: the channel sum of ``t``), so a map is never inverted.

    Args:
        t: ``(N, C, *S)`` tensor.
        reference: ``(N, *S)`` map that fixes the sign; default ``t.sum(1)``.

    Returns:
        ``(N, *S)`` projection.
    """
    n, spatial = t.shape[0], t.shape[2:]
    x = rearrange(t, "n c ... -> n (...) c")
    x = x - x.mean(dim=1, keepdim=True)
    # full_matrices=False: only the leading right singular vector is needed
    _, _, vh = torch.linalg.svd(x, full_matrices=False)
    proj = torch.einsum("nsc,nc->ns", x, vh[:, 0, :])
    ref = channel_sum(t) if reference is None else reference
    ref = ref.reshape(n, -1)
    ref = ref - ref.mean(dim=1, keepdim=True)
    sign = torch.where((proj * ref).sum(dim=1) < 0, -1.0, 1.0).to(proj.dtype)
    return (proj * sign[:, None]).reshape(n, *spatial)
