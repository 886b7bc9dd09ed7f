"""Score-CAM and Ablation-CAM against loop references, on every rank; batching, top_k, restoration."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import ndcam

from . import reference as R
from .conftest import make_input, make_net
from .test_hygiene import assert_same, snapshot


@pytest.mark.parametrize("batch_size", [1, 4, 64])
def test_scorecam_matches_reference(rank, batch_size):
    model, x = make_net(rank), make_input(rank)
    targets = [1, 0, 4]
    A, _, _ = R.capture_reference(model, model.feat, x, lambda o: o[:, 0])
    S = R.ref_scorecam_scores(model, x, A, targets)
    expected = np.maximum(R.ref_weighted(A, R.ref_softmax_rows(S)), 0)
    got = ndcam.ScoreCAM(model, "feat", batch_size=batch_size)(x, targets, upsample=False, normalize=False)
    np.testing.assert_allclose(got.double().numpy(), expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("batch_size", [1, 5, 64])
def test_ablationcam_matches_reference(rank, batch_size):
    model, x = make_net(rank), make_input(rank)
    targets = [2, 2, 3]
    A, _, _ = R.capture_reference(model, model.feat, x, lambda o: o[:, 0])
    y, S = R.ref_ablation_scores(model, model.feat, x, targets)
    W = (y[:, None] - S) / y[:, None]
    expected = np.maximum(R.ref_weighted(A, W), 0)
    got = ndcam.AblationCAM(model, "feat", batch_size=batch_size)(x, targets, upsample=False, normalize=False)
    np.testing.assert_allclose(got.double().numpy(), expected, rtol=1e-5, atol=1e-7)


def test_scorecam_top_k_uses_only_the_strongest_channels(rank):
    model, x = make_net(rank), make_input(rank)
    A, _, _ = R.capture_reference(model, model.feat, x, lambda o: o[:, 0])
    S = R.ref_scorecam_scores(model, x, A, [1, 1, 1])
    k = 3
    top = torch.as_tensor(A).flatten(2).mean(2).topk(k, dim=1).indices.numpy()
    S_masked = np.full_like(S, -np.inf)
    for i in range(3):
        S_masked[i, top[i]] = S[i, top[i]]
    expected = np.maximum(R.ref_weighted(A, R.ref_softmax_rows(S_masked)), 0)
    got = ndcam.ScoreCAM(model, "feat", top_k=k)(x, 1, upsample=False, normalize=False)
    np.testing.assert_allclose(got.double().numpy(), expected, rtol=1e-5, atol=1e-7)


def test_top1_target_is_taken_from_the_unperturbed_output(rank):
    model, x = make_net(rank), make_input(rank)
    top = model(x).argmax(1)
    for cls in (ndcam.ScoreCAM, ndcam.AblationCAM):
        exp = cls(model, "feat").explain(x)
        assert exp.targets.tolist() == top.tolist()
        torch.testing.assert_close(exp.maps, cls(model, "feat")(x, top))


def test_ablation_hook_is_removed_when_the_model_raises(rank):
    model, x = make_net(rank), make_input(rank)
    before = snapshot(model)
    calls = {"n": 0}

    def flaky(out):
        calls["n"] += 1
        if calls["n"] > 1:  # the first call scores the plain forward; later ones the ablated batches
            raise RuntimeError("boom in a perturbed forward")
        return out[:, 0]

    with pytest.raises(RuntimeError, match="boom"):
        ndcam.AblationCAM(model, "feat", batch_size=2)(x, flaky)
    assert_same(before, snapshot(model))
    torch.testing.assert_close(ndcam.AblationCAM(model, "feat")(x, 0), ndcam.AblationCAM(model, "feat")(x, 0))


def test_bad_options():
    model = make_net(1)
    with pytest.raises(ValueError, match="batch_size"):
        ndcam.ScoreCAM(model, "feat", batch_size=0)
    with pytest.raises(ValueError, match="top_k"):
        ndcam.ScoreCAM(model, "feat", top_k=0)


def test_progress_bar_for_long_runs(capsys):
    model, x = make_net(1), make_input(1)
    ndcam.ScoreCAM(model, "feat", batch_size=3, progress=True)(x)
    err = capsys.readouterr().err
    assert "ScoreCAM" in err and "8/8" in err
    # stderr is not a terminal here: the bar is drawn at the start and at the end only, not once per forward
    assert err.count("\r") <= 3
    ndcam.ScoreCAM(model, "feat", batch_size=3)(x)  # progress=None: a short run (and no terminal) stays quiet
    assert capsys.readouterr().err == ""
    ndcam.AblationCAM(model, "feat", batch_size=3, progress=False)(x)
    assert capsys.readouterr().err == ""
    with pytest.raises(TypeError, match="progress"):
        ndcam.ScoreCAM(model, "feat", progress="yes")


def test_perturbation_classes_say_so():
    assert ndcam.ScoreCAM.perturbative and ndcam.AblationCAM.perturbative
    assert not ndcam.GradCAM.perturbative and not ndcam.FullGrad.perturbative
    assert {n for n in ndcam.methods() if ndcam.get_method(n).perturbative} == {"scorecam", "ablationcam", "sscam", "iscam"}


def test_ablation_cam_refuses_a_reshape_that_copies(rank):
    """Ablation-CAM zeroes channels through reshape=: a reshape returning a copy would zero nothing the model sees
    (every weight 0, an all-zero map); it is refused with an error naming the cause."""
    model, x = make_net(rank), make_input(rank)
    with pytest.raises(ndcam.LayerError, match="returns a copy"):
        ndcam.AblationCAM(model, "feat", reshape=lambda t: t.clone())(x, 1)
