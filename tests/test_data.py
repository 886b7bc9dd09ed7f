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
    # every faithfulness metric, against white noise and against a random map with a CAM's smoothness; removal
    # replaces by 0, the value the model saw removed parts take in training
    for rnd in (noise, smooth):
        for metric, better in ((metrics.deletion_auc, -1), (metrics.insertion_auc, 1)):
            ours, theirs = (float(metric(model, xp, m, 1, baseline="zero").mean()) for m in (maps, rnd))
            assert better * (ours - theirs) > 0.05, (metric.__name__, ours, theirs)
        assert metrics.average_drop(model, xp, maps, 1) < metrics.average_drop(model, xp, rnd, 1)
        assert metrics.increase_in_confidence(model, xp, maps, 1) > metrics.increase_in_confidence(model, xp, rnd, 1)
        road_ours = metrics.road(model, xp[:8], maps[:8], 1).combined.mean()
        assert road_ours > metrics.road(model, xp[:8], rnd[:8], 1).combined.mean() + 0.05


def test_random_removal_zeroes_a_random_fraction_of_some_samples():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 2, 10, 12) + 5  # no zeros of its own
    out = data.random_removal(x, g, p=0.5)
    removed = (out == 0).all(1)  # channels are removed together
    assert ((out == 0) == removed[:, None]).all() and torch.equal(out[~(out == 0)], x[~(out == 0)])
    counts = removed.flatten(1).sum(1)
    assert 15 < int((counts > 0).sum()) < 50  # about half the samples
    assert int(counts.max()) > 60  # fractions spread over (0, 1)
    assert torch.equal(data.random_removal(x, g, p=0.0), x)
    assert (data.random_removal(x, g, p=1.0, value=-1.0) == -1).any()


def test_train_tiny_is_not_saturated():
    x, y, _ = data.task(1, n=64)
    model, _ = data.train_tiny(x, y, epochs=3)
    with torch.no_grad():
        p = torch.softmax(model(x), 1)
    assert float(p.max()) < 0.999  # label smoothing keeps Average Drop / Increase in Confidence measurable


def test_train_tiny_options_are_checked_before_training():
    x, y, _ = data.task(1, n=8)
    with pytest.raises(ValueError, match="removal must be a probability"):
        data.train_tiny(x, y, removal=1.5)
    with pytest.raises(ValueError, match="label_smoothing"):
        data.train_tiny(x, y, label_smoothing=1.0)
    with pytest.raises(ValueError, match="removal probability"):
        data.random_removal(x, torch.Generator(), p=-0.1)
