"""Leaves nothing behind: hooks, flags, BatchNorm stats, .grad, grad mode; in-place ops; repeated calls; cheapness."""

from __future__ import annotations

import gc
import warnings

import pytest
import torch
from torch import nn

import ndcam

from .conftest import make_input, make_net

ALL = ndcam.methods()


def snapshot(model: nn.Module):
    return {
        "training": {n: m.training for n, m in model.named_modules()},
        "requires_grad": {n: p.requires_grad for n, p in model.named_parameters()},
        "state": {k: v.clone() for k, v in model.state_dict().items()},
        "grads": {n: p.grad for n, p in model.named_parameters()},
        "hooks": {
            n: (len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks),
                len(getattr(m, "_backward_pre_hooks", {})))
            for n, m in model.named_modules()
        },
        "bn_batches": {n: int(m.num_batches_tracked) for n, m in model.named_modules()
                       if isinstance(m, nn.modules.batchnorm._BatchNorm)},
    }


def assert_same(before, after):
    assert before["training"] == after["training"]
    assert before["requires_grad"] == after["requires_grad"]
    assert before["hooks"] == after["hooks"]
    assert before["bn_batches"] == after["bn_batches"]
    assert all(g is None for g in after["grads"].values()), "a parameter .grad was written"
    for k, v in before["state"].items():
        assert torch.equal(v, after["state"][k]), f"{k} changed"


def _train_mode_net(rank):
    model = make_net(rank)
    model.train()
    model.conv3.eval()  # mixed flags must come back exactly
    return model


@pytest.mark.parametrize("method", ALL)
def test_successful_call_leaves_model_untouched(method, rank):
    model = _train_mode_net(rank)
    layer = "act1" if method == "cam" else "feat"
    before = snapshot(model)
    x = make_input(rank).requires_grad_(True)
    ndcam.explain(model, x, method, layers=layer if method != "cam" else None)
    assert_same(before, snapshot(model))
    assert x.grad is None
    assert torch.is_grad_enabled()


def test_explains_in_eval_mode_even_if_model_is_training(rank):
    model = _train_mode_net(rank)
    x = make_input(rank)
    m_train = ndcam.GradCAM(model, "feat")(x, 1)
    model.eval()
    m_eval = ndcam.GradCAM(model, "feat")(x, 1)
    torch.testing.assert_close(m_train, m_eval)


@pytest.mark.parametrize(
    "bad",
    [
        {"targets": [0, 1]},  # wrong length
        {"targets": 99},  # out of range: raises after the forward pass
        {"targets": lambda out: out[:, 0] * float("nan")},  # NaN scores
        {"targets": lambda out: out[:2, 0]},  # wrong score shape
        {"layers": "conv3.weight"},  # not a module
        {"layers": "nope"},
    ],
    ids=["length", "range", "nan-scores", "score-shape", "param-name", "missing-layer"],
)
def test_failing_call_leaves_model_untouched(bad, rank):
    model = _train_mode_net(rank)
    before = snapshot(model)
    x = make_input(rank)
    with pytest.raises((ValueError, TypeError, LookupError)):
        ndcam.explain(model, x, "gradcam", **{"layers": "feat", **bad})
    assert_same(before, snapshot(model))
    assert torch.is_grad_enabled()


def test_error_raised_inside_forward_leaves_model_untouched(rank):
    model = _train_mode_net(rank)
    before = snapshot(model)
    with pytest.raises(LookupError, match="gives output .3, 5., not .N=3, C"):
        ndcam.GradCAM(model, "fc")(make_input(rank))  # non-spatial layer: raised from the hook mid-forward
    assert_same(before, snapshot(model))
    with torch.no_grad():
        with pytest.raises(LookupError):
            ndcam.GradCAM(model, "fc")(make_input(rank))
        assert not torch.is_grad_enabled()


@pytest.mark.parametrize("ctx", ["no_grad", "inference_mode", "enable_grad"])
def test_works_under_any_grad_mode_and_restores_it(ctx, rank):
    model, x = make_net(rank), make_input(rank)
    expected = ndcam.GradCAM(model, "feat")(x, 2)
    mode = {"no_grad": torch.no_grad, "inference_mode": torch.inference_mode, "enable_grad": torch.enable_grad}[ctx]
    with mode():
        xx = x.clone()
        got = ndcam.GradCAM(model, "feat")(xx, 2)
        assert torch.is_grad_enabled() == (ctx == "enable_grad")
        assert torch.is_inference_mode_enabled() == (ctx == "inference_mode")
    torch.testing.assert_close(got, expected)


class InplaceBlock(nn.Module):
    """torchvision-style block: conv -> bn -> (+identity in place) -> ReLU(inplace=True)."""

    def __init__(self, rank, c=4, inplace=True):
        super().__init__()
        C = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[rank]
        B = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[rank]
        P = {1: nn.AdaptiveAvgPool1d, 2: nn.AdaptiveAvgPool2d, 3: nn.AdaptiveAvgPool3d}[rank]
        self.inplace = inplace
        self.stem = C(2, c, 3, padding=1)
        self.conv = C(c, c, 3, padding=1)
        self.bn = B(c)
        self.relu = nn.ReLU(inplace=inplace)
        self.head = C(c, c, 3, padding=1)
        self.pool = P(1)
        self.fc = nn.Linear(c, 3)

    def forward(self, x):
        identity = self.relu(self.stem(x))
        out = self.bn(self.conv(identity))
        if self.inplace:
            out += identity
        else:
            out = out + identity
        out = self.relu(out)
        return self.fc(self.pool(torch.tanh(self.head(out))).flatten(1))


