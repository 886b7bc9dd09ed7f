"""Deterministic synthetic tasks with ground-truth masks, one per rank, and a tiny model trained in seconds on a CPU.

* rank 1 -- :func:`ecg_task`: ECG-like beat trains; class 1 has one abnormal (wide, inverted) beat, whose window is the
  mask;
* rank 2 -- :func:`scene_task`: images with 1-3 square frames as distractors; class 1 also holds a ring, whose disk
  is the mask;
* rank 3 -- :func:`volume_task`: volumes with 1-3 hollow cubes as distractors; class 1 also holds a lesion-like blob,
  whose voxels are the mask.

Object brightness varies from object to object and the distractors are hollow, so neither brightness nor the
holes that removal-based metrics punch into an input can fake the class evidence; :func:`train_tiny` trains with
random removal (counterfactual training), so that those metrics measure the model's evidence rather than its
reaction to out-of-distribution inputs.

Each returns ``(x, y, mask)``: ``x`` float32 ``(N, C, *spatial)``, ``y`` long ``(N,)``, ``mask`` bool ``(N, *spatial)``
(all-False for class 0).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..core.errors import InputError
from ..core.ranks import ADAPTIVE_AVGPOOL, MAXPOOL
from .models import bn, conv

__all__ = ["ecg_task", "scene_task", "volume_task", "task", "TinyNet", "train_tiny", "random_maps", "random_removal"]


def random_maps(shape, *, smooth: int = 4, seed: int = 0) -> torch.Tensor:
    """Random baseline maps ``(N, *spatial)`` in ``[0, 1]``: uniform noise on a grid ``smooth`` times coarser than
    ``spatial``, upsampled (multi)linearly -- the spatial statistics of a CAM with random weights. ``smooth=1``
    gives white noise.
    """
    from ..core import ops

    n, *spatial = shape
    return ops.minmax_normalize(_coarse_noise(n, spatial, smooth, torch.Generator().manual_seed(seed)))


def _coarse_noise(n: int, spatial, smooth: int, generator: torch.Generator) -> torch.Tensor:
    """Uniform noise on a grid ``smooth`` times coarser than ``spatial``, upsampled (multi)linearly: ``(n, *spatial)``."""
    from ..core import ops

    coarse = torch.rand(n, *[max(1, s // smooth) for s in spatial], generator=generator)
    return ops.upsample(coarse, spatial)


_WIDE = 9.0  # width (samples) of the abnormal beat's QRS


def ecg_task(n: int = 256, length: int = 720, seed: int = 0, fs: float = 360.0):
    """ECG-like beat trains (~72 bpm, gain varying between records); class 1 holds one premature, wide, inverted beat."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(length, dtype=torch.float32)
    x = torch.zeros(n, 1, length)
    mask = torch.zeros(n, length, dtype=torch.bool)
    y = torch.arange(n) % 2
    period = 0.83 * fs
    for i in range(n):
        phase = float(torch.rand(1, generator=g)) * period
        beats = torch.arange(phase, length, period)
        sig = torch.zeros(length)
        # the abnormal beat is one whose whole (premature, wide) complex lies inside the window: a positive whose
        # evidence is cut off at the edge would have no evidence to find
        half = 4 * _WIDE  # the abnormal complex's half-extent, also its mask's
        inside = [j for j, b in enumerate(beats.tolist()) if half <= b - 0.15 * period <= length - 1 - half]
        abnormal = inside[int(torch.randint(0, len(inside), (1,), generator=g))] if y[i] == 1 else -1
        gain = _uniform(g, 0.5, 1.5)  # recording gain varies between records
        for j, b in enumerate(beats.tolist()):
            if j == abnormal:
                b = b - 0.15 * period  # premature
                width, amp = _WIDE, -1.6 * _uniform(g, 0.6, 1.2)
                lo, hi = max(0, int(b - half)), min(length, int(b + half) + 1)
                mask[i, lo:hi] = True
            else:
                width, amp = 3.0, 1.0
            sig += gain * amp * torch.exp(-0.5 * ((t - b) / width) ** 2)
            sig += gain * 0.25 * torch.exp(-0.5 * ((t - b - 0.25 * fs) / 12.0) ** 2)  # T wave
        drift = 0.1 * torch.sin(2 * math.pi * t / length * float(torch.rand(1, generator=g) * 2))  # baseline wander
        sig += 0.05 * torch.randn(length, generator=g) + drift
        x[i, 0] = sig
    return x, y, mask


