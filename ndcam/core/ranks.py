"""torch's layer classes by spatial rank: the one place the library names them (torch has none beyond rank 3).

>>> from ndcam.ranks import CONV
>>> CONV[1].__name__, CONV[3].__name__
('Conv1d', 'Conv3d')
"""

from __future__ import annotations

from torch import nn

__all__ = ["CONV", "BATCHNORM", "MAXPOOL", "ADAPTIVE_AVGPOOL"]

#: convolutions by spatial rank
CONV: dict[int, type[nn.Module]] = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
#: BatchNorm by spatial rank
BATCHNORM: dict[int, type[nn.Module]] = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
#: max pooling by spatial rank
MAXPOOL: dict[int, type[nn.Module]] = {1: nn.MaxPool1d, 2: nn.MaxPool2d, 3: nn.MaxPool3d}
#: adaptive average pooling by spatial rank
ADAPTIVE_AVGPOOL: dict[int, type[nn.Module]] = {1: nn.AdaptiveAvgPool1d, 2: nn.AdaptiveAvgPool2d,
                                                3: nn.AdaptiveAvgPool3d}
