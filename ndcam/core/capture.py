"""Hook handling: record activations at target layers and their gradients from the target scores only.

:class:`Capture` is a context manager. Inside it, the model's forward runs in this order:

1. the trunk up to the first target layer runs under ``torch.no_grad()``: no graph, inference memory;
2. at the first target layer that completes, its output is detached into a leaf that requires grad and gradient
   recording is switched on for the rest of the forward, so the graph spans only the head;
3. :meth:`Capture.gradients` calls ``torch.autograd.grad(scores, activations)``: the backward runs from the scores to
   the target layers only and never writes a parameter's ``.grad``.

Each captured output is handed on to the rest of the network as a *clone*, so an in-place operation after the target
layer (``ReLU(inplace=True)``, ``out += identity`` in torchvision-style blocks) cannot change the recorded activation or
break autograd.

A module that runs more than once in one forward (a shared block, a recurrent cell) is captured at every call; each
call is one more activation, and methods fuse them like a list of layers.

On exit (also after an exception) every hook is removed and the model's per-module ``training`` flags and the grad
mode are restored. While capturing, the model is in eval mode, so BatchNorm running statistics never change.

The hooks record only during :meth:`Capture.forward`: a forward that gradient checkpointing re-runs inside the backward
is not recorded a second time.

**Threads.** Hooks and ``training`` flags belong to the modules, which every thread -- and every model that contains
them -- shares, so a call must have its model's modules to itself: :func:`model_lock` holds all of them for the whole
of a call (every method takes it, and the automatic layer choice for its probe). Calls on one model, or on models that
share any module (two heads on one backbone, a model and its wrapper), therefore run one after the other and give the
maps of sequential calls; calls on models that share nothing run in parallel.

This module also holds what running a model with *several inputs* and *any output structure* needs:
:class:`ModelInputs` (the extra positional/keyword arguments passed after the explained tensor, replicated or sliced
with the batch) and :func:`slice_batch` (the samples ``j*n .. (j+1)*n`` of any output structure).
"""

from __future__ import annotations

import dataclasses
import functools
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .errors import DeadlockError, InputTypeError, LayerError, NdcamError, model_forward

__all__ = ["Capture", "ModelState", "ModelInputs", "ModelLock", "model_lock", "slice_batch", "this_thread", "tree_map"]


class _Claims:
    """Which thread holds which module, for :func:`model_lock` (one instance, :data:`_CLAIMS`).

    ``owners`` maps ``id(module)`` to ``[thread id, depth, module]`` for the modules held *now* and nothing else: an
    entry is removed when its depth drops to 0, so there is nothing to collect with the model (the module itself is
    kept alive only while it is held, which also keeps its ``id`` from being reused by another module meanwhile).
    ``waiting`` maps each blocked thread to the modules it waits for (read by the deadlock check). One condition
    variable guards both; it is held for the bookkeeping only, never while a model runs.
    """

    def __init__(self) -> None:
        self.cond = threading.Condition(threading.Lock())
        self.owners: dict[int, list] = {}
        self.waiting: dict[int, list[nn.Module]] = {}

    def _take(self, modules: list[nn.Module], me: int) -> int | None:
        """Take all of ``modules`` for ``me`` and return ``None``, or take nothing and return a thread that holds one.

        One pass in the usual case (nothing held by another thread); on a conflict, or an error half-way (an
        interrupt), what this pass took is given back.
        """
        owners, taken = self.owners, 0
        try:
            for m in modules:
                entry = owners.get(id(m))
                if entry is None:
                    owners[id(m)] = [me, 1, m]
                elif entry[0] == me:
                    entry[1] += 1
                else:
                    self._release(modules[:taken], notify=False)
                    return entry[0]
                taken += 1
        except BaseException:
            self._release(modules[:taken], notify=False)
            raise
        return None

    def _deadlocked(self, me: int, blocker: int) -> bool:
        """Whether waiting for ``blocker`` closes a cycle: a chain of blocked threads, each waiting for a module the
        next one holds, that leads back to ``me``. Those threads can never move again, so ``me`` must not wait.
        """
        seen, todo = {blocker}, [blocker]
        while todo:
            wanted = self.waiting.get(todo.pop())
            if wanted is None:  # running: it will release what it holds
                continue
            for m in wanted:
                entry = self.owners.get(id(m))
                if entry is None or entry[0] in seen:
                    continue
                if entry[0] == me:
                    return True
                seen.add(entry[0])
                todo.append(entry[0])
        return False

    def acquire(self, modules: list[nn.Module]) -> None:
        """Take all of ``modules`` for this thread at once (modules it already holds: one level deeper)."""
        me = threading.get_ident()
        with self.cond:
            try:
                while (blocker := self._take(modules, me)) is not None:
                    # none of `modules` is taken while waiting: no call holds part of what another one waits for
                    self.waiting[me] = modules
                    if self._deadlocked(me, blocker):
                        raise DeadlockError(
                            "deadlock: this thread holds a model (an ndcam call or model_lock) and waits for modules "
                            "that another thread holds while it waits for this thread's; nested calls on models "
                            "that share no module must be taken in the same order in every thread (or not nested). "
                            "This call was refused so that the other thread can go on."
                        )
                    self.cond.wait()
            finally:
                self.waiting.pop(me, None)

    def _release(self, modules: list[nn.Module], notify: bool = True) -> None:
        owners = self.owners
        for m in modules:
            entry = owners[id(m)]
            entry[1] -= 1
            if entry[1] == 0:
                del owners[id(m)]
        if notify and self.waiting:
            self.cond.notify_all()

    def release(self, modules: list[nn.Module]) -> None:
        with self.cond:
            self._release(modules)

    def held(self) -> int:
        """How many modules are held by any thread now (0 when no call runs)."""
        with self.cond:
            return len(self.owners)


