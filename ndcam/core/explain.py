"""Functional entry point: ``ndcam.explain(model, x, method="gradcam")``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from .explanation import Explanation
from .layers import LayerSpec
from .methods import BaseCAM, get_method
from .targets import TargetSpec

__all__ = ["explain"]


def explain(
    model: nn.Module,
    x: torch.Tensor,
    method: str | type[BaseCAM] = "gradcam",
    targets: TargetSpec = None,
    layers: LayerSpec = None,
    *,
    upsample: bool = True,
    normalize: bool = True,
    forward_args: tuple = (),
    forward_kwargs: Mapping[str, Any] | None = None,
    **method_options: Any,
) -> Explanation:
    """Explain ``model`` on ``x`` with one CAM method and return an :class:`Explanation`.

    Args:
        model: the model.
        x: input ``(N, C, *spatial)``, spatial rank 1 (signals), 2 (images) or 3 (volumes).
        method: a registry name from :func:`ndcam.methods` (``"gradcam"``, ``"gradcam++"``, ...) or a method class.
        targets: None (top-1 class), int, per-sample sequence, ``(N, K)`` tensor, or callable output -> scores.
        layers: None (automatic), dotted name, module, or a list of those.
        upsample: resize maps to the input's spatial size.
        normalize: min-max normalize each map to ``[0, 1]``.
        forward_args: extra positional inputs of the model after ``x`` (``model(x, *forward_args, **forward_kwargs)``);
            tensors whose first axis has length N are per-sample (replicated by the perturbation methods).
        forward_kwargs: extra keyword inputs of the model, e.g. ``{"attention_mask": mask}``.
        **method_options: passed to the method class (e.g. ``fc=`` for CAM, ``per_sample=True``, ``batch_size=``).

    Example:
        >>> import torch, ndcam
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
        ...                           torch.nn.Flatten(), torch.nn.Linear(8, 4))
        >>> exp = ndcam.explain(net, torch.randn(2, 3, 32, 32), method="gradcam++", targets=[1, 3])
        >>> exp.maps.shape, exp.targets.tolist()
        (torch.Size([2, 32, 32]), [1, 3])
    """
    cam = get_method(method)(model, layers, **method_options)
    return cam.explain(x, targets, upsample=upsample, normalize=normalize, forward_args=forward_args,
                       forward_kwargs=forward_kwargs)
