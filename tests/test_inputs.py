"""Models with several inputs, and models that accept only one batch size.

``cam(x, targets, forward_args=(...), forward_kwargs={...})`` explains ``x`` and passes the other inputs through;
tensors whose first axis has length N are per-sample and are replicated with the perturbation methods' batches.
Perturbation methods fall back to forwards of exactly N inputs when the model refuses a bigger batch (static-shape
exports, models holding per-sample side data). The audit saw Score-CAM and Ablation-CAM fail on both.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import ndcam

from .conftest import CONV, GAP, GapNet, make_input, make_net, methods_by_rank
from .test_hygiene import assert_same, snapshot

ALL = ndcam.methods()


class TwoInputs(nn.Module):
    """``forward(x, gain, *, bias=None, temperature=1.0)``: a per-sample channel gain (N, C) scales x, a per-sample
    mask (N, *spatial) is added as a kwarg, and a shared scalar divides the logits."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x, gain, *, bias=None, temperature=1.0):
        shape = gain.shape + (1,) * (x.ndim - 2)
        h = x * gain.reshape(shape)
        if bias is not None:
            h = h + bias[:, None]
        return self.net(h) / temperature


class Bound(nn.Module):
    """The same model with its extra inputs fixed: the single-input reference for one sample."""

    def __init__(self, model, gain, bias, temperature):
        super().__init__()
        self.model = model
        self.gain, self.bias, self.temperature = gain, bias, temperature

    def forward(self, x):
        return self.model(x, self.gain, bias=self.bias, temperature=self.temperature)


def _extras(rank, n=3):
    g = torch.Generator().manual_seed(5)
    gain = torch.rand(n, 2, generator=g, dtype=torch.float64) + 0.5
    bias = torch.randn(n, *make_input(rank, n=n).shape[2:], generator=g, dtype=torch.float64) * 0.3
    return gain, bias


def _net(method, rank):
    return make_net(rank, cls=GapNet) if method == "cam" else make_net(rank)


def _layer(method):
    return None if method in ("guidedbackprop", "fullgrad") else "net.feat"


@pytest.mark.parametrize("method, rank", methods_by_rank(
    ALL, {"gradcam", "scorecam", "ablationcam", "fullgrad", "guidedgradcam"}))
def test_every_method_explains_a_model_with_two_inputs(method, rank):
    model = TwoInputs(_net(method, rank))
    x = make_input(rank)
    gain, bias = _extras(rank)
    options = {"batch_size": 4} if ndcam.get_method(method).perturbative else {}
    # CAM: the temperature rescales the classifier's output, so name the classifier
    fc = {"fc": "net.fc"} if method == "cam" else {}
    got = ndcam.explain(model, x, method, targets=[1, 0, 2], layers=_layer(method), forward_args=(gain,),
                        forward_kwargs={"bias": bias, "temperature": 2.0}, **options, **fc)
    for i in range(3):  # reference: each sample alone, its extra inputs bound into a single-input model
        ref = Bound(model, gain[i : i + 1], bias[i : i + 1], 2.0)
        layer = None if _layer(method) is None else "model.net.feat"
        fc = {"fc": "model.net.fc"} if method == "cam" else {}
        want = ndcam.explain(ref, x[i : i + 1], method, targets=[[1, 0, 2][i]], layers=layer, **options, **fc)
        torch.testing.assert_close(got.maps[i : i + 1], want.maps)
        torch.testing.assert_close(got.scores[i : i + 1], want.scores)


def test_automatic_layer_choice_and_per_sample_with_extra_inputs(rank):
    model = TwoInputs(make_net(rank))
    x = make_input(rank)
    gain, bias = _extras(rank)
    call = {"forward_args": (gain,), "forward_kwargs": {"bias": bias}}
    auto = ndcam.GradCAM(model).explain(x, 1, **call)
    plain = ndcam.GradCAM(model.net).explain(x, 1).layers[0]
    assert auto.layers == [f"net.{plain}"]  # the probe ran the model on one sample with that sample's extra inputs
    torch.testing.assert_close(auto.maps, ndcam.GradCAM(model, f"net.{plain}")(x, 1, **call))
    torch.testing.assert_close(ndcam.GradCAM(model).explain(x, 1, **call).maps, auto.maps)  # cached choice
    for method in ("gradcam", "scorecam"):
        per = ndcam.get_method(method)(model, "net.feat", per_sample=True)(x, [0, 1, 2], **call)
        torch.testing.assert_close(per, ndcam.get_method(method)(model, "net.feat")(x, [0, 1, 2], **call))


def test_extra_inputs_are_validated_before_the_forward():
    calls = []
    model = TwoInputs(make_net(1))
    model.register_forward_pre_hook(lambda m, a: calls.append(1))
    x = make_input(1)
    with pytest.raises(TypeError, match="forward_args must be a tuple"):
        ndcam.GradCAM(model, "net.feat")(x, forward_args=torch.ones(3, 2))
    with pytest.raises(TypeError, match="forward_kwargs must be a dict"):
        ndcam.GradCAM(model, "net.feat")(x, forward_args=(torch.ones(3, 2),), forward_kwargs=[("bias", 1)])
    assert calls == []
    with pytest.raises(ValueError, match="forward pass failed"):  # the model's own error, with context
        ndcam.GradCAM(model, "net.feat")(x)


class FixedBatch(nn.Module):
    """A static-shape export: accepts exactly ``n`` samples per forward (and counts the batch sizes it saw)."""

    def __init__(self, net, n):
        super().__init__()
        self.net, self.n, self.seen = net, n, []

    def forward(self, x):
        self.seen.append(x.shape[0])
        assert x.shape[0] == self.n, f"static batch size {self.n}, got {x.shape[0]}"
        return self.net(x)


