"""LeGrad on ``torch.nn.MultiheadAttention`` layers: nn.TransformerEncoder models (batch-first and sequence-first),
a faithful stand-in of torchvision's VisionTransformer, separate key/value dimensions, masks. Float64 references
written out from the layers' weights; the model's outputs unchanged by the capture (fast paths included); the model
left exactly as it was; refusals."""

from __future__ import annotations

import math
from collections import OrderedDict

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import ndcam

from . import reference_new as RN
from .test_hygiene import assert_same, snapshot
from .test_threads import _run_concurrently

CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
GRIDS = {1: (6,), 2: (3, 4), 3: (2, 3, 2)}
RANKS = pytest.mark.parametrize("rank", [1, 2, 3], ids=["1d", "2d", "3d"])


def _randomize(module: nn.Module, std: float = 0.3) -> None:
    """Non-trivial weights: LayerNorms around (1, 0), everything else perturbed (nn.TransformerEncoder copies one
    layer, so its layers start equal)."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.LayerNorm):
                m.weight.normal_(1.0, std)
                m.bias.normal_(0.0, std)
        for name, p in module.named_parameters():
            if "norm" not in name and not name.startswith("ln"):
                p.add_(std * torch.randn_like(p))


def _gelu(v):
    return 0.5 * v * (1.0 + torch.erf(v / math.sqrt(2.0)))


def _ln(norm: nn.LayerNorm, v):
    return RN.ref_layer_norm(v, norm.weight, norm.bias, norm.eps)


def _proj(mha: nn.MultiheadAttention):
    """The layer's weights as RN.ref_mha takes them (in_proj_* split in three, or the separate q/k/v weights)."""
    if mha.in_proj_weight is not None:
        wq, wk, wv = mha.in_proj_weight.chunk(3)
    else:
        wq, wk, wv = mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight
    bq, bk, bv = mha.in_proj_bias.chunk(3)
    return wq, wk, wv, bq, bk, bv, mha.out_proj.weight, mha.out_proj.bias


def _mlp(linear1: nn.Linear, linear2: nn.Linear, v):
    return _gelu(v @ linear1.weight.T + linear1.bias) @ linear2.weight.T + linear2.bias


# -- models -------------------------------------------------------------------------------------------------------
class EncoderViT(nn.Module):
    """Patch embedding -> class token -> nn.TransformerEncoder (with its final norm) -> class token or token mean
    -> head. ``batch_first=False`` keeps the tokens sequence-first (T, N, D) up to the pooling (``t[0]``,
    ``t.mean(0)``). Masks are passed on to the encoder."""

    def __init__(self, rank: int, batch_first: bool = True, pool: str = "cls", norm_first: bool = False,
                 dim: int = 8, heads: int = 2, depth: int = 3, classes: int = 4):
        super().__init__()
        self.batch_first, self.pool, self.heads_ = batch_first, pool, heads
        self.embed = CONV[rank](1, dim, 2, stride=2)
        self.cls = nn.Parameter(torch.randn(1, 1, dim))
        layer = nn.TransformerEncoderLayer(dim, heads, 2 * dim, dropout=0.1, activation="gelu",
                                           batch_first=batch_first, norm_first=norm_first)
        self.encoder = nn.TransformerEncoder(layer, depth, norm=nn.LayerNorm(dim),
                                             enable_nested_tensor=batch_first and not norm_first)
        self.head = nn.Linear(dim, classes)
        _randomize(self.encoder)

    def tokens(self, x):
        t = self.embed(x).flatten(2).transpose(1, 2)
        return torch.cat([self.cls.expand(len(t), -1, -1), t], 1)

    def forward(self, x, pad=None, mask=None):
        t = self.tokens(x)
        if self.batch_first:
            t = self.encoder(t, mask=mask, src_key_padding_mask=pad)
            return self.head(t[:, 0] if self.pool == "cls" else t.mean(1))
        t = self.encoder(t.transpose(0, 1), mask=mask, src_key_padding_mask=pad)
        return self.head(t[0] if self.pool == "cls" else t.mean(0))

    # the reference: the same model written out, batch-first, from the weights
    layers = property(lambda self: [f"encoder.layers.{i}.self_attn" for i in range(len(self.encoder.layers))])
    readout_text = property(lambda self: {(True, "cls"): "head(encoder.norm(tokens)[:, 0])",
                                          (True, "mean"): "head(encoder.norm(tokens).mean(1))",
                                          (False, "cls"): "head(encoder.norm(tokens)[0])",
                                          (False, "mean"): "head(encoder.norm(tokens).mean(0))"}[
                                              (self.batch_first, self.pool)])

    def reference_forward(self, x, pad=None, mask=None):
        t, tokens, attn = self.tokens(x), [], []
        for layer in self.encoder.layers:
            def sa(h, layer=layer):
                return RN.ref_mha(h, h, h, _proj(layer.self_attn), self.heads_, pad, mask)

            if layer.norm_first:
                o, a = sa(_ln(layer.norm1, t))
                t = t + o
                t = t + _mlp(layer.linear1, layer.linear2, _ln(layer.norm2, t))
            else:
                o, a = sa(t)
                t = _ln(layer.norm1, t + o)
                t = _ln(layer.norm2, t + _mlp(layer.linear1, layer.linear2, t))
            tokens.append(t)
            attn.append(a)
        return self.reference_readout(t), tokens, attn

    def reference_readout(self, z):
        norm = self.encoder.norm
        return RN.ref_readout(z, (norm.weight, norm.bias), (self.head.weight, self.head.bias), self.pool, True)


