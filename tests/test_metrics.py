"""Metrics on hand-computed tiny cases and invariants, on every rank."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn

import ndcam
from ndcam import metrics

from .conftest import SHAPES


class Linear2(nn.Module):
    """logits = [sum(w * x), 0]: P(class 0) = sigmoid(sum(w * x)). Evidence sits where w > 0."""

    def __init__(self, w: torch.Tensor):
        super().__init__()
        self.w = nn.Parameter(w.clone())

    def forward(self, x):
        s = (x * self.w).flatten(1).sum(1)
        return torch.stack([s, torch.zeros_like(s)], 1)


def sig(v):
    return 1 / (1 + math.exp(-v))


def test_deletion_curve_by_hand():
    w = torch.tensor([[[3.0, 0.0, 1.0, 0.0]]])
    model = Linear2(w)
    x = torch.ones(1, 1, 4)
    maps = torch.tensor([[0.9, 0.1, 0.5, 0.0]])  # order: 0, 2, 1, 3
    curve = metrics.deletion_curve(model, x, maps, 0, steps=4)
    expected = [sig(4), sig(1), sig(0), sig(0), sig(0)]
    torch.testing.assert_close(curve[0], torch.tensor(expected))
    auc = metrics.deletion_auc(model, x, maps, 0, steps=4)
    trapz = sum((expected[i] + expected[i + 1]) / 2 for i in range(4)) / 4
    assert auc.item() == pytest.approx(trapz, rel=1e-6)
    ins = metrics.deletion_curve(model, x, maps, 0, steps=4, baseline="zero", insertion=True)
    torch.testing.assert_close(ins[0], torch.tensor([sig(0), sig(3), sig(4), sig(4), sig(4)]))


def test_average_drop_and_increase_by_hand():
    model = Linear2(torch.tensor([[[1.0, 1.0]]]))
    x = torch.tensor([[[1.0, 1.0]], [[-1.0, -1.0]]])
    maps = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    y = torch.tensor([sig(2), 1 - sig(-2)])  # top-1: class 0 for sample 0 (s=2), class 1 for sample 1 (s=-2)
    o = torch.tensor([sig(1), 1 - sig(-1)])
    expected = float(100 * (torch.clamp(y - o, min=0) / y).mean())
    assert metrics.average_drop(model, x, maps) == pytest.approx(expected, rel=1e-5)
    assert metrics.increase_in_confidence(model, x, maps) == 0.0
    assert metrics.increase_in_confidence(model, x, torch.ones(2, 2) * 2) == 100.0


@pytest.mark.parametrize("rank", [1, 2, 3])
def test_noisy_linear_imputation_is_exact_on_linear_signals(rank):
    shape = SHAPES[rank]
    grids = torch.meshgrid(*[torch.arange(s, dtype=torch.float64) for s in shape], indexing="ij")
    plane = sum((i + 1) * 0.5 * g for i, g in enumerate(grids)) + 2.0
    x = torch.stack([plane, -plane])  # two channels
    remove = torch.zeros(shape, dtype=torch.bool)
    center = tuple(s // 2 for s in shape)
    remove[center] = True  # one interior element: its neighbours' weighted mean is exact for a linear function
    out = metrics.noisy_linear_impute(x, remove, noise=0.0)
    torch.testing.assert_close(out, x)
    # a block of removed interior elements is also exact (harmonic interpolation of a linear function)
    block = tuple(slice(max(1, s // 2 - 1), min(s - 1, s // 2 + 1)) for s in shape)
    remove = torch.zeros(shape, dtype=torch.bool)
    remove[block] = True
    damaged = x.clone()
    damaged[(slice(None),) + block] = 99.0
    torch.testing.assert_close(metrics.noisy_linear_impute(damaged, remove, noise=0.0), x)


def test_neighbour_weights_match_the_paper_in_2d():
    w = dict(metrics._neighbour_offsets(2))
    assert w[(0, 1)] == pytest.approx(1 / 6) and w[(1, 1)] == pytest.approx(1 / 12)


def test_pointing_game_energy_and_iou_by_hand():
    maps = torch.tensor([[0.0, 0.2, 1.0, 0.1, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0, 0.0, 0.5]])
    masks = torch.tensor([[0, 0, 1, 1, 0, 0], [0, 0, 0, 1, 0, 0]], dtype=torch.bool)
    assert metrics.pointing_game(maps, masks).tolist() == [True, False]
    assert metrics.pointing_game(maps, masks, tolerance=2).tolist() == [True, False]
    assert metrics.pointing_game(maps, masks, tolerance=3).tolist() == [True, True]
    torch.testing.assert_close(metrics.energy_pointing_game(maps, masks), torch.tensor([1.1 / 1.3, 0.0]))
    torch.testing.assert_close(metrics.mask_iou(maps, masks, 0.5), torch.tensor([0.5, 0.0]))
    assert not metrics.pointing_game(maps, torch.zeros_like(masks)).any()  # empty masks miss


def test_pointing_game_tolerance_is_euclidean_in_2d_and_3d():
    m = torch.zeros(1, 7, 7)
    m[0, 3, 3] = 1
    mask = torch.zeros(1, 7, 7, dtype=torch.bool)
    mask[0, 5, 5] = True  # distance sqrt(8) = 2.83
    assert not metrics.pointing_game(m, mask, tolerance=2.8).item()
    assert metrics.pointing_game(m, mask, tolerance=2.9).item()
    v = torch.zeros(1, 4, 4, 4)
    v[0, 0, 0, 0] = 1
    vm = torch.zeros(1, 4, 4, 4, dtype=torch.bool)
    vm[0, 1, 1, 1] = True
    assert metrics.pointing_game(v, vm, tolerance=1.75).item() and not metrics.pointing_game(v, vm, 1.7).item()


@pytest.mark.parametrize("rank", [1, 2, 3])
def test_perfect_map_beats_random_and_inverse_is_worst(rank):
    torch.manual_seed(0)
    shape = SHAPES[rank]
    w = torch.zeros(1, 1, *shape)
    region = tuple(slice(0, max(1, s // 3)) for s in shape)
    w[(0, 0) + region] = 4.0 / w[(0, 0) + region].numel()
    model = Linear2(w)
    x = 0.1 * torch.randn(4, 1, *shape)
    x[(slice(None), 0) + region] += 1.0  # the evidence: logit ~ 4 from the region, ~ 0 elsewhere
    perfect = (w[0, 0] > 0).float().expand(4, *shape) + 0.01 * torch.rand(4, *shape)
    random = torch.rand(4, *shape)
    inverse = 1 - perfect
    d = {k: metrics.deletion_auc(model, x, m, 0, steps=10).mean() for k, m in
         {"perfect": perfect, "random": random, "inverse": inverse}.items()}
    assert d["perfect"] < d["random"] < d["inverse"]
    i = {k: metrics.insertion_auc(model, x, m, 0, steps=10, baseline="zero").mean() for k, m in
         {"perfect": perfect, "random": random, "inverse": inverse}.items()}
    assert i["perfect"] > i["random"] > i["inverse"]
    r = {k: metrics.road(model, x, m, 0, fractions=(0.2, 0.5), noise=0.0).combined.mean() for k, m in
         {"perfect": perfect, "inverse": inverse}.items()}
    assert r["perfect"] > r["inverse"]
    masks = (w[0, 0] > 0).expand(4, *shape)
    assert metrics.pointing_game(perfect, masks).all() and not metrics.pointing_game(inverse, masks).any()
    assert (metrics.energy_pointing_game(perfect, masks) > metrics.energy_pointing_game(random, masks)).all()


class InputEdges(ndcam.BaseCAM):
    """A 'method' that ignores the model: the input's magnitude. The sanity check must flag it."""

    uses_gradients = False

    def _layer_maps(self, ctx):
        x = ctx.x
        return [x.abs().sum(1, keepdim=True).expand(-1, ctx.scores.shape[1], *x.shape[2:])]


