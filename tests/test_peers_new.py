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
* LeGrad (2D only: torch-cam lays keys on a 2D grid) on a torchvision-style ViT whose ``self_attention`` is an
  ``nn.MultiheadAttention`` computing its probabilities with an ``nn.Softmax`` module (which ndcam captures; torch-cam
  replays the attention from the returned per-head weights): torch-cam's default read-out (mean of all tokens, then
  ``encoder.ln`` and ``heads``) == ``LeGrad(readout=<that callable>)``, and torch-cam given the model's own class-token
  read-out as ``score_projection`` == ``LeGrad(readout="auto")``; the same on a stand-in of torchvision's
  VisionTransformer with torch's own ``nn.MultiheadAttention`` (ndcam differentiates the probabilities torch's forward
  computes the output from; torch-cam recomputes the attention output from the returned weights).
Not compared (documented differences): Smooth Grad-CAM++ (torch-cam sums ``A * D3`` over positions and uses the
last noisy gradient), LayerCAM fusion (torch-cam scales every layer, the deepest too). pytorch-grad-cam's versions of
the issue-10 methods (FEM, KPCA-CAM, ShapleyCAM, Finer-CAM, RandomCAM, DFF) are compared in tests/test_peers_pgc.py;
``NDCAM_PEERS`` may name several folders, separated by ``os.pathsep``.
"""

from __future__ import annotations

import math
import sys
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from torch import nn

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


class _MHA(nn.MultiheadAttention):
    """Batch-first multi-head self-attention with the probabilities as the output of ``self.softmax``."""

    def __init__(self, dim: int, heads: int):
        super().__init__(dim, heads, batch_first=True)
        self.softmax = nn.Softmax(dim=-1)

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
                average_attn_weights=True, is_causal=False):
        n, t, d = query.shape
        h = self.num_heads
        q, k, v = (u.reshape(n, t, h, d // h).transpose(1, 2)
                   for u in F.linear(query, self.in_proj_weight, self.in_proj_bias).chunk(3, -1))
        p = self.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // h))
        out = self.out_proj((p @ v).transpose(1, 2).reshape(n, t, d))
        return out, ((p.mean(1) if average_attn_weights else p) if need_weights else None)


class _EncoderBlock(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.ln_1, self.self_attention = nn.LayerNorm(dim), _MHA(dim, heads)
        self.ln_2, self.mlp = nn.LayerNorm(dim), nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, inp):
        x = self.ln_1(inp)
        x, _ = self.self_attention(x, x, x, need_weights=False)
        x = x + inp
        return x + self.mlp(self.ln_2(x))


class _TorchvisionLikeViT(nn.Module):
    def __init__(self, dim: int = 8, heads: int = 2, depth: int = 3, classes: int = 4):
        super().__init__()
        self.conv_proj = nn.Conv2d(1, dim, 2, stride=2)
        self.class_token = nn.Parameter(torch.randn(1, 1, dim))
        self.encoder = nn.Module()
        self.encoder.layers = nn.Sequential(*(_EncoderBlock(dim, heads) for _ in range(depth)))
        self.encoder.ln = nn.LayerNorm(dim)
        self.heads = nn.Sequential(OrderedDict(head=nn.Linear(dim, classes)))
        with torch.no_grad():
            for m in self.modules():
                if isinstance(m, nn.LayerNorm):
                    m.weight.normal_(1.0, 0.3)
                    m.bias.normal_(0.0, 0.3)

    def forward(self, x):
        t = self.conv_proj(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.class_token.expand(len(t), -1, -1), t], 1)
        return self.heads(self.encoder.ln(self.encoder.layers(t))[:, 0])


def _legrad_agrees_with_torchcam(tm, model, layers, blocks):
    """ndcam's LeGrad at ``layers`` against torch-cam's at ``blocks``, for both ways of reading a score out of a block:
    torch-cam's default (the mean of all tokens, class token included, then the final norm and head) given to ndcam as
    a callable, and the model's own read-out (class token) that ndcam finds, given to torch-cam as its score
    projection."""
    x = torch.randn(2, 1, 6, 8, dtype=torch.float64)
    grid, targets = (3, 4), [3, 1]
    theirs = _theirs(tm.LeGrad(model, blocks, prefix_tokens=1, grid_shape=grid), model, x, targets)
    mean = ndcam.LeGrad(model, layers, grid=grid, prefix=1,
                        readout=lambda z: model.heads(model.encoder.ln(z.mean(1))))
    ours = mean(x, targets, upsample=False, normalize=False)
    assert float(theirs.abs().max()) > 0
    torch.testing.assert_close(ours.double(), theirs, atol=1e-6 * float(theirs.abs().max()), rtol=1e-5)
    auto = ndcam.LeGrad(model, layers, grid=grid, prefix=1)
    assert auto.readout_for(x) == "heads(encoder.ln(tokens)[:, 0])"
    theirs = _theirs(tm.LeGrad(model, blocks, prefix_tokens=1, grid_shape=grid,
                               score_projection=lambda t: model.heads(model.encoder.ln(t)[:, 0])), model, x, targets)
    ours = auto(x, targets, upsample=False, normalize=False)
    torch.testing.assert_close(ours.double(), theirs, atol=1e-6 * float(theirs.abs().max()), rtol=1e-5)
    assert not torch.allclose(ours, mean(x, targets, upsample=False, normalize=False))


def test_legrad_matches_torchcam(tm):
    torch.manual_seed(0)
    model = _TorchvisionLikeViT().double().eval()
    blocks = [f"encoder.layers.{i}" for i in range(3)]
    _legrad_agrees_with_torchcam(tm, model, [f"{b}.self_attention.softmax" for b in blocks], blocks)


def test_legrad_on_torch_multihead_attention_matches_torchcam(tm):
    from .test_legrad_mha import VisionTransformer

    torch.manual_seed(0)
    model = VisionTransformer(2).double().eval()
    _legrad_agrees_with_torchcam(tm, model, model.layers, [f"encoder.layers.encoder_layer_{i}" for i in range(3)])