class MLPBlock(nn.Sequential):
    """torchvision.models.vision_transformer.MLPBlock: Linear, GELU, Dropout, Linear, Dropout."""

    def __init__(self, dim: int, mlp_dim: int, dropout: float):
        super().__init__(nn.Linear(dim, mlp_dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(mlp_dim, dim),
                         nn.Dropout(dropout))


class EncoderBlock(nn.Module):
    """torchvision's EncoderBlock: pre-norm self-attention through a batch-first nn.MultiheadAttention called with
    ``need_weights=False``, then the MLP."""

    def __init__(self, heads: int, dim: int, mlp_dim: int, dropout: float, attention_dropout: float):
        super().__init__()
        self.num_heads = heads
        self.ln_1 = nn.LayerNorm(dim, eps=1e-6)
        self.self_attention = nn.MultiheadAttention(dim, heads, dropout=attention_dropout, batch_first=True)
        self.dropout = nn.Dropout(dropout)
        self.ln_2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MLPBlock(dim, mlp_dim, dropout)

    def forward(self, input: torch.Tensor):
        torch._assert(input.dim() == 3, f"Expected (batch_size, seq_length, hidden_dim) got {input.shape}")
        x = self.ln_1(input)
        x, _ = self.self_attention(x, x, x, need_weights=False)
        x = self.dropout(x)
        x = x + input
        y = self.ln_2(x)
        y = self.mlp(y)
        return x + y


class Encoder(nn.Module):
    """torchvision's Encoder: position embedding, dropout, ``layers`` (an nn.Sequential of ``encoder_layer_i``),
    final ``ln``."""

    def __init__(self, seq_length: int, depth: int, heads: int, dim: int, mlp_dim: int, dropout: float = 0.1,
                 attention_dropout: float = 0.1):
        super().__init__()
        self.pos_embedding = nn.Parameter(torch.empty(1, seq_length, dim).normal_(std=0.02))
        self.dropout = nn.Dropout(dropout)
        self.layers = nn.Sequential(OrderedDict(
            (f"encoder_layer_{i}", EncoderBlock(heads, dim, mlp_dim, dropout, attention_dropout)) for i in range(depth)))
        self.ln = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, input: torch.Tensor):
        input = input + self.pos_embedding
        return self.ln(self.layers(self.dropout(input)))


