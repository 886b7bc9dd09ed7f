"""Ready-made targets and callables: values, shapes and the maps they give."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import ndcam
from ndcam import targets as T

from .conftest import CONV, GAP, make_input, make_net

OUT = torch.tensor([[1.0, 3.0, 0.5], [2.0, 0.0, 1.0]])


def test_class_target_values():
    assert T.ClassTarget(1)(OUT).tolist() == [3.0, 0.0]
    assert T.ClassTarget([2, 0])(OUT).tolist() == [0.5, 2.0]
    assert T.ClassTarget(torch.tensor([[0, 1], [2, 2]]))(OUT).tolist() == [[1.0, 3.0], [1.0, 1.0]]


def test_contrastive_is_difference_of_logits():
    assert T.Contrastive(1, 0)(OUT).tolist() == [2.0, -2.0]
    assert T.Contrastive([1, 0], [2, 1])(OUT).tolist() == [2.5, 2.0]


def test_binary_heads_single_logit():
    out = torch.tensor([[0.7], [-1.2]])
    assert T.BinaryLogit()(out).tolist() == pytest.approx([0.7, -1.2])
    assert T.BinaryLogit([True, False])(out).tolist() == pytest.approx([0.7, 1.2])
    assert T.BinaryLogit()(out[:, 0]).tolist() == pytest.approx([0.7, -1.2])
    # class-index targets on a single logit: 1 = logit, 0 = -logit
    assert T.ClassTarget([1, 0])(out).tolist() == pytest.approx([0.7, 1.2])
    with pytest.raises(ValueError, match="single-logit"):
        T.ClassTarget(2)(out)


def test_regression_and_softmax():
    y = torch.tensor([[2.0], [5.0]])
    assert T.Regression()(y).tolist() == [2.0, 5.0]
    assert T.Regression(reference=3.0)(y).tolist() == [-1.0, -4.0]
    with pytest.raises(ValueError, match="index"):
        T.Regression()(OUT)
    p = T.SoftmaxProbability([1, 0])(OUT)
    torch.testing.assert_close(p, torch.softmax(OUT, 1)[[0, 1], [1, 0]])


def test_segmentation_mask_and_multilabel():
    out = torch.zeros(2, 3, 4, 4)
    out[:, 1, :2] = 2.0
    s = T.SegmentationMask(1)(out)
    assert s.tolist() == [16.0, 16.0]  # 8 positions where class 1 wins, score 2 each
    m = torch.zeros(4, 4)
    m[0, 0] = 1
    assert T.SegmentationMask([1, 0], mask=m)(out).tolist() == [2.0, 0.0]
    logits = torch.tensor([[3.0, -2.0, 1.0], [-1.0, -2.0, 0.5]])
    assert T.MultiLabel()(logits).tolist() == [[3.0, 1.0], [0.5, -1.0]]
    assert T.MultiLabel([0, 2])(logits).tolist() == [3.0, 0.5]


class Binary(nn.Module):
    def __init__(self, rank):
        super().__init__()
        self.conv = CONV[rank](2, 4, 3, padding=1)
        self.act = nn.ReLU()
        self.pool = GAP[rank](1)
        self.fc = nn.Linear(4, 1)

    def forward(self, x):
        return self.fc(self.pool(self.act(self.conv(x))).flatten(1))


def test_binary_head_default_target_is_the_predicted_side(rank):
    torch.manual_seed(0)
    model = Binary(rank).double().eval()
    x = make_input(rank, n=6)
    with torch.no_grad():
        model.fc.bias -= model(x)[:, 0].median() + 1e-3  # centre the logits: both predictions occur
    logit = model(x)[:, 0].detach()
    assert (logit > 0).any() and (logit < 0).any(), "test needs both predictions"
    exp = ndcam.explain(model, x, "gradcam")
    assert exp.targets.tolist() == (logit > 0).long().tolist()
    torch.testing.assert_close(exp.scores, logit.abs().float())
    torch.testing.assert_close(exp.maps, ndcam.GradCAM(model)(x, T.BinaryLogit(logit > 0)))


def test_contrastive_map_equals_map_of_logit_difference(rank):
    model, x = make_net(rank), make_input(rank)
    cam = ndcam.GradCAM(model, "feat")
    a = cam(x, T.Contrastive(1, 2), normalize=False)
    # Grad-CAM weights are linear in the gradient: w(p - q) = w(p) - w(q), then ReLU
    raw = lambda k: ndcam.ops.weighted_sum(  # noqa: E731
        ndcam.ops.spatial_mean(_grads(model, x, k)), _acts(model, x))
    expected = torch.relu(raw(1) - raw(2))
    torch.testing.assert_close(a, ndcam.ops.upsample(expected, x.shape[2:]).float(), atol=1e-6, rtol=1e-5)


def _acts(model, x):
    store = {}
    h = model.feat.register_forward_hook(lambda m, i, o: store.setdefault("a", o))
    model(x)
    h.remove()
    return store["a"].detach()


def _grads(model, x, k):
    store = {}
    h = model.feat.register_forward_hook(lambda m, i, o: store.setdefault("a", o))
    out = model(x)
    h.remove()
    return torch.autograd.grad(out[:, k].sum(), store["a"])[0]


def test_callable_with_k_scores_gives_k_maps(rank):
    model, x = make_net(rank), make_input(rank)
    maps = ndcam.GradCAM(model, "feat")(x, lambda out: out[:, [0, 4]])
    assert maps.shape == (3, 2, *x.shape[2:])
    torch.testing.assert_close(maps[:, 1], ndcam.GradCAM(model, "feat")(x, 4))


def test_explanation_has_no_class_indices_for_callables(rank):
    exp = ndcam.explain(make_net(rank), make_input(rank), layers="feat", targets=T.SoftmaxProbability(2))
    assert exp.targets is None and exp.scores.shape == (3,)
    assert ((exp.scores > 0) & (exp.scores < 1)).all()


class Seg(nn.Module):
    def __init__(self, rank):
        super().__init__()
        self.enc = CONV[rank](2, 4, 3, padding=1)
        self.act = nn.ReLU()
        self.head = CONV[rank](4, 3, 1)

    def forward(self, x):
        return self.head(self.act(self.enc(x)))


def test_segmentation_model_with_mask_target(rank):
    torch.manual_seed(0)
    model = Seg(rank).double().eval()
    x = make_input(rank)
    with pytest.raises(ValueError, match="SegmentationMask"):
        ndcam.GradCAM(model, "act")(x, 1)
    maps = ndcam.GradCAM(model, "act")(x, T.SegmentationMask(1))
    assert maps.shape == (3, *x.shape[2:]) and torch.isfinite(maps).all()
