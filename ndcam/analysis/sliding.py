r"""Patch-based explanation of signals larger than the model's input: sliding windows with MONAI's blending.

Volumes (and long signals, large images) are often segmented or classified by a model that takes fixed-size patches,
run over the whole input with MONAI's ``sliding_window_inference``. :class:`SlidingWindow` explains such an input the
same way: it cuts it into overlapping ``roi_size`` patches on MONAI's grid, runs a CAM method on batches of patches
(each patch map at the patch's resolution, raw: not normalized), blends the patch maps with the same importance
weights MONAI blends predictions with, and min-max normalizes the stitched map once.

Conventions (those of ``monai.inferers.sliding_window_inference``, re-derived here):

* scan interval per axis: ``int(roi * (1 - overlap))`` (at least 1); ``roi`` itself where the input is exactly one
  patch wide;
* patch starts per axis: ``0, interval, 2 interval, ...`` until a patch reaches the end; the last start is moved back
  so that the patch ends at the input's end (every patch lies inside the input);
* an input smaller than ``roi`` along an axis is padded symmetrically (``pad_value``) and the map cropped back;
* importance map: ones (``mode="constant"``), or the product over axes of
  :math:`\exp(-t^2 / (2 \sigma^2))` with :math:`t` the offset from the patch centre (``-(roi-1)/2 ... (roi-1)/2``)
  and :math:`\sigma = \text{sigma\_scale} \cdot roi` (``mode="gaussian"``), clamped below at
  ``max(min, 1e-3)``;
* stitched map: :math:`M(v) = \sum_p w_p(v) m_p(v) / \sum_p w_p(v)` over the patches :math:`p` covering voxel
  :math:`v`.

A large volume takes many patches: a :mod:`tqdm` bar on stderr counts them (``progress``; the rule of
:mod:`ndcam.core.progress`, as for the perturbation methods' forwards).
"""

from __future__ import annotations

import inspect
import math
import warnings
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..core import ops
from ..core.errors import ConstantMapWarning, InputError, InputTypeError
from ..core.layers import LayerSpec
from ..core.progress import check_progress, progress_bar

__all__ = ["SlidingWindow", "sliding_window_explain", "importance_map", "scan_interval", "patch_starts"]


def _per_axis(value: float | Sequence[float], rank: int, what: str) -> tuple[float, ...]:
    vals = tuple(value) if isinstance(value, Sequence) else (value,) * rank
    if len(vals) != rank:
        raise InputError(f"{what} has {len(vals)} entries for an input of spatial rank {rank}; give one per axis")
    return vals


