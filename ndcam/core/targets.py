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

**Which tensor class indices read** (:func:`logits_of`, the one rule every method and every ready-made target uses):
a tensor output is the logits; a mapping (``dict``, Hugging Face ``ModelOutput``) gives its ``"logits"`` entry, else
its only tensor value; a dataclass gives its ``logits`` field, else its only tensor field; a tuple or list gives its
first tensor element (Hugging Face ``return_dict=False``, ``(logits, features)``). Anything else, or a mapping with
several tensors and no ``"logits"``, is refused with a message asking for a callable target. A callable target
always receives the model's raw output, whatever its structure.

Targets given as indices (and the ready-made targets holding indices) are validated when the call starts, before
any forward pass: length N, integer dtype, no negative index, at least one target per sample. Only the class range
needs the output and is checked right after the forward pass.

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

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Union

import torch
import torch.nn.functional as F

from . import ops
from .errors import InputError, InputTypeError

__all__ = [
    "Detection",
    "TargetSpec",
    "ScoreFn",
    "ClassTarget",
    "Contrastive",
    "BinaryLogit",
    "Regression",
    "SoftmaxProbability",
    "ReST",
    "rest_scores",
    "SegmentationMask",
    "MultiLabel",
    "as_score_fn",
    "logits_of",
    "Targets",
    "resolve_targets",
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
    if t.is_inference():  # made under torch.inference_mode(): autograd cannot save it (gather's index)
        with torch.inference_mode(False):
            t = t.clone()
    if t.ndim == 0:
        return t.expand(n).clone()
    if t.ndim > 2:
        raise InputError(f"{what}: class indices must be (N,) or (N, K), got shape {tuple(t.shape)}")
    if t.shape[0] != n:
        raise InputError(
            f"{what}: got {t.shape[0]} class indices for a batch of {n} samples; pass one per sample (length {n}), "
            f"an (N, K) tensor with N={n}, or a single int for all"
        )
    if t.ndim == 2 and t.shape[1] == 0:
        raise InputError(f"{what}: an ({n}, 0) tensor asks for K=0 maps per sample; ask for at least one target")
    return t


def _check_range(idx: torch.Tensor, num_classes: int, what: str) -> None:
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= num_classes):
        bad = idx[(idx < 0) | (idx >= num_classes)].unique().tolist()
        raise InputError(
            f"{what}: class index {bad} out of range for an output with {num_classes} classes (0..{num_classes - 1})"
        )


def _describe(output: Any) -> str:
    if isinstance(output, Mapping):
        return f"{type(output).__name__} with keys {list(output.keys())}"
    return type(output).__name__


def logits_of(output: Any) -> torch.Tensor:
    """The tensor that class-index targets read from a model output (the one documented rule, see the module doc).

    * a tensor: itself;
    * a mapping (``dict``, ``OrderedDict``, Hugging Face ``ModelOutput``): its ``"logits"`` entry, else its only tensor
      value;
    * a dataclass: its ``logits`` field, else its only tensor field;
    * a tuple or list (also a named tuple): its first tensor element.

    Raises:
        InputTypeError: the output holds no tensor, or several with none called ``logits``: pass a callable target
            ``output -> scores (N,) or (N, K)`` that picks the score from it.

    Example:
        >>> import torch
        >>> logits_of({"logits": torch.zeros(2, 3), "hidden": torch.ones(2, 8)}).shape
        torch.Size([2, 3])
        >>> logits_of((torch.zeros(2, 3), torch.ones(2, 8))).shape
        torch.Size([2, 3])
    """
    if isinstance(output, torch.Tensor):
        return output
    found: list[torch.Tensor] = []
    if isinstance(output, Mapping):
        if isinstance(output.get("logits"), torch.Tensor):
            return output["logits"]
        found = [v for v in output.values() if isinstance(v, torch.Tensor)]
    elif dataclasses.is_dataclass(output) and not isinstance(output, type):
        logits = getattr(output, "logits", None)
        if isinstance(logits, torch.Tensor):
            return logits
        found = [getattr(output, f.name) for f in dataclasses.fields(output)
                 if isinstance(getattr(output, f.name, None), torch.Tensor)]
    elif isinstance(output, (tuple, list)):
        for v in output:
            if isinstance(v, torch.Tensor):
                return v
    if len(found) == 1:
        return found[0]
    why = "several tensors and none is called 'logits'" if found else "no tensor to read class scores from"
    raise InputTypeError(
        f"the model output is {_describe(output)}: {why}; pass targets=callable(output) -> scores (N,) or (N, K) "
        f"that picks the score, e.g. targets=lambda out: out['scores'][:, 3]"
    )


