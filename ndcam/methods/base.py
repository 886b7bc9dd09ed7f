"""Orchestration shared by every CAM method: validation, capture, targets, per-layer maps, fusion, upsampling.

A method class only says how one captured layer becomes a map: it overrides :meth:`BaseCAM.weights` (channel weights
``(N, C)``, the map is their weighted sum of activations) or :meth:`BaseCAM.layer_map` (any ``(N, *S)`` map). The pure
formulas live as plain functions in the family modules (``gradient.py``, ``activation.py``) and are tested against
slow loop-based references.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import nn

from .. import ops
from .._errors import InputError, InputTypeError
from ..capture import Capture, ModelState
from ..explanation import Explanation
from ..layers import LayerSpec, auto_layer, resolve_layers
from ..smoothing import Augmentations, smooth
from ..targets import ClassTarget, TargetSpec, _TopClass, as_score_fn

__all__ = ["BaseCAM", "register", "REGISTRY", "range_and_normalize"]

REGISTRY: dict[str, type[BaseCAM]] = {}


def register(*names: str) -> Callable[[type[BaseCAM]], type[BaseCAM]]:
    """Class decorator: make a method available to :func:`ndcam.explain` under ``names``."""

    def deco(cls: type[BaseCAM]) -> type[BaseCAM]:
        for n in names:
            REGISTRY[n] = cls
        cls.registry_name = names[0]
        return cls

    return deco


def _check_input(x: Any) -> None:
    if not isinstance(x, torch.Tensor):
        raise InputTypeError(f"x must be a torch.Tensor of shape (N, C, *spatial), got {type(x).__name__}")
    if not x.is_floating_point():
        raise InputTypeError(
            f"x must be a floating tensor (e.g. float32), got {x.dtype}; convert with x.float() (and scale as the "
            f"model expects)"
        )
    if x.ndim < 3:
        raise InputError(
            f"x must be (N, C, *spatial) with spatial rank >= 1 -- (N, C, L) for signals, (N, C, H, W) for images, "
            f"(N, C, D, H, W) for volumes -- got shape {tuple(x.shape)}; add the batch/channel axis with "
            f"x[None] or x.unsqueeze(1)"
        )
    if x.shape[0] == 0 or any(s == 0 for s in x.shape[1:]):
        raise InputError(f"x has an empty axis: shape {tuple(x.shape)}")


def _check_finite(x: torch.Tensor) -> None:
    if not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        raise InputError(f"x contains {bad} NaN/inf value(s); CAMs of non-finite inputs are meaningless")


def _check_device(model: nn.Module, x: torch.Tensor) -> None:
    params = list(model.parameters())
    devices = {p.device for p in params} | {b.device for b in model.buffers()}
    if len(devices) == 1 and x.device not in devices:
        (dev,) = devices
        raise InputError(f"x is on {x.device} but the model is on {dev}; move one of them (x.to({str(dev)!r}))")
    dtypes = {p.dtype for p in params if p.is_floating_point()}
    if len(dtypes) == 1 and x.dtype not in dtypes and not torch.is_autocast_enabled():
        (dt,) = dtypes
        raise InputError(f"x is {x.dtype} but the model's parameters are {dt}; convert with x.to({dt})")


class BaseCAM:
    """Base class of every CAM method.

    Args:
        model: a PyTorch model mapping ``(N, C, *spatial)`` to class scores (or anything a target callable reads).
        layers: ``None`` (automatic: the feature map of the last convolution of the input's rank), a dotted module
            name, an ``nn.Module``, or a list of those (their maps are fused: per-layer min-max, mean, min-max).
        reshape: optional callable turning a layer's output into ``(N, C, *spatial)`` (token models).

    Subclasses set ``uses_gradients`` and ``relu`` and override :meth:`weights` or :meth:`layer_map`.
    """

    registry_name: ClassVar[str] = ""
    uses_gradients: ClassVar[bool] = True
    input_gradient: ClassVar[bool] = False
    relu: ClassVar[bool] = True

    def __init__(
        self,
        model: nn.Module,
        layers: LayerSpec = None,
        *,
        reshape: Callable | None = None,
        eigen_smooth: bool = False,
        aug_smooth: bool | Augmentations = False,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise InputTypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if reshape is not None and not callable(reshape):
            raise InputTypeError(f"reshape must be a callable output -> (N, C, *spatial), got {type(reshape).__name__}")
        if not isinstance(aug_smooth, (bool, Augmentations)):
            raise InputTypeError(f"aug_smooth must be a bool or ndcam.Augmentations, got {type(aug_smooth).__name__}")
        self.model = model
        self.reshape = reshape
        self.eigen_smooth = bool(eigen_smooth)
        self.aug_smooth = aug_smooth
        self._layers = None if layers is None else resolve_layers(model, layers)

    # -- context manager: nothing is attached between calls, so exit has only to make sure of that -------------
    def __enter__(self) -> BaseCAM:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def __repr__(self) -> str:
        layers = "auto" if self._layers is None else [n for n, _ in self._layers]
        return f"{type(self).__name__}(model={type(self.model).__name__}, layers={layers})"

    # -- what a method defines ------------------------------------------------------------------------------------
    def weights(self, activations: torch.Tensor, gradients: torch.Tensor | None, classes: torch.Tensor | None) -> torch.Tensor:
        """Channel weights ``(N, C)`` for one captured layer."""
        raise NotImplementedError

    def layer_map(self, activations: torch.Tensor, gradients: torch.Tensor | None, classes: torch.Tensor | None) -> torch.Tensor:
        """Raw map ``(N, *S)`` of one captured layer, before ReLU. Default: weighted sum of activations."""
        return ops.weighted_sum(self.weights(activations, gradients, classes), activations)

    def channel_maps(
        self, activations: torch.Tensor, gradients: torch.Tensor | None, classes: torch.Tensor | None
    ) -> torch.Tensor:
        """Per-channel contributions ``(N, C, *S)`` whose channel sum is :meth:`layer_map` (used by eigen smoothing)."""
        w = self.weights(activations, gradients, classes)
        return w.reshape(w.shape + (1,) * (activations.ndim - 2)) * activations

    def check_targets(self, targets: TargetSpec) -> None:
        """Method-specific target validation (before any forward pass)."""

    # -- public entry points --------------------------------------------------------------------------------------
    def __call__(
        self, x: torch.Tensor, targets: TargetSpec = None, *, upsample: bool = True, normalize: bool = True
    ) -> torch.Tensor:
        """Maps ``(N, *spatial)``, or ``(N, K, *spatial)`` for K targets per sample, float32 on ``x``'s device.

        Args:
            x: input ``(N, C, *spatial)``.
            targets: see :mod:`ndcam.targets` (None = top-1 class).
            upsample: resize maps to ``x``'s spatial size (linear/bilinear/trilinear); ``False`` keeps the layer's.
            normalize: min-max each map to ``[0, 1]`` (constant maps become 0); ``False`` returns raw maps.
        """
        return self.explain(x, targets, upsample=upsample, normalize=normalize).maps

    def explain(
        self, x: torch.Tensor, targets: TargetSpec = None, *, upsample: bool = True, normalize: bool = True
    ) -> Explanation:
        """Like :meth:`__call__`, but returns an :class:`~ndcam.Explanation` with scores, targets and raw ranges."""
        _check_input(x)
        _check_device(self.model, x)
        _check_finite(x)
        self.check_targets(targets)
        score_fn, class_idx, _ = as_score_fn(targets, x.shape[0], x.device)
        state = ModelState.save(self.model)
        inference = torch.is_inference_mode_enabled()
        try:
            with torch.inference_mode(False) if inference else _Null():
                if self.aug_smooth:
                    return self._run_smoothed(x.detach(), targets, score_fn, class_idx, normalize)
                return self._run(x.detach(), targets, score_fn, class_idx, upsample, normalize)
        finally:
            state.restore()

    def _run_smoothed(self, x, targets, score_fn, class_idx, normalize: bool) -> Explanation:
        """Augmentation smoothing (see :mod:`ndcam.smoothing`): maps at the input's resolution."""
        aug = self.aug_smooth if isinstance(self.aug_smooth, Augmentations) else Augmentations.default(x.ndim - 2, x.shape[2:])
        aug.validate(x.ndim - 2)
        first = self._run(x, targets, score_fn, class_idx, True, False)
        if targets is None:  # fix the classes on the original input
            targets = first.targets
            score_fn, class_idx, _ = as_score_fn(targets, x.shape[0], x.device)
        raw = smooth(lambda xt: self._run(xt, targets, score_fn, class_idx, True, False).maps, x, aug,
                     k_axis=first.scores.ndim == 2)
        maps, lo, hi = range_and_normalize(raw, 2 if first.scores.ndim == 2 else 1, normalize)
        first.maps, first.raw_min, first.raw_max = maps.float(), lo.float(), hi.float()
        return first

    # -- orchestration --------------------------------------------------------------------------------------------
    def _run(self, x, targets, score_fn, class_idx, upsample: bool, normalize: bool) -> Explanation:
        rank = x.ndim - 2
        layers = self._layers if self._layers is not None else self._default_layers(x)
        with Capture(self.model, layers, rank, grads=self.uses_gradients, reshape=self.reshape,
                     input_grad=self.input_gradient) as cap:
            output = cap.forward(x)
            scores = score_fn(output)
            scores = self._check_scores(scores, x.shape[0])
            if targets is None:
                class_idx = _TopClass.indices(output)
                score_fn = ClassTarget(class_idx)  # the top-1 class of the *unperturbed* output, from now on
            multi = scores.ndim == 2
            sc = scores if multi else scores[:, None]
            names = list(cap.names)
            per_layer = self._layer_maps(cap, x, sc, class_idx, score_fn)
            cap.clear()
        maps, lo, hi = self._fuse(per_layer, x, upsample, normalize)
        if not multi:
            maps, lo, hi = maps[:, 0], lo[:, 0], hi[:, 0]
        return Explanation(
            maps=maps.float(),
            scores=scores.detach().float(),
            targets=class_idx,
            layers=_unique(names),
            method=self.registry_name or type(self).__name__,
            raw_min=lo.float(),
            raw_max=hi.float(),
            input_shape=tuple(x.shape),
        )

    def _default_layers(self, x: torch.Tensor) -> list[tuple[str, nn.Module]]:
        """Layers used when ``layers=None``: the automatic choice."""
        return [auto_layer(self.model, x)]

    def _layer_maps(self, cap: Capture, x: torch.Tensor, sc: torch.Tensor, class_idx: torch.Tensor | None,
                    score_fn: Callable) -> list[torch.Tensor]:
        """Raw maps ``(N, K, *S_l)``, one per captured layer call, for the K target scores ``sc`` ``(N, K)``."""
        acts = cap.activations
        per_layer: list[list[torch.Tensor]] = [[] for _ in acts]
        k_total = sc.shape[1]
        for k in range(k_total):
            grads = cap.gradients(sc[:, k], retain_graph=k < k_total - 1) if self.uses_gradients else [None] * len(acts)
            cls_k = None if class_idx is None else (class_idx[:, k] if class_idx.ndim == 2 else class_idx)
            for maps_of_layer, a, g in zip(per_layer, acts, grads):
                maps_of_layer.append(self._one(a, g, cls_k))
            del grads
        return [torch.stack(m, dim=1) for m in per_layer]

    def _one(self, a: torch.Tensor, g: torch.Tensor | None, classes: torch.Tensor | None) -> torch.Tensor:
        if a.dtype in (torch.float16, torch.bfloat16):
            a = a.float()
            g = None if g is None else g.float()
        if self.eigen_smooth:
            # eigen smoothing: first principal component of the channel contributions (sign: along their sum)
            m = ops.first_principal_component(self.channel_maps(a, g, classes))
        else:
            m = self.layer_map(a, g, classes)
        return torch.relu(m) if self.relu else m

    @staticmethod
    def _fuse(maps: list[torch.Tensor], x: torch.Tensor, upsample: bool, normalize: bool):
        """Bring per-layer maps ``(N, K, *S_l)`` to one size, fuse, normalize. Returns (maps, raw_min, raw_max)."""
        if upsample:
            size = tuple(x.shape[2:])
        else:
            size = max((tuple(m.shape[2:]) for m in maps), key=math.prod)
        n, k = maps[0].shape[:2]
        maps = [ops.upsample(m.reshape(n * k, *m.shape[2:]), size).reshape(n, k, *size) for m in maps]
        if len(maps) == 1 or not normalize:
            return range_and_normalize(maps[0] if len(maps) == 1 else torch.stack(maps).mean(0), 2, normalize)
        lo, hi = ops.spatial_minmax(torch.stack(maps).mean(0), batch_dims=2)
        fused = torch.stack([ops.minmax_normalize(m, batch_dims=2) for m in maps]).mean(0)
        return ops.minmax_normalize(fused, batch_dims=2, inplace=True), lo, hi

    @staticmethod
    def _check_scores(scores: Any, n: int) -> torch.Tensor:
        if not isinstance(scores, torch.Tensor):
            raise InputTypeError(f"the target function returned {type(scores).__name__}; it must return a tensor (N,) or (N, K)")
        if scores.ndim not in (1, 2) or scores.shape[0] != n:
            raise InputError(
                f"target scores must have shape (N,) or (N, K) with N={n}, got {tuple(scores.shape)}; a target callable "
                f"must return one score per sample (or K per sample)"
            )
        if scores.ndim == 2 and scores.shape[1] == 0:
            raise InputError("targets give K=0 scores per sample; ask for at least one target")
        if not bool(torch.isfinite(scores).all()):
            raise InputError("the model's target scores contain NaN/inf; check the model and input (no map can be made)")
        return scores


def range_and_normalize(raw: torch.Tensor, batch_dims: int, normalize: bool):
    """``(maps, raw_min, raw_max)``: the raw maps' range and, if asked, the maps min-max normalized in place with it
    (one pass for the range, shared by both). ``raw`` must be a tensor the caller made and may overwrite.
    """
    lo, hi = ops.spatial_minmax(raw, batch_dims=batch_dims)
    maps = ops.minmax_normalize(raw, batch_dims=batch_dims, inplace=True, minmax=(lo, hi)) if normalize else raw
    return maps, lo, hi


def _unique(names: list[str]) -> list[str]:
    return list(dict.fromkeys(names))


class _Null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> bool:
        return False
