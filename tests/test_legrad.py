"""LeGrad's per-layer read-out (Bousselham et al. 2024): float64 references on tiny ViT-like models of every rank
(class-token and mean pooling), the automatic read-out and its refusals, user read-outs, K targets, batches,
hygiene and threads."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

import ndcam

from . import reference_new as RN
from .test_hygiene import assert_same, snapshot
from .test_methods_new import Attention, AttnViT
from .test_threads import _run_concurrently

CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
GRIDS = [(1, (6,)), (2, (3, 4)), (3, (2, 3, 2))]
#: (class token, pooling, final norm before the pooling): timm/torchvision class-token ViT, a mean-pooled model
#: without class token (fc_norm after the pooling), timm's global_pool="avg" with a class token, an attention-pooling
#: head on the patch tokens (timm's global_pool="map": the prefix dropped without a module)
VARIANTS = {"cls": (True, "cls", True), "mean": (False, "mean", False), "patch-mean": (True, "patch-mean", False),
            "map": (True, "map", True)}


class AttentionPool(nn.Module):
    """(N, T, D) -> (N, D): softmax attention of a learned query over the tokens."""

    def __init__(self, dim: int):
        super().__init__()
        self.query = nn.Parameter(torch.randn(dim))

    def forward(self, t):
        w = torch.softmax(t @ self.query / t.shape[-1] ** 0.5, dim=1)
        return (w[..., None] * t).sum(1)


class Block(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), Attention(dim, heads)
        self.norm2, self.mlp = nn.LayerNorm(dim), nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, t):
        t = t + self.attn(self.norm1(t))
        return t + self.mlp(self.norm2(t))


class LayerViT(nn.Module):
    """Patch embedding -> [class token] -> blocks -> final norm / pooling / head, like timm and torchvision ViTs.
    The class-token variant keeps its blocks in an nn.Sequential, the others in an nn.ModuleList run in a loop."""

    def __init__(self, rank: int, variant: str = "cls", dim: int = 8, heads: int = 2, depth: int = 3, classes: int = 4):
        super().__init__()
        self.cls_token, self.pool, self.norm_first = VARIANTS[variant]
        self.embed = CONV[rank](1, dim, 2, stride=2)
        self.cls = nn.Parameter(torch.randn(1, 1, dim)) if self.cls_token else None
        blocks = [Block(dim, heads) for _ in range(depth)]
        self.blocks = nn.Sequential(*blocks) if variant == "cls" else nn.ModuleList(blocks)
        if self.norm_first:
            self.norm = nn.LayerNorm(dim)
        else:
            self.fc_norm = nn.LayerNorm(dim)
        if self.pool == "map":
            self.attn_pool = AttentionPool(dim)
        self.head = nn.Linear(dim, classes)
        with torch.no_grad():  # non-trivial norms
            for m in self.modules():
                if isinstance(m, nn.LayerNorm):
                    m.weight.normal_(1.0, 0.3)
                    m.bias.normal_(0.0, 0.3)

    def tokens(self, x):
        t = self.embed(x).flatten(2).transpose(1, 2)
        return torch.cat([self.cls.expand(len(t), -1, -1), t], 1) if self.cls is not None else t

    def forward(self, x):
        t = self.tokens(x)
        if isinstance(self.blocks, nn.Sequential):
            t = self.blocks(t)
        else:
            for b in self.blocks:
                t = b(t)
        if self.pool == "map":
            return self.head(self.attn_pool(self.norm(t)[:, 1:]))
        if self.norm_first:
            return self.head(self.norm(t)[:, 0])
        pooled = t.mean(1) if self.pool == "mean" else t[:, 1:].mean(1)
        return self.head(self.fc_norm(pooled))

    def reference_readout(self, z):
        norm = self.norm if self.norm_first else self.fc_norm
        return RN.ref_readout(z, (norm.weight, norm.bias), (self.head.weight, self.head.bias), self.pool, self.norm_first,
                              query=self.attn_pool.query if self.pool == "map" else None)


def _model(rank: int, variant: str = "cls", seed: int = 0) -> LayerViT:
    torch.manual_seed(seed)
    return LayerViT(rank, variant).double().eval()


def _input(grid, n: int = 2, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, *(2 * s for s in grid), generator=g, dtype=torch.float64)


def _layers(model) -> list[str]:
    return [f"blocks.{i}.attn.softmax" for i in range(len(model.blocks))]


def _prefix(model) -> int:
    return 1 if model.cls_token else 0


def _record(model, x, names_a, names_z):
    """One float64 forward with autograd, recording the attention probabilities and the block tokens."""
    store: dict[str, torch.Tensor] = {}
    hooks = [model.get_submodule(n).register_forward_hook(lambda m, i, o, n=n: store.__setitem__(n, o))
             for n in [*names_a, *names_z]]
    try:
        out = model(x)
    finally:
        for h in hooks:
            h.remove()
    return out, [store[n] for n in names_a], [store[n] for n in names_z]


def _reference(model, x, classes, grid, readout=None, score=None, layers=None):
    """LeGrad from the paper: per block l, s^l = score(readout(Z^l)); mean over layers of the loop aggregation."""
    layers = layers or _layers(model)
    blocks = [n.rsplit(".attn", 1)[0] for n in layers]
    _, attn, tokens = _record(model, x, layers, blocks)
    idx = torch.as_tensor(classes)
    score = score or (lambda r: r.gather(1, idx[:, None])[:, 0])
    grads = RN.ref_layerwise_grads(tokens, attn, readout or model.reference_readout, score)
    return RN.ref_legrad(grads, _prefix(model), grid)


def _close(got, expected):
    got = got.double().numpy()
    assert np.abs(expected).max() > 0, "reference map is all-zero: the test would not discriminate"
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-9 * np.abs(expected).max())


def _legrad(model, grid, layers=None, **kw):
    return ndcam.LeGrad(model, layers or _layers(model), grid=grid, prefix=_prefix(model), **kw)


def _counting(model) -> list[int]:
    calls: list[int] = []
    model.register_forward_pre_hook(lambda m, a: calls.append(1))
    return calls


# -- the paper's formula, automatic read-out ----------------------------------------------------------------------
@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("rank, grid", GRIDS, ids=["1d", "2d", "3d"])
def test_automatic_readout_matches_the_paper_reference(rank, grid, variant):
    model, x = _model(rank, variant), _input(grid)
    cam = _legrad(model, grid)
    got = cam(x, [0, 3], upsample=False, normalize=False)
    assert got.shape == (2, *grid)
    _close(got, _reference(model, x, [0, 3], grid))
    # the read-out found: the model's own modules, pooling identified by its values
    want = {"cls": "head(norm(tokens)[:, 0])", "mean": "head(fc_norm(tokens.mean(1)))",
            "patch-mean": "head(fc_norm(tokens[:, 1:].mean(1)))", "map": "head(attn_pool(norm(tokens)[:, 1:]))"}[variant]
    assert cam.readout_for(x) == want
    # normalized and upsampled to the input
    full = cam(x, [0, 3])
    assert full.shape == (2, *x.shape[2:]) and torch.allclose(full.flatten(1).amax(1), torch.ones(2))


def test_per_layer_scores_differ_from_the_model_score_except_at_the_last_block():
    grid = (3, 4)
    model, x = _model(2), _input(grid)
    auto = _legrad(model, grid)(x, [1, 2], upsample=False, normalize=False)
    own = _legrad(model, grid, readout="model")(x, [1, 2], upsample=False, normalize=False)
    assert not torch.allclose(auto, own, rtol=1e-3)  # the per-layer read-out changes intermediate layers
    last = _layers(model)[-1:]
    torch.testing.assert_close(_legrad(model, grid, last)(x, [1, 2], upsample=False, normalize=False),
                               _legrad(model, grid, last, readout="model")(x, [1, 2], upsample=False, normalize=False))


def test_top1_targets_are_the_model_classes():
    grid = (3, 4)
    model, x = _model(2, "mean"), _input(grid, n=3)
    top = model(x).argmax(1)
    exp = _legrad(model, grid).explain(x, upsample=False, normalize=False)
    assert torch.equal(exp.targets, top)
    _close(exp.maps, _reference(model, x, top.tolist(), grid))


def test_token_layers_keep_the_model_score_unless_a_readout_is_given():
    """Blocks as layers (reshape=TokenGrid): "auto" differentiates the model's
    score (a block's own tokens read out through a class-token head give zero at every patch); an explicit read-out
    is applied to each block's own tokens: the gradient of s^l w.r.t. Z^l, averaged over the embedding channels."""
    grid = (3, 4)
    model, x = _model(2), _input(grid)
    blocks = [f"blocks.{i}" for i in range(3)]
    auto = ndcam.LeGrad(model, blocks, reshape=ndcam.TokenGrid(grid, prefix=1))
    own = ndcam.LeGrad(model, blocks, reshape=ndcam.TokenGrid(grid, prefix=1), readout="model")
    torch.testing.assert_close(auto(x, [0, 3], normalize=False), own(x, [0, 3], normalize=False))
    assert auto.readout_for(x) == "model output"

    def readout(z):  # norm before a mean of all tokens: the gradient differs from token to token
        return model.head(model.norm(z).mean(1))

    _, _, tokens = _record(model, x, [], blocks)
    idx = torch.tensor([0, 3])
    grads = [torch.autograd.grad(RN.ref_readout(z, (model.norm.weight, model.norm.bias), (model.head.weight,
                                                                                         model.head.bias),
                                                "mean", norm_first=True).gather(1, idx[:, None]).sum(), z,
                                 retain_graph=True)[0] for z in tokens]
    expected = RN.ref_legrad([g.transpose(1, 2)[:, None].detach().numpy() for g in grads], 1, grid)  # mean over D
    cam = ndcam.LeGrad(model, blocks, reshape=ndcam.TokenGrid(grid, prefix=1), readout=readout)
    _close(cam(x, [0, 3], upsample=False, normalize=False), expected)


class TupleBlock(Block):
    """A block returning ``(tokens,)`` (older Hugging Face layers)."""

    def forward(self, t):
        return (super().forward(t),)


class TupleViT(LayerViT):
    def __init__(self, rank: int):
        super().__init__(rank, "mean")
        self.blocks = nn.ModuleList(TupleBlock(8, 2) for _ in range(3))

    def forward(self, x):
        t = self.tokens(x)
        for b in self.blocks:
            t = b(t)[0]
        return self.head(self.fc_norm(t.mean(1)))


def test_blocks_returning_tuples_are_read_out_from_their_first_tensor():
    grid = (3, 4)
    x = _input(grid)
    torch.manual_seed(0)
    tup = TupleViT(2).double().eval()
    plain = _model(2, "mean")
    plain.load_state_dict(tup.state_dict())
    cam = _legrad(tup, grid)
    torch.testing.assert_close(cam(x, [1, 2], normalize=False), _legrad(plain, grid)(x, [1, 2], normalize=False))
    assert cam.readout_for(x) == "head(fc_norm(tokens.mean(1)))"


# -- user read-outs and targets -----------------------------------------------------------------------------------
class MeanReadout(nn.Module):
    """The authors' read-out (and torch-cam's): mean of all tokens, class token included, then norm and head."""

    def __init__(self, model):
        super().__init__()
        self.norm, self.head = model.norm, model.head

    def forward(self, z):
        return self.head(self.norm(z.mean(1)))


def test_user_readout_module_or_callable_matches_the_reference():
    grid = (3, 4)
    model, x = _model(2), _input(grid)
    ref = _reference(model, x, [2, 1], grid, readout=lambda z: RN.ref_readout(
        z, (model.norm.weight, model.norm.bias), (model.head.weight, model.head.bias), "mean", norm_first=False))
    module = MeanReadout(model)
    _close(_legrad(model, grid, readout=module)(x, [2, 1], upsample=False, normalize=False), ref)
    _close(_legrad(model, grid, readout=lambda z: model.head(model.norm(z.mean(1))))(x, [2, 1], upsample=False,
                                                                                    normalize=False), ref)
    assert "MeanReadout" in _legrad(model, grid, readout=module).readout_for(x)


def test_callable_targets_receive_the_readout_scores():
    grid = (3, 4)
    model, x = _model(2), _input(grid)
    target = ndcam.targets.Contrastive(0, 2)
    got = _legrad(model, grid)(x, target, upsample=False, normalize=False)
    _close(got, _reference(model, x, [0, 0], grid, score=lambda r: r[:, 0] - r[:, 2]))


def test_k_targets_at_once_equal_k_calls_and_batch_equals_per_sample():
    grid = (3, 4)
    model, x = _model(2, "patch-mean"), _input(grid, n=3)
    cam = _legrad(model, grid)
    tk = torch.tensor([[0, 3], [1, 1], [2, 0]])
    many = cam(x, tk, upsample=False, normalize=False)
    assert many.shape == (3, 2, *grid)
    for k in range(2):
        torch.testing.assert_close(many[:, k], cam(x, tk[:, k], upsample=False, normalize=False))
    per = torch.cat([cam(x[i : i + 1], [int(tk[i, 0])]) for i in range(3)])
    torch.testing.assert_close(cam(x, tk[:, 0]), per)
    torch.testing.assert_close(_legrad(model, grid, per_sample=True)(x, tk[:, 0]), per)


# -- the model is left as it was ----------------------------------------------------------------------------------
def test_model_left_untouched_after_success_and_after_errors():
    grid = (3, 4)
    model, x = _model(2, "mean"), _input(grid)
    model.train()
    model.blocks[1].eval()  # mixed flags must come back exactly
    before = snapshot(model)
    _legrad(model, grid)(x, [0, 1])
    assert_same(before, snapshot(model))

    def broken(z):
        raise RuntimeError("read-out exploded")

    with pytest.raises(ndcam.InputError, match="read-out failed on the tokens of 'blocks.0'.*exploded"):
        _legrad(model, grid, readout=broken)(x, [0, 1])
    assert_same(before, snapshot(model))
    with pytest.raises(ndcam.LayerError, match="ambiguous"):  # the automatic read-out refused after the forward
        _legrad(model, grid)(torch.zeros_like(x), [0, 1])
    assert_same(before, snapshot(model))
    assert torch.is_grad_enabled()


def test_threads_on_one_model_give_the_sequential_maps():
    grid = (3, 4)
    model = _model(2)
    cam = _legrad(model, grid)
    xs = [_input(grid, seed=s) for s in range(4)]
    want = [cam(x, [0, 1]) for x in xs]
    got = _run_concurrently(lambda x: cam(x, [0, 1]), [(x,) for x in xs])
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)


