"""Eigen smoothing and augmentation smoothing on every rank."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import ndcam
from ndcam import Augmentations

from . import reference as R
from .conftest import make_input, make_net


@pytest.mark.parametrize("method", ["gradcam", "hirescam", "layercam"])
def test_eigen_smooth_is_the_principal_component_of_channel_contributions(method, rank):
    model, x = make_net(rank), make_input(rank)
    t = torch.tensor([1, 3, 0])
    A, G, _ = R.capture_reference(model, model.feat, x, lambda o: o.gather(1, t[:, None])[:, 0])
    if method == "gradcam":
        contrib = G.mean(axis=tuple(range(2, G.ndim)), keepdims=True) * A
    elif method == "hirescam":
        contrib = G * A
    else:
        contrib = np.maximum(G, 0) * A
    expected = np.maximum(np.stack([R._pc_projection(contrib[i], contrib[i].sum(0)) for i in range(3)]), 0)
    got = ndcam.get_method(method)(model, "feat", eigen_smooth=True)(x, t, upsample=False, normalize=False)
    np.testing.assert_allclose(got.double().numpy(), expected, rtol=1e-5, atol=1e-6 * np.abs(expected).max())


def test_aug_smooth_with_identity_only_equals_the_plain_map(rank):
    model, x = make_net(rank), make_input(rank)
    plain = ndcam.GradCAM(model, "feat")(x, 2)
    smooth = ndcam.GradCAM(model, "feat", aug_smooth=Augmentations(scales=(1.0,)))(x, 2)
    torch.testing.assert_close(smooth, plain)


def test_aug_smooth_flip_and_scale_is_the_mean_of_mapped_back_maps(rank):
    model, x = make_net(rank), make_input(rank)
    cam = ndcam.GradCAM(model, "feat")
    ax = 1 + rank  # last axis of x
    raw = lambda xx: cam(xx, [1, 2, 3], normalize=False)  # noqa: E731
    mx = rank  # last axis of the maps
    expected = (raw(x) + raw(x * 1.1) + raw(x.flip(ax)).flip(mx) + raw(x.flip(ax) * 1.1).flip(mx)) / 4
    aug = Augmentations(flips=(rank - 1,), scales=(1.0, 1.1))
    got = ndcam.GradCAM(model, "feat", aug_smooth=aug)(x, [1, 2, 3], normalize=False)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)


def test_aug_smooth_shift_is_undone_exactly():
    """For a circular, shift-equivariant 1D model, shifted maps mapped back equal the plain map."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv1d(1, 4, 5, padding=2, padding_mode="circular"), torch.nn.ReLU(),
                              torch.nn.AdaptiveAvgPool1d(1), torch.nn.Flatten(), torch.nn.Linear(4, 2)).double().eval()
    x = torch.randn(2, 1, 50, dtype=torch.float64)
    plain = ndcam.GradCAM(net, "1")(x, 0)
    smooth = ndcam.GradCAM(net, "1", aug_smooth=Augmentations(shifts=((0, 3), (0, -7))))(x, 0)
    torch.testing.assert_close(smooth, plain, atol=1e-6, rtol=1e-5)


def test_defaults_per_rank():
    assert Augmentations.default(1, (5000,)).flips == ()  # no time reversal for ECG/audio
    assert Augmentations.default(1, (5000,)).shifts == ((0, 100), (0, -100))
    assert Augmentations.default(2).flips == (1,)
    assert Augmentations.default(3).flips == (2,)


def test_aug_smooth_defaults_run_and_fix_targets_on_the_original(rank):
    model, x = make_net(rank), make_input(rank)
    exp = ndcam.GradCAM(model, "feat", aug_smooth=True).explain(x)
    assert exp.targets.tolist() == model(x).argmax(1).tolist()
    assert exp.maps.shape == (3, *x.shape[2:]) and exp.maps.max() == 1
    multi = ndcam.GradCAM(model, "feat", aug_smooth=True)(x, torch.tensor([[0, 1]] * 3))
    assert multi.shape == (3, 2, *x.shape[2:])


def test_bad_augmentations():
    model, x = make_net(1), make_input(1)
    with pytest.raises(ValueError, match="not a spatial axis"):
        ndcam.GradCAM(model, "feat", aug_smooth=Augmentations(flips=(1,)))(x)
    with pytest.raises(TypeError, match="aug_smooth"):
        ndcam.GradCAM(model, "feat", aug_smooth="yes")


@pytest.mark.parametrize("method", ["scorecam", "ablationcam", "gradcam++"])
def test_eigen_smooth_other_families_run_and_differ(method, rank):
    model, x = make_net(rank), make_input(rank)
    plain = ndcam.get_method(method)(model, "feat")(x, 1)
    smooth = ndcam.get_method(method)(model, "feat", eigen_smooth=True)(x, 1)
    assert smooth.shape == plain.shape and torch.isfinite(smooth).all()
    assert not torch.allclose(plain, smooth)


def test_aug_smooth_explains_the_original_inputs_top1_class_in_every_view():
    """targets=None: the classes are fixed on the unaugmented input; an augmented view whose own top-1 class differs
    is still explained for the original class (CAM reads its class rows from the resolved classes)."""
    aug = ndcam.Augmentations(scales=(1.0, 0.05, 8.0))
    found = False
    for seed in range(20):
        torch.manual_seed(seed)
        net = torch.nn.Sequential(torch.nn.Conv1d(2, 8, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool1d(1),
                                  torch.nn.Flatten(), torch.nn.Linear(8, 5)).double().eval()
        with torch.no_grad():
            net[4].bias.mul_(20)  # biases dominate small inputs: the top-1 class changes with the input's scale
        x = torch.randn(3, 2, 32, dtype=torch.float64)
        with torch.no_grad():
            tops = [net(x * s).argmax(1) for s in aug.scales]
        if any(bool((t != tops[0]).any()) for t in tops[1:]):
            found = True
            got = ndcam.CAM(net, "1", aug_smooth=aug)(x)
            want = ndcam.CAM(net, "1", aug_smooth=aug)(x, tops[0])
            torch.testing.assert_close(got, want)
    assert found, "no seed changed the top-1 class under augmentation: the test would prove nothing"


def test_aug_smooth_runs_each_variant_once(rank):
    """The untransformed variant is the run that fixes the classes: one captured forward per variant, no more."""
    model, x = make_net(rank), make_input(rank)
    calls: list[int] = []
    model.register_forward_pre_hook(lambda m, a: calls.append(1))
    aug = Augmentations(flips=(rank - 1,), scales=(1.0, 1.1))  # 2 spatial variants x 2 scales = 4 variants
    ndcam.GradCAM(model, "feat", aug_smooth=aug)(x)
    assert len(calls) == len(aug.variants()) == 4
