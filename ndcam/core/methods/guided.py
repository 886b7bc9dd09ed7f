r"""Guided Backpropagation and Guided Grad-CAM, any rank.

Guided Backpropagation (Springenberg et al., "Striving for Simplicity: The All Convolutional Net", ICLR-W 2015,
https://arxiv.org/abs/1412.6806) backpropagates through every ``nn.ReLU`` only where both the forward input and the
incoming gradient are positive: :math:`R_{in} = [z > 0]\,[R_{out} > 0]\,R_{out}`. ReLUs written as functions
(``torch.relu``/``F.relu`` inside ``forward``) are not modules and keep their ordinary backward, as in the peers.

Guided Grad-CAM (Selvaraju et al. 2017) multiplies the guided gradient by the upsampled Grad-CAM map.

Maps are ``(N, *spatial)``: the guided gradient's absolute value summed over input channels (the per-channel
gradient is available from :meth:`GuidedBackprop.guided_gradients`). The guiding is done by forward hooks on the
ReLU modules that route their output through a guided autograd function; the hooks are removed before the call
returns, also when it raises.
"""

from __future__ import annotations

import contextlib
from types import MappingProxyType

import torch
from torch import nn

from .. import ops
from ..capture import model_lock, this_thread
from ..errors import InputTypeError
from ..explanation import Explanation
from .base import BaseCAM, range_and_normalize, register
from .gradient import GradCAM

__all__ = ["GuidedBackprop", "GuidedGradCAM", "guided_relu"]


class _GuidedReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, out: torch.Tensor) -> torch.Tensor:  # out = relu(z) already
        ctx.save_for_backward(out)
        return out.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (out,) = ctx.saved_tensors
        return grad.clamp(min=0) * (out > 0).to(grad.dtype)


def guided_relu(out: torch.Tensor) -> torch.Tensor:
    """Identity on a ReLU's output whose backward keeps only positive gradients where the ReLU was active."""
    return _GuidedReLU.apply(out)


def _hook(module, inputs, output):
    return guided_relu(output)


@register("guidedbackprop", "guided-backprop")
class GuidedBackprop(BaseCAM):
    """Guided Backpropagation: input gradient through guided ReLUs; map = sum over channels of its magnitude.

    ``layers`` is not used (the gradient is taken with respect to the input).

    Springenberg et al., "Striving for Simplicity", ICLR-W 2015, https://arxiv.org/abs/1412.6806.
    """

    input_gradient = True
    relu = False
    unsupported = MappingProxyType({
        "eigen_smooth": "its map is an input gradient, with no channel contributions of a layer to smooth",
    })

    def _layers_for(self, ctx):
        return [], self.reshape  # no layer: the gradient is taken with respect to the input

    @contextlib.contextmanager
    def _forward_context(self, ctx):
        handles = [m.register_forward_hook(this_thread(_hook)) for m in self.model.modules() if isinstance(m, nn.ReLU)]
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    def _layer_maps(self, ctx):
        cap, sc = ctx.cap, ctx.scores
        store = ctx.saved.get("guided")
        maps = []
        k_total = sc.shape[1]
        for k in range(k_total):
            g_in, _ = cap.input_and_layer_gradients(sc[:, k], retain_graph=k < k_total - 1)
            if store is not None:
                store.append(g_in.detach())
            maps.append(ops.wide(g_in).abs().sum(1))
        return [torch.stack(maps, dim=1)]

    def guided_gradients(self, x: torch.Tensor, targets=None, **call) -> torch.Tensor:
        """The guided gradient itself: ``(N, C, *spatial)``, or ``(N, K, C, *spatial)`` for K targets per sample.

        ``call``: ``forward_args`` / ``forward_kwargs`` as for :meth:`explain`.
        """
        exp, saved = self._explain(x, targets, normalize=False, save=("guided",), **call)
        grads = torch.stack(saved["guided"], dim=1)
        return grads if exp.scores.ndim == 2 else grads[:, 0]


@register("guidedgradcam", "guided-gradcam")
class GuidedGradCAM(BaseCAM):
    """Guided Grad-CAM: Guided Backpropagation (channel-summed magnitude) times the upsampled Grad-CAM map.

    Runs two forward passes (one guided, one for Grad-CAM). ``eigen_smooth`` applies to the Grad-CAM factor,
    ``aug_smooth`` to both factors (each averaged over the augmentations), ``reshape`` and ``per_sample`` to both;
    ``upsample=False`` is refused: the guided gradient is an input gradient, so the product exists only at the input's
    resolution. The product is formed in float64, so normalized maps stay finite for any float32 magnitudes; with
    ``normalize=False`` a raw product beyond float32's range (~3e38) is returned as inf.

    Selvaraju et al., "Grad-CAM", ICCV 2017, https://arxiv.org/abs/1610.02391.
    """

    unsupported = MappingProxyType({
        "upsample": "the guided gradient is an input gradient, so the map exists only at the input's resolution",
    })

    def explain(self, x, targets=None, *, upsample=True, normalize=True, **call):
        if not isinstance(upsample, bool) or not isinstance(normalize, bool):
            raise InputTypeError(f"upsample and normalize must be True or False, got {upsample!r}, {normalize!r}")
        self._refuse(upsample=not upsample)
        common = dict(per_sample=self.per_sample, aug_smooth=self.aug_smooth)
        layers = None if self._layers is None else [m for _, m in self._layers]
        with model_lock(self.model):  # both passes as one call: no other thread's call runs in between
            guided = GuidedBackprop(self.model, **common).explain(x, targets, normalize=False, **call)
            cam = GradCAM(self.model, layers, reshape=self.reshape, eigen_smooth=self.eigen_smooth, **common).explain(
                x, targets, normalize=False, **call)
        # the product in float64: two float32 factors cannot overflow or underflow there (~1e77 / 1e-90), so the
        # normalized map stays finite and exact for huge or tiny magnitudes (in float32 it became inf * 0 = NaN)
        raw = guided.maps.double() * cam.maps.double()
        maps, lo, hi = range_and_normalize(raw, 2 if cam.scores.ndim == 2 else 1, normalize)
        return Explanation(maps=maps.float(), scores=cam.scores, targets=cam.targets, layers=cam.layers,
                           method=self.registry_name, raw_min=lo.float(), raw_max=hi.float(), input_shape=cam.input_shape)