def importance_map(roi_size: Sequence[int], mode: str = "constant", sigma_scale: float | Sequence[float] = 0.125,
                   *, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> torch.Tensor:
    """Blending weights of one patch, shape ``roi_size`` (constant or Gaussian; see the module docstring)."""
    if mode not in ("constant", "gaussian"):
        raise InputError(f"mode must be 'constant' or 'gaussian', got {mode!r}")
    roi = tuple(int(r) for r in roi_size)
    if mode == "constant":
        return torch.ones(roi, dtype=dtype, device=device)
    sigmas = _per_axis(sigma_scale, len(roi), "sigma_scale")
    w = torch.ones((), dtype=torch.float64, device=device)
    for axis, (r, s) in enumerate(zip(roi, sigmas)):
        t = torch.arange(r, dtype=torch.float64, device=device) - (r - 1) / 2
        g = torch.exp(-(t**2) / (2 * (s * r) ** 2))
        w = w[..., None] * g.reshape((1,) * axis + (r,))
    return w.clamp_min(max(float(w.min()), 1e-3)).to(dtype)


def scan_interval(size: Sequence[int], roi_size: Sequence[int], overlap: float | Sequence[float]) -> tuple[int, ...]:
    """Distance between patch starts per axis: ``int(roi * (1 - overlap))``, at least 1; ``roi`` if size == roi."""
    overlaps = _per_axis(overlap, len(roi_size), "overlap")
    return tuple(r if s == r else max(1, int(r * (1 - o))) for s, r, o in zip(size, roi_size, overlaps))


def patch_starts(size: int, roi: int, interval: int) -> list[int]:
    """Start indices along one axis: multiples of ``interval``, the last moved back to end at ``size``."""
    count = 1 if size <= roi else math.ceil((size - roi) / interval) + 1
    return [min(i * interval, size - roi) for i in range(count)]


class SlidingWindow:
    """Explain an input larger than the model's by running a CAM method on overlapping patches.

    Args:
        model: a model that takes ``(B, C, *roi_size)`` patches.
        roi_size: the patch size, one int per spatial axis (an int is used for every axis; ``None`` or a
            non-positive entry means the whole axis, as in MONAI).
        method: a method class (``ndcam.GradCAM``) or registry name (``"gradcam"``); any callable class with the
            signature ``method(model, layers, **options)(x, targets, upsample=True, normalize=False)`` works.
        layers: the method's target layers (``None``: automatic, chosen on the patch shape).
        overlap: fraction of a patch shared with its neighbour, per axis or one for all (MONAI's ``overlap``).
        mode: ``"constant"`` or ``"gaussian"`` blending (MONAI's ``mode``).
        sigma_scale: Gaussian width as a fraction of the patch size (MONAI's ``sigma_scale``).
        batch_size: patches per call of the method (MONAI's ``sw_batch_size``); a perturbation method then runs
            its own masked forwards in batches of its default size.
        pad_value: value that pads an input smaller than a patch.
        progress: a progress bar over the patches on stderr: ``None`` when stderr is a terminal, there is more than
            one batch of patches and the run has taken 2 seconds (removed when done); ``True`` always; ``False``
            never. A method with a bar of its own (Score-CAM, Ablation-CAM: ``progress=``) gets ``progress=False``
            when this is ``True`` or ``False`` -- one bar for the whole input, or none -- and its default otherwise.
        **method_options: passed to the method class (``reshape=``, ``eigen_smooth=``, ``fc=``, ...).

    A patch with nothing to show (background) has an all-zero raw map, which is normal here: per-patch
    :class:`~ndcam.ConstantMapWarning` s are silenced, and one is issued if a stitched map is constant.

    Targets: ``None`` explains each patch's own top-1 class (patches of one volume may then explain different
    classes: prefer an explicit class); an int explains that class on every patch; a length-N sequence or an
    ``(N, K)`` tensor gives each sample's classes to all its patches; a callable is applied to each batch of patch
    outputs (one score per patch, e.g. the foreground logit of a segmentation patch summed over the patch).

    Example:
        >>> import torch
        >>> from ndcam.sliding import SlidingWindow
        >>> net = torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3, padding=1), torch.nn.ReLU(),
        ...                           torch.nn.AdaptiveAvgPool3d(1), torch.nn.Flatten(), torch.nn.Linear(4, 2))
        >>> sw = SlidingWindow(net, roi_size=(16, 16, 16), method="gradcam", overlap=0.25, mode="gaussian")
        >>> sw(torch.randn(1, 1, 40, 24, 30), targets=1).shape
        torch.Size([1, 40, 24, 30])
    """

    def __init__(
        self,
        model: nn.Module,
        roi_size: int | Sequence[int | None],
        method: str | type = "gradcam",
        layers: LayerSpec = None,
        *,
        overlap: float | Sequence[float] = 0.25,
        mode: str = "constant",
        sigma_scale: float | Sequence[float] = 0.125,
        batch_size: int = 4,
        pad_value: float = 0.0,
        progress: bool | None = None,
        **method_options: Any,
    ) -> None:
        from ..core.methods import get_method

        if mode not in ("constant", "gaussian"):
            raise InputError(f"mode must be 'constant' or 'gaussian' (MONAI's blend modes), got {mode!r}")
        overlaps = overlap if isinstance(overlap, Sequence) else (overlap,)
        if not all(isinstance(o, (int, float)) and 0 <= o < 1 for o in overlaps):
            raise InputError(f"overlap must lie in [0, 1) (a fraction of the patch), got {overlap!r}")
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise InputError(f"batch_size must be a positive int (patches per forward pass), got {batch_size!r}")
        if isinstance(method, str):
            method = get_method(method)
        if not callable(method):
            raise InputTypeError(f"method must be a method class or a registry name, got {type(method).__name__}")
        self.progress = check_progress(progress, "a bar for long runs on a terminal")
        if progress is not None and _takes_progress(method):
            method_options = {**method_options, "progress": False}  # the patch bar stands for the method's own bars
        self.model = model
        self.roi_size = roi_size
        self.overlap = overlap
        self.mode = mode
        self.sigma_scale = sigma_scale
        self.batch_size = batch_size
        self.pad_value = float(pad_value)
        self.method = method(model, layers, **method_options)

    def __repr__(self) -> str:
        return (f"SlidingWindow({type(self.method).__name__}, roi_size={self.roi_size}, overlap={self.overlap}, "
                f"mode={self.mode!r})")

    def _roi(self, size: tuple[int, ...]) -> tuple[int, ...]:
        rank = len(size)
        roi = (self.roi_size,) * rank if isinstance(self.roi_size, int) or self.roi_size is None else tuple(self.roi_size)
        if len(roi) != rank:
            raise InputError(
                f"roi_size {self.roi_size!r} has {len(roi)} entries but the input has spatial rank {rank} "
                f"(size {size}); give one patch length per spatial axis"
            )
        return tuple(s if r is None or r <= 0 else int(r) for r, s in zip(roi, size))

    def patches(self, size: Sequence[int]) -> list[tuple[slice, ...]]:
        """The patches (slices of the padded input) for an input of spatial ``size``, in MONAI's order."""
        size = tuple(size)
        roi = self._roi(size)
        padded = tuple(max(s, r) for s, r in zip(size, roi))
        step = scan_interval(padded, roi, self.overlap)
        axes = [patch_starts(s, r, i) for s, r, i in zip(padded, roi, step)]
        return [tuple(slice(a, a + r) for a, r in zip(starts, roi)) for starts in _product(axes)]

    def __call__(self, x: torch.Tensor, targets: Any = None, *, normalize: bool = True) -> torch.Tensor:
        """Maps ``(N, *spatial)`` (or ``(N, K, *spatial)`` for K targets per sample) at ``x``'s resolution.

        Args:
            x: input ``(N, C, *spatial)``, any spatial size.
            targets: see the class docstring.
            normalize: min-max each stitched map to ``[0, 1]`` (once, after blending); ``False`` returns the blended
                raw maps.
        """
        if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.ndim < 3:
            raise InputError(f"x must be a floating tensor (N, C, *spatial), got {getattr(x, 'shape', type(x).__name__)}")
        n, size = x.shape[0], tuple(x.shape[2:])
        roi = self._roi(size)
        lead = [max(r - s, 0) // 2 for s, r in zip(size, roi)]  # symmetric padding of axes smaller than a patch
        pad = [v for s, r, a in reversed(list(zip(size, roi, lead))) for v in (a, max(r - s, 0) - a)]
        xp = F.pad(x, pad, value=self.pad_value) if any(pad) else x
        slices = self.patches(size)
        weight = importance_map(roi, self.mode, self.sigma_scale, dtype=torch.float32, device=x.device)
        jobs = [(i, s) for i in range(n) for s in slices]
        batches = range(0, len(jobs), self.batch_size)
        # progress=None: one batch is no run to follow (and a bar needs a terminal and 2 s anyway)
        show = False if self.progress is None and len(batches) < 2 else self.progress
        acc: torch.Tensor | None = None
        with progress_bar(len(jobs), type(self).__name__, show, unit="patch") as bar:
            for first in batches:
                chunk = jobs[first:first + self.batch_size]
                batch = torch.stack([xp[_index(i, slice(None), *s)] for i, s in chunk])
                sample = torch.tensor([i for i, _ in chunk], device=x.device)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", ConstantMapWarning)
                    maps = self.method(batch, _targets_for(targets, sample, n), upsample=True, normalize=False).float()
                if acc is None:
                    acc = torch.zeros((n, *maps.shape[1:-len(roi)], *xp.shape[2:]), dtype=torch.float32,
                                      device=x.device)
                w = weight.reshape((1,) * (maps.ndim - len(roi)) + roi)
                for (i, s), m in zip(chunk, maps * w):
                    acc[_index(i, Ellipsis, *s)] += m
                bar.update(len(chunk))
        count = torch.zeros(xp.shape[2:], dtype=torch.float32, device=x.device)
        for s in slices:
            count[s] += weight
        assert acc is not None
        out = acc / count
        out = out[_index(Ellipsis, *(slice(a, a + s) for a, s in zip(lead, size)))]
        lo, hi = ops.spatial_minmax(out, batch_dims=out.ndim - len(size))
        if bool(ops.constant_maps(lo, hi).any()):
            warnings.warn(
                f"{int(ops.constant_maps(lo, hi).sum())} stitched map(s) are constant: no patch showed evidence for "
                f"the target (try another target or layer)", ConstantMapWarning, stacklevel=2)
        if not normalize:
            return out
        return ops.minmax_normalize(out, batch_dims=out.ndim - len(size), inplace=True)


def _takes_progress(method: Any) -> bool:
    """Whether a method class names a ``progress`` option (as the command line decides which methods show bars)."""
    try:
        return "progress" in inspect.signature(method).parameters
    except (TypeError, ValueError):  # no signature to read (a builtin): pass nothing
        return False


def _index(*parts: Any) -> Any:
    """A tensor index from integers, slices and ``...`` (one tuple, typed loosely for the type checker)."""
    return tuple(parts)


def _product(axes: list[list[int]]) -> list[tuple[int, ...]]:
    out: list[tuple[int, ...]] = [()]
    for starts in axes:
        out = [o + (a,) for o in out for a in starts]
    return out


def _targets_for(targets: Any, sample: torch.Tensor, n: int) -> Any:
    """The targets of a batch of patches cut from samples ``sample``."""
    if targets is None or callable(targets) and not isinstance(targets, torch.Tensor):
        return targets
    if isinstance(targets, int) and not isinstance(targets, bool):
        return targets
    t = torch.as_tensor(targets, device=sample.device)
    if t.ndim == 0:
        return int(t)
    if t.shape[0] != n:
        raise InputError(f"targets give {t.shape[0]} rows for a batch of {n} samples; pass one per sample (or an int)")
    return t[sample]


def sliding_window_explain(
    model: nn.Module,
    x: torch.Tensor,
    roi_size: int | Sequence[int | None],
    method: str | type = "gradcam",
    targets: Any = None,
    *,
    normalize: bool = True,
    **options: Any,
) -> torch.Tensor:
    """Functional form of :class:`SlidingWindow`: ``SlidingWindow(model, roi_size, method, **options)(x, targets)``
    (``options`` include ``progress``, the bar over the patches).
    """
    return SlidingWindow(model, roi_size, method, **options)(x, targets, normalize=normalize)
