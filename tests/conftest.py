from __future__ import annotations

import os

import pytest
import torch
from torch import nn

CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
BN = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
GAP = {1: nn.AdaptiveAvgPool1d, 2: nn.AdaptiveAvgPool2d, 3: nn.AdaptiveAvgPool3d}
SHAPES = {1: (21,), 2: (9, 12), 3: (5, 6, 7)}
RANKS = [1, 2, 3]


class Net(nn.Module):
    """Small conv net of any rank with a non-trivial head after the target layer ``feat`` (so gradients vary in
    space), BatchNorm with non-trivial running stats, and ``n_classes`` logits."""

    def __init__(self, rank: int, c_in: int = 2, n_classes: int = 5, width: int = 6):
        super().__init__()
        C, B, P = CONV[rank], BN[rank], GAP[rank]
        self.conv1 = C(c_in, width, 3, padding=1)
        self.bn1 = B(width)
        self.act1 = nn.ReLU()
        self.conv2 = C(width, width + 2, 3, stride=2, padding=1)
        self.feat = nn.ReLU()
        self.conv3 = C(width + 2, width, 3, padding=1)
        self.act3 = nn.Tanh()
        self.pool = P(1)
        self.fc = nn.Linear(width, n_classes)

    def forward(self, x):
        h = self.act1(self.bn1(self.conv1(x)))
        h = self.feat(self.conv2(h))
        h = self.act3(self.conv3(h))
        return self.fc(self.pool(h).flatten(1))


class GapNet(nn.Module):
    """conv -> ReLU -> global average pooling -> linear: the architecture CAM is defined for."""

    def __init__(self, rank: int, c_in: int = 2, n_classes: int = 4, width: int = 6):
        super().__init__()
        self.conv1 = CONV[rank](c_in, width, 3, padding=1)
        self.act1 = nn.ReLU()
        self.conv2 = CONV[rank](width, width, 3, stride=2, padding=1)
        self.feat = nn.ReLU()
        self.pool = GAP[rank](1)
        self.fc = nn.Linear(width, n_classes)

    def forward(self, x):
        return self.fc(self.pool(self.feat(self.conv2(self.act1(self.conv1(x))))).flatten(1))


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model


def peer_paths() -> list[str]:
    """Folders holding optional peer libraries (torch-cam, pytorch-grad-cam, ...) for the agreement tests: the
    ``os.pathsep``-separated entries of ``NDCAM_PEERS`` (empty when unset), to be put first on ``sys.path``."""
    return [p for p in os.environ.get("NDCAM_PEERS", "").split(os.pathsep) if p]


def make_net(rank: int, seed: int = 0, dtype=torch.float64, cls=Net, **kw) -> nn.Module:
    torch.manual_seed(seed)
    return randomize_bn(cls(rank, **kw)).to(dtype).eval()


def make_input(rank: int, n: int = 3, c: int = 2, seed: int = 1, dtype=torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, c, *SHAPES[rank], generator=g).to(dtype)


def methods_by_rank(methods, in_3d):
    """``(method, rank)`` parameters: every method on ranks 1 and 2, and on rank 3 only those in ``in_3d`` (the
    orchestration under test is rank-agnostic; 3D costs the most). Deselected by construction, not skipped."""
    return [pytest.param(m, r, id=f"{m}-{r}d") for m in methods for r in RANKS if r < 3 or m in in_3d]


@pytest.fixture(params=RANKS, ids=lambda r: f"{r}d")
def rank(request):
    return request.param
