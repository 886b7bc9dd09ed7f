r"""The Grad-CAM family: maps from activations :math:`A` and gradients :math:`G = \partial y / \partial A`.

Pure weight functions (tensors in, tensors out, any spatial rank) come first; the method classes below only pick
one. Notation: :math:`A, G` are ``(N, C, *S)``; :math:`\sum_s` runs over every spatial position of any rank; maps are
ReLU-ed by the base class (``relu = True``).

Example:
    >>> import torch, ndcam
    >>> net = torch.nn.Sequential(torch.nn.Conv1d(12, 8, 7, padding=3), torch.nn.ReLU(),
    ...                           torch.nn.AdaptiveAvgPool1d(1), torch.nn.Flatten(), torch.nn.Linear(8, 5))
    >>> ndcam.GradCAM(net)(torch.randn(4, 12, 500)).shape      # ECG: 4 records, 12 leads, 500 samples
    torch.Size([4, 500])
"""

from __future__ import annotations

import math

import torch

from .. import ops
from ..errors import InputError
from .base import BaseCAM, range_and_normalize, register

__all__ = [
    "gradcam_weights",
    "gradcampp_weights",
    "xgradcam_weights",
    "hirescam_map",
    "elementwise_map",
    "layercam_map",
    "layercam_scale",
    "layercam_fuse",
    "GradCAM",
    "GradCAMPlusPlus",
    "XGradCAM",
    "HiResCAM",
    "GradCAMElementWise",
    "LayerCAM",
]

#: epsilon in Grad-CAM++'s alpha denominator (as in pytorch-grad-cam)
GRADCAMPP_EPS = 1e-6
#: LayerCAM's scale of shallow-layer maps in the hierarchical fusion (the paper's gamma)
LAYERCAM_GAMMA = 2.0
#: float64 elements per block of channels in :func:`gradcampp_weights` (8 MiB per temporary)
GRADCAMPP_BLOCK = 2**20
#: epsilon in XGrad-CAM's normalization by the activation sum (as in pytorch-grad-cam)
XGRADCAM_EPS = 1e-7


def gradcam_weights(gradients: torch.Tensor) -> torch.Tensor:
    r"""Grad-CAM channel weights :math:`w_c = \frac{1}{|S|}\sum_s G_{c,s}` (Selvaraju et al. 2017,
    https://arxiv.org/abs/1610.02391).
    """
    return ops.spatial_mean(gradients)


def gradcampp_weights(
    activations: torch.Tensor, gradients: torch.Tensor, eps: float = GRADCAMPP_EPS, *, inplace: bool = False
) -> torch.Tensor:
    r"""Grad-CAM++ channel weights (Chattopadhay et al. 2018, https://arxiv.org/abs/1710.11063, eq. 19).

    .. math::
        \alpha_{c,s} = \frac{G_{c,s}^2}{2 G_{c,s}^2 + \big(\sum_{s'} A_{c,s'}\big) G_{c,s}^3 + \epsilon}, \qquad
        w_c = \sum_s \alpha_{c,s}\,\mathrm{ReLU}(G_{c,s})

    with :math:`\alpha = 0` where :math:`G = 0`. The paper's exponential output makes every gradient carry the factor
    :math:`e^{y}`; it is one positive constant per sample, dropped here as in pytorch-grad-cam (it cancels in the
    normalized map). MONAI sums :math:`A\,G^3` over positions instead of multiplying :math:`\sum A` by
    :math:`G^3`, which is not the paper's eq. 19.

    **Scale-stable evaluation.** Only positive gradients contribute; there, dividing numerator and denominator of
    :math:`\alpha G = G^3 / (2 G^2 + S_c G^3 + \epsilon)` (:math:`S_c = \sum_s A_{c,s}`) by :math:`G^2` and writing
    :math:`G = m\,g` with :math:`m` the sample's largest positive gradient (:math:`0 < g \le 1`) gives exactly

    .. math::
        \alpha_{c,s} G_{c,s} = m\,\frac{g}{2 + (S_c m)\,g + (\epsilon / m^2) / g^2},

    which has no cube to overflow or underflow: evaluated in float64 it equals eq. 19 (to float64 rounding) for
    gradients anywhere in float32's range, where the direct float32 formula returns zeros (:math:`G^3` overflows
    above ~1e13, underflows below ~1e-15). The weights are returned in float64 (for tiny gradients they lie below
    float32's range); ``inplace`` is kept for compatibility and ignored. The float64 temporaries are made for blocks of
    channels of at most ``GRADCAMPP_BLOCK`` elements, so the extra memory stays a few MiB whatever the layer's size.
    """
    n, c = activations.shape[:2]
    sum_a = activations.reshape(n, c, -1).sum(2, dtype=torch.float64)  # (N, C), no float64 copy
    grads = gradients.reshape(n, c, -1)
    m = grads.amax(dim=(1, 2)).to(torch.float64)  # the sample's largest gradient; <= 0: no positive gradient,
    m = torch.where(m > 0, m, torch.ones_like(m))  # every term is 0 whatever m
    scale = (eps / m.square())[:, None, None]
    weights = torch.empty(n, c, dtype=torch.float64, device=gradients.device)
    # float64 temporaries for a block of channels at a time (at most GRADCAMPP_BLOCK elements): the same arithmetic
    # per channel as on the whole tensor, without two gradient-sized float64 copies
    step = max(1, GRADCAMPP_BLOCK // max(1, n * grads.shape[2]))
    for c0 in range(0, c, step):
        c1 = min(c, c0 + step)
        g = grads[:, c0:c1].to(torch.float64, copy=True).relu_().div_(m[:, None, None])
        sm = (sum_a[:, c0:c1] * m[:, None])[..., None]
        den = g.square().reciprocal_().mul_(scale)
        den.addcmul_(sm.expand_as(g), g).add_(2.0)  # inf where g = 0 -> term 0 (0 / inf)
        weights[:, c0:c1] = g.div_(den).nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0).sum(2)
    return weights * m[:, None]