class SideData(nn.Module):
    """Holds per-sample side data of the batch it was built for (a broadcast error on any other batch size)."""

    def __init__(self, net, side):
        super().__init__()
        self.net = net
        self.register_buffer("side", side)

    def forward(self, x):
        return self.net(x + self.side)


@pytest.mark.parametrize("method", ["scorecam", "ablationcam"])
def test_fixed_batch_model_gets_exactly_n_per_forward(method, rank):
    net = make_net(rank)
    x = make_input(rank)
    model = FixedBatch(net, 3)
    want = ndcam.get_method(method)(net, "feat", batch_size=64)(x, [0, 1, 2])
    before = snapshot(model)
    got = ndcam.get_method(method)(model, "net.feat", batch_size=64)(x, [0, 1, 2])
    torch.testing.assert_close(got, want)
    # captured forward (3), one refused perturbed batch (8 channels x 3), then exactly N per forward
    assert model.seen[:2] == [3, 24] and set(model.seen[2:]) == {3} and len(model.seen) == 2 + 8
    assert_same(before, snapshot(model))
    model.seen.clear()  # asking for N per forward from the start: nothing is refused
    torch.testing.assert_close(ndcam.get_method(method)(model, "net.feat", batch_size=3)(x, [0, 1, 2]), want)
    assert set(model.seen) == {3}


@pytest.mark.parametrize("method", ["scorecam", "ablationcam"])
def test_model_with_per_sample_side_data(method, rank):
    net = make_net(rank)
    x = make_input(rank)
    side = make_input(rank, seed=9) * 0.1
    model = SideData(net, side)
    got = ndcam.get_method(method)(model, "net.feat", batch_size=10)(x, 1)
    want = ndcam.get_method(method)(net, "feat")(x + side, 1)
    # Score-CAM masks x, not x + side: compare with the same model at batch size N instead
    if method == "scorecam":
        want = ndcam.get_method(method)(model, "net.feat", batch_size=3)(x, 1)
    torch.testing.assert_close(got, want)


def test_a_model_that_fails_on_every_batch_still_raises_clearly():
    class Broken(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = make_net(1)
            self.calls = 0

        def forward(self, x):
            self.calls += 1
            if self.calls > 1:
                raise RuntimeError("perturbed forward exploded")
            return self.net(x)

    model = Broken()
    before = snapshot(model)
    with pytest.raises(ValueError, match="perturbed forward exploded") as info:
        ndcam.ScoreCAM(model, "net.feat", batch_size=64)(make_input(1))
    assert isinstance(info.value.__cause__, RuntimeError)
    assert model.calls == 3  # the captured forward, the refused batch, one N-sized retry
    assert_same(before, snapshot(model))


class TokenAndMask(nn.Module):
    """Hugging Face-style: ``forward(pixel_values, attention_mask=...)`` returning a dict with ``logits``."""

    def __init__(self, rank):
        super().__init__()
        self.embed = CONV[rank](2, 6, 3, padding=1)
        self.feat = nn.ReLU()
        self.pool = GAP[rank](1)
        self.head = nn.Linear(6, 4)

    def forward(self, pixel_values, attention_mask=None):
        h = self.feat(self.embed(pixel_values))
        if attention_mask is not None:
            h = h * attention_mask[:, None]
        return {"logits": self.head(self.pool(h).flatten(1)), "last_hidden_state": h}


@pytest.mark.parametrize("method", ALL)
def test_hugging_face_style_dict_model_with_a_mask(method):
    if method == "cam":
        pytest.skip("CAM is not defined here: the mask multiplies the layer's map before the pooling")
    torch.manual_seed(0)
    model = TokenAndMask(2).double().eval()
    x = make_input(2)
    mask = (torch.rand(3, *x.shape[2:], generator=torch.Generator().manual_seed(0)) > 0.3).double()
    options = {"batch_size": 5} if ndcam.get_method(method).perturbative else {}
    layer = None if method in ("guidedbackprop", "fullgrad") else "feat"
    got = ndcam.explain(model, x, method, targets=[0, 1, 3], layers=layer, forward_kwargs={"attention_mask": mask},
                        **options)
    per = [ndcam.explain(model, x[i : i + 1], method, targets=[[0, 1, 3][i]], layers=layer,
                         forward_kwargs={"attention_mask": mask[i : i + 1]}, **options).maps for i in range(3)]
    torch.testing.assert_close(got.maps, torch.cat(per))


@pytest.mark.parametrize("method", ["gradcam", "fullgrad", "guidedbackprop", "scorecam"])
def test_extra_inputs_made_under_inference_mode(method):
    model = TwoInputs(make_net(2))
    x = make_input(2)
    gain, bias = _extras(2)
    layer = None if method in ("fullgrad", "guidedbackprop") else "net.feat"
    want = ndcam.explain(model, x, method, 1, layer, forward_args=(gain,), forward_kwargs={"bias": bias}).maps
    with torch.inference_mode():
        xi, gi, bi = x.clone(), gain.clone(), bias.clone()
    got = ndcam.explain(model, xi, method, 1, layer, forward_args=(gi,), forward_kwargs={"bias": bi}).maps
    torch.testing.assert_close(got, want)


def test_per_sample_needs_the_same_number_of_targets_per_sample():
    model, x = make_net(1), make_input(1)
    with pytest.raises(ValueError, match="different number of scores per sample"):
        ks = iter([1, 2, 2])  # e.g. a threshold that keeps a different number of labels per sample
        ndcam.GradCAM(model, "feat", per_sample=True)(x, lambda out: out[:, : next(ks)].reshape(len(out), -1))
