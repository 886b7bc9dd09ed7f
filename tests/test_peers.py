"""Agreement with peer libraries where they define the same method (skipped when a peer is not installed).

MONAI (``monai.visualize``): Grad-CAM equals ours on every rank once its normalizer -- which maps (min, max) to
(1, 0), i.e. inverts maps -- is replaced by the identity. MONAI's Grad-CAM++ is *not* the paper's eq. 19 (it sums
``A * G^3`` over positions instead of multiplying ``sum A`` by ``G^3``), so it is only checked to differ.
pytorch-grad-cam (``pytorch_grad_cam``): see tests/test_peers_pgc.py (every method both define, on 1D, 2D and 3D).
"""

from __future__ import annotations

import pytest
import torch

import ndcam

from .conftest import make_input, make_net


def _monai():
    return pytest.importorskip("monai.visualize")


def test_monai_gradcam_agrees_on_every_rank(rank):
    mv = _monai()
    model, x = make_net(rank), make_input(rank)
    ours = ndcam.GradCAM(model, "feat")(x, 2, normalize=False)
    theirs = mv.GradCAM(model, target_layers="feat", postprocessing=lambda m: m)(x, class_idx=2)
    assert theirs.shape == (3, 1, *x.shape[2:])
    torch.testing.assert_close(ours, theirs[:, 0].float(), atol=1e-6, rtol=1e-5)
    # and its default normalizer inverts the map: the hottest position becomes 0
    inverted = mv.GradCAM(model, target_layers="feat")(x, class_idx=2)
    peak = ours.flatten(1).argmax(1)
    assert torch.allclose(inverted.flatten(1).gather(1, peak[:, None]).float(), torch.zeros(3, 1), atol=1e-6)


def test_monai_gradcampp_is_not_eq19(rank):
    mv = _monai()
    model, x = make_net(rank), make_input(rank, n=1)
    ours = ndcam.GradCAMPlusPlus(model, "feat")(x, 1)
    theirs = mv.GradCAMpp(model, target_layers="feat", postprocessing=lambda m: m)(x, class_idx=1)[:, 0]
    theirs = ndcam.ops.minmax_normalize(theirs.float())
    assert not torch.allclose(ours, theirs, atol=1e-3)