@pytest.mark.parametrize("rank", [1, 2])
def test_randomization_sanity_flags_a_method_that_ignores_the_weights(rank):
    from ndcam import data

    x, y, _ = data.task(rank, n=64 if rank == 1 else 96)
    model, acc = data.train_tiny(x, y, epochs=4)
    xs = x[y == 1][:6]
    bad = metrics.randomization_sanity(InputEdges, model, xs, 1)
    assert not bad.passed and bad.final > 0.99
    good = metrics.randomization_sanity("gradcam", model, xs, 1)
    assert good.passed, good.final
    assert good.correlations.shape == (len(good.layers), 6)
    assert good.layers[0] == "fc"  # cascading from the output side


def test_randomization_sanity_warns_only_about_the_users_model():
    # the README's `metrics.randomization_sanity("gradcam", model, x)`: randomized copies whose Grad-CAM map comes out
    # all zero (every weight negative after the ReLU) are an expected outcome, not the user's constant map
    from ndcam import data

    x, _, _ = data.ecg_task(n=4, seed=0)
    torch.manual_seed(0)
    model = data.TinyNet(1, in_channels=1, num_classes=2, kernel=7).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error", ndcam.ConstantMapWarning)
        ndcam.GradCAM(model)(x)  # the original maps are not constant
        res = metrics.randomization_sanity("gradcam", model, x)
    # the case this test is about happened: spearman is exactly 0 only for a constant map (den == 0)
    assert (res.correlations == 0).any() and res.passed
    with pytest.warns(ndcam.ConstantMapWarning):  # the user's own constant map still warns
        metrics.randomization_sanity("gradcam", nn.Sequential(model, _Zero()), x, 0)


class _Zero(nn.Module):
    def forward(self, z):
        return z * 0


def test_metric_errors():
    model = Linear2(torch.ones(1, 1, 4))
    x = torch.ones(2, 1, 4)
    with pytest.raises(ValueError, match="maps must be"):
        metrics.deletion_auc(model, x, torch.ones(3, 4))
    with pytest.raises(ValueError, match="baseline"):
        metrics.deletion_auc(model, x, torch.ones(2, 4), baseline="nope")
    with pytest.raises(ValueError, match="masks"):
        metrics.pointing_game(torch.ones(2, 4), torch.ones(2, 5))
    with pytest.raises(ValueError, match="targets"):
        metrics.average_drop(model, x, torch.ones(2, 4), targets=[0, 1, 0])
