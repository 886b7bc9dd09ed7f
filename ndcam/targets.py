"""Targets: what score of the model output a map explains.

A *target* turns the model output into the scores whose gradients (or values) a CAM method uses: a tensor of shape
``(N,)`` (one map per sample) or ``(N, K)`` (K maps per sample, all from one forward pass).

Accepted forms (see :func:`as_score_fn`):

* ``None``: the top-1 class of each sample (for a single-logit binary head, the predicted side: the logit if it is
  positive, minus the logit otherwise);
* ``int``: that class for every sample;
* a sequence or 1-D integer tensor of length N: one class per sample;
* a 2-D integer tensor ``(N, K)``: K classes per sample, K maps per sample;
* a callable ``output -> scores`` with scores ``(N,)`` or ``(N, K)``, e.g. the ready-made targets below.

Ready-made targets:

>>> import torch
>>> from ndcam import targets
>>> out = torch.tensor([[1.0, 3.0, 0.5], [2.0, 0.0, 1.0]])
>>> targets.Contrastive(1, 0)(out)          # "why class 1 rather than class 0": score 1 minus score 0
tensor([ 2., -2.])
>>> targets.SoftmaxProbability([1, 0])(out).shape
torch.Size([2])
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Union

import torch

from ._errors import InputError, InputTypeError

__all__ = [
    "TargetSpec",
    "ScoreFn",
    "ClassTarget",
    "Contrastive",
    "BinaryLogit",
    "Regression",
    "SoftmaxProbability",
    "SegmentationMask",
    "MultiLabel",
    "as_score_fn",
]

ScoreFn = Callable[[torch.Tensor], torch.Tensor]
TargetSpec = Union[None, int, Sequence[int], torch.Tensor, ScoreFn]


def _per_sample(value: int | Sequence[int] | torch.Tensor, n: int, device: torch.device, what: str) -> torch.Tensor:
    """Broadcast an int / sequence / tensor of class indices to a LongTensor of shape (N,) or (N, K)."""
    if isinstance(value, bool):
        raise InputTypeError(f"{what}: a bool is not a class index; pass an int, a sequence of ints or a LongTensor")
    if isinstance(value, int):
        return torch.full((n,), value, dtype=torch.long, device=device)
    t = torch.as_tensor(value, device=device) if not isinstance(value, torch.Tensor) else value.to(device)
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise InputTypeError(f"{what}: class indices must be integers, got dtype {t.dtype}")
    t = t.long()
    if t.ndim == 0:
        return t.expand(n).clone()
    if t.ndim > 2:
        raise InputError(f"{what}: class indices must be (N,) or (N, K), got shape {tuple(t.shape)}")
    if t.shape[0] != n:
        raise InputError(
            f"{what}: got {t.shape[0]} class indices for a batch of {n} samples; pass one per sample (length {n}), "
            f"an (N, K) tensor with N={n}, or a single int for all"
        )
    return t


def _check_range(idx: torch.Tensor, num_classes: int, what: str) -> None:
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= num_classes):
        bad = idx[(idx < 0) | (idx >= num_classes)].unique().tolist()
        raise InputError(
            f"{what}: class index {bad} out of range for an output with {num_classes} classes (0..{num_classes - 1})"
        )


def _logits(output: torch.Tensor, what: str) -> torch.Tensor:
    if not isinstance(output, torch.Tensor):
        raise InputTypeError(
            f"{what}: the model output is {type(output).__name__}, not a tensor; pass targets=callable(output) -> "
            f"scores (N,) or (N, K) that picks the score from it"
        )
    if output.ndim == 1:
        return output[:, None]
    if output.ndim != 2:
        raise InputError(
            f"{what}: class indices need an (N, classes) output, but the model output has shape "
            f"{tuple(output.shape)}; for segmentation or dense outputs use targets=ndcam.targets.SegmentationMask(...) "
            f"or any callable output -> (N,) scores"
        )
    return output


@dataclass
class ClassTarget:
    """Logit (or, for a single-logit head, signed logit) of given classes.

    Args:
        classes: an int for every sample, a length-N sequence / tensor, or an ``(N, K)`` tensor.
    """

    classes: int | Sequence[int] | torch.Tensor

    def indices(self, n: int, device: torch.device) -> torch.Tensor:
        return _per_sample(self.classes, n, device, "targets")

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        logits = _logits(output, "targets")
        idx = self.indices(logits.shape[0], logits.device)
        if logits.shape[1] == 1:
            # single-logit binary head: class 1 is the logit, class 0 is its negation
            _check_range(idx, 2, "targets (single-logit binary head)")
            sign = idx.to(logits.dtype) * 2 - 1
            return logits[:, 0].reshape((-1,) + (1,) * (idx.ndim - 1)) * sign
        _check_range(idx, logits.shape[1], "targets")
        if idx.ndim == 1:
            return logits.gather(1, idx[:, None])[:, 0]
        return logits.gather(1, idx)


@dataclass
class Contrastive:
    """Why class ``p`` rather than class ``q``: ``score_p - score_q`` (per sample or shared classes)."""

    p: int | Sequence[int] | torch.Tensor
    q: int | Sequence[int] | torch.Tensor

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        return ClassTarget(self.p)(output) - ClassTarget(self.q)(output)


@dataclass
class BinaryLogit:
    """Single-logit binary heads ``(N,)`` or ``(N, 1)``: the logit for the positive class, its negation otherwise."""

    positive: bool | Sequence[bool] | torch.Tensor = True

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        logits = _logits(output, "BinaryLogit")
        if logits.shape[1] != 1:
            raise InputError(f"BinaryLogit needs an (N,) or (N, 1) output, got {tuple(output.shape)}; use an int target")
        pos = torch.as_tensor(self.positive, device=logits.device).to(logits.dtype)
        return logits[:, 0] * (pos * 2 - 1)


@dataclass
class Regression:
    """Regression outputs: explain ``-(y - reference)^2`` (what keeps the prediction close to a reference value) or,
    with ``reference=None``, the predicted value itself.

    Args:
        index: output column (``None`` for an ``(N,)`` output or a single column).
        reference: value (scalar or per sample); ``None`` explains the raw prediction.
    """

    index: int | None = None
    reference: float | Sequence[float] | torch.Tensor | None = None

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        y = output.reshape(output.shape[0], -1)
        if self.index is None and y.shape[1] != 1:
            raise InputError(f"Regression: the output has {y.shape[1]} columns; pass index=<column>")
        y = y[:, 0 if self.index is None else self.index]
        if self.reference is None:
            return y
        ref = torch.as_tensor(self.reference, dtype=y.dtype, device=y.device)
        return -((y - ref) ** 2)


@dataclass
class SoftmaxProbability:
    """Softmax probability of given classes instead of their logit."""

    classes: int | Sequence[int] | torch.Tensor

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        logits = _logits(output, "SoftmaxProbability")
        return ClassTarget(self.classes)(torch.softmax(logits, dim=1))


@dataclass
class SegmentationMask:
    """Dense outputs ``(N, classes, *spatial)``: sum of the class score over a mask (all positions by default).

    Args:
        category: class channel (int or per sample).
        mask: ``(*spatial)`` or ``(N, *spatial)`` weights/boolean mask; ``None`` = all positions where the class is the
            arg-max of the output.
    """

    category: int | Sequence[int] | torch.Tensor
    mask: torch.Tensor | None = None

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        if output.ndim < 3:
            raise InputError(f"SegmentationMask needs an (N, classes, *spatial) output, got {tuple(output.shape)}")
        idx = _per_sample(self.category, output.shape[0], output.device, "SegmentationMask.category")
        if idx.ndim != 1:
            raise InputError("SegmentationMask.category must be one class per sample")
        _check_range(idx, output.shape[1], "SegmentationMask.category")
        sel = output[torch.arange(output.shape[0], device=output.device), idx]
        if self.mask is None:
            mask = (output.argmax(1) == idx.reshape((-1,) + (1,) * (output.ndim - 2))).to(output.dtype)
        else:
            mask = self.mask.to(device=output.device, dtype=output.dtype)
        return (sel * mask).reshape(output.shape[0], -1).sum(1)


@dataclass
class MultiLabel:
    """Multi-label heads (sigmoid per class): the logits of the given labels, or of every label above ``threshold``
    probability when ``labels is None`` (samples with fewer positive labels get their top logits to fill K).
    """

    labels: int | Sequence[int] | torch.Tensor | None = None
    threshold: float = 0.5

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        logits = _logits(output, "MultiLabel")
        if self.labels is not None:
            return ClassTarget(self.labels)(logits)
        k = int((torch.sigmoid(logits) > self.threshold).sum(1).max().clamp(min=1))
        return logits.topk(k, dim=1).values


class _TopClass:
    """Top-1 class of each sample (signed logit for single-logit heads)."""

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        logits = _logits(output, "targets=None")
        if logits.shape[1] == 1:
            return logits[:, 0].abs()
        return logits.amax(dim=1)

    @staticmethod
    def indices(output: torch.Tensor) -> torch.Tensor:
        logits = _logits(output, "targets=None")
        if logits.shape[1] == 1:
            return (logits[:, 0] > 0).long()
        return logits.argmax(dim=1)


def as_score_fn(targets: TargetSpec, n: int, device: torch.device) -> tuple[ScoreFn, torch.Tensor | None, bool]:
    """Validate ``targets`` for a batch of ``n`` and return ``(score_fn, class_indices or None, multi)``.

    ``multi`` is True when the caller asked for K maps per sample (an ``(N, K)`` tensor); for callables it is decided
    by the shape of the scores they return. Checks that need the output (class range) happen in the score function.
    """
    if targets is None:
        return _TopClass(), None, False
    if callable(targets) and not isinstance(targets, torch.Tensor):
        return targets, None, False
    if isinstance(targets, (str, bytes, float)) or not isinstance(targets, (int, Sequence, torch.Tensor)):
        raise InputTypeError(
            f"targets must be None, an int, a sequence/1-D tensor of N ints, an (N, K) integer tensor or a callable "
            f"output -> scores; got {type(targets).__name__}"
        )
    ct = ClassTarget(targets)
    idx = ct.indices(n, device)
    if (idx < 0).any():
        raise InputError(f"targets: negative class index {idx[idx < 0].unique().tolist()}; class indices start at 0")
    return ct, idx, idx.ndim == 2
