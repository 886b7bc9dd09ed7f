"""Factories for command-line tests: tiny models of every rank that record what they receive.

``tests.cli_models:rec2d`` etc. average the input channels first, so one model serves any channel count; every forward
appends a copy of its input to :data:`SEEN` (clear it before a run, read ``SEEN[0]`` after).
"""

from __future__ import annotations

import torch
from torch import nn

SEEN: list[torch.Tensor] = []

CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
POOL = {1: nn.AdaptiveAvgPool1d, 2: nn.AdaptiveAvgPool2d, 3: nn.AdaptiveAvgPool3d}


class Recorder(nn.Module):
    def __init__(self, rank: int, classes: int = 3):
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = CONV[rank](1, 4, 3, padding=1)
        self.act1 = nn.ReLU()
        self.conv2 = CONV[rank](4, 6, 3, padding=1)
        self.act2 = nn.ReLU()
        self.pool = POOL[rank](1)
        self.fc = nn.Linear(6, classes)

    def forward(self, x):
        SEEN.append(x.detach().cpu().clone())
        h = self.act2(self.conv2(self.act1(self.conv1(x.mean(1, keepdim=True)))))
        return self.fc(self.pool(h).flatten(1))


def rec1d() -> nn.Module:
    return Recorder(1).eval()


def rec2d() -> nn.Module:
    return Recorder(2).eval()


def rec3d() -> nn.Module:
    return Recorder(3).eval()


def first_input() -> torch.Tensor:
    """The first input of the largest batch the model saw (the layer probe may run one sample first)."""
    assert SEEN, "the model was never called"
    n = max(len(t) for t in SEEN)
    return next(t for t in SEEN if len(t) == n)


def double(x: torch.Tensor) -> torch.Tensor:
    """A --preprocess callable."""
    return x * 2


class Pointwise(nn.Module):
    """1x1x1 convolutions only: the map of a reoriented volume is the reoriented map (orientation tests)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv3d(1, 4, 1)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv3d(4, 6, 1)
        self.act2 = nn.ReLU()
        self.pool = nn.AdaptiveMaxPool3d(1)
        self.fc = nn.Linear(6, 2)

    def forward(self, x):
        SEEN.append(x.detach().cpu().clone())
        return self.fc(self.pool(self.act2(self.conv2(self.act1(self.conv1(x.mean(1, keepdim=True)))))).flatten(1))


def pointwise3d() -> nn.Module:
    return Pointwise().eval()