@pytest.mark.parametrize("layer", ["bn", "conv", "relu"])
def test_inplace_ops_after_the_target_layer(layer, rank):
    torch.manual_seed(0)
    a = InplaceBlock(rank).double().eval()
    b = InplaceBlock(rank, inplace=False).double().eval()
    b.load_state_dict(a.state_dict())
    x = make_input(rank)
    if layer == "relu":  # relu is called twice: both calls are captured and fused
        got = ndcam.GradCAM(a, layer)(x, 1)
        want = ndcam.GradCAM(b, layer)(x, 1)
    else:
        got = ndcam.GradCAM(a, layer)(x, 1, normalize=False)
        want = ndcam.GradCAM(b, layer)(x, 1, normalize=False)
        assert want.abs().max() > 0
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(a(x), b(x))  # the model still computes the same afterwards


class Recurrent(nn.Module):
    """A module called twice in one forward."""

    def __init__(self, rank):
        super().__init__()
        C = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[rank]
        self.stem = C(2, 4, 3, padding=1)
        self.shared = C(4, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        h = torch.relu(self.stem(x))
        h1 = torch.relu(self.shared(h))
        h2 = torch.relu(self.shared(h1))
        return self.fc(h2.flatten(2).mean(2))


def test_module_called_twice_fuses_every_call(rank):
    torch.manual_seed(0)
    model = Recurrent(rank).double().eval()
    x = make_input(rank)
    exp = ndcam.explain(model, x, "gradcam", layers="shared", targets=1)
    assert exp.layers == ["shared"]
    # reference: the two calls' Grad-CAM maps, each from its own activation and gradient, normalized and averaged
    acts = []
    h = model.stem(x).relu().detach()
    a1 = model.shared(h)
    a1d = a1.detach().requires_grad_(True)
    a2 = model.shared(a1d.relu())
    a2d = a2.detach().requires_grad_(True)
    score = model.fc(a2d.relu().flatten(2).mean(2))[:, 1].sum()
    (g2,) = torch.autograd.grad(score, a2d)
    (g1,) = torch.autograd.grad(a2, a1d, g2)
    for a, g in ((a1d, g1), (a2d, g2)):
        acts.append(ndcam.ops.minmax_normalize(torch.relu(ndcam.ops.weighted_sum(ndcam.ops.spatial_mean(g), a.detach()))))
    torch.testing.assert_close(exp.maps, ndcam.ops.minmax_normalize((acts[0] + acts[1]) / 2).float(), atol=1e-6, rtol=1e-5)


def _tensor_count():
    gc.collect()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return sum(1 for o in gc.get_objects() if isinstance(o, torch.Tensor))


def test_repeated_calls_do_not_grow_memory(rank):
    model, x = make_net(rank), make_input(rank)
    cam = ndcam.GradCAMPlusPlus(model)
    cam(x)
    cam(x, torch.tensor([[0, 1]] * 3))
    n0 = _tensor_count()
    for _ in range(5):
        cam(x)
        cam(x, torch.tensor([[0, 1]] * 3))
    assert _tensor_count() <= n0


def test_context_manager_leaves_no_hooks(rank):
    model = make_net(rank)
    before = snapshot(model)
    with ndcam.LayerCAM(model, layers=["act1", "feat"]) as cam:
        maps = cam(make_input(rank), targets=torch.tensor([[3, 4]] * 3))
    assert maps.shape == (3, 2, *make_input(rank).shape[2:])
    assert_same(before, snapshot(model))


class Counting(nn.Module):
    def __init__(self, m):
        super().__init__()
        self.m = m
        self.grad_on = []

    def forward(self, x):
        self.grad_on.append(torch.is_grad_enabled())
        return self.m(x)


def test_trunk_runs_without_graph_and_backward_stops_at_the_layer(rank):
    """The modules before the target layer run with grad disabled; after it, with grad enabled."""
    model = make_net(rank)
    model.conv1 = Counting(model.conv1)
    model.conv3 = Counting(model.conv3)
    ndcam.GradCAM(model, "feat")(make_input(rank))
    assert model.conv1.grad_on == [False]
    assert model.conv3.grad_on == [True]
    # EigenCAM / CAM need no gradient at all
    model.conv3.grad_on.clear()
    ndcam.EigenCAM(model, "feat")(make_input(rank))
    assert model.conv3.grad_on == [False]


def test_frozen_model_works(rank):
    model, x = make_net(rank), make_input(rank)
    expected = ndcam.GradCAM(model, "feat")(x, 1)
    for p in model.parameters():
        p.requires_grad_(False)
    torch.testing.assert_close(ndcam.GradCAM(model, "feat")(x, 1), expected)
    assert not any(p.requires_grad for p in model.parameters())


@pytest.mark.slow
def test_a_compiled_model_gives_the_eager_maps_without_warnings():
    """``torch.compile(model)``: ndcam's hooks run eagerly (the thread check is not traced), maps equal the eager
    model's, and dynamo has nothing to warn about."""
    import torch._dynamo

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)).eval()
    x = torch.randn(2, 1, 16, 16)
    torch._dynamo.reset()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for method in ("gradcam", "ablationcam"):
            eager = ndcam.explain(net, x, method, targets=1, layers="2").maps
            compiled = ndcam.explain(torch.compile(net, backend="eager"), x, method, targets=1,
                                     layers="_orig_mod.2").maps
            torch.testing.assert_close(compiled, eager, atol=1e-5, rtol=1e-5)
    dynamo = [str(w.message)[:120] for w in caught if "ynamo" in str(w.message) or "torch._dynamo" in w.filename]
    assert not dynamo, dynamo
