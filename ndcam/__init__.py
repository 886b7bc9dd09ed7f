"""ndcam: Class Activation Maps for PyTorch models on signals of any spatial rank (1D, 2D, 3D).

>>> import torch, ndcam
>>> net = torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool3d(1),
...                           torch.nn.Flatten(), torch.nn.Linear(4, 2))
>>> ndcam.GradCAM(net)(torch.randn(1, 1, 16, 16, 16)).shape
torch.Size([1, 16, 16, 16])

The package's folders show its architecture: ``core/`` (the engine: ops, capture, layers, targets, methods, the
pipeline), ``analysis/`` (metrics, layer sweeps, channels, lead-wise maps, sliding windows, whole datasets), ``app/``
(file readers, pictures, reports, the command line) and ``synthetic/`` (the demo's tasks). Each public module keeps a
short name -- ``ndcam.ops``, ``ndcam.viz``, ``ndcam.metrics``, ... -- bound to the same module object as its home
(see ``ndcam/_layout.py``).

The method classes are exported from :mod:`ndcam.methods` (``from .core.methods import *`` below), whose ``__all__``
holds every registered method; ``tests/test_registry.py`` checks that every class in the registry is exported here, listed
by ``ndcam methods`` and named in the README.
"""

from __future__ import annotations

import sys

from . import _layout
from ._version import __version__
from .analysis import channels, dataset, leadwise, metrics, sweep
from .analysis import sliding as sliding
from .analysis.dataset import explain_dataset, open_explanations
from .analysis.sliding import SlidingWindow, sliding_window_explain
from .analysis.sweep import SweepResult, layer_sweep
from .app import io as io
from .app import report as report
from .app import viz
from .core import capture as capture
from .core import detection as detection
from .core import explanation as explanation
from .core import layers as layers
from .core import ops, targets
from .core import ranks as ranks
from .core import smoothing as smoothing
from .core.detection import DetectionTarget
from .core.errors import (
    BatchDependenceWarning,
    ConstantMapWarning,
    DeadlockError,
    ForwardError,
    InputError,
    InputTypeError,
    LayerError,
    NdcamError,
    NdcamWarning,
    PrecisionWarning,
)
from .core.explain import explain
from .core.explanation import Explanation
from .core.layers import LayerInfo, TokenGrid, list_layers
from .core.methods import *  # noqa: F403 -- every registered method class, BaseCAM, methods(), get_method()
from .core.methods import __all__ as _method_names
from .core.smoothing import Augmentations
from .synthetic import data as data
from .synthetic import models as models

_layout.register(sys.modules[__name__])

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
    "DeadlockError",
    "NdcamWarning",
    "ConstantMapWarning",
    "BatchDependenceWarning",
    "PrecisionWarning",
    "__version__",
]
