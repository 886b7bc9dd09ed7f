"""ndcam: Class Activation Maps for PyTorch models on signals of any spatial rank (1D, 2D, 3D).

>>> import torch, ndcam
>>> net = torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool3d(1),
...                           torch.nn.Flatten(), torch.nn.Linear(4, 2))
>>> ndcam.GradCAM(net)(torch.randn(1, 1, 16, 16, 16)).shape
torch.Size([1, 16, 16, 16])
"""

from __future__ import annotations

from . import metrics, ops, targets, viz
from ._errors import (
    BatchDependenceWarning,
    ConstantMapWarning,
    ForwardError,
    InputError,
    InputTypeError,
    LayerError,
    NdcamError,
    NdcamWarning,
)
from .explain import explain
from .explanation import Explanation
from .layers import LayerInfo, TokenGrid, list_layers
from .methods import (
    CAM,
    AblationCAM,
    BaseCAM,
    EigenCAM,
    EigenGradCAM,
    FullGrad,
    GradCAM,
    GradCAMElementWise,
    GradCAMPlusPlus,
    GuidedBackprop,
    GuidedGradCAM,
    HiResCAM,
    LayerCAM,
    ScoreCAM,
    XGradCAM,
    get_method,
    methods,
)
from .smoothing import Augmentations

__version__ = "0.1.0"

__all__ = [
    "CAM",
    "GradCAM",
    "GradCAMPlusPlus",
    "XGradCAM",
    "HiResCAM",
    "GradCAMElementWise",
    "LayerCAM",
    "EigenCAM",
    "EigenGradCAM",
    "ScoreCAM",
    "AblationCAM",
    "FullGrad",
    "GuidedBackprop",
    "GuidedGradCAM",
    "BaseCAM",
    "explain",
    "Explanation",
    "methods",
    "get_method",
    "list_layers",
    "LayerInfo",
    "TokenGrid",
    "Augmentations",
    "targets",
    "ops",
    "metrics",
    "viz",
    "NdcamError",
    "InputError",
    "InputTypeError",
    "LayerError",
    "ForwardError",
    "NdcamWarning",
    "ConstantMapWarning",
    "BatchDependenceWarning",
    "__version__",
]