# -- refusals -------------------------------------------------------------------------------------------------------
def test_bad_readout_is_refused_at_construction():
    model = _model(2)
    with pytest.raises(ndcam.InputTypeError, match="readout must be 'auto', 'model' or a module/callable"):
        _legrad(model, (3, 4), readout=42)
    with pytest.raises(ndcam.InputError, match="readout must be 'auto', 'model'.*got 'cls'"):
        _legrad(model, (3, 4), readout="cls")


def test_layers_that_fit_no_readout_plan_are_refused_before_the_forward():
    grid = (3, 4)
    model, x = _model(2), _input(grid)
    calls = _counting(model)
    with pytest.raises(ndcam.LayerError, match="in one block 'blocks.0'"):
        ndcam.LeGrad(model, ["blocks.0.attn.softmax", "blocks.0.attn.qkv"], grid=grid, prefix=1)(x, 0)
    vit = AttnViT(2).double().eval()
    vit_calls = _counting(vit)
    with pytest.raises(ndcam.LayerError, match="not in one stack of blocks.*readout='model'"):
        ndcam.LeGrad(vit, ["attn.0.softmax", "mlp.0.1"], grid=(4, 5), prefix=1)(torch.randn(1, 1, 8, 10,
                                                                                           dtype=torch.float64))
    class OneBlock(nn.Module):  # an attention layer outside any stack of blocks
        def __init__(self):
            super().__init__()
            self.embed, self.block, self.head = nn.Conv2d(1, 8, 2, stride=2), Block(8, 2), nn.Linear(8, 3)

        def forward(self, x):
            return self.head(self.block(self.embed(x).flatten(2).transpose(1, 2)).mean(1))

    one = OneBlock().double().eval()
    one_calls = _counting(one)
    with pytest.raises(ndcam.LayerError, match="'block.attn.softmax' is not inside a stack of blocks"):
        ndcam.LeGrad(one, "block.attn.softmax", grid=grid)(x, 0)
    assert calls == [] and vit_calls == [] and one_calls == []


