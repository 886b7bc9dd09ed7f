"""Orchestration shared by every CAM method: validation, capture, targets, per-layer maps, fusion, upsampling.

A method class only says how one captured layer becomes a map: it overrides :meth:`BaseCAM.weights` (channel weights
``(N, C)``, the map is their weighted sum of activations) or :meth:`BaseCAM.layer_map` (any ``(N, *S)`` map). The pure
formulas live as plain functions in the family modules (``gradient.py``, ``activation.py``) and are tested against
slow loop-based references.

A call runs in this order (:meth:`BaseCAM.explain`):

1. validation of everything that does not need the model's output (input, options, extra inputs, targets) -- bad
   input is refused before any forward pass;
2. the model's modules are locked (:func:`ndcam.capture.model_lock`: one call at a time on models that share any
   module, models that share nothing in parallel) and its state saved;
3. a :class:`CallContext` is made -- the per-call state (input, extra inputs, resolved targets, options, the
   :class:`~ndcam.capture.Capture`, the output and scores) -- and handed to the steps, so method instances hold
   configuration only and can be shared by threads;
4. capture forward, scores, checks that the scores can be explained (floating, finite, with a gradient path to the
   layers), per-layer maps (:meth:`BaseCAM._layer_maps`), fusion, upsampling, normalization;
5. checks of the result (a non-finite map is an error, a constant map a :class:`~ndcam.ConstantMapWarning`), then
   the model's state is restored and the lock released, also when something raised.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import os
import sys
import types
import warnings
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import torch
from torch import nn

from .. import ops
from ..capture import Capture, ModelInputs, ModelState, model_lock
from ..errors import BatchDependenceWarning, ConstantMapWarning, InputError, InputTypeError, LayerError
from ..explanation import Explanation
from ..layers import LayerSpec, auto_choice, check_not_scripted, resolve_layers
from ..smoothing import Augmentations, smooth
from ..targets import Targets, TargetSpec, _TopClass, logits_of, resolve_targets

__all__ = ["BaseCAM", "CallContext", "register", "REGISTRY", "OPTIONS", "range_and_normalize"]

REGISTRY: dict[str, type[BaseCAM]] = {}

#: the generic options every method takes (constructor: eigen_smooth, aug_smooth, reshape, per_sample; call: upsample,
#: normalize, forward_args/forward_kwargs), each with how asking for it reads: a method honours each option or lists
#: it in :attr:`BaseCAM.unsupported`
OPTIONS = {
    "eigen_smooth": "eigen_smooth=True",
    "aug_smooth": "aug_smooth",
    "reshape": "reshape= (a token-grid adapter)",
    "per_sample": "per_sample=True",
    "upsample": "upsample=False",
    "normalize": "normalize=False",
    "forward_args": "extra model inputs (forward_args / forward_kwargs)",
}


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


@dataclass
class CallContext:
    """Everything one call of a method needs, made fresh per call and handed to the steps.

    Method instances hold configuration only (model, layers, options); whatever a call computes lives here, so one
    instance can serve several threads (calls on one model still run one at a time under its lock).

    Attributes:
        x: the explained input ``(N, C, *spatial)``, detached, an ordinary (non-inference) tensor.
        inputs: the extra model inputs (``model(x, *args, **kwargs)``), per-sample tensors sliced/replicated with x.
        targets: the resolved targets; after the captured forward of a ``targets=None`` call, fixed to the top-1
            classes of the unperturbed output.
        upsample, normalize: the call's options.
        layers: the target layers ``[(name, module), ...]`` (resolved or chosen automatically).
        reshape: the adapter turning the layers' outputs into ``(N, C, *spatial)`` (or ``None``).
        cap: the :class:`~ndcam.capture.Capture` of the captured forward (while it runs).
        output: the model's output of the captured forward.
        scores: the target scores ``(N, K)`` (K = 1 for one map per sample).
        saved: what a method keeps for its caller (e.g. Guided Backprop's input gradients).
        state: what a method derives once per call and its steps share (e.g. the stochastic methods' call seed,
            set by :meth:`BaseCAM._start_call`); shared by the per-sample and augmented runs of the call.
        model_state: the model's state saved once at the start of the call (restored when the call ends, also on
            error); the call's captures put the model in eval mode from it instead of saving it again.
    """

    x: torch.Tensor
    inputs: ModelInputs
    targets: Targets
    upsample: bool = True
    normalize: bool = True
    layers: list = field(default_factory=list)
    reshape: Callable | None = None
    cap: Capture | None = None
    output: Any = None
    scores: torch.Tensor | None = None
    saved: dict = field(default_factory=dict)
    state: dict = field(default_factory=dict)
    model_state: ModelState | None = None

    @property
    def n(self) -> int:
        """Batch size."""
        return self.x.shape[0]

    @property
    def rank(self) -> int:
        """Spatial rank of the input."""
        return self.x.ndim - 2

    @property
    def score_fn(self) -> Callable:
        """``output -> scores``: the targets' score function."""
        return self.targets.score_fn

    @property
    def class_idx(self) -> torch.Tensor | None:
        """Class indices ``(N,)`` / ``(N, K)`` or ``None`` (callable targets)."""
        return self.targets.classes

    def model_call(self, model: nn.Module, x: torch.Tensor) -> Any:
        """``model(x, *extra inputs)`` with the extra per-sample inputs repeated to ``x``'s batch (b groups of N)."""
        if not self.inputs:
            return model(x)
        b = x.shape[0] // self.n
        return self.inputs.repeat(b).call(model, x)


