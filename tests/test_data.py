"""Synthetic tasks: deterministic, masks where the evidence is, and Grad-CAM finds it (pointing game >= 0.95)."""

from __future__ import annotations

import pytest
import torch

import ndcam
from ndcam import data, metrics


@pytest.mark.parametrize("rank", [1, 2, 3])
def test_tasks_are_deterministic_and_masks_match_the_class(rank):
    x1, y1, m1 = data.task(rank, n=16, seed=3)
    x2, y2, m2 = data.task(rank, n=16, seed=3)
    assert torch.equal(x1, x2) and torch.equal(y1, y2) and torch.equal(m1, m2)
    assert x1.shape[:2] == (16, 1) and m1.shape == (16, *x1.shape[2:]) and m1.dtype == torch.bool
    assert (m1[y1 == 1].flatten(1).any(1)).all() and not m1[y1 == 0].any()
    assert not torch.equal(x1, data.task(rank, n=16, seed=4)[0])


@pytest.mark.parametrize("rank", [1, 2, 3])
def test_gradcam_pointing_game_on_each_task_beats_random(rank):
    x, y, _ = data.task(rank, seed=0)
    model, acc = data.train_tiny(x, y)
    assert acc > 0.95
    xt, yt, mt = data.task(rank, n=64, seed=1)
    xp, mp = xt[yt == 1], mt[yt == 1]
    maps = ndcam.GradCAM(model)(xp, 1)
    assert metrics.pointing_game(maps, mp).float().mean() >= 0.95
    noise = data.random_maps(mp.shape, smooth=1)
    smooth = data.random_maps(mp.shape, smooth=4)
    for rnd in (noise, smooth):
        assert metrics.pointing_game(rnd, mp).float().mean() < 0.5
        for metric in (metrics.energy_pointing_game, metrics.mask_iou):
            assert metric(maps, mp).mean() > metric(rnd, mp).mean()
        assert metrics.insertion_auc(model, xp, maps, 1).mean() > metrics.insertion_auc(model, xp, rnd, 1).mean()
    # faithfulness against a random map with a CAM's smoothness
    assert metrics.deletion_auc(model, xp, maps, 1).mean() < metrics.deletion_auc(model, xp, smooth, 1).mean()
    assert metrics.average_drop(model, xp, maps, 1) <= metrics.average_drop(model, xp, smooth, 1)
    assert metrics.road(model, xp[:8], maps[:8], 1).combined.mean() > metrics.road(model, xp[:8], smooth[:8], 1).combined.mean()
