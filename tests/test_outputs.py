"""Model outputs of any structure: dicts, Hugging Face ``ModelOutput``, tuples, lists, named tuples, dataclasses.

Class-index targets read the logits by one rule (:func:`ndcam.targets.logits_of`); callables get the raw output; every
method -- also Score-CAM and Ablation-CAM, which score groups of N samples sliced out of a bigger batch -- gives the
maps of the same model returning a plain tensor. (The audit saw Score-CAM and Ablation-CAM fail on dict, tuple and
dataclass outputs even with a callable target.)
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict, namedtuple
from typing import Any, Optional

import pytest
import torch
from torch import nn

import ndcam
from ndcam.capture import slice_batch, tree_map
from ndcam.targets import logits_of

from .conftest import GapNet, make_input, make_net

ALL = ndcam.methods()


@dataclasses.dataclass
class FakeModelOutput(OrderedDict):
    """What Hugging Face's ``ModelOutput`` is: a dataclass and an OrderedDict of its non-None fields, with attributes."""

    loss: Optional[torch.Tensor] = None
    logits: Optional[torch.Tensor] = None
    hidden_states: Optional[torch.Tensor] = None

    def __post_init__(self):
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if v is not None:
                self[f.name] = v

    def __setitem__(self, key, value):
        super().__setitem__(key, value)
        super().__setattr__(key, value)


@dataclasses.dataclass
class WithLogits:
    features: torch.Tensor
    logits: torch.Tensor
    label: str = "x"


@dataclasses.dataclass
class OneTensor:
    scores: torch.Tensor
    note: str = "only one tensor field"


Pair = namedtuple("Pair", ["logits", "features"])

WRAP = {
    "dict-logits": lambda y, h: {"hidden": h, "logits": y},
    "dict-single": lambda y, h: {"out": y},
    "hf-modeloutput": lambda y, h: FakeModelOutput(logits=y, hidden_states=h),
    "tuple": lambda y, h: (y, h),
    "list": lambda y, h: [y, h],
    "tuple-after-none": lambda y, h: (None, y, h),
    "namedtuple": lambda y, h: Pair(y, h),
    "dataclass-logits": lambda y, h: WithLogits(h, y),
    "dataclass-single": lambda y, h: OneTensor(y),
}


class Structured(nn.Module):
    """``make_net`` whose output is wrapped in a structure (logits plus a per-sample feature tensor)."""

    def __init__(self, net: nn.Module, kind: str):
        super().__init__()
        self.net = net
        self.kind = kind

    def forward(self, x):
        y = self.net(x)
        return WRAP[self.kind](y, y.detach() * 2)


def _layer(method):
    return None if method in ("guidedbackprop", "fullgrad") else "feat"


def _prefixed(method):
    return None if method in ("guidedbackprop", "fullgrad") else "net.feat"


def _net(method, rank):
    return make_net(rank, cls=GapNet) if method == "cam" else make_net(rank)


@pytest.mark.parametrize("kind", list(WRAP))
@pytest.mark.parametrize("method", ALL)
def test_every_method_reads_the_logits_of_any_output(method, kind):
    net = _net(method, 1)
    x = make_input(1)
    expected = ndcam.explain(net, x, method, targets=[1, 2, 0], layers=_layer(method))
    got = ndcam.explain(Structured(net, kind), x, method, targets=[1, 2, 0], layers=_prefixed(method))
    torch.testing.assert_close(got.maps, expected.maps)
    torch.testing.assert_close(got.scores, expected.scores)


@pytest.mark.parametrize("method", ["gradcam", "scorecam", "ablationcam", "fullgrad", "cam"])
@pytest.mark.parametrize("kind", ["hf-modeloutput", "tuple", "dataclass-logits"])
def test_top1_and_k_targets_on_structured_outputs(method, kind, rank):
    net = _net(method, rank)
    x = make_input(rank)
    layer, plain_layer = (None, None) if method == "fullgrad" else ("net.feat", "feat")
    model = Structured(net, kind)
    for targets in (None, torch.tensor([[0, 3], [1, 1], [2, 0]])):
        want = ndcam.explain(net, x, method, targets=targets, layers=plain_layer)
        got = ndcam.explain(model, x, method, targets=targets, layers=layer)
        torch.testing.assert_close(got.maps, want.maps)
        assert (got.targets == want.targets).all()