class VisionTransformer(nn.Module):
    """A small stand-in of torchvision.models.VisionTransformer (same module names and forward) for inputs of any
    rank: ``conv_proj`` patches, ``class_token``, ``encoder``, the class token ``x[:, 0]``, ``heads.head``."""

    def __init__(self, rank: int = 2, grid=None, patch: int = 2, depth: int = 3, heads: int = 2, dim: int = 8,
                 mlp_dim: int = 16, classes: int = 4):
        super().__init__()
        grid = grid or GRIDS[rank]
        self.hidden_dim, self.grid = dim, grid
        self.conv_proj = CONV[rank](1, dim, kernel_size=patch, stride=patch)
        self.class_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.encoder = Encoder(math.prod(grid) + 1, depth, heads, dim, mlp_dim)
        self.heads = nn.Sequential(OrderedDict(head=nn.Linear(dim, classes)))
        with torch.no_grad():
            self.class_token.normal_()
        _randomize(self.encoder.layers)
        _randomize(self.encoder.ln)

    def _process_input(self, x):
        n = x.shape[0]
        x = self.conv_proj(x)
        return x.reshape(n, self.hidden_dim, -1).permute(0, 2, 1)

    def forward(self, x: torch.Tensor):
        x = self._process_input(x)
        batch_class_token = self.class_token.expand(x.shape[0], -1, -1)
        x = torch.cat([batch_class_token, x], dim=1)
        x = self.encoder(x)
        x = x[:, 0]
        return self.heads(x)

    layers = property(lambda self: [f"encoder.layers.encoder_layer_{i}.self_attention"
                                    for i in range(len(self.encoder.layers))])
    readout_text = "heads(encoder.ln(tokens)[:, 0])"

    def reference_forward(self, x):
        t = torch.cat([self.class_token.expand(len(x), -1, -1), self._process_input(x)], 1) + self.encoder.pos_embedding
        tokens, attn = [], []
        for block in self.encoder.layers:
            h = _ln(block.ln_1, t)
            o, a = RN.ref_mha(h, h, h, _proj(block.self_attention), block.num_heads)
            t = t + o
            t = t + _mlp(block.mlp[0], block.mlp[3], _ln(block.ln_2, t))
            tokens.append(t)
            attn.append(a)
        return self.reference_readout(t), tokens, attn

    def reference_readout(self, z):
        ln, head = self.encoder.ln, self.heads.head
        return RN.ref_readout(z, (ln.weight, ln.bias), (head.weight, head.bias), "cls", True, eps=ln.eps)


class KVBlock(nn.Module):
    """Attention with separate key and value dimensions (kdim=6, vdim=5: separate projection weights); the block
    uses the head-averaged weights the layer returns by default (``use="mean"``) or asks for the per-head ones
    positionally (``use="heads"``) and adds ``weights @ tokens`` to its output."""

    def __init__(self, dim: int = 8, heads: int = 2, use: str = "none"):
        super().__init__()
        self.use, self.num_heads = use, heads
        self.norm = nn.LayerNorm(dim)
        self.to_k, self.to_v = nn.Linear(dim, 6), nn.Linear(dim, 5)
        self.attn = nn.MultiheadAttention(dim, heads, dropout=0.2, kdim=6, vdim=5, batch_first=True)
        self.fc1, self.fc2 = nn.Linear(dim, 2 * dim), nn.Linear(2 * dim, dim)

    def forward(self, t):
        h = self.norm(t)
        if self.use == "mean":
            o, w = self.attn(h, self.to_k(h), self.to_v(h))
            o = o + 0.5 * w @ h
        elif self.use == "heads":
            o, w = self.attn(h, self.to_k(h), self.to_v(h), None, True, None, False)
            o = o + 0.5 * w.mean(1) @ h
        else:
            o, _ = self.attn(h, self.to_k(h), self.to_v(h), need_weights=False)
        t = t + o
        return t + self.fc2(F.gelu(self.fc1(t)))


class KVViT(nn.Module):
    def __init__(self, rank: int = 2, use: str = "none", dim: int = 8, depth: int = 3, classes: int = 4):
        super().__init__()
        self.embed = CONV[rank](1, dim, 2, stride=2)
        self.cls = nn.Parameter(torch.randn(1, 1, dim))
        self.blocks = nn.ModuleList(KVBlock(dim, use=use) for _ in range(depth))
        self.norm, self.head = nn.LayerNorm(dim), nn.Linear(dim, classes)
        _randomize(self.blocks)
        _randomize(self.norm)

    def tokens(self, x):
        t = self.embed(x).flatten(2).transpose(1, 2)
        return torch.cat([self.cls.expand(len(t), -1, -1), t], 1)

    def forward(self, x):
        t = self.tokens(x)
        for b in self.blocks:
            t = b(t)
        return self.head(self.norm(t)[:, 0])

    layers = property(lambda self: [f"blocks.{i}.attn" for i in range(len(self.blocks))])
    readout_text = "head(norm(tokens)[:, 0])"

    def reference_forward(self, x):
        t, tokens, attn = self.tokens(x), [], []
        for b in self.blocks:
            h = _ln(b.norm, t)
            kin, vin = h @ b.to_k.weight.T + b.to_k.bias, h @ b.to_v.weight.T + b.to_v.bias
            o, a = RN.ref_mha(h, kin, vin, _proj(b.attn), b.num_heads)
            if b.use != "none":
                o = o + 0.5 * a.mean(1) @ h
            t = t + o
            t = t + _mlp(b.fc1, b.fc2, t)
            tokens.append(t)
            attn.append(a)
        return self.reference_readout(t), tokens, attn

    def reference_readout(self, z):
        return RN.ref_readout(z, (self.norm.weight, self.norm.bias), (self.head.weight, self.head.bias), "cls", True)