def _uniform(g: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand(1, generator=g))


def _add_hollow_box(img: torch.Tensor, corner, side: int, value: float) -> None:
    """Add ``value`` to the one-element-thick wall of the box ``side^r`` at ``corner`` of ``img`` (any rank), in place."""
    img[tuple(slice(c, c + side) for c in corner)] += value
    img[tuple(slice(c + 1, c + side - 1) for c in corner)] -= value


def _grid(shape):
    axes = [torch.arange(s, dtype=torch.float32) for s in shape]
    return torch.meshgrid(*axes, indexing="ij")


def scene_task(n: int = 256, size: int = 32, seed: int = 0):
    """Grey images with one to three bright square frames (same distribution in both classes); class 1 also holds a
    ring. The number and brightness of the objects vary within each class, so neither counting nor total brightness
    decides, and the frames have holes too, so a hole does not decide either: the ring's shape does.
    """
    g = torch.Generator().manual_seed(seed)
    yy, xx = _grid((size, size))
    x = 0.1 * torch.randn(n, 1, size, size, generator=g)
    mask = torch.zeros(n, size, size, dtype=torch.bool)
    y = torch.arange(n) % 2
    for i in range(n):
        for _ in range(int(torch.randint(1, 4, (1,), generator=g))):
            cy, cx = torch.randint(2, size - 8, (2,), generator=g).tolist()
            _add_hollow_box(x[i, 0], (cy, cx), 5, _uniform(g, 0.5, 1.5))  # a square frame
        if y[i] == 1:
            cy, cx = torch.randint(6, size - 6, (2,), generator=g).tolist()
            r = torch.sqrt((yy - cy) ** 2 + (xx - cx) ** 2)
            ring = (r > 2.0) & (r < 4.5)
            x[i, 0][ring] += _uniform(g, 0.5, 1.5)
            mask[i] = r < 4.5
    return x, y, mask