_CLAIMS = _Claims()


class ModelLock:
    """Context manager holding every module of a model for the current thread (see :func:`model_lock`)."""

    __slots__ = ("model", "_held")

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self._held: dict[int, list[list[nn.Module]]] = {}  # per thread: the module lists of nested ``with`` blocks

    def __enter__(self) -> ModelLock:
        modules = list(self.model.modules())  # walked before anything is taken: an error here holds nothing
        me = threading.get_ident()
        stack = self._held.setdefault(me, [])
        acquired = False
        try:
            _CLAIMS.acquire(modules)  # all or nothing, also when interrupted while waiting
            acquired = True
            stack.append(modules)
        except BaseException:  # e.g. KeyboardInterrupt right after the claim: hold nothing
            if acquired and (not stack or stack[-1] is not modules):
                _CLAIMS.release(modules)
            if not stack:
                self._held.pop(me, None)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        me = threading.get_ident()
        stack = self._held.get(me)
        if not stack:  # left on another thread than it was entered on (a generator closed elsewhere): the
            # claim belongs to the entering thread; give back that thread's innermost one, never leak it
            owner = next((t for t, s in self._held.items() if s), None)
            if owner is None:
                return
            me, stack = owner, self._held[owner]
        modules = stack.pop()
        if not stack:
            del self._held[me]
        _CLAIMS.release(modules)  # the list taken on entry: right even if the model's modules changed meanwhile


def model_lock(model: nn.Module) -> ModelLock:
    """Hold every module of ``model`` for this thread: what every ndcam method holds for the whole of a call.

    Hooks, ``training`` flags and BatchNorm statistics belong to *modules*, which several models can share (two heads
    on one backbone, one model wrapped twice, a model and one of its submodules). A call therefore takes all of
    ``model.modules()`` at once: it waits while another thread holds any of them, and two calls whose models share a
    module run one after the other; models that share nothing run in parallel.

    * **All at once.** The modules are taken in one step, when none is held by another thread; a waiting call holds
      nothing. So the order in which threads lock models never matters: calls on models sharing modules cannot
      deadlock, whatever the order in which their roots list the shared blocks or the threads nest them.
    * **Re-entrant.** A thread may take modules it already holds (a method calling another method, Guided Grad-CAM's
      two passes, a call on a submodule of the model it holds).
    * **Deadlock check.** Only a thread that already holds a model can wait while holding something: if two threads
      each hold a model and wait for the other's (nested calls on unrelated models, in opposite orders), the second
      to wait gets a :class:`~ndcam.DeadlockError` instead of both hanging.
    * **Nothing kept.** Only the modules held *now* are recorded, so nothing stays behind for a model that is
      garbage-collected. The cost is a walk over the modules and two short passes of bookkeeping (tens of
      microseconds for a ResNet-50's 151 modules).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> backbone = nn.Sequential(nn.Conv1d(1, 4, 3), nn.ReLU())
        >>> head_a, head_b = nn.Sequential(backbone, nn.Flatten()), nn.Sequential(backbone, nn.Flatten())
        >>> with model_lock(head_a):  # another thread explaining head_b waits here: they share the backbone
        ...     with model_lock(backbone):  # re-entrant: this thread holds the backbone already
        ...         pass
    """
    return ModelLock(model)