MODELS = {
    "encoder": lambda rank: EncoderViT(rank),
    "encoder-mean-normfirst": lambda rank: EncoderViT(rank, pool="mean", norm_first=True),
    "encoder-seqfirst": lambda rank: EncoderViT(rank, batch_first=False),
    "encoder-seqfirst-mean": lambda rank: EncoderViT(rank, batch_first=False, pool="mean"),
    "torchvision": lambda rank: VisionTransformer(rank),
    "kdim-vdim": lambda rank: KVViT(rank),
    "returned-mean-weights": lambda rank: KVViT(rank, use="mean"),
    "returned-head-weights": lambda rank: KVViT(rank, use="heads"),
}


def _model(kind: str, rank: int = 2, seed: int = 0, dtype=torch.float64):
    torch.manual_seed(seed)
    return MODELS[kind](rank).to(dtype).eval()


def _input(rank: int, n: int = 2, seed: int = 1, dtype=torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, *(2 * s for s in GRIDS[rank]), generator=g).to(dtype)


def _legrad(model, rank: int = 2, **kw):
    return ndcam.LeGrad(model, model.layers, grid=GRIDS[rank], prefix=1, **kw)


def _reference(model, x, classes, rank, readout=None, **forward):
    """The paper's LeGrad on the written-out model: per block l, the gradient of the read-out score of the block's
    tokens (or of the model's own score, ``readout="model"``) w.r.t. the block's probabilities, mean over layers."""
    out, tokens, attn = model.reference_forward(x, **forward)
    idx = torch.as_tensor(classes)

    def score(r):
        return r.gather(1, idx[:, None])[:, 0]

    if readout == "model":
        grads = [g.detach().numpy() for g in torch.autograd.grad(score(out).sum(), attn)]
    else:
        grads = RN.ref_layerwise_grads(tokens, attn, readout or model.reference_readout, score)
    return out, RN.ref_legrad(grads, 1, GRIDS[rank])


def _close(got, expected):
    got = got.double().numpy()
    assert np.abs(expected).max() > 0, "reference map is all-zero: the test would not discriminate"
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-9 * np.abs(expected).max())


class _Ops(TorchDispatchMode):
    """Names of the aten operators a forward runs."""

    def __init__(self):
        super().__init__()
        self.names: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.add(func.__name__.split(".")[0])
        return func(*args, **(kwargs or {}))


FUSED = {"_native_multi_head_attention", "_transformer_encoder_layer_fwd"}


def _outputs_during(cam, model, x, targets, **kw):
    """The model's outputs during an explanation call (recorded by a hook on the model) and the explanation."""
    seen = []
    handle = model.register_forward_hook(lambda m, a, o: seen.append(o.detach().clone()))
    try:
        exp = cam.explain(x, targets, upsample=False, normalize=False, **kw)
    finally:
        handle.remove()
    return seen, exp


# -- the paper's formula on the layers' own probabilities -------------------------------------------------------
@pytest.mark.parametrize("kind, rank", [("encoder", 1), ("encoder", 2), ("encoder", 3), ("encoder-mean-normfirst", 2),
                                        ("encoder-seqfirst", 2), ("encoder-seqfirst-mean", 3), ("torchvision", 1),
                                        ("torchvision", 2), ("torchvision", 3), ("kdim-vdim", 2),
                                        ("returned-mean-weights", 2), ("returned-head-weights", 1)])
def test_multihead_attention_matches_the_written_out_reference(kind, rank):
    model, x = _model(kind, rank), _input(rank)
    out, expected = _reference(model, x, [0, 3], rank)
    torch.testing.assert_close(out, model(x), rtol=1e-12, atol=1e-12)  # the reference is the model
    cam = _legrad(model, rank)
    got = cam(x, [0, 3], upsample=False, normalize=False)
    assert got.shape == (2, *GRIDS[rank])
    _close(got, expected)
    assert cam.readout_for(x) == model.readout_text


