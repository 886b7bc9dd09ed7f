"""No silent wrong answer: what used to give all-zero or batch-dependent maps without a word now raises or warns.

* target scores without a gradient (detached, integer, boolean) -> a clear error naming the cause;
* a backward that never reaches the layer (reentrant checkpointing, ``.detach()`` in the model) -> a clear error;
* a non-finite map -> an error; a constant map -> :class:`ndcam.ConstantMapWarning`;
* BatchNorm with batch statistics in eval -> :class:`ndcam.BatchDependenceWarning`, and ``per_sample=True``;
* inputs made under ``torch.inference_mode()`` work with every method;
* TorchScript models get one clear error at construction.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

import ndcam

from .conftest import BN, CONV, GAP, GapNet, make_input, make_net, methods_by_rank
from .test_hygiene import assert_same, snapshot

ALL = ndcam.methods()
GRADIENT = [m for m in ALL if (ndcam.get_method(m).uses_gradients or ndcam.get_method(m).input_gradient)
            and ndcam.get_method(m).callable_targets]


def _layer(method):
    return None if method in ("guidedbackprop", "fullgrad") else "feat"


@pytest.mark.parametrize(
    "target, exc, match",
    [
        (lambda out: out[:, 1].detach(), ValueError, "callable detached them"),
        (lambda out: torch.tensor(out[:, 1].tolist(), dtype=out.dtype), ValueError, "callable detached them"),
        (lambda out: out.argmax(1) == 1, TypeError, "torch.bool, not floating"),
        (lambda out: (out[:, 1] * 100).long(), TypeError, "torch.int64, not floating"),
    ],
    ids=["detached", "rebuilt", "boolean", "integer"],
)
@pytest.mark.parametrize("method, rank", methods_by_rank(GRADIENT, {"gradcam", "fullgrad", "guidedbackprop"}))
def test_target_scores_without_gradient_raise(method, target, exc, match, rank):
    model = make_net(rank)
    before = snapshot(model)
    with pytest.raises(exc, match=match):
        ndcam.explain(model, make_input(rank), method, targets=target, layers=_layer(method))
    assert_same(before, snapshot(model))


@pytest.mark.parametrize("method", ["scorecam", "ablationcam", "eigencam"])
def test_gradient_free_methods_accept_detached_but_not_boolean_scores(method, rank):
    model, x = make_net(rank), make_input(rank)
    want = ndcam.explain(model, x, method, targets=1, layers="feat").maps
    got = ndcam.explain(model, x, method, targets=lambda out: out[:, 1].detach(), layers="feat").maps
    torch.testing.assert_close(got, want)
    with pytest.raises(TypeError, match="not floating"):
        ndcam.explain(model, x, method, targets=lambda out: out.argmax(1) == 1, layers="feat")


class Checkpointed(nn.Module):
    """``make_net`` with its middle (conv2 -> feat) under gradient checkpointing, or cut by a ``.detach()``."""

    def __init__(self, rank, mode):
        super().__init__()
        self.net = make_net(rank)
        self.mode = mode

    def forward(self, x):
        n = self.net
        h = n.act1(n.bn1(n.conv1(x)))
        if self.mode == "detach":
            h = n.feat(n.conv2(h)).detach()
        elif self.mode == "detach-branch":  # the layer also feeds the head through a detached side branch
            h = n.feat(n.conv2(h))
            return n.fc(n.pool(n.act3(n.conv3(h.detach()))).flatten(1))
        else:
            h = checkpoint(lambda t: n.feat(n.conv2(t)), h, use_reentrant=self.mode == "reentrant")
        return n.fc(n.pool(n.act3(n.conv3(h))).flatten(1))


@pytest.mark.parametrize("mode", ["reentrant", "detach", "detach-branch"])
def test_backward_that_never_reaches_the_layer_raises(mode, rank):
    model = Checkpointed(rank, mode)
    model.net.train()
    before = snapshot(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch's own warning about reentrant checkpoints
        for method in ("gradcam", "layercam", "gradcam++"):
            with pytest.raises(LookupError, match="net.feat.*use_reentrant=False|use_reentrant=False.*"):
                ndcam.explain(model, make_input(rank), method, targets=1, layers="net.feat")
    assert_same(before, snapshot(model))


def test_non_reentrant_checkpointing_works(rank):
    model = Checkpointed(rank, "non-reentrant")
    x = make_input(rank)
    for method in ("gradcam", "hirescam"):
        got = ndcam.explain(model, x, method, targets=[1, 2, 3], layers="net.feat").maps
        torch.testing.assert_close(got, ndcam.explain(model.net, x, method, targets=[1, 2, 3], layers="feat").maps)


class NaNCAM(ndcam.GradCAM):
    """A method whose weights overflow for one sample."""

    def weights(self, activations, gradients, classes):
        w = super().weights(activations, gradients, classes)
        w[1] = float("inf")
        return w


def test_non_finite_maps_raise(rank):
    model = make_net(rank)
    before = snapshot(model)
    with pytest.raises(ValueError, match="NaNCAM produced 1 map.*NaN/inf.*float32"):
        NaNCAM(model, "feat")(make_input(rank), 1)
    assert_same(before, snapshot(model))


@pytest.mark.parametrize("method", ["gradcam", "scorecam", "eigencam", "xgradcam"])
def test_constant_maps_warn_and_are_recorded(method, rank):
    model = make_net(rank)
    x = torch.zeros_like(make_input(rank))  # a constant input: every layer's map is constant
    with pytest.warns(ndcam.ConstantMapWarning, match="3 of 3 map.*constant.*normalize=False"):
        exp = ndcam.explain(model, x, method, targets=1, layers="conv1")
    assert (exp.maps == 0).all() and len(exp.warnings) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an ordinary call warns about nothing
        exp = ndcam.explain(model, make_input(rank), "hirescam", targets=1, layers="feat")
    assert exp.warnings == []


def test_constant_map_of_negative_weights_warns():
    """The classic silent zero: every Grad-CAM weight negative, the ReLU removes everything."""
    model = make_net(1, cls=GapNet)
    with torch.no_grad():
        model.fc.weight[1] = -model.fc.weight[1].abs()
    x = make_input(1).abs()
    with pytest.warns(ndcam.ConstantMapWarning, match="every channel weight is negative"):
        maps = ndcam.GradCAM(model, "feat")(x, 1)
    assert (maps == 0).all()


class BatchStats(nn.Module):
    """Normalizes with the statistics of the batch in eval mode (track_running_stats=False), or per sample."""

    def __init__(self, rank, norm="batch"):
        super().__init__()
        self.conv1 = CONV[rank](2, 6, 3, padding=1)
        self.norm = {"batch": BN[rank](6, track_running_stats=False),
                     "instance": {1: nn.InstanceNorm1d, 2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d}[rank](6, affine=True),
                     "group": nn.GroupNorm(2, 6)}[norm]
        self.feat = nn.ReLU()
        self.conv2 = CONV[rank](6, 6, 3, padding=1)
        self.pool = GAP[rank](1)
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        return self.fc(self.pool(torch.tanh(self.conv2(self.feat(self.norm(self.conv1(x)))))).flatten(1))


def _per_sample_maps(method, model, x, targets):
    return torch.cat([ndcam.get_method(method)(model, "feat")(x[i : i + 1], [targets[i]]) for i in range(len(x))])


@pytest.mark.parametrize("method", ["gradcam", "scorecam", "ablationcam", "layercam"])
def test_batch_statistics_warn_and_per_sample_restores_the_promise(method, rank):
    torch.manual_seed(0)
    model = BatchStats(rank).double().eval()
    x, targets = make_input(rank, n=4), [0, 1, 2, 1]
    separate = _per_sample_maps(method, model, x, targets)
    with pytest.warns(ndcam.BatchDependenceWarning, match="'norm'.*per_sample=True"):
        batched = ndcam.get_method(method)(model, "feat")(x, targets)
    assert not torch.allclose(batched, separate, atol=1e-4)  # the failure the warning is about
    with warnings.catch_warnings():
        warnings.simplefilter("error", ndcam.BatchDependenceWarning)
        got = ndcam.get_method(method)(model, "feat", per_sample=True)(x, targets)
        ndcam.get_method(method)(model, "feat")(x[:1], targets[:1])  # one sample: nothing to warn about
    torch.testing.assert_close(got, separate)


@pytest.mark.parametrize("norm", ["instance", "group"])
def test_per_sample_normalizations_do_not_warn(norm, rank):
    torch.manual_seed(0)
    model = BatchStats(rank, norm).double().eval()
    x, targets = make_input(rank, n=4), [0, 1, 2, 1]
    with warnings.catch_warnings():
        warnings.simplefilter("error", ndcam.BatchDependenceWarning)
        batched = ndcam.GradCAM(model, "feat")(x, targets)
    torch.testing.assert_close(batched, _per_sample_maps("gradcam", model, x, targets))


@pytest.mark.parametrize("method", ALL)
def test_per_sample_option_equals_batch_on_ordinary_models(method):
    model = make_net(2, cls=GapNet) if method == "cam" else make_net(2)
    x = make_input(2)
    k = torch.tensor([[0, 1], [2, 3], [1, 1]])
    layer = _layer(method)
    want = ndcam.explain(model, x, method, targets=k, layers=layer)
    got = ndcam.explain(model, x, method, targets=k, layers=layer, per_sample=True)
    torch.testing.assert_close(got.maps, want.maps)
    torch.testing.assert_close(got.scores, want.scores)
    assert got.targets.tolist() == want.targets.tolist()
    if method == "guidedbackprop":
        torch.testing.assert_close(ndcam.GuidedBackprop(model, per_sample=True).guided_gradients(x, k),
                                   ndcam.GuidedBackprop(model).guided_gradients(x, k))


@pytest.mark.parametrize("method, rank", methods_by_rank(
    ALL, {"fullgrad", "guidedbackprop", "guidedgradcam", "gradcam", "scorecam"}))  # in 3D: the methods that once failed
@pytest.mark.parametrize("inside", [True, False], ids=["called-inside", "called-outside"])
def test_inputs_made_under_inference_mode(method, inside, rank):
    model = make_net(rank, cls=GapNet) if method == "cam" else make_net(rank)
    x = make_input(rank)
    want = ndcam.explain(model, x, method, targets=[0, 1, 2], layers=_layer(method)).maps
    with torch.inference_mode():
        xi = x.clone()
        ti = torch.tensor([0, 1, 2])
        got = ndcam.explain(model, xi, method, targets=ti, layers=_layer(method)).maps if inside else None
    if not inside:
        got = ndcam.explain(model, xi, method, targets=ti, layers=_layer(method)).maps
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("how", ["script", "trace"])
def test_torchscript_models_are_refused_with_what_to_do(how, rank):
    model = make_net(rank)
    x = make_input(rank)
    scripted = torch.jit.script(model) if how == "script" else torch.jit.trace(model, x)
    for method in ("gradcam", "scorecam", "fullgrad"):
        with pytest.raises(TypeError, match=r"TorchScript modules cannot take forward hooks.*original Python.*torch.export"):
            ndcam.get_method(method)(scripted)
    with pytest.raises(ndcam.InputTypeError, match="ndcam.io.load_model"):
        ndcam.explain(scripted, x)
