"""Token models through the ``reshape`` option: tokens -> grid of any rank (class token dropped)."""

from __future__ import annotations

import pytest
import torch
from einops import rearrange
from torch import nn

import ndcam


class TinyViT(nn.Module):
    """Patch embedding (ConvNd with stride = patch) -> class token + tokens -> transformer block -> class-token head."""

    def __init__(self, rank: int, grid: tuple[int, ...], patch: int = 2, dim: int = 8, classes: int = 3):
        super().__init__()
        conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[rank]
        self.embed = conv(1, dim, patch, stride=patch)
        self.cls = nn.Parameter(torch.randn(1, 1, dim))
        self.block = nn.TransformerEncoderLayer(dim, 2, 16, dropout=0.0, batch_first=True)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        t = self.embed(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls.expand(len(t), -1, -1), t], 1)
        t = self.norm(self.block(t))
        return self.head(t[:, 0])


@pytest.mark.parametrize("rank, grid", [(1, (12,)), (2, (4, 5)), (3, (3, 2, 4))])
def test_token_grid_reshape_matches_manual_computation(rank, grid):
    torch.manual_seed(0)
    model = TinyViT(rank, grid).double().eval()
    x = torch.randn(2, 1, *(2 * g for g in grid), dtype=torch.float64)
    names = " ".join(f"g{i}" for i in range(rank))
    sizes = {f"g{i}": g for i, g in enumerate(grid)}

    def reshape(t):
        return rearrange(t[:, 1:], f"n ({names}) d -> n d {names}", **sizes)

    maps = ndcam.GradCAM(model, "block", reshape=reshape)(x, [0, 2], upsample=False, normalize=False)
    assert maps.shape == (2, *grid)
    # manual: activations and gradients of the block output, reshaped the same way
    store = {}
    h = model.block.register_forward_hook(lambda m, i, o: store.setdefault("a", o))
    out = model(x)
    h.remove()
    (g,) = torch.autograd.grad(out.gather(1, torch.tensor([[0], [2]]))[:, 0].sum(), store["a"])
    A, G = reshape(store["a"].detach()), reshape(g)
    expected = torch.relu((G.flatten(2).mean(2)[:, :, None] * A.flatten(2)).sum(1)).reshape(2, *grid)
    torch.testing.assert_close(maps, expected.float(), atol=1e-6, rtol=1e-5)
    assert ndcam.GradCAM(model, "block", reshape=reshape)(x).shape == (2, *x.shape[2:])


def test_token_output_without_reshape_gets_a_hint():
    model = TinyViT(2, (4, 4)).eval()
    with pytest.raises(LookupError, match="reshape="):
        ndcam.GradCAM(model, "block")(torch.randn(1, 1, 8, 8))


KINDS = [(1, (12,)), (2, (4, 5)), (3, (3, 2, 4))]


@pytest.mark.parametrize("method", ndcam.methods())
@pytest.mark.parametrize("rank, grid", KINDS, ids=["audio-1d", "vit-2d", "volume-3d"])
def test_every_method_runs_on_token_models_of_every_rank(method, rank, grid):
    torch.manual_seed(0)
    model = TinyViT(rank, grid).double().eval()
    x = torch.randn(2, 1, *(2 * g for g in grid), dtype=torch.float64)
    if method == "cam":  # the head reads the class token, not a global average of the patch features: CAM refuses
        with pytest.raises(LookupError, match="global average"):
            ndcam.explain(model, x, method, layers="block", reshape=ndcam.TokenGrid(grid, prefix=1), targets=[0, 2])
        return
    exp = ndcam.explain(model, x, method, layers="block", reshape=ndcam.TokenGrid(grid, prefix=1), targets=[0, 2])
    assert exp.maps.shape == (2, *x.shape[2:]) and torch.isfinite(exp.maps).all()


def test_ablation_on_tokens_zeroes_patch_features_only():
    torch.manual_seed(0)
    grid = (4, 5)
    model = TinyViT(2, grid).double().eval()
    x = torch.randn(2, 1, 8, 10, dtype=torch.float64)
    got = ndcam.AblationCAM(model, "block", reshape=ndcam.TokenGrid(grid, prefix=1))(x, 1, upsample=False,
                                                                                       normalize=False)
    store = {}
    h = model.block.register_forward_hook(lambda m, i, o: store.setdefault("a", o.detach()))
    with torch.no_grad():
        y = model(x)[:, 1]
    h.remove()
    tokens = store["a"]
    A = tokens[:, 1:].transpose(1, 2).reshape(2, 8, *grid)
    W = torch.zeros(2, 8, dtype=torch.float64)
    for d in range(8):
        def ablate(m, i, o, d=d):
            o = o.clone()
            o[:, 1:, d] = 0  # class token untouched
            return o

        h = model.block.register_forward_hook(ablate)
        with torch.no_grad():
            W[:, d] = (y - model(x)[:, 1]) / y
        h.remove()
    expected = torch.relu((W[:, :, None, None] * A).sum(1))
    torch.testing.assert_close(got, expected.float(), atol=1e-6, rtol=1e-5)


def test_token_grid_inference_and_errors():
    t = torch.randn(2, 1 + 27, 4)
    assert ndcam.TokenGrid(rank=3, prefix=1)(t).shape == (2, 4, 3, 3, 3)
    assert ndcam.TokenGrid(channels_last=True)(torch.randn(2, 5, 6, 4)).shape == (2, 4, 5, 6)
    with pytest.raises(LookupError, match="do not fill the grid"):
        ndcam.TokenGrid((5, 5), prefix=1)(t)
    with pytest.raises(LookupError, match="not a perfect power"):
        ndcam.TokenGrid(rank=2)(torch.randn(2, 10, 4))
    with pytest.raises(ValueError, match="grid="):
        ndcam.TokenGrid()
