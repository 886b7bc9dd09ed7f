r"""ShapleyCAM: Grad-CAM with the second-order (Hessian-vector) correction of a Shapley-value reading of CAMs, and its
ReST target.

Cai, "CAMs as Shapley Value-based Explainers", 2025, https://arxiv.org/abs/2501.06261. For a score :math:`y` of the
activations :math:`A` of one layer, the second-order Taylor expansion of :math:`y(A) - y(0)` around :math:`A` gives
each activation the Shapley value :math:`A_{c,s}\,\big(G - \tfrac12 H A\big)_{c,s}`, with
:math:`G = \partial y/\partial A` and :math:`H A` the Hessian-vector product :math:`\partial (G\cdot A)/\partial A`
(``A`` held fixed as the vector). As in the paper's Grad-CAM form (and pytorch-grad-cam's ``ShapleyCAM``), the channel
weights are their spatial means:

.. math::
    w_c = \frac{1}{|S|}\sum_s \Big(G_{c,s} - \tfrac12 (HA)_{c,s}\Big), \qquad M = \mathrm{ReLU}\Big(\sum_c w_c A_c\Big)

The paper pairs it with the **ReST** target (Residual Softmax Target-class), which uses the logit and the softmax
probability together:

.. math::
    \mathrm{ReST}_t(z) = z_t + \log \mathrm{softmax}(z)_t = 2 z_t - \log\sum_j e^{z_j}

ndcam's ShapleyCAM explains ReST by default (``target="rest"``; ``"logit"`` for the plain logit); callable targets are
used as given. Each sample gets its own score, as with pytorch-grad-cam's ``ClassifierOutputReST`` (1.5.7 scores every
sample's output alone); the maps of both agree (tests/test_peers_pgc.py).
The Hessian-vector product needs the graph of the gradient (``create_graph=True``); it is built from the target
layer on only (the trunk below it still runs without a graph).
"""

from __future__ import annotations

import torch
from torch import nn

from .. import ops
from ..errors import InputError
from ..targets import ClassTarget, ReST, rest_scores
from ._class_scores import ClassScore, ClassScoreMixin
from .base import BaseCAM, CallContext, register

__all__ = ["rest_scores", "ReST", "shapley_gradients", "shapley_weights", "ShapleyCAM"]


def shapley_gradients(gradients: torch.Tensor, hvp: torch.Tensor) -> torch.Tensor:
    r""":math:`G - \tfrac12 HA`: the gradient corrected by the Hessian-vector product (``(N, C, *S)``)."""
    return gradients - 0.5 * hvp


def shapley_weights(gradients: torch.Tensor, hvp: torch.Tensor) -> torch.Tensor:
    r"""ShapleyCAM channel weights :math:`w_c = \frac{1}{|S|}\sum_s (G - \tfrac12 HA)_{c,s}` ``(N, C)``."""
    return ops.spatial_mean(shapley_gradients(gradients, hvp))


def _hvp(grad: torch.Tensor | None, leaf: torch.Tensor) -> torch.Tensor:
    """``d (grad . leaf) / d leaf`` with ``leaf`` held fixed as the vector (zeros where the gradient is constant)."""
    if grad is None or not grad.requires_grad:
        return torch.zeros_like(leaf)
    (h,) = torch.autograd.grad(grad, leaf, grad_outputs=leaf.detach(), retain_graph=True, allow_unused=True)
    return torch.zeros_like(leaf) if h is None else h


@register("shapleycam", "shapley-cam")
class ShapleyCAM(ClassScoreMixin, BaseCAM):
    """ShapleyCAM (see the module docstring): Grad-CAM weights from :math:`G - HA/2`, explaining ReST by default.

    Args:
        model: the model.
        layers: target layer(s) (default: automatic).
        target: ``"rest"`` (default, the paper's choice) or ``"logit"``: the score class targets are explained
            through. Callable targets are used as given.

    Cai et al., "CAMs as Shapley Value-based Explainers", 2025, https://arxiv.org/abs/2501.06261.
    """

    def __init__(self, model: nn.Module, layers=None, *, target: str = "rest", **options) -> None:
        super().__init__(model, layers, **options)
        if target not in ("rest", "logit"):
            raise InputError(f"target must be 'rest' or 'logit', got {target!r}")
        self.target = target

    def _forward_context(self, ctx):
        # the Hessian-vector product differentiates twice: the fused attention kernels have no double backward,
        # the math kernel does
        from torch.nn.attention import SDPBackend, sdpa_kernel

        return sdpa_kernel(SDPBackend.MATH)

    def class_score(self, targets, n, device):
        if self.target == "rest":
            return ClassScore(targets, n, device, lambda z, idx, _: rest_scores(z, idx), "targets (ReST)")
        return ClassScore(targets, n, device, lambda z, idx, _: ClassTarget(idx)(z), "targets")

    def weights(self, activations, gradients, classes):
        # `gradients` already carries the second-order correction (see _layer_maps)
        return ops.spatial_mean(gradients)

    def _layer_maps(self, ctx: CallContext) -> list[torch.Tensor]:
        cap, sc, reshape = ctx.cap, ctx.scores, ctx.reshape
        assert cap is not None and sc is not None, "_layer_maps runs inside the captured forward"
        raws = cap.outputs_with_graph  # the leaves of the head's graph
        acts = cap.activations
        per_layer: list[list[torch.Tensor]] = [[] for _ in acts]
        for k in range(sc.shape[1]):
            grads: tuple[torch.Tensor | None, ...]
            if sc.requires_grad:
                grads = torch.autograd.grad(sc[:, k].sum(), raws, create_graph=True, retain_graph=True,
                                            allow_unused=True)
            else:
                grads = (None,) * len(raws)
            for maps, raw, a, g in zip(per_layer, raws, acts, grads):
                hvp = _hvp(g, raw)
                g0 = torch.zeros_like(raw) if g is None else g
                corrected = shapley_gradients(g0.detach(), hvp.detach())
                corrected = reshape(corrected) if reshape is not None else corrected
                maps.append(self._one(a, corrected, None))
            del grads
        return [torch.stack(m, dim=1) for m in per_layer]