def tree_map(fn: Callable[[torch.Tensor], Any], obj: Any) -> Any:
    """Apply ``fn`` to every tensor inside tuples, lists, named tuples, mappings and dataclasses; keep the rest.

    Containers are rebuilt with their own type where it can be done (``OrderedDict`` and Hugging Face
    ``ModelOutput`` subclasses, named tuples, dataclasses); other mappings become ``dict``.
    """
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # named tuple
        return type(obj)(*(tree_map(fn, v) for v in obj))
    if isinstance(obj, (tuple, list)):
        return type(obj)(tree_map(fn, v) for v in obj)
    if isinstance(obj, Mapping):
        items = {k: tree_map(fn, v) for k, v in obj.items()}
        try:
            return type(obj)(**items) if dataclasses.is_dataclass(obj) else type(obj)(items)  # type: ignore[call-arg]
        except TypeError:
            return items
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        changes = {f.name: tree_map(fn, getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.init}
        return dataclasses.replace(obj, **changes)
    return obj


def _is_per_sample_list(obj: Any, total: int) -> bool:
    """A list of ``total`` per-sample results (torchvision detection: one dict per image), to be sliced itself."""
    return (isinstance(obj, list) and len(obj) == total and total > 0
            and not any(isinstance(v, torch.Tensor) and v.ndim and v.shape[0] == total for v in obj))


def slice_batch(output: Any, start: int, stop: int, total: int) -> Any:
    """Samples ``start:stop`` of a model output of batch size ``total``, whatever its structure.

    Every tensor whose first axis has length ``total`` is sliced (others -- a scalar loss, a per-class table -- are
    kept); a list of ``total`` per-sample results (one dict per image) is sliced as a list. Used by the perturbation
    methods, which run ``b`` groups of N samples in one forward and score each group like an ordinary output.

    Example:
        >>> import torch
        >>> out = {"logits": torch.arange(6.0).reshape(6, 1), "temperature": torch.tensor(2.0)}
        >>> slice_batch(out, 2, 4, 6)["logits"].flatten().tolist(), slice_batch(out, 2, 4, 6)["temperature"].item()
        ([2.0, 3.0], 2.0)
    """
    if start == 0 and stop == total:
        return output
    if isinstance(output, torch.Tensor):
        return output[start:stop] if output.ndim and output.shape[0] == total else output
    if _is_per_sample_list(output, total):
        return output[start:stop]
    return tree_map(lambda t: t[start:stop] if t.ndim and t.shape[0] == total else t, output)


@dataclass
class ModelInputs:
    """The arguments a model takes after the explained tensor: ``model(x, *args, **kwargs)``.

    Tensors (also inside lists, tuples, dicts) whose first axis has the batch's length ``n`` are *per-sample*: they are
    replicated with the perturbation methods' batches and sliced with the samples (``per_sample=True``, the
    automatic layer choice's one-sample probe); everything else is passed unchanged.
    """

    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    n: int = 0

    @classmethod
    def make(cls, args: Any, kwargs: Any, n: int) -> ModelInputs:
        """Validate ``forward_args`` / ``forward_kwargs`` (before any forward pass)."""
        if args is None:
            args = ()
        if not isinstance(args, (tuple, list)):
            raise InputTypeError(
                f"forward_args must be a tuple of the extra positional inputs the model takes after x, got "
                f"{type(args).__name__}; for one extra input write forward_args=(mask,)"
            )
        if kwargs is None:
            kwargs = {}
        if not isinstance(kwargs, Mapping) or not all(isinstance(k, str) for k in kwargs):
            raise InputTypeError(f"forward_kwargs must be a dict name -> value, got {type(kwargs).__name__}")
        return cls(tuple(args), dict(kwargs), n)

    def __bool__(self) -> bool:
        return bool(self.args) or bool(self.kwargs)

    def _map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> tuple[tuple, dict]:
        def per(t: torch.Tensor) -> torch.Tensor:
            return fn(t) if t.ndim and t.shape[0] == self.n else t

        return tree_map(per, self.args), tree_map(per, self.kwargs)

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor], n: int | None = None) -> ModelInputs:
        """Apply ``fn`` to the per-sample tensors; the result is per-sample for a batch of ``n``."""
        if not self:
            return ModelInputs(n=self.n if n is None else n)
        args, kwargs = self._map(fn)
        return ModelInputs(args, kwargs, self.n if n is None else n)

    def repeat(self, b: int) -> ModelInputs:
        """Per-sample tensors repeated ``b`` times along the batch axis (``b`` groups of the N samples)."""
        if b == 1 or not self:
            return self
        return self.map(lambda t: t.repeat(b, *([1] * (t.ndim - 1))), self.n * b)

    def take(self, start: int, stop: int) -> ModelInputs:
        """Per-sample tensors of samples ``start:stop``."""
        return self.map(lambda t: t[start:stop], stop - start)

    def normal(self) -> ModelInputs:
        """Inference-mode tensors cloned into ordinary tensors (call under ``torch.inference_mode(False)``)."""
        if not self:
            return self
        fix = lambda t: t.clone() if t.is_inference() else t  # noqa: E731
        return ModelInputs(tree_map(fix, self.args), tree_map(fix, self.kwargs), self.n)

    def signature(self) -> tuple:
        """A hashable summary (tensor shapes and dtypes, other values' types) for caches keyed by the inputs."""
        sig: list = []

        def note(t: torch.Tensor) -> torch.Tensor:
            sig.append((tuple(t.shape), t.dtype, t.device))
            return t

        def plain(v: Any) -> Any:  # other values: scalars and strings by value (they can change the forward's path)
            return v if isinstance(v, (bool, int, float, str, type(None))) else type(v).__name__

        tree_map(note, (self.args, self.kwargs))
        others = tuple(plain(v) for v in self.args if not isinstance(v, torch.Tensor))
        others += tuple((k, plain(v)) for k, v in sorted(self.kwargs.items()) if not isinstance(v, torch.Tensor))
        return (len(self.args), tuple(sorted(self.kwargs)), tuple(sig), others)

    def call(self, model: Callable, x: torch.Tensor) -> Any:
        return model(x, *self.args, **self.kwargs)


