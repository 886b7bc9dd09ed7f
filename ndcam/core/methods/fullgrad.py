r"""FullGrad: input-gradient plus the bias-gradients of every convolution and BatchNorm, any rank.

Srinivas & Fleuret, "Full-Gradient Representation for Neural Network Visualization", NeurIPS 2019,
https://arxiv.org/abs/1905.00780:

.. math::
    S(x) = \psi\Big(\sum_{ch}\, \phi(\nabla_x y \odot x)\Big)
         + \sum_{l} \psi\Big(\sum_{ch}\, \phi(\nabla_{z_l} y \odot b_l)\Big)

where :math:`z_l` is the output of layer :math:`l` (every ``Conv1d/2d/3d`` with a bias and every
``BatchNorm1d/2d/3d`` of the input's rank), :math:`b_l` its bias per channel (for BatchNorm the effective bias
:math:`\beta - \mu\gamma/\sqrt{\sigma^2 + \epsilon}`), :math:`\phi` the authors' post-processing (absolute value, then
min-max over all channels and positions of each sample) and :math:`\psi` the upsampling to the input's size
(``align_corners=False``; the authors' 2D code uses ``True``). The backward runs through the whole network by
definition; still no parameter ``.grad`` is written.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from types import MappingProxyType

import torch
from torch import nn

from .. import ops
from ..capture import ModelState, this_thread
from ..errors import LayerError, model_forward
from ..ranks import BATCHNORM, CONV
from .base import BaseCAM, register

__all__ = ["fullgrad_postprocess", "effective_bias", "FullGrad"]

#: epsilon of the authors' min-max post-processing
FULLGRAD_EPS = 1e-6


def fullgrad_postprocess(t: torch.Tensor, eps: float = FULLGRAD_EPS) -> torch.Tensor:
    """Absolute value, then per-sample min-max over all channels and positions: ``(N, C, *S) -> (N, C, *S)``."""
    t = t.abs()
    flat = t.reshape(t.shape[0], -1)
    t = t - ops.expand_like(flat.amin(1), t)
    hi = ops.expand_like(t.reshape(t.shape[0], -1).amax(1), t)
    return t / (hi + eps)


def effective_bias(module: nn.Module) -> torch.Tensor | None:
    """The per-channel bias a layer adds: a convolution's bias, or BatchNorm's ``beta - mean * gamma / sqrt(var+eps)``."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        mean, var = module.running_mean, module.running_var
        if mean is None or var is None:
            return None
        scale = module.weight if module.weight is not None else torch.ones_like(var)
        shift = module.bias if module.bias is not None else torch.zeros_like(mean)
        return (shift - mean * scale / torch.sqrt(var + module.eps)).detach()
    bias = getattr(module, "bias", None)
    return None if bias is None else bias.detach()


def modules_that_ran(model: nn.Module, run: Callable[[], object], modules: list[nn.Module]) -> set[nn.Module]:
    """Which of ``modules`` run when ``run()`` calls the model (eval mode, no grad): branches that eval never runs
    (Inception's auxiliary head, training-only heads, unused modules) are left out. The model's training flags are
    restored and no BatchNorm statistic changes (eval mode).
    """
    ran: set[nn.Module] = set()
    state = ModelState.save(model)
    handles = [m.register_forward_hook(this_thread(lambda mod, i, o: ran.add(mod))) for m in set(modules)]
    try:
        model.eval()
        with torch.no_grad():
            run()
    finally:
        for h in handles:
            h.remove()
        state.restore()
    return ran


#: per model: (input shape, dtype, device, candidate count, extra inputs' signature) -> names of the bias layers that ran
_RAN: weakref.WeakKeyDictionary[nn.Module, dict] = weakref.WeakKeyDictionary()


@register("fullgrad")
class FullGrad(BaseCAM):
    """FullGrad saliency (see the module docstring). ``layers=None`` uses every convolution with a bias and every
    BatchNorm of the input's rank that runs in the eval forward pass (found by a one-sample probe, so unused
    branches such as Inception's auxiliary head are left out); a list of layers restricts the bias-gradient terms to
    those.

    Srinivas & Fleuret, "Full-Gradient Representation for Neural Network Visualization", NeurIPS 2019,
    https://arxiv.org/abs/1905.00780.
    """

    input_gradient = True
    relu = False
    unsupported = MappingProxyType({
        "eigen_smooth": "its map sums input-gradient and bias-gradient terms, not channel contributions of one layer",
    })

    def _layers_for(self, ctx):
        if self._layers is not None:
            return super()._layers_for(ctx)
        x = ctx.x
        rank = x.ndim - 2
        kinds = tuple(k for k in (CONV.get(rank), BATCHNORM.get(rank)) if k is not None)
        candidates = [(n, m) for n, m in self.model.named_modules() if n and isinstance(m, kinds)
                      and effective_bias(m) is not None]

        def run() -> object:  # the call's own forward: same batch and extra inputs, so any model that runs works
            with model_forward(self.model, x):
                return ctx.model_call(self.model, x)

        key = (tuple(x.shape[1:]), x.dtype, x.device, len(candidates), ctx.inputs.signature())
        cache = _RAN.setdefault(self.model, {})
        if key not in cache:  # one probe per model and input signature, not one per call
            ran = modules_that_ran(self.model, run, [m for _, m in candidates])
            cache[key] = [n for n, m in candidates if m in ran]
        names = set(cache[key])
        layers = [(n, m) for n, m in candidates if n in names]
        if not layers:
            raise LayerError(
                f"FullGrad found no convolution or BatchNorm with a bias of rank {rank} that runs in the model's "
                f"forward pass ({len(candidates)} exist but never ran); pass layers="
                if candidates else
                f"FullGrad found no convolution or BatchNorm with a bias for a rank-{rank} input; pass layers="
            )
        return layers, self.reshape

    def _layer_maps(self, ctx):
        cap, x, sc = ctx.cap, ctx.x, ctx.scores
        assert cap is not None and sc is not None and cap.input is not None, "_layer_maps runs in the captured forward"
        size = tuple(x.shape[2:])
        modules = dict(cap.layers)
        biases = [effective_bias(modules[name]) for name in cap.names]
        inp = ops.wide(cap.input.detach())
        maps = []
        k_total = sc.shape[1]
        for k in range(k_total):
            g_in, g_layers = cap.input_and_layer_gradients(sc[:, k], retain_graph=k < k_total - 1)
            g_in, g_layers = ops.wide(g_in), [ops.wide(g) for g in g_layers]
            total = fullgrad_postprocess(g_in * inp).sum(1)
            for g, b in zip(g_layers, biases):
                if b is None:
                    continue
                term = fullgrad_postprocess(g * ops.expand_like(b.to(g.dtype).reshape(1, -1), g)).sum(1)
                total = total + ops.upsample(term, size)
            maps.append(total.detach())
        return [torch.stack(maps, dim=1)]
