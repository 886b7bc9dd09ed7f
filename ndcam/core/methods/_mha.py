"""The per-head attention probabilities of ``torch.nn.MultiheadAttention`` layers, on the model's own graph.

``nn.MultiheadAttention`` never exposes its probabilities as a module output: blocks call it with
``need_weights=False`` (torchvision's ViT, ``nn.TransformerEncoderLayer``), which computes the attention in a fused
kernel, and ``torch.nn.TransformerEncoder(Layer)`` / ``nn.MultiheadAttention`` in eval mode under ``torch.no_grad()``
take fused fast paths that do not call the module's Python forward at all. During one explained forward
:class:`MHAProbabilities` makes each target layer compute them and hands them to :class:`~ndcam.capture.Capture`:

* a pass-through ``TorchFunctionMode`` (thread-local, so other threads are not affected) is active during the
  forward: torch's fast paths (``nn.MultiheadAttention``, ``nn.TransformerEncoderLayer``, the nested-tensor path of
  ``nn.TransformerEncoder``) step aside whenever a tensor "has a torch function", so every target layer runs its own
  forward (``torch.nn.functional.multi_head_attention_forward``, the unfused computation);
* a forward pre-hook asks that forward for the probabilities -- ``need_weights=True, average_attn_weights=False``
  -- switches gradient recording on (the part of the model before the first target layer runs without a graph,
  as for every captured layer) and, when no input of the layer carries a graph yet, starts one at its inputs
  (``detach().requires_grad_()``, one leaf per distinct tensor, so ``query is key`` stays true);
* a forward hook, run before any hook of the user's, takes the returned ``(N, heads, queries, keys)`` weights --
  torch returns them as a *view* of the softmax output that it multiplies with the values -- checks that the
  tensor they view feeds the layer's output (a walk of the autograd graph), records the weights through a probe
  module that :class:`~ndcam.capture.Capture` hooks, and gives the caller the output it asked for: ``(output,
  None)``, the head-averaged weights (torch's own ``mean(dim=1)``) or the per-head weights.

The gradient of a score with respect to the probabilities is then taken with respect to the viewed softmax output
(:meth:`MHAProbabilities.on_path`): the probabilities the model's output was computed from, not a recomputation.
Everything -- hooks, the mode, the grad mode -- is undone when the forward is over and when anything raises.
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from ..errors import LayerError

__all__ = ["MHAProbabilities", "check_attention_module", "is_mha"]

_FORWARD = nn.MultiheadAttention.forward
_SIGNATURE = inspect.signature(_FORWARD)
#: autograd nodes visited, from the layer's output, looking for the probabilities (they are ~6 nodes away)
_WALK = 256


def is_mha(module: nn.Module) -> bool:
    """Whether ``module`` is a ``torch.nn.MultiheadAttention`` (or subclass)."""
    return isinstance(module, nn.MultiheadAttention)


def check_attention_module(name: str, module: nn.MultiheadAttention) -> None:
    """Refuse (before any forward) a ``nn.MultiheadAttention`` whose probabilities ndcam cannot take from torch's own
    forward.

    Raises:
        LayerError: a subclass with its own ``forward`` or a forward replaced on the instance (ndcam relies on
            torch's computation), or extra keys that are no tokens (``add_bias_kv``, ``add_zero_attn``).
    """
    kind = type(module).__name__
    if type(module).forward is not _FORWARD:
        raise LayerError(
            f"LeGrad: {name!r} ({kind}) is an nn.MultiheadAttention with its own forward; ndcam takes the attention "
            f"probabilities from torch's nn.MultiheadAttention.forward only. Pass the module inside it whose output "
            f"is the probabilities (e.g. an nn.Softmax), with grid="
        )
    if "forward" in vars(module):
        raise LayerError(
            f"LeGrad: the forward of {name!r} ({kind}) was replaced on the instance; ndcam takes the attention "
            f"probabilities from torch's nn.MultiheadAttention.forward only"
        )
    if module.bias_k is not None or module.bias_v is not None or module.add_zero_attn:
        raise LayerError(
            f"LeGrad: {name!r} was built with add_bias_kv=True or add_zero_attn=True: it appends keys that are no "
            f"tokens, so its keys cannot be laid out on the patch grid"
        )


class _Passthrough(TorchFunctionMode):
    """Calls every torch function unchanged; while active, torch's fused fast paths are not taken."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


class _Probe(nn.Module):
    """Stands for one attention layer in :class:`~ndcam.capture.Capture`: called with the layer's per-head
    probabilities, its output is what Capture records (not a submodule of the model).
    """

    def __init__(self, name: str) -> None:
        super().__init__()
        self.layer = name

    def forward(self, weights: torch.Tensor) -> torch.Tensor:
        return weights


def _reaches(output: torch.Tensor, node: Any) -> bool:
    """Whether the autograd node ``node`` is among the first :data:`_WALK` nodes behind ``output``."""
    frontier: list[Any] = [output.grad_fn]
    seen: set[Any] = set()
    while frontier and len(seen) < _WALK:
        fn = frontier.pop(0)
        if fn is None or fn in seen:
            continue
        if fn is node:
            return True
        seen.add(fn)
        frontier.extend(nxt for nxt, _ in fn.next_functions)
    return False


class MHAProbabilities:
    """Context manager for one captured forward: the per-head attention probabilities of the target
    ``nn.MultiheadAttention`` layers, recorded through probes (see the module docstring).

    Args:
        layers: the call's target layers ``[(name, module), ...]``; the attention ones are replaced by probes in
            :attr:`layers`, the others kept.
    """

    def __init__(self, layers: Sequence[tuple[str, nn.Module]]) -> None:
        self.modules: list[tuple[str, nn.MultiheadAttention]] = []
        self._probes: dict[int, _Probe] = {}
        self.layers: list[tuple[str, nn.Module]] = []
        for name, module in layers:
            if is_mha(module):
                assert isinstance(module, nn.MultiheadAttention)
                check_attention_module(name, module)
                if id(module) not in self._probes:
                    self._probes[id(module)] = _Probe(name)
                    self.modules.append((name, module))
                self.layers.append((name, self._probes[id(module)]))
            else:
                self.layers.append((name, module))
        self._asked: dict[int, list[tuple[bool, bool]]] = {}
        self._on_path: dict[int, torch.Tensor] = {}
        self._handles: list = []
        self._mode: _Passthrough | None = None
        self._thread = 0
        self._active = False

    def __bool__(self) -> bool:
        return bool(self.modules)

    # -- lifetime -------------------------------------------------------------------------------------------------
    def __enter__(self) -> MHAProbabilities:
        self._thread = threading.get_ident()
        try:
            for _, module in self.modules:
                self._handles.append(module.register_forward_pre_hook(self._before, with_kwargs=True))
                self._handles.append(module.register_forward_hook(self._after, with_kwargs=True, prepend=True))
            mode = _Passthrough()
            mode.__enter__()
            self._mode = mode
        except BaseException:
            self.finish()
            raise
        self._active = True
        return self

    def __exit__(self, *exc: object) -> None:
        self.finish()

    def finish(self) -> None:
        """The forward is over: hooks removed, the mode left (idempotent; the recorded tensors stay)."""
        self._active = False
        for h in self._handles:
            h.remove()
        self._handles.clear()
        if self._mode is not None:
            mode, self._mode = self._mode, None
            mode.__exit__(None, None, None)

    def on_path(self, recorded: torch.Tensor) -> torch.Tensor:
        """The tensor to differentiate for recorded weights: the softmax output they view (``(N*heads, Q, K)``);
        any other recorded tensor is returned as it is.
        """
        return self._on_path.get(id(recorded), recorded)

    # -- hooks ----------------------------------------------------------------------------------------------------
    def _mine(self) -> bool:
        return self._active and threading.get_ident() == self._thread

    def _before(self, module: nn.MultiheadAttention, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        if not self._mine():
            return None
        try:
            bound = _SIGNATURE.bind(module, *args, **kwargs)
        except TypeError:
            return None  # the forward itself raises on these arguments
        call = dict(bound.arguments)
        del call["self"]
        name = self._probes[id(module)].layer
        q, k, v = (call.get(key) for key in ("query", "key", "value"))
        if not all(isinstance(t, torch.Tensor) for t in (q, k, v)):
            return None
        assert isinstance(q, torch.Tensor)
        if any(t.is_nested for t in (q, k, v)):  # type: ignore[union-attr]
            raise LayerError(f"LeGrad: {name!r} is called with nested tensors; its attention probabilities are "
                             f"only computed for ordinary (padded) tensors")
        if q.dim() != 3:
            raise LayerError(f"LeGrad: {name!r} is called with an unbatched query {tuple(q.shape)}; its attention "
                             f"probabilities are taken per sample of a batch (N, ...): call it with batched inputs")
        self._asked.setdefault(id(module), []).append((bool(call.get("need_weights", True)),
                                                       bool(call.get("average_attn_weights", True))))
        torch.set_grad_enabled(True)  # the graph starts here at the latest (as at any captured layer)
        if not any(t.requires_grad for t in (q, k, v)):  # type: ignore[union-attr]
            leaves: dict[int, torch.Tensor] = {}
            for key in ("query", "key", "value"):
                t = call[key]
                call[key] = leaves.setdefault(id(t), t.detach().requires_grad_(True))
        call["need_weights"], call["average_attn_weights"] = True, False
        return (), call

    def _after(self, module: nn.MultiheadAttention, args: tuple, kwargs: dict, output: Any) -> Any:
        if not self._mine():
            return None
        asked = self._asked.get(id(module))
        if not asked:
            return None  # our pre-hook let the call through unchanged
        need, average = asked.pop()
        probe = self._probes[id(module)]
        out, weights = output if isinstance(output, tuple) and len(output) == 2 else (None, None)
        base = weights._base if isinstance(weights, torch.Tensor) else None
        ok = (isinstance(out, torch.Tensor) and isinstance(weights, torch.Tensor) and base is not None
              and weights.dim() == 4 and weights.shape[1] == module.num_heads
              and tuple(base.shape) == (weights.shape[0] * weights.shape[1], *weights.shape[2:])
              and base.grad_fn is not None and _reaches(out, base.grad_fn))  # type: ignore[arg-type]
        if not ok:
            raise LayerError(
                f"LeGrad: nn.MultiheadAttention {probe.layer!r} did not return its per-head attention probabilities "
                f"as the tensor its output is computed from (torch {torch.__version__}); ndcam cannot differentiate "
                f"this layer's own probabilities. Pass a module whose output is the probabilities, or reshape="
                f"ndcam.TokenGrid(...) on the blocks' tokens"
            )
        assert isinstance(weights, torch.Tensor) and base is not None
        self._on_path[id(weights)] = base
        probe(weights)  # recorded by Capture (its copy is not used: the output below is torch's own)
        if not need:
            return out, None
        return out, weights.mean(dim=1) if average else weights
