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

from ._seeding import call_seed, check_seed, draw
from .base import BaseCAM, register

__all__ = ["random_weights", "RandomCAM", "SeededMixin"]


def random_weights(n: int, channels: int, seed: int, *, dtype: torch.dtype = torch.float64,
                   device: torch.device | str = "cpu") -> torch.Tensor:
    """Weights ``(n, channels)`` uniform in ``[-1, 1)``, the same row for every sample, from ``seed``."""
    w = draw("uniform", (channels,), seed, channels, dtype=dtype, device=device) * 2 - 1
    return w[None].expand(n, channels)


class SeededMixin:
    """``seed=`` / ``generator=`` handling: one call seed per :meth:`explain`, available as ``self._call_seed``."""

    seed: int
    generator: torch.Generator | None
    _call_seed: int | None = None

    def _set_seed(self, seed: int, generator: torch.Generator | None) -> None:
        check_seed(seed, generator)
        self.seed, self.generator = seed, generator

    def explain(self, x, targets=None, *, upsample: bool = True, normalize: bool = True):  # noqa: D102
        self._call_seed = call_seed(self.seed, self.generator)
        try:
            return super().explain(x, targets, upsample=upsample, normalize=normalize)  # type: ignore[misc]
        finally:
            self._call_seed = None

    def _seed_now(self) -> int:
        return self._call_seed if self._call_seed is not None else call_seed(self.seed, None)


@register("randomcam", "random-cam")
class RandomCAM(SeededMixin, BaseCAM):
    """Random channel weights in ``[-1, 1)`` (a baseline; see the module docstring).

    Args:
        model: the model.
        layers: target layer(s) (default: automatic).
        seed: seed of the weights (default 0: the same weights on every call).
        generator: a :class:`torch.Generator` instead of ``seed`` (new weights on every call).
    """

    uses_gradients = False

    def __init__(self, model: nn.Module, layers=None, *, seed: int = 0, generator: torch.Generator | None = None,
                 **options) -> None:
        super().__init__(model, layers, **options)
        self._set_seed(seed, generator)

    def weights(self, activations, gradients, classes):
        n, c = activations.shape[:2]
        return random_weights(n, c, self._seed_now(), dtype=activations.dtype, device=activations.device)