@pytest.mark.parametrize("kind", ["encoder", "torchvision", "encoder-seqfirst"])
def test_model_score_and_user_readouts_on_multihead_attention(kind):
    rank = 2
    model, x = _model(kind, rank), _input(rank)
    _close(_legrad(model, rank, readout="model")(x, [2, 1], upsample=False, normalize=False),
           _reference(model, x, [2, 1], rank, readout="model")[1])
    axis = 1 if getattr(model, "batch_first", True) else 0  # the read-out gets the blocks' tokens as they are
    norm, head = (model.encoder.norm, model.head) if kind.startswith("encoder") else (model.encoder.ln, model.heads.head)
    # the authors' read-out: the mean of all tokens, then the final norm and the head
    expected = _reference(model, x, [2, 1], rank, readout=lambda z: RN.ref_readout(
        z, (norm.weight, norm.bias), (head.weight, head.bias), "mean", False, eps=norm.eps))[1]
    got = _legrad(model, rank, readout=lambda z: head(norm(z.mean(axis))))(x, [2, 1], upsample=False, normalize=False)
    _close(got, expected)


@pytest.mark.parametrize("batch_first", [True, False], ids=["batch-first", "seq-first"])
@pytest.mark.parametrize("masks", ["padding", "attn-bool", "attn-float", "both"])
def test_masks_reach_the_probabilities(batch_first, masks):
    rank = 2
    model, x = _model("encoder-seqfirst" if not batch_first else "encoder", rank), _input(rank, n=3)
    tokens = 1 + math.prod(GRIDS[rank])
    g = torch.Generator().manual_seed(5)
    forward = {}
    if masks in ("padding", "both"):
        pad = torch.zeros(3, tokens, dtype=torch.bool)
        pad[0, -3:] = True  # padded at the end (left-aligned: the nested-tensor fast path would take it)
        pad[2, -1] = True
        forward["pad"] = pad
    if masks in ("attn-bool", "both"):
        forward["mask"] = torch.rand(tokens, tokens, generator=g) < 0.2
        forward["mask"].fill_diagonal_(False)
    if masks == "attn-float":
        forward["mask"] = torch.randn(tokens, tokens, generator=g, dtype=torch.float64)
    out, expected = _reference(model, x, [1, 0, 3], rank, **forward)
    cam = _legrad(model, rank)
    seen, exp = _outputs_during(cam, model, x, [1, 0, 3], forward_kwargs=forward)
    torch.testing.assert_close(seen[0], out.detach(), rtol=1e-12, atol=1e-12)
    _close(exp.maps, expected)


# -- the model's computation is unchanged ---------------------------------------------------------------------------
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-6), (torch.float64, 1e-12)], ids=["float32", "float64"])
@pytest.mark.parametrize("kind", ["encoder", "torchvision", "encoder-seqfirst", "kdim-vdim", "returned-head-weights"])
def test_outputs_are_those_of_the_model(kind, dtype, tol):
    rank = 2
    model, x = _model(kind, rank, dtype=dtype), _input(rank, n=3, dtype=dtype)
    with torch.no_grad(), _Ops() as ops:
        fast = model(x)
    if kind in ("encoder", "torchvision"):
        assert ops.names & FUSED, "the plain forward does not take torch's fused fast path: the test would not show it"
    with torch.enable_grad():
        slow = model(x).detach()
    # what the layers' other callers (and the user's hooks) receive: what they asked for
    received = []
    mha = model.get_submodule(model.layers[0])
    handle = mha.register_forward_hook(lambda m, a, o: received.append(None if o[1] is None else tuple(o[1].shape)))
    try:
        with _Ops() as ops:
            seen, exp = _outputs_during(_legrad(model, rank), model, x, [0, 1, 2])
    finally:
        handle.remove()
    assert not ops.names & FUSED  # the explained forward runs the layers' own forward
    torch.testing.assert_close(seen[0], fast, rtol=tol, atol=tol)
    torch.testing.assert_close(seen[0], slow, rtol=tol, atol=tol)
    torch.testing.assert_close(exp.scores, fast.gather(1, torch.tensor([[0], [1], [2]]))[:, 0].float())
    asked = {"returned-head-weights": (3, 2, 13, 13)}.get(kind)
    assert received == [asked]