def this_thread(hook: Callable) -> Callable:
    """``hook`` for the calling thread only: when another thread runs the model meanwhile -- a plain inference served
    next to an explanation, which takes no lock -- the hook does nothing, so that forward is neither recorded nor
    changed (Ablation-CAM's zeroed channels, Guided Backprop's ReLUs) and the explanation records only its own.
    Every hook ndcam puts on a user's modules goes through this.
    """
    owner = threading.get_ident()

    @functools.wraps(hook)
    def only_here(*args: Any, **kwargs: Any) -> Any:
        if threading.get_ident() != owner:
            return None
        return hook(*args, **kwargs)

    # a torch.compile'd model runs the hook eagerly (dynamo cannot trace the thread check: it would warn and break)
    return torch.compiler.disable(only_here)


@dataclass
class ModelState:
    """What an explanation must leave as it found it: training flags, grad mode, inference mode.

    ``batch_statistics`` names the modules that normalize with the statistics of the batch even in eval mode
    (``BatchNorm`` with ``track_running_stats=False``), found on the same pass over the modules.
    """

    training: dict[nn.Module, bool] = field(default_factory=dict)
    grad_enabled: bool = True
    batch_statistics: list[str] = field(default_factory=list)

    @classmethod
    def save(cls, model: nn.Module) -> ModelState:
        training = {}
        batch_statistics = []
        for name, m in model.named_modules():
            training[m] = m.training
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is None:
                batch_statistics.append(name or type(m).__name__)
        return cls(training, torch.is_grad_enabled(), batch_statistics)

    def eval(self) -> None:
        """Put every module in eval mode (touching only those in training mode)."""
        for m, flag in self.training.items():
            if flag:
                m.training = False

    def restore(self) -> None:
        for m, flag in self.training.items():
            if m.training != flag:
                m.training = flag
        torch.set_grad_enabled(self.grad_enabled)