@pytest.mark.parametrize("method", ALL)
def test_callables_get_the_raw_output(method):
    """A callable written for the structure works with every method, perturbation methods included."""
    if not ndcam.get_method(method).callable_targets:
        pytest.skip("the method takes class indices only")
    net = make_net(2)
    x = make_input(2)
    model = Structured(net, "hf-modeloutput")
    seen = []

    def target(out):
        seen.append(type(out))
        return out.logits[:, 1] - out["hidden_states"][:, 0].detach()

    got = ndcam.explain(model, x, method, targets=target, layers=_prefixed(method))
    want = ndcam.explain(net, x, method, targets=lambda y: y[:, 1] - (2 * y[:, 0]).detach(), layers=_layer(method))
    torch.testing.assert_close(got.maps, want.maps)
    assert set(seen) == {FakeModelOutput}


def test_ambiguous_outputs_ask_for_a_callable():
    net = make_net(1)
    x = make_input(1)

    class TwoHeads(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, x):
            y = self.net(x)
            return {"cls": y, "aux": y[:, :2]}

    for method in ("gradcam", "scorecam"):
        with pytest.raises(TypeError, match=r"keys \['cls', 'aux'\].*several tensors.*callable"):
            ndcam.explain(TwoHeads(), x, method, layers="net.feat")
        maps = ndcam.explain(TwoHeads(), x, method, layers="net.feat", targets=lambda o: o["cls"][:, 1]).maps
        torch.testing.assert_close(maps, ndcam.explain(net, x, method, layers="feat", targets=1).maps)


def test_logits_of_rule():
    t = torch.zeros(2, 3)
    assert logits_of(t) is t
    assert logits_of({"logits": t, "x": t + 1}) is t
    assert logits_of(OrderedDict(only=t)) is t
    assert logits_of((None, "a", t, t + 1)) is t
    assert logits_of(WithLogits(t + 1, t)) is t
    assert logits_of(OneTensor(t)) is t
    for bad in ({"a": t, "b": t}, ("no", "tensor"), 3.0, [{"boxes": t}]):
        with pytest.raises(TypeError, match="callable"):
            logits_of(bad)


def test_slice_batch_and_tree_map():
    n, b = 2, 3
    out = FakeModelOutput(logits=torch.arange(6.0)[:, None], hidden_states=torch.arange(12.0).reshape(6, 2),
                          loss=torch.tensor(1.5))
    part = slice_batch(out, 2, 4, n * b)
    assert isinstance(part, FakeModelOutput) and part.logits.flatten().tolist() == [2.0, 3.0]
    assert part["hidden_states"].shape == (2, 2) and float(part.loss) == 1.5
    dc = slice_batch(WithLogits(torch.ones(6, 4), torch.arange(6.0)), 4, 6, 6)
    assert isinstance(dc, WithLogits) and dc.logits.tolist() == [4.0, 5.0] and dc.label == "x"
    nt = slice_batch(Pair(torch.arange(6.0), torch.zeros(3)), 0, 2, 6)
    assert isinstance(nt, Pair) and nt.logits.tolist() == [0.0, 1.0] and nt.features.shape == (3,)
    detections = [{"boxes": torch.zeros(i, 4), "scores": torch.ones(i)} for i in range(6)]  # one dict per image
    assert [len(d["scores"]) for d in slice_batch(detections, 2, 4, 6)] == [2, 3]
    assert slice_batch([torch.arange(6.0), torch.arange(6.0)], 0, 3, 6)[1].tolist() == [0.0, 1.0, 2.0]
    doubled: Any = tree_map(lambda t: t * 2, {"a": (torch.ones(1), [torch.ones(2)]), "s": "keep"})
    assert doubled["a"][1][0].tolist() == [2.0, 2.0] and doubled["s"] == "keep"


