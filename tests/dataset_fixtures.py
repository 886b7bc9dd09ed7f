"""Synthetic datasets and models for the dataset-explanation tests, importable as ``tests.dataset_fixtures:factory``.

``NDCAM_TEST_KILL_AT=<index>`` with ``NDCAM_TEST_KILL_FLAG=<path>``: the dataset SIGKILLs its own process when it reads
item ``index`` and the flag file does not exist yet (the flag is created first, so the restarted run goes through).
``NDCAM_TEST_PID_DIR=<dir>``: each process that reads items leaves ``<dir>/<RANK>.<pid>`` (for a test to kill it).
``NDCAM_TEST_SLEEP=<seconds>``: sleep that long in every ``__getitem__`` (a slower run to kill at a random moment).
"""

from __future__ import annotations

import faulthandler
import os
import signal
import time
from pathlib import Path

import torch
from torch import nn

LENGTH = 64

if os.environ.get("NDCAM_TEST_PID_DIR"):
    faulthandler.register(signal.SIGUSR1)


def _hooks() -> None:
    pid_dir = os.environ.get("NDCAM_TEST_PID_DIR")
    if pid_dir:
        p = Path(pid_dir) / f"{os.environ.get('RANK', 0)}.{os.getpid()}"
        if not p.exists():
            p.write_text("")
    if os.environ.get("NDCAM_TEST_SLEEP"):
        time.sleep(float(os.environ["NDCAM_TEST_SLEEP"]))


class Signals(torch.utils.data.Dataset):
    """``n`` two-lead signals with a bump; dict items with x, y, mask and key."""

    def __init__(self, n: int = 40, length: int = LENGTH, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 2, length, generator=g) * 0.3
        self.y = torch.randint(0, 2, (n,), generator=g)
        self.pos = torch.randint(8, length - 8, (n,), generator=g)
        t = torch.arange(length)
        for i in range(n):
            self.x[i, :, :] += self.y[i] * 2.0 * torch.exp(-((t - self.pos[i]) / 3.0) ** 2)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        _hooks()
        kill = os.environ.get("NDCAM_TEST_KILL_AT")
        if kill is not None and int(kill) == i:
            flag = Path(os.environ["NDCAM_TEST_KILL_FLAG"])
            if not flag.exists():
                flag.write_text(str(os.getpid()))
                os.kill(os.getpid(), signal.SIGKILL)
        mask = (torch.arange(self.x.shape[-1]) - self.pos[i]).abs() <= 4
        return {"x": self.x[i], "y": int(self.y[i]), "mask": mask, "key": f"sig{i}"}


class Volumes(torch.utils.data.Dataset):
    """Volumes of different sizes (every third one larger), with an affine."""

    def __init__(self, n: int = 7) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        g = torch.Generator().manual_seed(i)
        size = (12, 10, 8) if i % 3 else (14, 12, 10)
        affine = torch.eye(4, dtype=torch.float64)
        affine[0, 3] = float(i)
        return {"x": torch.randn(1, *size, generator=g), "y": i % 2, "affine": affine}


def signals() -> Signals:
    return Signals(n=int(os.environ.get("NDCAM_TEST_N", 40)))


def volumes() -> Volumes:
    return Volumes()


def signal_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv1d(2, 6, 5, padding=2), nn.ReLU(), nn.Conv1d(6, 8, 5, padding=2, stride=2), nn.ReLU(),
                         nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(8, 2)).eval()


def volume_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv3d(4, 4, 3, stride=2, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(4, 2)).eval()
