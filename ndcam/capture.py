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
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ._errors import LayerError, NdcamError, forward_failed

__all__ = ["Capture", "ModelState"]


@dataclass
class ModelState:
    """What an explanation must leave as it found it: training flags, grad mode, inference mode."""

    training: dict[nn.Module, bool] = field(default_factory=dict)
    grad_enabled: bool = True

    @classmethod
    def save(cls, model: nn.Module) -> ModelState:
        return cls({m: m.training for m in model.modules()}, torch.is_grad_enabled())

    def restore(self) -> None:
        for m, flag in self.training.items():
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
        self._batch = 0

    # -- context management -------------------------------------------------------------------------------------
    def __enter__(self) -> Capture:
        self._state = ModelState.save(self.model)
        try:
            self.model.eval()
            for name, module in self.layers:
                self._handles.append(module.register_forward_hook(self._make_hook(name)))
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

    def _make_hook(self, name: str):
        def hook(module: nn.Module, inputs: object, output: object) -> torch.Tensor | None:
            if not isinstance(output, torch.Tensor):
                self._check(name, module, output)
            self._check(name, module, self.reshape(output) if self.reshape is not None else output)
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
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Run the model on ``x``: trunk without graph, head with graph (if gradients are needed)."""
        self.clear()
        self._batch = x.shape[0]
        if self.input_grad:  # methods that need d score / d input build the graph from the input on
            x = self.input = x.detach().requires_grad_(True)
        torch.set_grad_enabled(self.input_grad)
        try:
            out = self.model(x)
        except NdcamError:
            raise
        except (RuntimeError, ValueError, TypeError, IndexError) as err:
            raise forward_failed(self.model, x, err) from err
        missing = [name for name, _ in self.layers if name not in self.names]
        if missing:
            raise LayerError(
                f"layer(s) {missing} never ran during the forward pass of {type(self.model).__name__}; choose layers "
                f"that the forward reaches (ndcam.list_layers(model, x) lists those that run)"
            )
        return out

    def gradients(self, scores: torch.Tensor, retain_graph: bool = False) -> list[torch.Tensor]:
        """Gradients of ``scores.sum()`` with respect to every recorded activation (zeros where unused).

        In eval mode the samples of a batch are independent, so the gradient of the batch sum is each sample's own.
        """
        return [self._view(g) for g in _grad_or_zeros(scores, self._raw, retain_graph)]

    def input_and_layer_gradients(self, scores: torch.Tensor, retain_graph: bool = False):
        """``(d scores.sum() / d input, [d scores.sum() / d layer output, ...])`` (needs ``input_grad=True``)."""
        if self.input is None:
            raise RuntimeError("Capture was created without input_grad=True")
        grads = _grad_or_zeros(scores, [self.input, *self._raw], retain_graph)
        return grads[0], [self._view(g) for g in grads[1:]]


def _grad_or_zeros(scores: torch.Tensor, inputs: list[torch.Tensor], retain_graph: bool) -> list[torch.Tensor]:
    """``d scores.sum() / d input`` for each input; zeros for inputs the scores do not depend on."""
    if not scores.requires_grad:
        return [torch.zeros_like(t) for t in inputs]
    grads = torch.autograd.grad(scores.sum(), inputs, retain_graph=retain_graph, allow_unused=True)
    return [torch.zeros_like(t) if g is None else g for t, g in zip(inputs, grads)]