def xgradcam_weights(activations: torch.Tensor, gradients: torch.Tensor, eps: float = XGRADCAM_EPS) -> torch.Tensor:
    r"""XGrad-CAM channel weights :math:`w_c = \sum_s \frac{A_{c,s}}{\sum_{s'} A_{c,s'} + \epsilon} G_{c,s}`
    (Fu et al. 2020, https://arxiv.org/abs/2008.02312).
    """
    sum_a = ops.spatial_sum(activations)
    return ops.spatial_sum(activations * gradients) / (sum_a + eps)


def hirescam_map(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    r"""HiResCAM map :math:`M_s = \sum_c G_{c,s} A_{c,s}` (Draelos & Carin 2020, https://arxiv.org/abs/2011.08891)."""
    return ops.channel_sum(gradients * activations)


def elementwise_map(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    r"""Element-wise Grad-CAM map :math:`M_s = \sum_c \mathrm{ReLU}(G_{c,s} A_{c,s})` (as defined by
    pytorch-grad-cam's ``GradCAMElementWise``).
    """
    return ops.channel_sum(torch.relu(gradients * activations))


def layercam_scale(maps: torch.Tensor, gamma: float = LAYERCAM_GAMMA, batch_dims: int = 2) -> torch.Tensor:
    r"""LayerCAM's scaling of shallow-layer maps, :math:`\tanh(\gamma M / \max M)` per map (a map whose maximum is
    not positive becomes 0).
    """
    peak = ops.expand_like(maps.reshape(*maps.shape[:batch_dims], -1).amax(-1), maps)
    safe = torch.where(peak > 0, peak, torch.ones_like(peak))
    return torch.where(peak > 0, torch.tanh(gamma * maps / safe), torch.zeros_like(maps))


def layercam_fuse(maps: list[torch.Tensor], size: tuple[int, ...], gamma: float = LAYERCAM_GAMMA) -> torch.Tensor:
    r"""LayerCAM's hierarchical fusion of per-layer maps ``(N, K, *S_l)`` (shallow first, deepest last): shallow maps
    scaled by :func:`layercam_scale` at their own resolution, the deepest by :math:`M/\max M`, all brought to
    ``size`` (multilinear), fused by the element-wise maximum. Returns ``(N, K, *size)``.
    """
    n, k = maps[0].shape[:2]
    scaled = []
    for i, m in enumerate(maps):
        if i < len(maps) - 1:
            m = layercam_scale(m, gamma)
        else:
            peak = ops.expand_like(m.reshape(n, k, -1).amax(-1), m)
            m = torch.where(peak > 0, m / torch.where(peak > 0, peak, torch.ones_like(peak)), torch.zeros_like(m))
        scaled.append(ops.upsample(m.reshape(n * k, *m.shape[2:]), size).reshape(n, k, *size))
    out = scaled[0]
    for m in scaled[1:]:
        out = torch.maximum(out, m)
    return out


def layercam_map(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    r"""LayerCAM map :math:`M_s = \sum_c \mathrm{ReLU}(G_{c,s}) A_{c,s}` (Jiang et al. 2021,
    https://doi.org/10.1109/TIP.2021.3089943).
    """
    return ops.channel_sum(torch.relu(gradients) * activations)


@register("gradcam", "grad-cam")
class GradCAM(BaseCAM):
    r"""Grad-CAM: :math:`\mathrm{ReLU}(\sum_c w_c A_c)` with :math:`w_c` the spatial mean of the gradient.

    Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via Gradient-based Localization", ICCV 2017,
    https://arxiv.org/abs/1610.02391.
    """

    def weights(self, activations, gradients, classes):
        return gradcam_weights(gradients)


@register("gradcam++", "gradcampp", "gradcamplusplus")
class GradCAMPlusPlus(BaseCAM):
    """Grad-CAM++: positive gradients weighted by the closed-form alpha of eq. 19 (see :func:`gradcampp_weights`).

    Chattopadhay et al., "Grad-CAM++", WACV 2018, https://arxiv.org/abs/1710.11063.
    """

    def weights(self, activations, gradients, classes):
        return gradcampp_weights(activations, gradients)

    def layer_map(self, activations, gradients, classes):
        w = self.weights(activations, gradients, classes)
        a = ops.wide(activations)
        w_narrow = ops.narrow(w, a.dtype)
        bound = float(w.abs().amax()) * float(a.abs().amax()) * a.shape[1] if a.numel() else 0.0
        if w_narrow.dtype == a.dtype and bound < torch.finfo(a.dtype).max / 2**16:
            return ops.weighted_sum(w_narrow, a)  # the usual case: no float64 copy of the activations
        # weights or map outside float32's comfortable range (tiny or huge gradients): map in float64
        return ops.narrow(ops.weighted_sum(w, activations.double()), a.dtype)

    def channel_maps(self, activations, gradients, classes):
        w = self.weights(activations, gradients, classes)
        return ops.expand_like(w, activations.ndim) * activations.double()


@register("xgradcam", "xgrad-cam")
class XGradCAM(BaseCAM):
    """XGrad-CAM: gradients weighted by the normalized activations (see :func:`xgradcam_weights`).

    Fu et al., "Axiom-based Grad-CAM", BMVC 2020, https://arxiv.org/abs/2008.02312.
    """

    def weights(self, activations, gradients, classes):
        return xgradcam_weights(activations, gradients)


@register("hirescam")
class HiResCAM(BaseCAM):
    """HiResCAM: element-wise gradient x activation summed over channels, then ReLU.

    Draelos & Carin, "Use HiResCAM instead of Grad-CAM for faithful explanations", https://arxiv.org/abs/2011.08891.
    """

    def layer_map(self, activations, gradients, classes):
        return hirescam_map(activations, gradients)

    def channel_maps(self, activations, gradients, classes):
        return gradients * activations


@register("gradcamelementwise", "gradcam-elementwise")
class GradCAMElementWise(BaseCAM):
    """Element-wise Grad-CAM: ReLU of gradient x activation per channel, summed over channels.

    Grad-CAM (https://arxiv.org/abs/1610.02391) with HiResCAM's element-wise product
    (https://arxiv.org/abs/2011.08891), as defined by pytorch-grad-cam.
    """

    def layer_map(self, activations, gradients, classes):
        return elementwise_map(activations, gradients)

    def channel_maps(self, activations, gradients, classes):
        return torch.relu(gradients * activations)


@register("layercam")
class LayerCAM(BaseCAM):
    r"""LayerCAM: activations weighted position by position by their positive gradients.

    Jiang et al., "LayerCAM: Exploring Hierarchical Class Activation Maps for Localization", IEEE TIP 2021,
    https://doi.org/10.1109/TIP.2021.3089943.

    Over several layers the maps are fused hierarchically, as in the paper: every layer's map except the deepest
    (the last to run) is scaled by :math:`\tanh(\gamma M / \max M)` (the paper's remedy for the small values of
    shallow layers), the deepest by :math:`M / \max M`, and the fused map is their element-wise maximum at the
    common resolution (as torch-cam's ``fuse_cams``, which scales every layer), min-max normalized (see
    :func:`layercam_fuse`). ``gamma=None`` uses the generic per-layer normalized mean of the other
    methods.

    Args:
        model: the model.
        layers: target layer(s) (default: automatic); several layers are fused hierarchically.
        gamma: the scale of the shallow layers' tanh (default 2, as the paper).
    """

    def __init__(self, model, layers=None, *, gamma: float | None = LAYERCAM_GAMMA, **options) -> None:
        super().__init__(model, layers, **options)
        if gamma is not None and (isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not gamma > 0):
            raise InputError(f"gamma must be a positive number or None (generic fusion), got {gamma!r}")
        self.gamma = None if gamma is None else float(gamma)

    def layer_map(self, activations, gradients, classes):
        return layercam_map(activations, gradients)

    def channel_maps(self, activations, gradients, classes):
        return torch.relu(gradients) * activations

    def _fuse(self, maps, x, upsample, normalize):
        if len(maps) == 1 or self.gamma is None:
            return super()._fuse(maps, x, upsample, normalize)
        size = tuple(x.shape[2:]) if upsample else max((tuple(m.shape[2:]) for m in maps), key=math.prod)
        fused = layercam_fuse(maps, size, self.gamma)
        return range_and_normalize(fused, 2, normalize)
