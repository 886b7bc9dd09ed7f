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

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange, reduce

__all__ = [
    "expand_like",
    "spatial_mean",
    "spatial_sum",
    "weighted_sum",
    "channel_sum",
    "upsample",
    "interpolation_matrix",
    "interpolation_indices",
    "lerp_along",
    "upsampled_minmax",
    "minmax_normalize",
    "constant_maps",
    "spatial_minmax",
    "first_principal_component",
    "wide",
    "narrow",
    "bounded_batch",
    "MAX_BATCH_ELEMENTS",
]

#: perturbed batches hold at most this many input elements (32 MiB of float32) unless one sample is larger
MAX_BATCH_ELEMENTS = 2**23

_NATIVE_MODES = {1: "linear", 2: "bilinear", 3: "trilinear"}


def wide(t: torch.Tensor) -> torch.Tensor:
    """``t`` in float32 if its dtype is narrower (float16, bfloat16); float32/float64 tensors are returned as they
    are. Weights and maps are computed in float32 or wider whatever the model's dtype.
    """
    return t.float() if t.is_floating_point() and torch.finfo(t.dtype).bits < 32 else t


def narrow(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``t`` cast to ``dtype`` when that loses nothing but rounding (every value zero or within ``dtype``'s normal
    range, with room to spare for sums); otherwise ``t`` unchanged (maps computed in float64 whose values would
    overflow or underflow in float32 stay in float64 until they are normalized).
    """
    if t.dtype == dtype or not t.is_floating_point():
        return t
    info = torch.finfo(dtype)
    mag = t.abs()
    big = float(mag.amax()) if t.numel() else 0.0
    nonzero = mag[mag > 0]
    small = float(nonzero.amin()) if nonzero.numel() else 1.0
    if big < info.max / 2**16 and (big == 0 or small > info.tiny * 2**16):
        return t.to(dtype)
    return t


def bounded_batch(batch_size: int, sample_numel: int, max_elements: int = MAX_BATCH_ELEMENTS) -> int:
    """Inputs per perturbed forward: ``batch_size``, lowered so that a batch holds at most ``max_elements`` input
    elements (never below one input). Keeps the perturbation methods' peak memory linear in the signal length and
    within a small factor of one plain forward for long signals and large volumes.
    """
    return max(1, min(int(batch_size), max_elements // max(1, int(sample_numel))))


def expand_like(t: torch.Tensor, like: torch.Tensor | int) -> torch.Tensor:
    """Append singleton axes to ``t`` so it broadcasts against ``like`` (a tensor or a number of axes) from the left:
    ``(N,)`` or ``(N, C)`` weights against ``(N, C, *S)`` maps, whatever the spatial rank.

    >>> expand_like(torch.ones(2, 3), torch.ones(2, 3, 4, 5, 6)).shape
    torch.Size([2, 3, 1, 1, 1])
    """
    ndim = like if isinstance(like, int) else like.ndim
    if t.ndim > ndim:
        raise ValueError(f"expand_like: a {t.ndim}-axis tensor cannot broadcast from the left against {ndim} axes")
    return t.reshape(t.shape + (1,) * (ndim - t.ndim))


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


def interpolation_indices(n_in: int, n_out: int, device: torch.device | None = None):
    """The two source samples and the weight of the second for each output sample of half-pixel linear interpolation
    (``align_corners=False``, edges clamped): ``(i0, i1, lam)``, each ``(n_out,)``; output ``j`` is
    ``(1 - lam[j]) * t[i0[j]] + lam[j] * t[i1[j]]``. O(n_out) memory (the dense matrix would be O(n_in * n_out)).
    """
    j = torch.arange(n_out, dtype=torch.float64, device=device)
    src = ((j + 0.5) * (n_in / n_out) - 0.5).clamp(min=0)
    i0 = src.floor().long().clamp(max=n_in - 1)
    i1 = (i0 + 1).clamp(max=n_in - 1)
    return i0, i1, src - i0


def interpolation_matrix(n_in: int, n_out: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``(n_out, n_in)`` weights of half-pixel linear interpolation (``align_corners=False``, edges clamped).

    Dense: only for small axes (the upsampling fast path uses it for layer maps of at most 16 samples per axis);
    :func:`interpolation_indices` and :func:`lerp_along` give the same numbers in O(n_out) memory.
    """
    i0, i1, lam = interpolation_indices(n_in, n_out)
    j = torch.arange(n_out)
    m = torch.zeros(n_out, n_in, dtype=torch.float64)
    m.index_put_((j, i0), 1 - lam, accumulate=True)
    m.index_put_((j, i1), lam, accumulate=True)
    return m.to(dtype=dtype, device=device)


def lerp_along(t: torch.Tensor, dim: int, i0: torch.Tensor, i1: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """Linear interpolation of axis ``dim`` of ``t`` at the samples given by :func:`interpolation_indices` (or a
    subset of them): gather the two neighbours and blend them. Memory: the output only.
    """
    dev = t.device
    i0, i1, lam = i0.to(dev), i1.to(dev), lam.to(device=dev, dtype=t.dtype)
    shape = [1] * t.ndim
    shape[dim] = -1
    a = t.index_select(dim, i0)
    b = t.index_select(dim, i1)
    return a.mul_((1 - lam).reshape(shape)).add_(b.mul_(lam.reshape(shape)))


def _apply_axis_matrices(maps: torch.Tensor, mats: list[torch.Tensor]) -> torch.Tensor:
    """``maps`` ``(B, *S)`` multiplied by one ``(out_k, S_k)`` matrix per axis, last axis first (results contiguous)."""
    b, shape, t = maps.shape[0], list(maps.shape[1:]), maps
    for k in range(len(mats) - 1, -1, -1):
        pre, post = math.prod(shape[:k]), math.prod(shape[k + 1 :])
        t = torch.matmul(mats[k], t.reshape(b, pre, shape[k], post))
        shape[k] = mats[k].shape[0]
    return t.reshape(b, *shape)


def _upsample_matmul(maps: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """Separable interpolation as one small matrix product per axis (same weights as the native kernels). Only for
    small source axes (<= 16 samples): the matrices are ``(out, <= 16)``, linear in the output size.
    """
    mats = [interpolation_matrix(n, s, maps.dtype, maps.device) for n, s in zip(maps.shape[1:], size)]
    return _apply_axis_matrices(maps, mats)


def _extreme_candidates(n_in: int, n_out: int) -> torch.Tensor:
    """Output positions (along one axis) that can hold an extreme of the interpolated signal: the first and last
    output sample between each pair of source samples. At most ``2 * n_in`` of them; O(n_out) work and memory.
    """
    i0, _, _ = interpolation_indices(n_in, n_out)
    change = torch.ones(n_out, dtype=torch.bool)
    change[1:] = i0[1:] != i0[:-1]
    last = torch.ones(n_out, dtype=torch.bool)
    last[:-1] = change[1:]
    return torch.nonzero(change | last)[:, 0]


def upsampled_minmax(maps: torch.Tensor, size: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact per-map minimum and maximum of ``upsample(maps, size)`` without computing the upsampled maps.

    Along each axis the interpolated samples that fall between the same two source points are a linear function of
    their position, so their extremes are the first and last such sample; the extremes of the multilinear map are
    therefore among the samples on the grid of those candidates (at most two per source point and axis). Those
    candidates are interpolated directly (two neighbours per sample, :func:`lerp_along`): the memory is that of the
    candidate grid (at most ``2^rank`` times the map), and the index work is O(output size) per axis.
    """
    t = maps
    for axis, (n_in, n_out) in enumerate(zip(maps.shape[1:], size)):
        if n_in == n_out:
            continue
        rows = _extreme_candidates(n_in, n_out)
        i0, i1, lam = interpolation_indices(n_in, n_out)
        t = lerp_along(t, axis + 1, i0[rows], i1[rows], lam[rows])
    return spatial_minmax(t)


def upsample(maps: torch.Tensor, size: Sequence[int], *, separable: bool = False) -> torch.Tensor:
    """Resize maps ``(B, *S)`` to ``(B, *size)`` with (multi-)linear interpolation, ``align_corners=False``.

    The mode is chosen by rank: ``linear`` (1D), ``bilinear`` (2D), ``trilinear`` (3D). Beyond rank 3 (or with
    ``separable=True``) the map is resized one axis at a time with linear passes; multilinear interpolation is
    separable, so for ranks 1 to 3 this equals the native modes. Small layer maps (every axis <= 16, rank >= 2 --
    the usual CAM case) are resized with the same weights as one small matrix product per axis, which writes the
    large output once and is several times faster than the native 3D kernel on CPU.

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
    if rank >= 2 and max(maps.shape[1:]) <= 16 and maps.is_floating_point() and not separable:
        return _upsample_matmul(maps, size)
    if rank in _NATIVE_MODES and not separable:
        return F.interpolate(maps.unsqueeze(1), size=size, mode=_NATIVE_MODES[rank], align_corners=False).squeeze(1)
    out = maps
    for axis, s in enumerate(size):
        out = _linear_along(out, axis + 1, s)
    return out


def spatial_minmax(maps: torch.Tensor, batch_dims: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-map minimum and maximum over everything after the first ``batch_dims`` axes (one pass)."""
    flat = maps.reshape(*maps.shape[:batch_dims], -1)
    return torch.aminmax(flat, dim=-1)


def constant_maps(lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """Which maps are constant: range zero or below a few float roundings of their magnitude (bool, ``lo``'s shape)."""
    return ~(hi - lo > 4 * torch.finfo(lo.dtype).eps * torch.maximum(hi.abs(), lo.abs()))


def minmax_normalize(
    maps: torch.Tensor,
    batch_dims: int = 1,
    *,
    inplace: bool = False,
    minmax: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Scale each map to ``[0, 1]`` by its own minimum and maximum.

    A map whose range is zero (or below a few float roundings of its magnitude) is constant: it becomes all-zero,
    never NaN.

    Args:
        maps: ``(*B, *S)`` tensor; the first ``batch_dims`` axes index maps, the rest are spatial.
        batch_dims: number of leading axes that index separate maps (1 for ``(N, *S)``, 2 for ``(N, K, *S)``).
        inplace: overwrite ``maps`` (saves a map-sized allocation when the caller owns the tensor).
        minmax: the maps' :func:`spatial_minmax`, when the caller has it already (saves a pass over the maps).
    """
    lo, hi = spatial_minmax(maps, batch_dims) if minmax is None else minmax
    rng = hi - lo
    constant = constant_maps(lo, hi)
    denom = torch.where(constant, torch.ones_like(rng), rng)
    out = maps if inplace else maps.clone()
    out.sub_(expand_like(lo, maps)).div_(expand_like(denom, maps))  # division, not a reciprocal: the maximum is exactly 1
    if bool(constant.any()):
        out.mul_(expand_like((~constant).to(out.dtype), maps))  # constant maps -> exact zeros, never NaN
    return out.clamp_(0.0, 1.0)


def _leading_direction(x: torch.Tensor) -> torch.Tensor:
    """Projection ``(N, S)`` of the rows of ``x`` ``(N, S, C)`` on their first right singular vector, scaled by the
    singular value (``X v1 = sigma1 u1``), from the smaller Gram matrix; may raise ``torch.linalg.LinAlgError``.
    """
    s, c = x.shape[1], x.shape[2]
    if s <= c:
        gram = x @ x.transpose(1, 2)  # (N, S, S) = U diag(sigma^2) U^T
        vals, vecs = torch.linalg.eigh(gram)
        return vecs[:, :, -1] * vals[:, -1].clamp(min=0).sqrt()[:, None]
    cov = x.transpose(1, 2) @ x  # (N, C, C) = V diag(sigma^2) V^T
    _, vecs = torch.linalg.eigh(cov)
    return torch.einsum("nsc,nc->ns", x, vecs[:, :, -1])


def _stable_direction(x: torch.Tensor) -> torch.Tensor:
    """:func:`_leading_direction`, falling back to float64 and then to an SVD when ``eigh`` fails or returns
    non-finite values (ill-conditioned or near-degenerate matrices).
    """
    try:
        proj = _leading_direction(x)
        if bool(torch.isfinite(proj).all()):
            return proj
    except torch.linalg.LinAlgError:
        pass
    x64 = x.double()
    try:
        proj = _leading_direction(x64)
        if bool(torch.isfinite(proj).all()):
            return proj.to(x.dtype)
    except torch.linalg.LinAlgError:
        pass
    u, sv, _ = torch.linalg.svd(x64, full_matrices=False)  # divide-and-conquer / QR based: converges where eigh does not
    return (u[:, :, 0] * sv[:, :1]).to(x.dtype)


def first_principal_component(t: torch.Tensor, reference: torch.Tensor | None = None) -> torch.Tensor:
    """Projection of each sample's spatial positions on the first principal component of its channels.

    For every sample the ``(S, C)`` matrix of channel vectors (one row per spatial position) is centred over the
    positions, and the rows are projected on the first right singular vector (Eigen-CAM, Muhammad & Yeasin 2020,
    https://arxiv.org/abs/2008.00299). The sign of a singular vector is arbitrary; it is fixed so that the projection
    correlates positively with ``reference`` (default: the channel sum of ``t``), so a map is never inverted.

    Numerics: the principal direction does not depend on the matrix's scale, so each sample is divided by its largest
    magnitude before the decomposition (no overflow of the Gram matrix for activations ~1e30, no underflow for tiny
    ones) and the projection is scaled back afterwards. The leading direction comes from ``eigh`` of the smaller Gram
    matrix; if that fails (``LinAlgError``) or is not finite, it is recomputed in float64, then by an SVD.

    Args:
        t: ``(N, C, *S)`` tensor.
        reference: ``(N, *S)`` map that fixes the sign; default ``t.sum(1)``.

    Returns:
        ``(N, *S)`` projection, in ``t``'s dtype (float32 for narrower ones).
    """
    t = wide(t)
    n, spatial = t.shape[0], t.shape[2:]
    x = rearrange(t, "n c ... -> n (...) c")
    scale = x.reshape(n, -1).abs().amax(1)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    x = x / scale[:, None, None]
    x -= x.mean(dim=1, keepdim=True)
    # the leading singular direction from the smaller of the two Gram matrices (S x S or C x C): same projection
    # as an SVD, at a fraction of its cost when channels and positions differ a lot
    proj = _stable_direction(x)
    ref = channel_sum(t) if reference is None else wide(reference)
    ref = ref.reshape(n, -1)
    ref = ref / ref.abs().amax(1, keepdim=True).clamp(min=torch.finfo(ref.dtype).tiny)
    ref = ref - ref.mean(dim=1, keepdim=True)
    sign = torch.where((proj * ref).sum(dim=1) < 0, -1.0, 1.0).to(proj.dtype)
    return (proj * (sign * scale)[:, None]).reshape(n, *spatial)