def _logits(output: Any, what: str) -> torch.Tensor:
    try:
        output = logits_of(output)
    except InputTypeError as err:
        raise InputTypeError(f"{what}: {err}") from None
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
            return ops.expand_like(logits[:, 0], idx) * sign
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

    def __call__(self, output: Any) -> torch.Tensor:
        output = logits_of(output)
        y = output.reshape(output.shape[0], -1)
        if self.index is None and y.shape[1] != 1:
            raise InputError(f"Regression: the output has {y.shape[1]} columns; pass index=<column>")
        y = y[:, 0 if self.index is None else self.index]
        if self.reference is None:
            return y
        ref = torch.as_tensor(self.reference, dtype=y.dtype, device=y.device)
        return -((y - ref) ** 2)


def rest_scores(logits: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    r"""ReST scores :math:`z_t + \log\mathrm{softmax}(z)_t` ``(N, K)`` for ``classes`` ``(N, K)``.

    For a single-logit binary head :math:`z` the two-class analogue: :math:`\pm z + \log\sigma(\pm z)` (sign ``+``
    for class 1).
    """
    if logits.shape[1] == 1:
        signed = logits[:, :1] * (classes.to(logits.dtype) * 2 - 1)
        return signed + F.logsigmoid(signed)
    return logits.gather(1, classes) + torch.log_softmax(logits, dim=1).gather(1, classes)


@dataclass
class ReST:
    r"""ReST target (Residual Softmax Target-class) of given classes, for any method: the logit plus its
    log-softmax probability, :math:`z_t + \log\mathrm{softmax}(z)_t` (:func:`rest_scores`; ShapleyCAM's default).

    Cai, "CAMs as Shapley Value-based Explainers", 2025, https://arxiv.org/abs/2501.06261.

    Args:
        classes: an int for every sample, a length-N sequence / tensor, or an ``(N, K)`` tensor.
    """

    classes: int | list[int] | torch.Tensor

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        logits = _logits(output, "ReST")
        idx = ClassTarget(self.classes).indices(logits.shape[0], logits.device)
        ClassTarget(idx)(logits)  # range checks
        s = rest_scores(logits, idx if idx.ndim == 2 else idx[:, None])
        return s if idx.ndim == 2 else s[:, 0]


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

    def __call__(self, output: Any) -> torch.Tensor:
        output = logits_of(output)
        if output.ndim < 3:
            raise InputError(f"SegmentationMask needs an (N, classes, *spatial) output, got {tuple(output.shape)}")
        idx = _per_sample(self.category, output.shape[0], output.device, "SegmentationMask.category")
        if idx.ndim != 1:
            raise InputError("SegmentationMask.category must be one class per sample")
        _check_range(idx, output.shape[1], "SegmentationMask.category")
        sel = output[torch.arange(output.shape[0], device=output.device), idx]
        if self.mask is None:
            mask = (output.argmax(1) == ops.expand_like(idx, output.ndim - 1)).to(output.dtype)
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


def _prevalidate(target: Any, n: int, device: torch.device) -> None:
    """Check the class indices a ready-made target holds against the batch, before any forward pass."""
    if isinstance(target, ClassTarget):
        _check_indices(target.classes, n, device, "ClassTarget.classes")
    elif isinstance(target, Contrastive):
        _check_indices(target.p, n, device, "Contrastive.p")
        _check_indices(target.q, n, device, "Contrastive.q")
    elif isinstance(target, SoftmaxProbability):
        _check_indices(target.classes, n, device, "SoftmaxProbability.classes")
    elif isinstance(target, MultiLabel) and target.labels is not None:
        _check_indices(target.labels, n, device, "MultiLabel.labels")
    elif isinstance(target, SegmentationMask):
        idx = _check_indices(target.category, n, device, "SegmentationMask.category")
        if idx.ndim != 1:
            raise InputError("SegmentationMask.category must be one class per sample (an int or N ints)")


def _check_indices(value: Any, n: int, device: torch.device, what: str) -> torch.Tensor:
    if isinstance(value, (str, bytes, float)) or not isinstance(value, (int, Sequence, torch.Tensor)):
        raise InputTypeError(
            f"{what} must be an int, a sequence/1-D tensor of N ints or an (N, K) integer tensor; got "
            f"{type(value).__name__}"
        )
    idx = _per_sample(value, n, device, what)
    if idx.numel() and bool((idx < 0).any()):
        raise InputError(f"{what}: negative class index {idx[idx < 0].unique().tolist()}; class indices start at 0")
    return idx


@dataclass
class Targets:
    """Targets resolved once per call (see :func:`resolve_targets`).

    Attributes:
        spec: what the caller passed.
        score_fn: ``output -> scores (N,) or (N, K)``; for ``spec=None`` the top-1 logit until the output is known.
        classes: class indices ``(N,)`` or ``(N, K)`` when the targets are classes, else ``None`` (also for
            ``spec=None`` before the forward pass; see :meth:`fixed`).
        multi: whether K maps per sample were asked for with an ``(N, K)`` tensor (callables decide by their scores).
    """

    spec: Any
    score_fn: ScoreFn
    classes: torch.Tensor | None
    multi: bool

    @property
    def top1(self) -> bool:
        """Whether the classes are the top-1 classes of the output (``targets=None``)."""
        return self.spec is None

    @property
    def classes_nk(self) -> torch.Tensor | None:
        """Class indices as ``(N, K)`` (K = 1 for one class per sample), or ``None``."""
        if self.classes is None:
            return None
        return self.classes if self.classes.ndim == 2 else self.classes[:, None]

    def fixed(self, classes: torch.Tensor) -> Targets:
        """Targets fixed to ``classes`` (the top-1 classes of an unperturbed output): from now on they are these
        classes, no longer "the top-1 class" of whatever output comes next (an augmented or perturbed one).
        """
        return Targets(classes, ClassTarget(classes), classes, classes.ndim == 2)

    def take(self, start: int, stop: int) -> Targets:
        """The targets of samples ``start:stop`` (callables are shared: they receive the smaller outputs)."""
        if self.classes is None:
            return self
        sub = self.classes[start:stop]
        return Targets(self.spec, ClassTarget(sub), sub, self.multi)


def resolve_targets(targets: TargetSpec, n: int, device: torch.device) -> Targets:
    """Validate ``targets`` for a batch of ``n`` (before any forward pass) and resolve them into a :class:`Targets`.

    Raises:
        InputTypeError: a target of the wrong type (float, str, float tensor, bool).
        InputError: wrong length, negative index, ``(N, 0)`` tensor, more than two axes; the same checks for the
            indices held by the ready-made targets (:class:`ClassTarget`, :class:`Contrastive`, ...).
    """
    if targets is None:
        return Targets(None, _TopClass(), None, False)
    if callable(targets) and not isinstance(targets, torch.Tensor):
        _prevalidate(targets, n, device)
        return Targets(targets, targets, None, False)
    if isinstance(targets, (str, bytes, float)) or not isinstance(targets, (int, Sequence, torch.Tensor)):
        raise InputTypeError(
            f"targets must be None, an int, a sequence/1-D tensor of N ints, an (N, K) integer tensor or a callable "
            f"output -> scores; got {type(targets).__name__}"
        )
    idx = _check_indices(targets, n, device, "targets")
    return Targets(targets, ClassTarget(idx), idx, idx.ndim == 2)


def as_score_fn(targets: TargetSpec, n: int, device: torch.device) -> tuple[ScoreFn, torch.Tensor | None, bool]:
    """Validate ``targets`` for a batch of ``n`` and return ``(score_fn, class_indices or None, multi)``.

    Kept for callers of the earlier API; :func:`resolve_targets` returns the same as one object.
    """
    t = resolve_targets(targets, n, device)
    return t.score_fn, t.classes, t.multi


from .detection import DetectionTarget as Detection  # noqa: E402 -- detection imports nothing of targets