def volume_task(n: int = 192, size: int = 20, seed: int = 0):
    """Volumes with one to three bright hollow cubes (same distribution in both classes); class 1 also holds a
    Gaussian blob (a lesion). The number and brightness of the objects vary, so neither counting nor total brightness
    decides: the blob does.
    """
    g = torch.Generator().manual_seed(seed)
    zz, yy, xx = _grid((size, size, size))
    x = 0.1 * torch.randn(n, 1, size, size, size, generator=g)
    mask = torch.zeros(n, size, size, size, dtype=torch.bool)
    y = torch.arange(n) % 2
    for i in range(n):
        for _ in range(int(torch.randint(1, 4, (1,), generator=g))):
            c = torch.randint(1, size - 5, (3,), generator=g).tolist()
            _add_hollow_box(x[i, 0], c, 5, _uniform(g, 0.4, 1.2))  # a hollow cube
        if y[i] == 1:
            c = torch.randint(4, size - 4, (3,), generator=g).tolist()
            d2 = (zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2
            x[i, 0] += _uniform(g, 0.6, 1.8) * torch.exp(-d2 / (2 * 1.8**2))
            mask[i] = d2 <= 3.0**2
    return x, y, mask


def task(rank: int, n: int | None = None, seed: int = 0):
    """The synthetic task of ``rank`` (1, 2 or 3)."""
    if rank not in (1, 2, 3):
        raise InputError(f"synthetic tasks exist for ranks 1, 2 and 3, not {rank}")
    fn = ecg_task if rank == 1 else scene_task if rank == 2 else volume_task
    return fn(seed=seed) if n is None else fn(n=n, seed=seed)


class TinyNet(nn.Module):
    """conv-BN-ReLU blocks with pooling, global average pooling and a linear head, for any rank."""

    def __init__(self, rank: int, in_channels: int = 1, num_classes: int = 2, width: int = 16,
                 kernel: int = 3, blocks: int = 3) -> None:
        super().__init__()
        C, B = conv(rank), bn(rank)
        mp = MAXPOOL[rank]
        layers: list[nn.Module] = []
        c = in_channels
        for i in range(blocks):
            layers += [C(c, width, kernel, padding=kernel // 2), B(width), nn.ReLU(inplace=True)]
            if i < blocks - 1:
                layers.append(mp(2))
            c = width
        self.features = nn.Sequential(*layers)
        self.pool = ADAPTIVE_AVGPOOL[rank](1)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x):
        return self.fc(self.pool(self.features(x)).flatten(1))


def random_removal(x: torch.Tensor, generator: torch.Generator, p: float = 0.5, value: float = 0.0) -> torch.Tensor:
    """Counterfactual-training augmentation (Hase et al. 2021, https://arxiv.org/abs/2106.00786): each sample, with
    probability ``p``, has a random fraction ``f ~ U(0, 1)`` of its elements replaced by ``value``, chosen by
    thresholding a random map that is white noise or smooth noise on a 4x or 8x coarser grid.

    A model trained this way has seen inputs with parts removed, so removal-based faithfulness metrics (deletion,
    insertion, Average Drop, ROAD) measure where its evidence is instead of how it reacts to out-of-distribution
    holes. The labels are kept.
    """
    if not 0.0 <= p <= 1.0:
        raise InputError(f"removal probability p must be in [0, 1], got {p!r}")
    n, _, *spatial = x.shape
    smooth = (1, 4, 8)[int(torch.randint(0, 3, (1,), generator=generator))]
    r = _coarse_noise(n, spatial, smooth, generator).reshape(n, -1)
    frac = torch.rand(n, generator=generator)
    use = torch.rand(n, generator=generator) < p
    k = (frac * r.shape[1]).long()  # remove the k lowest elements of r
    rank_of = r.argsort(1).argsort(1)
    remove = (rank_of < k[:, None]) & use[:, None]
    return x.masked_fill(remove.reshape(n, 1, *spatial), value)


def train_tiny(x: torch.Tensor, y: torch.Tensor, *, epochs: int | None = None, seed: int = 0, lr: float = 3e-3,
               batch_size: int = 16, label_smoothing: float = 0.1, removal: float = 0.5,
               **net_kwargs) -> tuple[nn.Module, float]:
    """Train a :class:`TinyNet` on ``(x, y)``; returns the model (eval mode) and its training accuracy.

    Args:
        x: inputs ``(N, C, *spatial)``.
        y: integer labels ``(N,)``.
        epochs: passes over the data (default 6 for signals, 12 for images and volumes).
        label_smoothing: keeps the probabilities away from exactly 0 and 1, so that confidence-based metrics
            (Average Drop, Increase in Confidence) are not saturated.
        removal: probability that a training sample is shown with a random part removed (zeroed) -- counterfactual
            training, see :func:`random_removal`; 0 trains on the plain data.
        seed: seed of the weights, the batch order and the removals.
        lr: Adam learning rate.
        batch_size: samples per step.
        **net_kwargs: passed to :class:`TinyNet`.
    """
    if not 0.0 <= removal <= 1.0:
        raise InputError(f"removal must be a probability in [0, 1], got {removal!r}")
    if not 0.0 <= label_smoothing < 1.0:
        raise InputError(f"label_smoothing must be in [0, 1), got {label_smoothing!r}")
    torch.manual_seed(seed)
    rank = x.ndim - 2
    # 1D: wider kernels for beat-scale features; 2D/3D: one pooling stage keeps a 16^2 / 10^3 map, and a receptive
    # field about the objects' size (deeper tiny nets learn to count the distractors instead of seeing the shape)
    kw = {1: {"kernel": 7}, 2: {"blocks": 2}, 3: {"blocks": 2}}.get(rank, {})
    kw.update(net_kwargs)
    if epochs is None:
        epochs = 6 if rank == 1 else 12
    model = TinyNet(rank, x.shape[1], int(y.max()) + 1, **kw)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(len(x), generator=g)
        for s in range(0, len(x), batch_size):
            idx = perm[s : s + batch_size]
            xb = random_removal(x[idx], g, removal) if removal > 0 else x[idx]
            opt.zero_grad()
            nn.functional.cross_entropy(model(xb), y[idx], label_smoothing=label_smoothing).backward()
            opt.step()
    # recalibrate BatchNorm on the whole training set (cumulative averages): short trainings leave the running
    # statistics far from the data's, which makes eval-mode predictions collapse
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    with torch.no_grad():
        for s in range(0, len(x), 64):
            model(x[s : s + 64])
    for m in bns:
        m.momentum = 0.1
    model.eval()
    with torch.no_grad():
        acc = float((model(x).argmax(1) == y).float().mean())
    for p in model.parameters():
        p.grad = None
    return model, acc
