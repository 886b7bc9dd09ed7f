"""Small reference architectures of any rank, used by the demo, the benchmarks and the tests.

They follow the shapes users meet (torchvision-style ResNet bottlenecks with in-place ReLUs, a VGG-like stack, a
12-lead ECG net, a 3D volume net) without needing torchvision or downloaded weights.
"""

from __future__ import annotations

from torch import nn

from ..core.ranks import ADAPTIVE_AVGPOOL, BATCHNORM, CONV, MAXPOOL

__all__ = [
    "CONV", "BATCHNORM", "MAXPOOL", "ADAPTIVE_AVGPOOL",
    "conv", "bn", "BasicBlock", "Bottleneck", "ResNet", "resnet50_like", "resnet18_3d", "ecg_net", "volume_net",
    "vgg_like", "VGG",
]


def conv(rank: int) -> type[nn.Module]:
    """``nn.Conv1d``/``Conv2d``/``Conv3d`` for ``rank``."""
    return CONV[rank]


def bn(rank: int) -> type[nn.Module]:
    """``nn.BatchNorm1d``/``2d``/``3d`` for ``rank``."""
    return BATCHNORM[rank]


def _pool(rank: int) -> nn.Module:
    return ADAPTIVE_AVGPOOL[rank](1)


class Bottleneck(nn.Module):
    """torchvision-style bottleneck: 1x1 -> 3x3 -> 1x1, ``out += identity``, one shared in-place ReLU."""

    expansion = 4

    def __init__(self, rank: int, c_in: int, width: int, stride: int = 1) -> None:
        super().__init__()
        C, B = conv(rank), bn(rank)
        out = width * self.expansion
        self.conv1, self.bn1 = C(c_in, width, 1, bias=False), B(width)
        self.conv2, self.bn2 = C(width, width, 3, stride=stride, padding=1, bias=False), B(width)
        self.conv3, self.bn3 = C(width, out, 1, bias=False), B(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or c_in != out:
            self.downsample = nn.Sequential(C(c_in, out, 1, stride=stride, bias=False), B(out))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out += identity
        return self.relu(out)


class BasicBlock(nn.Module):
    """torchvision-style basic block: 3x3 -> 3x3, ``out += identity``, one shared in-place ReLU."""

    expansion = 1

    def __init__(self, rank: int, c_in: int, width: int, stride: int = 1) -> None:
        super().__init__()
        C, B = conv(rank), bn(rank)
        self.conv1, self.bn1 = C(c_in, width, 3, stride=stride, padding=1, bias=False), B(width)
        self.conv2, self.bn2 = C(width, width, 3, padding=1, bias=False), B(width)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or c_in != width:
            self.downsample = nn.Sequential(C(c_in, width, 1, stride=stride, bias=False), B(width))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity
        return self.relu(out)


class ResNet(nn.Module):
    """ResNet of any rank with torchvision's module names (``conv1``, ``layer1..4``, ``avgpool``, ``fc``)."""

    def __init__(self, rank: int = 2, layers=(3, 4, 6, 3), in_channels: int = 3, num_classes: int = 1000,
                 base: int = 64, stem_kernel: int = 7, block: type[nn.Module] = Bottleneck) -> None:
        super().__init__()
        C, B = conv(rank), bn(rank)
        self.conv1 = C(in_channels, base, stem_kernel, stride=2, padding=stem_kernel // 2, bias=False)
        self.bn1 = B(base)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = MAXPOOL[rank](3, stride=2, padding=1)
        c = base
        stages = []
        for i, n in enumerate(layers):
            blocks = []
            for j in range(n):
                blocks.append(block(rank, c, base * 2**i, stride=2 if (j == 0 and i > 0) else 1))
                c = base * 2**i * int(getattr(block, "expansion", 1))
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = _pool(rank)
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.avgpool(x).flatten(1))


def resnet50_like(rank: int = 2, in_channels: int = 3, num_classes: int = 1000) -> ResNet:
    """ResNet-50 layout (3, 4, 6, 3 bottlenecks) of any rank."""
    return ResNet(rank, (3, 4, 6, 3), in_channels, num_classes)


def ecg_net(leads: int = 12, num_classes: int = 5) -> ResNet:
    """A 1D ResNet for 12-lead ECG (e.g. 5000 samples at 500 Hz)."""
    return ResNet(1, (2, 2, 2, 2), leads, num_classes, base=32, stem_kernel=15)


def volume_net(in_channels: int = 1, num_classes: int = 2) -> ResNet:
    """A light 3D bottleneck ResNet for CT/MRI volumes (e.g. 96^3): cheap forward, so output costs show."""
    return ResNet(3, (1, 2, 2, 1), in_channels, num_classes, base=16)


def resnet18_3d(in_channels: int = 1, num_classes: int = 2, base: int = 64) -> ResNet:
    """A 3D ResNet-18 layout (basic blocks 2, 2, 2, 2), as in MedicalNet/MONAI ``resnet18``."""
    return ResNet(3, (2, 2, 2, 2), in_channels, num_classes, base=base, block=BasicBlock)


class VGG(nn.Module):
    """VGG-style ``features`` / ``avgpool`` / ``classifier`` with in-place ReLUs and max pooling, any rank."""

    def __init__(self, rank: int = 2, in_channels: int = 3, num_classes: int = 10, widths=(16, 32, 64)) -> None:
        super().__init__()
        C = conv(rank)
        mp = MAXPOOL[rank]
        feats: list[nn.Module] = []
        c = in_channels
        for w in widths:
            feats += [C(c, w, 3, padding=1), nn.ReLU(inplace=True), C(w, w, 3, padding=1), nn.ReLU(inplace=True), mp(2)]
            c = w
        self.features = nn.Sequential(*feats)
        self.avgpool = _pool(rank)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(c, 32), nn.ReLU(inplace=True), nn.Linear(32, num_classes))

    def forward(self, x):
        return self.classifier(self.avgpool(self.features(x)))


def vgg_like(rank: int = 2, in_channels: int = 3, num_classes: int = 10, widths=(16, 32, 64)) -> VGG:
    """A small VGG of any rank."""
    return VGG(rank, in_channels, num_classes, widths)