def _bool(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise InputTypeError(f"{name} must be True or False, got {value!r}")
    return value


class _Bound(nn.Module):
    """``model`` with its extra inputs bound, for the automatic layer choice's probe (which calls ``probe(x)``)."""

    def __init__(self, model: nn.Module, inputs: ModelInputs) -> None:
        super().__init__()
        self.model = model
        self._inputs = inputs

    def forward(self, x: torch.Tensor) -> Any:
        k = x.shape[0]
        inputs = self._inputs if k == self._inputs.n else self._inputs.take(0, k)
        return inputs.call(self.model, x)


#: automatic choices made with extra inputs, per model: key -> (layer names, reshape)
_AUTO_WITH_INPUTS: weakref.WeakKeyDictionary[nn.Module, dict] = weakref.WeakKeyDictionary()


def _auto_with_inputs(model: nn.Module, x: torch.Tensor, inputs: ModelInputs, user_reshape: Callable | None = None):
    key = (tuple(x.shape[1:]), x.dtype, x.device, sum(1 for _ in model.modules()), inputs.signature(), id(user_reshape))
    cache = _AUTO_WITH_INPUTS.setdefault(model, {})
    if key not in cache:
        layers, reshape = auto_choice(_Bound(model, inputs), x, reshape=user_reshape)
        if any(name == "model" for name, _ in layers):
            raise LayerError(f"the automatic layer choice picked the whole {type(model).__name__}; pass layers=")
        cache[key] = ([name.split(".", 1)[1] for name, _ in layers], reshape)
    names, reshape = cache[key]
    return [(name, model.get_submodule(name)) for name in names], reshape


class BaseCAM:
    """Base class of every CAM method.

    Args:
        model: a PyTorch model mapping ``(N, C, *spatial)`` (plus any extra inputs, see :meth:`explain`) to class
            scores in any structure (a tensor, a dict / Hugging Face ``ModelOutput`` with ``logits``, a tuple, a
            dataclass: see :func:`ndcam.targets.logits_of`), or to anything a target callable reads.
        layers: ``None`` (automatic: the feature map of the last convolution of the input's rank), a dotted module
            name, an ``nn.Module``, or a list of those (their maps are fused: per-layer min-max, mean, min-max).
        reshape: optional callable turning a layer's output into ``(N, C, *spatial)`` (token models).
        eigen_smooth: replace each layer map by the first principal component of its channel contributions.
        aug_smooth: average over augmented inputs (``True`` for the rank's defaults, or :class:`ndcam.Augmentations`).
        per_sample: run the samples of a batch one by one. Needed for models that normalize with the statistics of the
            batch even in eval mode (``BatchNorm`` with ``track_running_stats=False``): their maps depend on the other
            samples of the batch, and a :class:`~ndcam.BatchDependenceWarning` says so when ``per_sample`` is off.

    Subclasses set ``uses_gradients`` and ``relu`` and override :meth:`weights` or :meth:`layer_map`.

    **Threads.** An instance holds configuration only; every call makes its own :class:`CallContext`. A call holds
    every module of the model (:func:`ndcam.capture.model_lock`) from start to end, so concurrent calls on one model,
    or on models that share a module (two heads on one backbone, a model and its wrapper) -- from this instance or any
    other -- run one after the other and give the maps of sequential calls, and the model is left as it was; calls on
    models that share nothing run in parallel.

    TorchScript modules (``torch.jit.script``/``trace``) are refused: their forward does not run Python forward hooks
    reliably, so no activation can be captured.
    """

    registry_name: ClassVar[str] = ""
    uses_gradients: ClassVar[bool] = True
    input_gradient: ClassVar[bool] = False
    relu: ClassVar[bool] = True
    #: whether the method explains target callables (``False``: class indices only; refused before any forward)
    callable_targets: ClassVar[bool] = True
    #: the generic options the method cannot honour, ``{option: why}`` (options from :data:`OPTIONS`): asking for one
    #: is refused with an :class:`~ndcam.InputError` naming it, before any forward pass (see :meth:`_refuse`)
    unsupported: ClassVar[Mapping[str, str]] = types.MappingProxyType({})
    #: whether the method runs perturbed forward passes (Score-CAM, Ablation-CAM): the CLI shows progress for these
    perturbative: ClassVar[bool] = False
    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "_run" in cls.__dict__ and len(inspect.signature(cls.__dict__["_run"]).parameters) != 2:
            raise TypeError(
                f"{cls.__name__}._run must take (self, ctx): the per-call CallContext; the earlier signature "
                f"(self, x, targets, score_fn, class_idx, upsample, normalize) is no longer supported -- use "
                f"_forward_context(ctx) for hooks and ctx.state for what they record"
            )
        if "_layer_maps" in cls.__dict__ and len(inspect.signature(cls.__dict__["_layer_maps"]).parameters) != 2:
            raise TypeError(
                f"{cls.__name__}._layer_maps must take (self, ctx): the per-call CallContext (ctx.cap, ctx.x, "
                f"ctx.scores, ctx.class_idx, ctx.score_fn, ctx.inputs); the earlier signature "
                f"(self, cap, x, sc, class_idx, score_fn) is no longer supported"
            )

    def __init__(
        self,
        model: nn.Module,
        layers: LayerSpec = None,
        *,
        reshape: Callable | None = None,
        eigen_smooth: bool = False,
        aug_smooth: bool | Augmentations = False,
        per_sample: bool = False,
    ) -> None:
        check_not_scripted(model)  # one refusal, shared with layer listing and the automatic choice
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
        self.per_sample = _bool(per_sample, "per_sample")
        self._refuse(eigen_smooth=self.eigen_smooth, aug_smooth=bool(aug_smooth), reshape=reshape is not None,
                     per_sample=self.per_sample)
        self._layers = None if layers is None else resolve_layers(model, layers)

    @classmethod
    def _refuse(cls, **asked: bool) -> None:
        """Raise :class:`~ndcam.InputError` for an option in :attr:`unsupported` that is asked for (``True``)."""
        for option, on in asked.items():
            if on and option in cls.unsupported:
                raise InputError(f"{cls.__name__} does not support {OPTIONS[option]}: {cls.unsupported[option]}")

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
        return ops.expand_like(w, activations.ndim) * activations

    def check_targets(self, targets: TargetSpec) -> None:
        """Method-specific target validation (before any forward pass). Default: methods with
        ``callable_targets = False`` refuse callables.
        """
        if not self.callable_targets and callable(targets) and not isinstance(targets, torch.Tensor):
            raise InputTypeError(
                f"{type(self).__name__} needs class indices as targets (None, int, sequence or (N, K) tensor), not a "
                f"callable"
            )

    # -- public entry points --------------------------------------------------------------------------------------
    def __call__(
        self,
        x: torch.Tensor,
        targets: TargetSpec = None,
        *,
        upsample: bool = True,
        normalize: bool = True,
        forward_args: tuple = (),
        forward_kwargs: Mapping[str, Any] | None = None,
    ) -> torch.Tensor:
        """Maps ``(N, *spatial)``, or ``(N, K, *spatial)`` for K targets per sample, float32 on ``x``'s device.

        Args:
            x: input ``(N, C, *spatial)``: the tensor explained.
            targets: see :mod:`ndcam.targets` (None = top-1 class).
            upsample: resize maps to ``x``'s spatial size (linear/bilinear/trilinear); ``False`` keeps the layer's.
            normalize: min-max each map to ``[0, 1]`` (constant maps become 0); ``False`` returns raw maps.
            forward_args: extra positional inputs of the model, passed after ``x``: ``model(x, *forward_args,
                **forward_kwargs)``. Tensors whose first axis has length N are per-sample: replicated with the
                perturbation methods' batches, sliced with ``per_sample=True``.
            forward_kwargs: extra keyword inputs of the model (e.g. ``{"attention_mask": m}``), same rules.
        """
        return self.explain(x, targets, upsample=upsample, normalize=normalize, forward_args=forward_args,
                            forward_kwargs=forward_kwargs).maps

    def explain(
        self,
        x: torch.Tensor,
        targets: TargetSpec = None,
        *,
        upsample: bool = True,
        normalize: bool = True,
        forward_args: tuple = (),
        forward_kwargs: Mapping[str, Any] | None = None,
    ) -> Explanation:
        """Like :meth:`__call__`, but returns an :class:`~ndcam.Explanation` with scores, targets and raw ranges.

        Raises:
            InputError / InputTypeError: bad input, options or targets (before any forward pass); class index out of
                range, NaN/inf or non-floating scores (after the forward, before any backward); a map with NaN/inf.
            LayerError: a layer that does not run, gives no ``(N, C, *spatial)`` output, or that the backward from the
                scores never reaches (a ``.detach()`` or reentrant checkpointing in the model).
            ForwardError: the model's own forward failed on the input.

        Warns:
            ConstantMapWarning: a map came out constant (all zero after normalization).
            BatchDependenceWarning: the model normalizes with batch statistics in eval mode and ``per_sample`` is off.
        """
        return self._explain(x, targets, upsample=upsample, normalize=normalize, forward_args=forward_args,
                             forward_kwargs=forward_kwargs)[0]

    def _explain(self, x, targets, *, upsample=True, normalize=True, forward_args=(), forward_kwargs=None,
                 save: tuple[str, ...] = ()) -> tuple[Explanation, dict]:
        """:meth:`explain` plus what the method saved for its caller (``ctx.saved``, merged over per-sample runs)."""
        _check_input(x)
        _check_device(self.model, x)
        _check_finite(x)
        upsample, normalize = _bool(upsample, "upsample"), _bool(normalize, "normalize")
        n = x.shape[0]
        inputs = ModelInputs.make(forward_args, forward_kwargs, n)
        self._refuse(upsample=not upsample, normalize=not normalize, forward_args=bool(inputs))
        self.check_targets(targets)
        with torch.inference_mode(False):  # class-index tensors made here must be usable by autograd
            resolved = resolve_targets(targets, n, x.device)
        with model_lock(self.model):
            state = ModelState.save(self.model)
            try:
                with torch.inference_mode(False) if torch.is_inference_mode_enabled() else contextlib.nullcontext():
                    x = x.detach()
                    if x.is_inference():  # made under torch.inference_mode(): autograd cannot use it as it is
                        x = x.clone()
                    ctx = CallContext(x, inputs.normal(), resolved, upsample, normalize,
                                      saved={k: [] for k in save}, model_state=state)
                    self._start_call(ctx)
                    if self.per_sample and n > 1:
                        exp = self._run_per_sample(ctx)
                    else:
                        if n > 1 and state.batch_statistics:
                            _warn_batch_dependence(self.model, state.batch_statistics)
                        exp = self._run_smoothed(ctx) if self.aug_smooth else self._run_call(ctx)
                _check_result(exp, self)
                return exp, ctx.saved
            finally:
                state.restore()

    def _run_per_sample(self, ctx: CallContext) -> Explanation:
        """``per_sample=True``: one call per sample, results concatenated (batch == per-sample calls)."""
        parts, saved = [], []
        for i in range(ctx.n):
            sub = replace(ctx, x=ctx.x[i : i + 1], inputs=ctx.inputs.take(i, i + 1), targets=ctx.targets.take(i, i + 1),
                          saved={k: [] for k in ctx.saved})
            parts.append(self._run_smoothed(sub) if self.aug_smooth else self._run_call(sub))
            saved.append(sub.saved)
        for key in ctx.saved:  # each entry: one tensor per target, batch axis first
            ctx.saved[key] = [torch.cat(items, dim=0) for items in zip(*(s[key] for s in saved))]
        cat = lambda ts: torch.cat(ts, dim=0)  # noqa: E731
        first = parts[0]
        if len({p.maps.shape[1:] for p in parts}) > 1:
            raise InputError(
                f"per_sample=True: the target callable gave a different number of scores per sample "
                f"({sorted({p.scores.shape[1] if p.scores.ndim == 2 else 1 for p in parts})}); return the same K for "
                f"every sample (e.g. MultiLabel(labels=[...]) instead of a threshold)"
            )
        return Explanation(
            maps=cat([p.maps for p in parts]),
            scores=cat([p.scores for p in parts]),
            targets=None if first.targets is None else cat([p.targets for p in parts]),
            layers=first.layers,
            method=first.method,
            raw_min=cat([p.raw_min for p in parts]),
            raw_max=cat([p.raw_max for p in parts]),
            input_shape=tuple(ctx.x.shape),
        )

    def _run_smoothed(self, ctx: CallContext) -> Explanation:
        """Augmentation smoothing (see :mod:`ndcam.smoothing`): maps at the input's resolution."""
        x = ctx.x
        aug = self.aug_smooth if isinstance(self.aug_smooth, Augmentations) else Augmentations.default(x.ndim - 2, x.shape[2:])
        aug.validate(x.ndim - 2)
        first = self._run_call(replace(ctx, upsample=True, normalize=False))
        targets = ctx.targets if first.targets is None or not ctx.targets.top1 else ctx.targets.fixed(first.targets)
        # the untransformed variant is `first` itself (same classes, same call seed): not run a second time
        raw = smooth(lambda xt: self._run_call(replace(ctx, x=xt, targets=targets, upsample=True, normalize=False)).maps,
                     x, aug, k_axis=first.scores.ndim == 2, identity=first.maps)
        maps, lo, hi = range_and_normalize(raw, 2 if first.scores.ndim == 2 else 1, ctx.normalize)
        first.maps, first.raw_min, first.raw_max = maps.float(), lo.float(), hi.float()
        return first

    # -- orchestration --------------------------------------------------------------------------------------------
    def _start_call(self, ctx: CallContext) -> None:
        """Derive what the whole call shares into ``ctx.state`` (runs once per call, under the model's lock, before
        any forward). Default: nothing.
        """

    def _forward_context(self, ctx: CallContext) -> contextlib.AbstractContextManager:
        """What the captured forward runs inside (Guided Backprop: its guided ReLU hooks). Default: nothing."""
        return contextlib.nullcontext()

    def _run_call(self, ctx: CallContext) -> Explanation:
        """One captured forward and its maps (:meth:`_run`; methods that wrap it override that)."""
        return self._run(ctx)

    def _run(self, ctx: CallContext) -> Explanation:
        """Capture, score, per-layer maps, fusion."""
        x = ctx.x
        ctx.layers, ctx.reshape = self._layers_for(ctx)
        with self._forward_context(ctx), Capture(self.model, ctx.layers, ctx.rank, grads=self.uses_gradients,
                                                 reshape=ctx.reshape, input_grad=self.input_gradient,
                                                 state=ctx.model_state) as cap:
            ctx.cap = cap
            try:
                output = ctx.output = cap.forward(x, ctx.inputs)
                scores = self._check_scores(ctx.score_fn(output), ctx.n)
                if self.uses_gradients or self.input_gradient:
                    _check_differentiable(scores, output, cap.names)
                if ctx.targets.top1:
                    # the top-1 class of the *unperturbed* output, from now on
                    ctx.targets = ctx.targets.fixed(_TopClass.indices(output))
                multi = scores.ndim == 2
                ctx.scores = scores if multi else scores[:, None]
                names = list(cap.names)
                per_layer = self._layer_maps(ctx)
            finally:
                cap.clear()
                ctx.cap = ctx.output = None
        maps, lo, hi = self._fuse(per_layer, x, ctx.upsample, ctx.normalize)
        if not multi:
            maps, lo, hi = maps[:, 0], lo[:, 0], hi[:, 0]
        return Explanation(
            maps=maps.float(),
            scores=scores.detach().float(),
            targets=ctx.class_idx,
            layers=_unique(names),
            method=self.registry_name or type(self).__name__,
            raw_min=lo.float(),
            raw_max=hi.float(),
            input_shape=tuple(x.shape),
        )

    def _layers_for(self, ctx: CallContext) -> tuple[list[tuple[str, nn.Module]], Callable | None]:
        """The call's target layers and reshape: the given ones, a method's own default, or the automatic choice."""
        if self._layers is not None:
            return self._layers, self.reshape
        if ctx.inputs:
            layers, reshape = _auto_with_inputs(self.model, ctx.x, ctx.inputs, self.reshape)
        else:
            layers, reshape = auto_choice(self.model, ctx.x, reshape=self.reshape)
        return layers, self.reshape if self.reshape is not None else reshape

    def _default_layers(self, x: torch.Tensor) -> list[tuple[str, nn.Module]]:
        """Layers used when ``layers=None``: the automatic choice (methods may override)."""
        return auto_choice(self.model, x, reshape=self.reshape)[0]

    def _layer_maps(self, ctx: CallContext) -> list[torch.Tensor]:
        """Raw maps ``(N, K, *S_l)``, one per captured layer call, for the K target scores ``ctx.scores`` ``(N, K)``.

        Runs inside the captured forward: ``ctx.cap`` holds the activations (and the graph for gradients),
        ``ctx.output`` the model's output, ``ctx.scores`` the scores; ``ctx.class_idx`` the resolved classes.
        """
        cap, sc, class_idx = ctx.cap, ctx.scores, ctx.class_idx
        assert cap is not None and sc is not None, "_layer_maps runs inside the captured forward"
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

    def _fuse(self, maps: list[torch.Tensor], x: torch.Tensor, upsample: bool, normalize: bool):
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
        if not scores.is_floating_point():
            raise InputTypeError(
                f"the target scores are {scores.dtype}, not floating: a score made of class decisions (argmax, "
                f"comparisons, .long()) has no gradient and does not change with the input; return the logit or "
                f"probability itself, e.g. lambda out: out[:, 3] instead of out.argmax(1) == 3"
            )
        if scores.ndim == 2 and scores.shape[1] == 0:
            raise InputError("targets give K=0 scores per sample; ask for at least one target")
        if not bool(torch.isfinite(scores).all()):
            raise InputError("the model's target scores contain NaN/inf; check the model and input (no map can be made)")
        return scores


def _check_differentiable(scores: torch.Tensor, output: Any, names: list[str]) -> None:
    """Gradient methods: the scores must hang from the graph that starts at the captured layers (or the input)."""
    if scores.requires_grad:
        return
    try:
        out_grad = logits_of(output).requires_grad
    except (InputTypeError, AttributeError):
        out_grad = None
    where = f"the target layer(s) {_unique(names)}" if names else "the input"
    if out_grad:
        raise InputError(
            "the target scores carry no gradient although the model's output does: the target callable detached them "
            "(.detach(), .item(), torch.tensor(...), .numpy(), or computed under torch.no_grad()); return a tensor "
            "computed from the output with differentiable operations"
        )
    raise LayerError(
        f"the target scores carry no gradient: the backward pass from them cannot reach {where}. The model cuts the "
        f"graph after the layer -- a .detach() or torch.no_grad() in its forward, or reentrant gradient checkpointing "
        f"(torch.utils.checkpoint.checkpoint(..., use_reentrant=True)) around the layer; use use_reentrant=False, "
        f"or choose a layer after the cut (ndcam.list_layers(model, x) lists the candidates)"
    )


_NDCAM_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _stacklevel() -> int:
    """Stack level of the first frame outside ndcam, so a warning points at the caller's line."""
    root = _NDCAM_ROOT
    frame: types.FrameType | None = sys._getframe(1)
    level = 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(root + os.sep):
        frame, level = frame.f_back, level + 1
    return level


def _warn_batch_dependence(model: nn.Module, mods: list[str]) -> None:
    if mods:
        shown = ", ".join(repr(m) for m in mods[:4]) + (f" and {len(mods) - 4} more" if len(mods) > 4 else "")
        warnings.warn(
            f"{type(model).__name__} normalizes with the statistics of the batch even in eval mode ({shown}: "
            f"BatchNorm with track_running_stats=False), so each sample's map depends on the other samples of the "
            f"batch; pass per_sample=True to the method to explain the samples one by one",
            BatchDependenceWarning,
            stacklevel=_stacklevel(),
        )


def _check_result(exp: Explanation, method: BaseCAM) -> None:
    """A non-finite map is an error; a constant map gets a :class:`~ndcam.ConstantMapWarning`."""
    lo, hi = exp.raw_min, exp.raw_max
    if not bool(torch.isfinite(lo).all() and torch.isfinite(hi).all()):
        bad = int((~(torch.isfinite(lo) & torch.isfinite(hi))).sum())
        raise InputError(
            f"{type(method).__name__} produced {bad} map(s) with NaN/inf values: the weights overflowed (very large "
            f"activations, gradients or scores, or a float16/bfloat16 model); try the model in float32/float64, a "
            f"layer nearer the input, or targets on a smaller scale (logits rather than exponentiated scores)"
        )
    constant = ops.constant_maps(lo, hi)
    if bool(constant.any()):
        k, total = int(constant.sum()), constant.numel()
        msg = (
            f"{type(method).__name__}: {k} of {total} map(s) came out constant (all zero after normalization), so "
            f"they show nothing. This happens when every channel weight is negative and the ReLU removes the map, "
            f"when the target score does not depend on the layer's spatial content, or when the input is constant. "
            f"Try normalize=False to see the raw map, another target or layer, or a method without ReLU (HiResCAM)"
        )
        exp.warnings.append(msg)
        warnings.warn(msg, ConstantMapWarning, stacklevel=_stacklevel())


def range_and_normalize(raw: torch.Tensor, batch_dims: int, normalize: bool):
    """``(maps, raw_min, raw_max)``: the raw maps' range and, if asked, the maps min-max normalized in place with it
    (one pass for the range, shared by both). ``raw`` must be a tensor the caller made and may overwrite.
    """
    lo, hi = ops.spatial_minmax(raw, batch_dims=batch_dims)
    maps = ops.minmax_normalize(raw, batch_dims=batch_dims, inplace=True, minmax=(lo, hi)) if normalize else raw
    return maps, lo, hi


def _unique(names: list[str]) -> list[str]:
    return list(dict.fromkeys(names))
