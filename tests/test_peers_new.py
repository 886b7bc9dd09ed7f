"""Agreement of the issue-10 methods with torch-cam where it defines them (skipped when torch-cam is absent).

torch-cam is not a dependency. ``bash dev.sh`` installs it into the test venv with ``--no-deps`` (its methods need
no torchvision), so CI runs these oracles; elsewhere install it the same way, or unpack its wheel and point
``NDCAM_PEERS`` at the folder that holds the ``torchcam`` package::

    pip download --no-deps torchcam -d /tmp/peers && unzip /tmp/peers/torchcam-*.whl -d /tmp/peers/tc
    NDCAM_PEERS=/tmp/peers/tc pytest tests/test_peers_new.py

Compared on 2D and 3D (torch-cam upsamples 1D masks with "nearest", ndcam linearly):
* IS-CAM: torch-cam's cumulative mask scales == ``ISCAM(path="cumulative")``;
* SS-CAM: with (almost) no noise both reduce to Score-CAM and agree;
(both once torch-cam's masks are normalized after upsampling, as the Score-CAM paper and ndcam do -- see ``tm``);
* Finer-CAM: torch-cam's plain-mean score == ``FinerCAM(weighting="mean")``.
Not compared (documented differences): Smooth Grad-CAM++ (torch-cam sums ``A * D3`` over positions and uses the
last noisy gradient), LayerCAM fusion (torch-cam scales every layer, the deepest too), LeGrad (torch-cam needs a
torchvision-style ``self_attention`` and per-layer score projections). pytorch-grad-cam's versions of the issue-10 methods
(FEM, KPCA-CAM, ShapleyCAM, Finer-CAM, RandomCAM, DFF) are compared in tests/test_peers_pgc.py; ``NDCAM_PEERS`` may
name several folders, separated by ``os.pathsep``.
"""

from __future__ import annotations

import sys

import pytest
import torch

import ndcam

from .conftest import make_input, make_net, peer_paths


@pytest.fixture
def tm(monkeypatch):
    for path in reversed(peer_paths()):
        if path not in sys.path:
            monkeypatch.syspath_prepend(path)
    methods = pytest.importorskip("torchcam.methods")

    original = methods.activation.ScoreCAM._upsample

    def upsample_then_normalize(self, activation):
        # torch-cam min-max normalizes the masks at the layer's resolution, *before* upsampling, so an upsampled mask
        # need not reach 1 (on these nets down to 0.67); the Score-CAM paper (and ndcam) normalize the upsampled
        # mask. Re-normalizing after torch-cam's upsampling gives the paper's masks exactly (normalization is
        # affine, upsampling linear), so what remains compared is the rest of each method.
        up = original(self, activation)
        dims = tuple(range(2, up.ndim))
        lo, hi = up.amin(dim=dims, keepdim=True), up.amax(dim=dims, keepdim=True)
        return (up - lo) / torch.where(hi > lo, hi - lo, torch.ones_like(hi))

    monkeypatch.setattr(methods.activation.ScoreCAM, "_upsample", upsample_then_normalize)
    return methods


RANKS_2_3 = pytest.mark.parametrize("rank", [2, 3], ids=["2d", "3d"])


def _theirs(extractor, model, x, targets, **kw):
    with extractor:
        scores = model(x)
        return extractor(class_idx=targets, scores=scores, normalized=False, **kw)[0].double()


@RANKS_2_3
def test_iscam_cumulative_matches_torchcam(tm, rank):
    model, x = make_net(rank), make_input(rank)
    targets = [1, 3, 0]
    ours = ndcam.get_method("iscam")(model, "feat", n_samples=5, path="cumulative")(x, targets, upsample=False,
                                                                                        normalize=False)
    theirs = _theirs(tm.ISCAM(model, "feat", num_samples=5, input_shape=tuple(x.shape[1:])), model, x, targets)
    torch.testing.assert_close(ours.double(), theirs, atol=1e-5 * float(theirs.abs().max()), rtol=1e-4)


@RANKS_2_3
def test_sscam_without_noise_matches_torchcam(tm, rank):
    model, x = make_net(rank), make_input(rank)
    targets = [2, 2, 4]
    ours = ndcam.get_method("sscam")(model, "feat", n_samples=2, sigma=0.0)(x, targets, upsample=False,
                                                                            normalize=False)
    theirs = _theirs(tm.SSCAM(model, "feat", num_samples=2, std=1e-12, input_shape=tuple(x.shape[1:])), model, x,
                     targets)
    torch.testing.assert_close(ours.double(), theirs, atol=1e-5 * float(theirs.abs().max()), rtol=1e-4)


@RANKS_2_3
def test_finercam_mean_weighting_matches_torchcam(tm, rank):
    model, x = make_net(rank), make_input(rank)
    targets = [4, 0, 2]
    ours = ndcam.get_method("finercam")(model, "feat", alpha=0.6, n_similar=3, weighting="mean")(
        x, targets, upsample=False, normalize=False)
    theirs = _theirs(tm.FinerCAM(model, "feat", input_shape=tuple(x.shape[1:]), gamma=0.6, num_references=3), model,
                     x, targets)
    torch.testing.assert_close(ours.double(), theirs, atol=1e-6 * float(theirs.abs().max()), rtol=1e-5)