def test_unidentifiable_readouts_are_refused_with_what_did_not_fit():
    # attention and MLP in two separate lists: no module holds a whole block, the tail does not start at the tokens
    vit, x = AttnViT(2).double().eval(), torch.randn(2, 1, 8, 10, dtype=torch.float64)
    chain = r"'mlp.1' \(run after the last block 'attn.1' of the stack 'attn'\).*not form one chain.*readout="
    with pytest.raises(ndcam.LayerError, match=chain):
        ndcam.LeGrad(vit, ["attn.0.softmax", "attn.1.softmax"], grid=(4, 5), prefix=1)(x, 0)
    # a constant input: every token equal, class token and mean pooling give the same values -- ambiguous
    grid = (3, 4)
    model = _model(2, "mean")
    with pytest.raises(ndcam.LayerError, match="ambiguous"):
        _legrad(model, grid)(torch.ones(1, 1, 6, 8, dtype=torch.float64), 0)

    class Scaled(nn.Module):  # an operation without a module after the head
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x):
            return self.net(x) * 2.0

    with pytest.raises(ndcam.LayerError, match="operation without a module"):
        ndcam.LeGrad(Scaled(model), [f"net.{n}" for n in _layers(model)], grid=grid)(_input(grid), 0)


@pytest.mark.filterwarnings("ignore:Using a non-tuple sequence")  # torch, on indexing a tensor with a string
def test_bad_readout_outputs_and_targets_are_clear_errors():
    grid = (3, 4)
    model, x = _model(2), _input(grid)
    with pytest.raises(ndcam.InputError, match=r"class scores \(N, classes\).*gave shape \(2, 13, 8\)"):
        _legrad(model, grid, readout=lambda z: z)(x, 0)

    class Dict(nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x):
            return {"logits": self.net(x)}

    wrapped = Dict(model)
    layers = [f"net.{n}" for n in _layers(model)]
    with pytest.raises(ndcam.InputError, match="target callable failed on the read-out's class scores"):
        ndcam.LeGrad(wrapped, layers, grid=grid, prefix=1)(x, lambda out: out["logits"][:, 1])
    # class indices read the same classes from the read-out as from the model's {"logits": ...}
    torch.testing.assert_close(ndcam.LeGrad(wrapped, layers, grid=grid, prefix=1)(x, 1), _legrad(model, grid)(x, 1))


def test_cnn_layers_keep_the_model_score():
    """No tokens to read out: "auto" on a feature map is the model's own score (the mean positive gradient)."""
    from .conftest import make_input, make_net

    net, x = make_net(2), make_input(2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ndcam.ConstantMapWarning)
        torch.testing.assert_close(ndcam.LeGrad(net, "feat")(x, 1), ndcam.LeGrad(net, "feat", readout="model")(x, 1))
        assert ndcam.LeGrad(net, "feat").readout_for(x) == "model output"
