r"""RandomCAM: a baseline whose channel weights are random numbers.

.. math::
    M = \mathrm{ReLU}\Big(\sum_c w_c A_c\Big), \qquad w_c \sim U(-1, 1)

As in pytorch-grad-cam's ``RandomCAM`` (https://github.com/jacobgil/pytorch-grad-cam), a sanity baseline for the
faithfulness metrics: a method that does not beat it does not explain the model. Unlike the peer (numpy's global
random state, new weights for every sample), the weights are seeded (``seed=`` or ``generator=``, see
:mod:`ndcam.methods._seeding`) and shared by the samples of a batch, so a batch gives the maps of per-sample calls.
They depend on the call seed and the layer's channel count only (two layers of equal width get the same vector).
"""

from __future__ import annotations

import torch
from torch import nn

from .. import ops
from ._seeding import call_seed, check_seed, draw
from .base import BaseCAM, CallContext, register

__all__ = ["random_weights", "RandomCAM", "SeededMixin"]


def random_weights(n: int, channels: int, seed: int, *, dtype: torch.dtype = torch.float64,
                   device: torch.device | str = "cpu") -> torch.Tensor:
    """Weights ``(n, channels)`` uniform in ``[-1, 1)``, the same row for every sample, from ``seed``."""
    w = draw("uniform", (channels,), seed, channels, dtype=dtype, device=device) * 2 - 1
    return w[None].expand(n, channels)


class SeededMixin:
    """``seed=`` / ``generator=`` handling: one call seed per call, drawn under the model's lock at the start of the
    call (:meth:`BaseCAM._start_call`) and kept in the call's context (``ctx.state["seed"]``, read with
    :meth:`call_seed_of`), never on the instance -- so threads sharing an instance get the maps of sequential calls.
    """

    seed: int
    generator: torch.Generator | None

    def _set_seed(self, seed: int, generator: torch.Generator | None) -> None:
        check_seed(seed, generator)
        self.seed, self.generator = seed, generator

    def _start_call(self, ctx: CallContext) -> None:
        super()._start_call(ctx)  # type: ignore[misc]
        ctx.state["seed"] = call_seed(self.seed, self.generator)

    @staticmethod
    def call_seed_of(ctx: CallContext) -> int:
        """The call seed of the running call."""
        return ctx.state["seed"]


@register("randomcam", "random-cam")
class RandomCAM(SeededMixin, BaseCAM):
    """Random channel weights in ``[-1, 1)`` (a baseline; see the module docstring).

    Args:
        model: the model.
        layers: target layer(s) (default: automatic).
        seed: seed of the weights (default 0: the same weights on every call).
        generator: a :class:`torch.Generator` instead of ``seed`` (new weights on every call).

    A baseline with no paper of its own (as in pytorch-grad-cam, https://github.com/jacobgil/pytorch-grad-cam):
    a method must beat it.
    """

    uses_gradients = False

    def __init__(self, model: nn.Module, layers=None, *, seed: int = 0, generator: torch.Generator | None = None,
                 **options) -> None:
        super().__init__(model, layers, **options)
        self._set_seed(seed, generator)

    def _layer_maps(self, ctx: CallContext) -> list[torch.Tensor]:
        """One map per layer from the call's random weights; class-agnostic, so the K targets share it."""
        assert ctx.cap is not None and ctx.scores is not None, "_layer_maps runs inside the captured forward"
        seed, k = self.call_seed_of(ctx), ctx.scores.shape[1]
        out = []
        for a in ctx.cap.activations:
            if a.dtype in (torch.float16, torch.bfloat16):
                a = a.float()
            n, c = a.shape[:2]
            w = random_weights(n, c, seed, dtype=a.dtype, device=a.device)
            if self.eigen_smooth:
                m = ops.first_principal_component(ops.expand_like(w, a.ndim) * a)
            else:
                m = ops.weighted_sum(w, a)
            m = torch.relu(m) if self.relu else m
            out.append(m[:, None].expand(n, k, *m.shape[1:]).contiguous())
        return out
