r"""FEM, the Feature Explanation Method: activations far above their channel's mean, weighted by the channel mean.

Fuad, Martin, Giot, Bourqui, Benois-Pineau & Zemmari, "Features understanding in 3D CNNs for actions recognition in
video", IPTA 2020, https://hal.science/hal-02963298 (also Bourroux et al., "Multi Layered Feature Explanation
Method", ICPRAI 2022). For every channel :math:`c` with spatial mean :math:`\mu_c` and standard deviation
:math:`\sigma_c` (population, over all positions of any rank), the k-sigma rule marks the unusually strong responses,
and the binary masks are summed weighted by the channel means:

.. math::
    B_{c,s} = \mathbb{1}\big[A_{c,s} \ge \mu_c + k\,\sigma_c\big], \qquad M_s = \sum_c \mu_c\, B_{c,s}

(as in the FEM description of Xplique, https://deel-ai.github.io/xplique). FEM uses neither gradients nor the
target: it is class-agnostic (every target gets the same map).

pytorch-grad-cam's ``FEM`` (2D and 3D only) computes a different quantity: it weights the *activations* by the
*fraction* of each channel's positions above the threshold, :math:`\sum_c \overline{B_c}\, A_c`, with a strict
inequality. :func:`fem_map_pgc` gives that variant (``FEM(..., variant="pytorch-grad-cam")``) for comparison.
"""

from __future__ import annotations

import torch
from torch import nn

from .. import ops
from ..errors import InputError
from .base import BaseCAM, register

__all__ = ["fem_masks", "fem_map", "fem_map_pgc", "FEM"]


def fem_masks(activations: torch.Tensor, k: float = 2.0, *, strict: bool = False) -> torch.Tensor:
    r"""Binary k-sigma masks :math:`B_{c,s} = [A_{c,s} \ge \mu_c + k \sigma_c]` ``(N, C, *S)`` (``strict``: ``>``)."""
    flat = activations.reshape(*activations.shape[:2], -1)
    mu = flat.mean(-1)
    sd = flat.std(-1, correction=0)
    th = ops.expand_like(mu + k * sd, activations)
    return (activations > th if strict else activations >= th).to(activations.dtype)


def fem_map(activations: torch.Tensor, k: float = 2.0) -> torch.Tensor:
    r"""FEM map :math:`M_s = \sum_c \mu_c [A_{c,s} \ge \mu_c + k\sigma_c]` ``(N, *S)``."""
    return ops.weighted_sum(ops.spatial_mean(activations), fem_masks(activations, k))


def fem_map_pgc(activations: torch.Tensor, k: float = 2.0) -> torch.Tensor:
    r"""pytorch-grad-cam's FEM: :math:`\sum_c \overline{B_c} A_c` with :math:`B_{c,s} = [A_{c,s} > \mu_c + k\sigma_c]`."""
    return ops.weighted_sum(ops.spatial_mean(fem_masks(activations, k, strict=True)), activations)


@register("fem")
class FEM(BaseCAM):
    """Feature Explanation Method (see the module docstring): class-agnostic, no gradients.

    Args:
        model: the model.
        layers: target layer(s) (default: automatic).
        k: the k of the k-sigma rule (default 2).
        variant: ``"paper"`` (default) or ``"pytorch-grad-cam"`` (:func:`fem_map_pgc`).

    Fuad et al., "Features Understanding in 3D CNNs for Actions Recognition in Video", IPTA 2020,
    https://hal.science/hal-02963298.
    """

    uses_gradients = False

    def __init__(self, model: nn.Module, layers=None, *, k: float = 2.0, variant: str = "paper", **options) -> None:
        super().__init__(model, layers, **options)
        if isinstance(k, bool) or not isinstance(k, (int, float)) or not k >= 0:
            raise InputError(f"k must be a number >= 0 (the k of the k-sigma rule), got {k!r}")
        if variant not in ("paper", "pytorch-grad-cam"):
            raise InputError(f"variant must be 'paper' or 'pytorch-grad-cam', got {variant!r}")
        self.k, self.variant = float(k), variant

    def layer_map(self, activations, gradients, classes):
        if self.variant == "paper":
            return fem_map(activations, self.k)
        return fem_map_pgc(activations, self.k)

    def channel_maps(self, activations, gradients, classes):
        if self.variant == "paper":
            return ops.expand_like(ops.spatial_mean(activations), activations) * fem_masks(activations, self.k)
        return ops.expand_like(ops.spatial_mean(fem_masks(activations, self.k, strict=True)), activations) * activations