@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors")  # torch, on its own fast path
def test_padding_with_the_nested_tensor_fast_path():
    """nn.TransformerEncoder packs padded batches into nested tensors in its fast path; the explained forward runs
    the ordinary path, which gives the same class-token output (padded tokens differ between the two paths in
    torch itself, see the README)."""
    rank = 2
    model, x = _model("encoder", rank, dtype=torch.float32), _input(rank, n=3, dtype=torch.float32)
    pad = torch.zeros(3, 13, dtype=torch.bool)
    pad[1, -4:] = True
    with torch.no_grad(), _Ops() as ops:
        fast = model(x, pad)
    assert "_nested_tensor_from_mask" in ops.names
    seen, _ = _outputs_during(_legrad(model, rank), model, x, 0, forward_kwargs={"pad": pad})
    torch.testing.assert_close(seen[0], fast, rtol=1e-6, atol=1e-6)


# -- targets and batches ------------------------------------------------------------------------------------------
def test_k_targets_equal_k_calls_and_batch_equals_per_sample():
    rank = 2
    model, x = _model("torchvision", rank), _input(rank, n=3)
    cam = _legrad(model, rank)
    tk = torch.tensor([[0, 3], [1, 1], [2, 0]])
    many = cam(x, tk, upsample=False, normalize=False)
    assert many.shape == (3, 2, *GRIDS[rank])
    for k in range(2):
        torch.testing.assert_close(many[:, k], cam(x, tk[:, k], upsample=False, normalize=False))
    per = torch.cat([cam(x[i : i + 1], [int(tk[i, 0])]) for i in range(3)])
    torch.testing.assert_close(cam(x, tk[:, 0]), per)
    torch.testing.assert_close(_legrad(model, rank, per_sample=True)(x, tk[:, 0]), per)
    model_score = _legrad(model, rank, readout="model")
    torch.testing.assert_close(model_score(x, tk, upsample=False, normalize=False)[:, 1],
                               model_score(x, tk[:, 1], upsample=False, normalize=False))


def test_threads_on_one_model_give_the_sequential_maps():
    rank = 2
    model = _model("encoder", rank)
    cam = _legrad(model, rank)
    xs = [_input(rank, seed=s) for s in range(4)]
    want = [cam(x, [0, 1]) for x in xs]
    got = _run_concurrently(lambda x: cam(x, [0, 1]), [(x,) for x in xs])
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)


# -- the model is left exactly as it was ----------------------------------------------------------------------------
def _full_snapshot(model):
    snap = snapshot(model)
    snap["hook_dicts"] = {n: tuple(dict(getattr(m, d)) for d in (
        "_forward_hooks", "_forward_pre_hooks", "_forward_hooks_with_kwargs", "_forward_pre_hooks_with_kwargs",
        "_forward_hooks_always_called")) for n, m in model.named_modules()}
    snap["attributes"] = {n: sorted(vars(m)) for n, m in model.named_modules()}
    snap["forward"] = {n: type(m).forward for n, m in model.named_modules()}
    snap["modes"] = torch._C._len_torch_function_stack()
    snap["grad"] = torch.is_grad_enabled()
    return snap


def _assert_restored(before, model):
    after = _full_snapshot(model)
    assert_same(before, after)
    for key in ("hook_dicts", "attributes", "forward", "modes", "grad"):
        assert before[key] == after[key], key


class Unbatched(EncoderBlock):
    """Calls its attention on the first sample's tokens without a batch axis."""

    def forward(self, input):
        x = self.ln_1(input)[0]
        x, _ = self.self_attention(x, x, x, need_weights=False)
        return input + x[None]


class Failing(VisionTransformer):
    def forward(self, x):
        super().forward(x)
        raise RuntimeError("head exploded")


