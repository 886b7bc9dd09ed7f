r"""Activation-based maps: CAM (classifier weights) and the Eigen family (principal components).

Pure functions first (tensors in, tensors out, any spatial rank), thin classes after.
"""

from __future__ import annotations

import torch
from torch import nn

from .. import ops
from .._errors import InputError, InputTypeError, LayerError
from ..layers import resolve_layers
from .base import BaseCAM, register

__all__ = ["cam_weights", "eigencam_map", "eigengradcam_map", "CAM", "EigenCAM", "EigenGradCAM"]


def cam_weights(fc_weight: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    r"""CAM channel weights :math:`w_c = W_{k,c}`: the rows of the classifier after global average pooling.

    For a single-logit binary head (``fc_weight`` of shape ``(1, C)``) class 1 is the row and class 0 its negation.

    Args:
        fc_weight: ``(classes, C)`` classifier weight.
        classes: ``(N,)`` class index per sample.
    """
    if fc_weight.shape[0] == 1:
        return fc_weight[0][None, :] * (classes.to(fc_weight.dtype) * 2 - 1)[:, None]
    return fc_weight[classes]


def eigencam_map(activations: torch.Tensor) -> torch.Tensor:
    """Eigen-CAM map: projection of the (position-centred) activations on their first principal component.

    Muhammad & Yeasin, "Eigen-CAM", IJCNN 2020, https://arxiv.org/abs/2008.00299. The sign is fixed so the map
    correlates positively with the channel sum of the activations; pytorch-grad-cam leaves the sign to the SVD solver,
    which can invert the map.
    """
    return ops.first_principal_component(activations)


def eigengradcam_map(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    """Eigen-Grad-CAM map: first principal component of gradient x activation (class-discriminative Eigen-CAM).

    The sign is fixed so the map correlates positively with the HiResCAM map ``sum_c G*A``.
    """
    ga = gradients * activations
    return ops.first_principal_component(ga, reference=ops.channel_sum(ga))


@register("cam")
class CAM(BaseCAM):
    r"""Class Activation Mapping: :math:`M = \sum_c W_{k,c} A_c` for a network that ends in global average pooling and
    one linear classifier :math:`W`.

    Zhou et al., "Learning Deep Features for Discriminative Localization", CVPR 2016, https://arxiv.org/abs/1512.04150.
    As in the paper, no ReLU is applied (the raw map can be negative). For such a network Grad-CAM's weights are
    :math:`W_{k,c}/|S|`, so Grad-CAM equals CAM up to the ReLU.

    Args:
        model: the model.
        layers: the layer before global pooling (default: automatic).
        fc: the classifier (dotted name or module); default: the last ``nn.Linear`` (or kernel-1 convolution) of the
            model whose input size equals the layer's channel count.
    """

    uses_gradients = False
    relu = False

    def __init__(self, model: nn.Module, layers=None, *, fc: str | nn.Module | None = None, **options) -> None:
        super().__init__(model, layers, **options)
        self._fc = None if fc is None else resolve_layers(model, fc)[0][1]
        if self._fc is not None and not isinstance(self._fc, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            raise LayerError(f"fc must be an nn.Linear or a kernel-1 convolution, got {type(self._fc).__name__}")

    def check_targets(self, targets) -> None:
        if callable(targets) and not isinstance(targets, torch.Tensor):
            raise InputTypeError(
                "CAM needs class indices as targets (None, int, sequence or (N, K) tensor), not a callable; for "
                "custom scores use GradCAM, which equals CAM on global-pooling + linear heads"
            )

    def _fc_weight(self, channels: int) -> torch.Tensor:
        candidates = [self._fc] if self._fc is not None else list(self.model.modules())[::-1]
        for m in candidates:
            if isinstance(m, nn.Linear) and m.in_features == channels:
                return m.weight
            if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) and m.in_channels == channels and m.groups == 1 \
                    and all(k == 1 for k in m.kernel_size):
                return m.weight.reshape(m.out_channels, channels)
        raise LayerError(
            f"CAM: no nn.Linear with in_features={channels} (the target layer's channels) found"
            + (" (the given fc does not match)" if self._fc is not None else "")
            + "; CAM needs global pooling followed by one linear classifier -- pass fc=... or use GradCAM"
        )

    def weights(self, activations, gradients, classes):
        w = self._fc_weight(activations.shape[1]).detach().to(activations.dtype)
        if classes is None:
            raise InputError("CAM needs class indices")
        if w.shape[0] > 1 and int(classes.max()) >= w.shape[0]:
            raise InputError(f"CAM: class {int(classes.max())} out of range for a classifier with {w.shape[0]} classes")
        return cam_weights(w, classes)


@register("eigencam", "eigen-cam")
class EigenCAM(BaseCAM):
    """Eigen-CAM: first principal component of the activations (class-agnostic, no gradients; see
    :func:`eigencam_map`).
    """

    uses_gradients = False

    def layer_map(self, activations, gradients, classes):
        return eigencam_map(activations)

    def channel_maps(self, activations, gradients, classes):
        return activations  # its principal component is the Eigen-CAM map already


@register("eigengradcam", "eigen-grad-cam")
class EigenGradCAM(BaseCAM):
    """Eigen-Grad-CAM: first principal component of gradient x activation (see :func:`eigengradcam_map`)."""

    def layer_map(self, activations, gradients, classes):
        return eigengradcam_map(activations, gradients)

    def channel_maps(self, activations, gradients, classes):
        return gradients * activations
