"""ndcam: Class Activation Maps for PyTorch models on signals of any spatial rank (1D, 2D, 3D).

>>> import torch, ndcam
>>> net = torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool3d(1),
...                           torch.nn.Flatten(), torch.nn.Linear(4, 2))
>>> ndcam.GradCAM(net)(torch.randn(1, 1, 16, 16, 16)).shape
torch.Size([1, 16, 16, 16])

The method classes are exported from :mod:`ndcam.methods` (``from .methods import *`` below), whose ``__all__`` holds
every registered method; ``tests/test_registry.py`` checks that every class in the registry is exported here, listed
by ``ndcam methods`` and named in the README.
"""

from __future__ import annotations

from . import channels, dataset, leadwise, metrics, ops, sweep, targets, viz
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
from .dataset import explain_dataset, open_explanations
from .detection import DetectionTarget
from .explain import explain
from .explanation import Explanation
from .layers import LayerInfo, TokenGrid, list_layers
from .methods import *  # noqa: F403 -- every registered method class, BaseCAM, methods(), get_method()
from .methods import __all__ as _method_names
from .sliding import SlidingWindow, sliding_window_explain
from .smoothing import Augmentations
from .sweep import SweepResult, layer_sweep

__version__ = "0.1.0"

__all__ = [
    *_method_names,
    "explain",
    "Explanation",
    "list_layers",
    "LayerInfo",
    "TokenGrid",
    "Augmentations",
    "layer_sweep",
    "SweepResult",
    "SlidingWindow",
    "sliding_window_explain",
    "DetectionTarget",
    "explain_dataset",
    "open_explanations",
    "targets",
    "ops",
    "metrics",
    "viz",
    "sweep",
    "channels",
    "leadwise",
    "dataset",
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