class Capture:
    """Context manager that records the outputs of ``layers`` and their gradients with respect to chosen scores.

    Args:
        model: the model.
        layers: ``[(name, module), ...]`` to record.
        rank: spatial rank of the input; every captured output must be ``(N, C, *spatial)`` with this rank.
        grads: whether gradients will be needed (switches grad recording on after the first target layer).
        reshape: optional callable turning a layer's raw output into ``(N, C, *spatial)`` (token models).
        input_grad: whether gradients with respect to the input will be needed.
        state: the model's state as the caller saved it (an explanation call saves it once and restores it when the
            call ends); without it the capture saves the state on entry and restores it on exit.

    Example:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Conv1d(1, 4, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool1d(1),
        ...                           torch.nn.Flatten(), torch.nn.Linear(4, 2))
        >>> with Capture(net, [("1", net[1])], rank=1) as cap:
        ...     out = cap.forward(torch.randn(3, 1, 16))
        ...     grads = cap.gradients(out[:, 0])
        >>> cap.activations[0].shape, grads[0].shape
        (torch.Size([3, 4, 14]), torch.Size([3, 4, 14]))
    """

    def __init__(
        self,
        model: nn.Module,
        layers: list[tuple[str, nn.Module]],
        rank: int,
        grads: bool = True,
        reshape=None,
        input_grad: bool = False,
        state: ModelState | None = None,
    ) -> None:
        self.model = model
        self.input_grad = input_grad
        self.input: torch.Tensor | None = None
        self.layers = layers
        self.rank = rank
        self.need_grads = grads
        self.reshape = reshape
        self._raw: list[torch.Tensor] = []
        self.names: list[str] = []
        self._handles: list = []
        self._state: ModelState | None = None
        self._given_state = state
        self._grad_on_enter = True
        self._batch = 0
        self._recording = False

    # -- context management -------------------------------------------------------------------------------------
    def __enter__(self) -> Capture:
        state = self._given_state
        if state is None:  # used on its own: save the model's state here, restore it on exit
            state = self._state = ModelState.save(self.model)
        self._grad_on_enter = torch.is_grad_enabled()
        try:
            state.eval()
            for name, module in self.layers:
                self._handles.append(module.register_forward_hook(this_thread(self._make_hook(name))))
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def remove_hooks(self) -> None:
        """Detach the recording hooks (the model stays in eval mode until the context exits)."""
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def __exit__(self, *exc) -> None:
        self.remove_hooks()
        if self._state is not None:
            self._state.restore()
            self._state = None
        else:  # the caller restores the model's state; give back the grad mode the capture switched
            torch.set_grad_enabled(self._grad_on_enter)

    # -- hooks --------------------------------------------------------------------------------------------------
    def _check(self, name: str, module: nn.Module, act: object) -> None:
        if isinstance(act, torch.Tensor) and act.ndim == self.rank + 2 and act.shape[0] == self._batch:
            if not act.is_floating_point():
                raise LayerError(f"layer {name!r} gives a {act.dtype} output; CAM needs floating activations")
            return
        got = tuple(act.shape) if isinstance(act, torch.Tensor) else type(act).__name__
        dims = " ".join(["L", "H W", "D H W"][self.rank - 1].split()) if 1 <= self.rank <= 3 else f"<{self.rank} axes>"
        raise LayerError(
            f"layer {name!r} ({type(module).__name__}) gives output {got}, not (N={self._batch}, C, {dims}) for a "
            f"rank-{self.rank} input; choose a convolutional layer (ndcam.list_layers(model, x) marks the usable "
            f"ones) or, for token models, pass reshape= to turn tokens into a grid"
        )

    def _reshaped(self, name: str, output: torch.Tensor) -> Any:
        """The layer's output through ``reshape=``; what the adapter raises is a :class:`LayerError` naming the layer
        (it is the caller's code, not the model's forward, that failed).
        """
        if self.reshape is None:
            return output
        try:
            return self.reshape(output)
        except NdcamError:
            raise
        except Exception as err:  # noqa: BLE001 -- whatever the adapter raises, with context
            raise LayerError(
                f"reshape= ({getattr(self.reshape, '__name__', type(self.reshape).__name__)}) failed on the output "
                f"{tuple(output.shape)} of layer {name!r}: {type(err).__name__}: {err}"
            ) from err

    def _make_hook(self, name: str):
        def hook(module: nn.Module, inputs: object, output: Any) -> torch.Tensor | None:
            if not self._recording:  # e.g. a checkpointed segment re-run by the backward
                return None
            if not isinstance(output, torch.Tensor):
                self._check(name, module, output)
            self._check(name, module, self._reshaped(name, output))
            self.names.append(name)
            if not self.need_grads:
                self._raw.append(output.detach().clone())
                return None
            raw = output
            if not raw.requires_grad:
                # the trunk ran without a graph: start one here, a leaf the backward stops at
                raw = raw.detach().requires_grad_(True)
                torch.set_grad_enabled(True)
            self._raw.append(raw)
            # downstream in-place ops touch the clone, never the recorded activation
            return raw.clone()

        return hook

    # -- results ------------------------------------------------------------------------------------------------
    @property
    def raw_outputs(self) -> list[torch.Tensor]:
        """The layers' outputs as the model produced them (before ``reshape``), detached."""
        return [r.detach() for r in self._raw]

    @property
    def outputs_with_graph(self) -> list[torch.Tensor]:
        """The layers' outputs as the model produced them (before ``reshape``), *not* detached: with gradients
        (``grads=True``) each is the leaf the head's graph starts from, so a method can differentiate the scores with
        respect to them -- also twice (``create_graph=True``, ShapleyCAM's Hessian-vector product).
        """
        return list(self._raw)

    @property
    def activations(self) -> list[torch.Tensor]:
        """Recorded activations ``(N, C, *spatial)``, one per captured call, detached."""
        return [self._view(r.detach()) for r in self._raw]

    def _view(self, t: torch.Tensor) -> torch.Tensor:
        return self.reshape(t) if self.reshape is not None else t

    def clear(self) -> None:
        """Drop recorded activations (and the graph hanging from them)."""
        self._raw = []
        self.names = []
        self.input = None

    # -- running ------------------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, inputs: ModelInputs | None = None) -> Any:
        """Run the model on ``x`` (and the extra ``inputs``): trunk without graph, head with graph (if gradients are
        needed). Returns the model's output, whatever its structure.
        """
        self.clear()
        self._batch = x.shape[0]
        if self.input_grad:  # methods that need d score / d input build the graph from the input on
            x = self.input = x.detach().requires_grad_(True)
        torch.set_grad_enabled(self.input_grad)
        self._recording = True
        try:
            with model_forward(self.model, x):
                out = self.model(x) if not inputs else inputs.call(self.model, x)
        finally:
            self._recording = False
        missing = [name for name, _ in self.layers if name not in self.names]
        if missing:
            raise LayerError(
                f"layer(s) {missing} never ran during the forward pass of {type(self.model).__name__} in the calling "
                f"thread; choose layers that the forward reaches (ndcam.list_layers(model, x) lists those that run). "
                f"ndcam records only what the calling thread runs: a model that runs layers in worker threads (a "
                f"thread pool, nn.DataParallel on several GPUs) must be explained through a module that runs them in "
                f"one thread"
            )
        return out

    def gradients(self, scores: torch.Tensor, retain_graph: bool = False) -> list[torch.Tensor]:
        """Gradients of ``scores.sum()`` with respect to every recorded activation.

        In eval mode the samples of a batch are independent, so the gradient of the batch sum is each sample's own.

        Raises:
            LayerError: the backward from the scores never reaches a recorded layer (its map would be silently zero).
        """
        grads = _grads(scores, self._raw, retain_graph)
        for name, g in zip(self.names, grads):
            if g is None:
                raise LayerError(_unreached(name))
        return [self._view(g) for g in grads if g is not None]

    def input_and_layer_gradients(self, scores: torch.Tensor, retain_graph: bool = False):
        """``(d scores.sum() / d input, [d scores.sum() / d layer output, ...])`` (needs ``input_grad=True``).

        Layers the scores do not depend on get zero gradients (FullGrad sums over many layers); the input must be
        reached.
        """
        if self.input is None:
            raise RuntimeError("Capture was created without input_grad=True")
        grads = _grads(scores, [self.input, *self._raw], retain_graph)
        if grads[0] is None:
            raise LayerError(_unreached("the input"))
        layers = [torch.zeros_like(t) if g is None else g for t, g in zip(self._raw, grads[1:])]
        return grads[0], [self._view(g) for g in layers]


def _unreached(what: str) -> str:
    where = what if what == "the input" else f"layer {what!r}"
    return (
        f"the backward pass from the target scores never reached {where}: its output does not influence the scores "
        f"through a differentiable path, so its map would be all-zero. Usual causes: a .detach() or torch.no_grad() "
        f"inside the model after it, or reentrant gradient checkpointing around it "
        f"(torch.utils.checkpoint.checkpoint(..., use_reentrant=True)); use use_reentrant=False or choose a layer after "
        f"the cut (ndcam.list_layers(model, x) lists the candidates)"
    )


def _grads(scores: torch.Tensor, inputs: list[torch.Tensor], retain_graph: bool) -> list[torch.Tensor | None]:
    """``d scores.sum() / d input`` for each input; ``None`` for inputs the scores do not depend on."""
    if not scores.requires_grad:
        return [None] * len(inputs)
    return list(torch.autograd.grad(scores.sum(), inputs, retain_graph=retain_graph, allow_unused=True))