def test_model_restored_after_success_and_after_errors(monkeypatch):
    rank = 2
    model, x = _model("torchvision", rank), _input(rank)
    model.train()
    model.encoder.layers.encoder_layer_1.eval()  # mixed flags come back exactly
    model.encoder.layers.encoder_layer_0.self_attention.register_forward_hook(lambda m, a, o: None)  # the user's own
    before = _full_snapshot(model)
    _legrad(model, rank)(x, [0, 1])
    _legrad(model, rank, readout="model")(x, [0, 1])
    _assert_restored(before, model)

    def broken(z):
        raise RuntimeError("read-out exploded")

    with pytest.raises(ndcam.InputError, match="read-out failed.*exploded"):
        _legrad(model, rank, readout=broken)(x, [0, 1])
    _assert_restored(before, model)

    failing = _model("torchvision", rank)
    failing.__class__ = Failing
    snap = _full_snapshot(failing)
    with pytest.raises(ndcam.ForwardError, match="head exploded"):
        _legrad(failing, rank)(x, 0)
    _assert_restored(snap, failing)

    unbatched = _model("torchvision", rank)
    for block in unbatched.encoder.layers:
        block.__class__ = Unbatched
    snap = _full_snapshot(unbatched)
    with pytest.raises(ndcam.LayerError, match="unbatched query"):
        _legrad(unbatched, rank)(x[:1], 0)
    _assert_restored(snap, unbatched)

    # a torch whose returned weights are not a view of the probabilities its output is computed from
    original = F.multi_head_attention_forward

    def copied_weights(*args, **kwargs):
        out, weights = original(*args, **kwargs)
        return out, None if weights is None else weights.clone()

    monkeypatch.setattr(F, "multi_head_attention_forward", copied_weights)
    with pytest.raises(ndcam.LayerError, match="did not return its per-head attention probabilities"):
        _legrad(model, rank)(x, 0)
    _assert_restored(before, model)


# -- refusals before any forward --------------------------------------------------------------------------------------
class OwnForward(nn.MultiheadAttention):
    def forward(self, query, key, value, **kw):
        return super().forward(query, key, value, **kw)


def _counting(model) -> list[int]:
    calls: list[int] = []
    model.register_forward_pre_hook(lambda m, a: calls.append(1))
    return calls


def test_attention_layers_ndcam_cannot_read_are_refused_before_the_forward():
    rank = 2
    x = _input(rank)
    model = _model("torchvision", rank)
    calls = _counting(model)
    with pytest.raises(ndcam.LayerError, match="is an nn.MultiheadAttention.*need grid="):
        ndcam.LeGrad(model, model.layers, reshape=ndcam.TokenGrid(GRIDS[rank], prefix=1))
    with pytest.raises(ndcam.LayerError, match="need grid="):
        ndcam.LeGrad(model, model.layers)
    with pytest.raises(ndcam.LayerError, match="is itself a block"):
        mhas = nn.Module()
        mhas.embed, mhas.attn = nn.Conv2d(1, 8, 2, stride=2), nn.ModuleList(nn.MultiheadAttention(8, 2) for _ in range(2))
        ndcam.LeGrad(mhas.double(), ["attn.0", "attn.1"], grid=GRIDS[rank])(x, 0)
    for block in model.encoder.layers:
        attn = block.self_attention
        block.self_attention = OwnForward(8, 2, batch_first=True).double()
        block.self_attention.load_state_dict(attn.state_dict())
    with pytest.raises(ndcam.LayerError, match="OwnForward.*own forward.*nn.Softmax"):
        _legrad(model, rank)
    model = _model("torchvision", rank)
    model.encoder.layers.encoder_layer_2.self_attention.forward = lambda *a, **k: None
    with pytest.raises(ndcam.LayerError, match="replaced on the instance"):
        _legrad(model, rank)
    model.encoder.layers.encoder_layer_2.self_attention = nn.MultiheadAttention(8, 2, add_bias_kv=True).double()
    with pytest.raises(ndcam.LayerError, match="add_bias_kv=True or add_zero_attn=True"):
        _legrad(model, rank)
    assert calls == []


@pytest.mark.parametrize("kind", ["encoder-seqfirst-mean", "encoder-mean-normfirst"])
def test_token_layout_when_the_batch_is_as_long_as_the_sequence(kind):
    """N == T: the batch size cannot tell (T, N, D) from (N, T, D); the layers' batch_first does."""
    rank = 2
    model, x = _model(kind, rank), _input(rank, n=1 + math.prod(GRIDS[rank]))
    targets = [i % 4 for i in range(len(x))]
    cam = _legrad(model, rank)
    assert cam.readout_for(x) == model.readout_text
    _close(cam(x, targets, upsample=False, normalize=False), _reference(model, x, targets, rank)[1])