class Detector(nn.Module):
    """torchvision-style output: a list with one dict per image; the score of a box is a pooled class logit."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        y = self.net(x)
        return [{"boxes": torch.zeros(1, 4), "scores": y[i, :2], "labels": torch.tensor([0, 1])} for i in range(len(y))]


@pytest.mark.parametrize("method", ["gradcam", "scorecam", "ablationcam"])
def test_list_of_per_image_dicts_with_a_callable(method, rank):
    net = make_net(rank)
    x = make_input(rank)
    target = lambda out: torch.stack([d["scores"][1] for d in out])  # noqa: E731
    options = {"batch_size": 7} if ndcam.get_method(method).perturbative else {}
    got = ndcam.explain(Detector(net), x, method, layers="net.feat", targets=target, **options).maps
    torch.testing.assert_close(got, ndcam.explain(net, x, method, layers="feat", targets=1).maps)


class TinyHFViT(nn.Module):
    """Hugging Face-style ViT: ``forward(pixel_values, output_hidden_states=False)`` -> ``ModelOutput(logits, ...)``;
    patch embedding, a class token, pre-norm blocks (``norm1`` -> attention, ``norm2`` -> MLP), head on the class
    token. Any rank: the patch embedding is a ConvNd."""

    class Block(nn.Module):
        def __init__(self, dim):
            super().__init__()
            self.norm1 = nn.LayerNorm(dim)
            self.attn = nn.MultiheadAttention(dim, 2, batch_first=True)
            self.norm2 = nn.LayerNorm(dim)
            self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

        def forward(self, t):
            h = self.norm1(t)
            t = t + self.attn(h, h, h, need_weights=False)[0]
            return t + self.mlp(self.norm2(t))

    def __init__(self, rank, dim=8, classes=3):
        super().__init__()
        self.embed = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[rank](2, dim, 2, stride=2)
        self.cls = nn.Parameter(torch.randn(1, 1, dim))
        self.blocks = nn.ModuleList([self.Block(dim), self.Block(dim)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)
        for m in self.modules():  # trained-looking LayerNorm affine parameters (the default's channel sum is 0,
            if isinstance(m, nn.LayerNorm):  # which leaves Eigen-CAM's sign to rounding)
                nn.init.normal_(m.weight, 1.0, 0.3)
                nn.init.normal_(m.bias, 0.0, 0.3)

    def forward(self, pixel_values, output_hidden_states=False):
        t = self.embed(pixel_values).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls.expand(len(t), -1, -1), t], 1)
        for b in self.blocks:
            t = b(t)
        logits = self.head(self.norm(t)[:, 0])
        return FakeModelOutput(logits=logits, hidden_states=t if output_hidden_states else None)


VIT_SHAPES = {1: (16,), 2: (8, 6), 3: (4, 4, 6)}


@pytest.mark.parametrize("method", [m for m in ALL if m != "cam"])  # CAM needs global pooling + one linear layer
@pytest.mark.parametrize("rank", [1, 2, 3])
def test_hugging_face_style_vit_with_class_token(method, rank):
    torch.manual_seed(0)
    model = TinyHFViT(rank).double().eval()
    x = torch.randn(3, 2, *VIT_SHAPES[rank], dtype=torch.float64)
    grid = tuple(s // 2 for s in VIT_SHAPES[rank])
    layer = None if method in ("guidedbackprop", "fullgrad") else "blocks.1.norm1"
    options = {} if layer is None else {"reshape": ndcam.TokenGrid(grid, prefix=1)}
    if ndcam.get_method(method).perturbative:
        options["batch_size"] = 5
    call = {"forward_kwargs": {"output_hidden_states": True}}
    exp = ndcam.explain(model, x, method, targets=[0, 2, 1], layers=layer, **call, **options)
    assert exp.maps.shape == x[:, 0].shape and torch.isfinite(exp.maps).all()
    per = torch.cat([ndcam.explain(model, x[i : i + 1], method, targets=[[0, 2, 1][i]], layers=layer, **call,
                                   **options).maps for i in range(3)])
    torch.testing.assert_close(exp.maps, per)
    if method in ("gradcam", "hirescam", "eigencam", "fullgrad"):
        assert (exp.raw_max > exp.raw_min).any()  # the patch tokens of norm1 reach the class token: real maps
