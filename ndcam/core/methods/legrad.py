r"""LeGrad for token models: positive gradients of the target with respect to attention maps (or token outputs),
averaged over heads, queries and layers.

Bousselham et al., "LeGrad: An Explainability Method for Vision Transformers via Feature Formation Sensitivity",
2024, https://arxiv.org/abs/2404.03214. For each selected layer :math:`l` with post-softmax attention probabilities
:math:`P^l` ``(N, heads, queries, keys)``,

.. math::
    E^l_{k} = \frac{1}{H\,Q} \sum_{h,q} \mathrm{ReLU}\Big(\frac{\partial y}{\partial P^l_{h,q,k}}\Big), \qquad
    M = \frac{1}{L}\sum_l E^l

with the prefix keys (class token, registers) dropped and the remaining keys laid out on the patch grid of any rank
(1D audio/ECG, 2D images, 3D volumes), then min-max normalized. Layers are averaged *before* normalizing (their raw
maps share one scale), unlike the per-layer normalized mean of the other methods.

How ndcam reaches the attention probabilities: pass as ``layers`` the modules whose output *is* the attention
probabilities -- e.g. an ``nn.Softmax`` (or dropout) module inside each attention block -- and ``grid=``/``prefix=``;
:class:`AttentionGrid` turns ``(N, heads, queries, keys)`` (or ``(N, queries, keys)``) into ``(N, heads*queries,
*grid)``, so "channels" are (head, query) pairs and the map is the channel mean of the positive gradient
(:func:`legrad_map`). ``torch.nn.MultiheadAttention`` does not expose its probabilities as a module output; there,
capture the blocks' token outputs with ``reshape=ndcam.TokenGrid(grid, prefix=...)`` instead: the same formula then
averages the positive gradient over the embedding channels.

Differences from the paper and torch-cam's ``LeGrad`` (2D torchvision ViTs, attention hooked inside
``nn.MultiheadAttention``): they differentiate, for each layer, the score that the model's head gives to *that
layer's* tokens (the "feature formation" read-out); ndcam differentiates the model's own target score for every
layer (the gradient then includes the downstream blocks). The two agree for the last layer.

LeGrad reads gradients only. On a CNN's last feature map before global average pooling the gradient of a class score
is the same at every position, so the map is constant (all-zero once normalized): use it on attention or token layers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from ..errors import InputError, LayerError
from .base import BaseCAM, range_and_normalize, register

__all__ = ["AttentionGrid", "legrad_map", "LeGrad"]


class AttentionGrid:
    """``reshape=`` adapter for attention probabilities: ``(N, heads, Q, K)`` or ``(N, Q, K)`` ->
    ``(N, heads*Q, *grid)``, keys after the ``prefix`` laid out on ``grid`` (any rank).

    Example:
        >>> AttentionGrid((2, 3), prefix=1)(torch.rand(4, 2, 7, 7)).shape
        torch.Size([4, 14, 2, 3])
    """

    def __init__(self, grid: Sequence[int], prefix: int = 0) -> None:
        if isinstance(grid, int) or not all(isinstance(g, int) and g > 0 for g in grid) or len(grid) < 1:
            raise InputError(f"grid must be a sequence of positive ints (the patch grid), got {grid!r}")
        if isinstance(prefix, bool) or not isinstance(prefix, int) or prefix < 0:
            raise InputError(f"prefix must be an int >= 0 (leading non-patch tokens), got {prefix!r}")
        self.grid, self.prefix = tuple(grid), prefix

    def __repr__(self) -> str:
        return f"AttentionGrid(grid={self.grid}, prefix={self.prefix})"

    def __call__(self, t: torch.Tensor) -> torch.Tensor:
        if not isinstance(t, torch.Tensor) or t.ndim not in (3, 4):
            got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise LayerError(f"AttentionGrid expects attention probabilities (N, heads, Q, K) or (N, Q, K), got {got}")
        if t.ndim == 3:
            t = t[:, None]
        keys = t[..., self.prefix :]
        if keys.shape[-1] != math.prod(self.grid):
            raise LayerError(
                f"AttentionGrid: {keys.shape[-1]} keys (after dropping {self.prefix} prefix keys of {t.shape[-1]}) do "
                f"not fill the grid {self.grid}; set grid= and prefix= to the model's layout"
            )
        n, h, q = keys.shape[:3]
        return keys.reshape(n, h * q, *self.grid)


def legrad_map(gradients: torch.Tensor) -> torch.Tensor:
    r"""LeGrad map of one layer: :math:`\frac{1}{C}\sum_c \mathrm{ReLU}(G_{c,s})` ``(N, *S)`` (``C`` = heads x
    queries for attention maps laid out by :class:`AttentionGrid`).
    """
    return torch.relu(gradients).mean(dim=1)


@register("legrad")
class LeGrad(BaseCAM):
    """LeGrad (see the module docstring).

    Args:
        model: a token model.
        layers: attention-probability modules (with ``grid=``) or blocks with token outputs (with
            ``reshape=ndcam.TokenGrid(...)``); several layers are averaged.
        grid: patch grid of the keys; builds ``reshape=AttentionGrid(grid, prefix)`` (omit it when passing
            ``reshape=`` yourself).
        prefix: leading non-patch keys (class token, registers) dropped with ``grid``.

    Bousselham et al., "LeGrad", 2024, https://arxiv.org/abs/2404.03214.
    """

    def __init__(self, model: nn.Module, layers=None, *, grid: Sequence[int] | None = None, prefix: int = 0,
                 **options) -> None:
        if grid is not None:
            if options.get("reshape") is not None:
                raise InputError("LeGrad: pass either grid= (attention probabilities) or reshape=, not both")
            options["reshape"] = AttentionGrid(grid, prefix)
        super().__init__(model, layers, **options)

    def layer_map(self, activations, gradients, classes):
        return legrad_map(gradients)

    def channel_maps(self, activations, gradients, classes):
        return torch.relu(gradients) / gradients.shape[1]

    def _fuse(self, maps, x, upsample, normalize):
        """Layers averaged on one raw scale, then normalized (the paper's order)."""
        mean, _, _ = super()._fuse(maps, x, upsample, False)
        return range_and_normalize(mean, 2, normalize)


