"""Small random-weight models shaped like the architecture families users explain, for every rank they have.

Each follows the layout of its torchvision/timm/MONAI namesake where it matters for choosing a layer (module names,
channels-last stages, permutes, squeeze-excitation, class tokens, the head), at a size that runs in milliseconds:

* :class:`ViT` (class token; ``prefix=2`` gives DeiT's class + distillation tokens) -- audio/ECG 1D, images 2D,
  volumes 3D;
* :class:`Swin` (channels-last ``(N, *grid, C)`` stages, patch merging, final norm, then a ``Permute`` module and
  average pooling as in torchvision);
* :class:`ConvNeXt` (depthwise 7-tap convolution, channels-last LayerNorm/MLP between two ``Permute`` modules,
  layer scale, per-block residual, ``features`` / ``avgpool`` / ``classifier`` as in torchvision);
* :class:`MobileNetV3` (hardswish, squeeze-excitation with 1x1 convolutions, a classifier with a hidden Linear);
* :class:`DenseNet` (dense blocks, ``features -> F.relu -> pool -> classifier``);
* :class:`SEResNet` (bottlenecks with a MONAI-style squeeze-excitation made of Linear layers, then the residual);
* video transformers (torchvision's ``swin3d_t`` and ``mvit_v2_s``): :class:`Swin` with ``video=True`` (patch merging
  of space only) and :class:`MViT` (class token, pooling attention whose convolutions run on the batch folded with
  the heads, blocks returning ``(tokens, grid)``).

``FAMILIES`` lists ``(id, factory, input shape, expected automatic layer, expert layer, expert reshape)``.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

import ndcam

CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
BN = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
GAP = {1: nn.AdaptiveAvgPool1d, 2: nn.AdaptiveAvgPool2d, 3: nn.AdaptiveAvgPool3d}
AVG = {1: nn.AvgPool1d, 2: nn.AvgPool2d, 3: nn.AvgPool3d}


class Permute(nn.Module):
    """``torch.permute`` as a module (torchvision's ``ops.misc.Permute``)."""

    def __init__(self, dims: list[int]):
        super().__init__()
        self.dims = dims

    def forward(self, x):
        return x.permute(*self.dims)


def to_last(rank: int) -> list[int]:
    return [0, *range(2, rank + 2), 1]


def to_first(rank: int) -> list[int]:
    return [0, rank + 1, *range(1, rank + 1)]


# -- token models ------------------------------------------------------------------------------------------------
class Block(nn.Module):
    """Pre-norm transformer block on tokens ``(N, T, D)`` (timm's ``Block``)."""

    def __init__(self, dim: int, heads: int = 2):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x):
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    """ViT (``prefix=1``) or DeiT (``prefix=2``: class and distillation tokens, two heads averaged) of any rank.
    ``pool="mean"``: the head reads the mean of the patch tokens instead of the class token (timm's
    ``global_pool="avg"`` with a class token)."""

    def __init__(self, rank: int, size: tuple[int, ...], patch: int = 4, dim: int = 16, depth: int = 2,
                 prefix: int = 1, in_channels: int = 1, classes: int = 3, pool: str = "token"):
        super().__init__()
        self.pool = pool
        self.grid = tuple(s // patch for s in size)
        self.patch_embed = CONV[rank](in_channels, dim, patch, stride=patch)
        self.prefix_tokens = nn.Parameter(torch.randn(1, prefix, dim) * 0.5)
        self.pos_embed = nn.Parameter(torch.randn(1, prefix + math.prod(self.grid), dim) * 0.5)
        self.blocks = nn.Sequential(*[Block(dim) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)
        self.head_dist = nn.Linear(dim, classes) if prefix == 2 else None

    def forward(self, x):
        t = self.patch_embed(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.prefix_tokens.expand(len(t), -1, -1), t], 1) + self.pos_embed
        t = self.norm(self.blocks(t))
        if self.pool == "mean":
            return self.head(t[:, self.prefix_tokens.shape[1]:].mean(1))
        if self.head_dist is None:
            return self.head(t[:, 0])
        return (self.head(t[:, 0]) + self.head_dist(t[:, 1])) / 2


class SwinBlock(nn.Module):
    """Channels-last block ``(N, *grid, C)``: attention over all positions (a window as large as the grid) + MLP."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, 2, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x):
        h = self.norm1(x).flatten(1, -2)
        x = x + self.attn(h, h, h, need_weights=False)[0].reshape(x.shape)
        return x + self.mlp(self.norm2(x))


class PatchMerging(nn.Module):
    """Swin's patch merging for any rank: ``2^rank`` neighbours concatenated, LayerNorm, Linear to ``2C``. ``video``:
    only the last two axes are merged (``2 x 2`` neighbours, time kept), as Video Swin / torchvision's ``swin3d``."""

    def __init__(self, rank: int, dim: int, video: bool = False):
        super().__init__()
        self.rank = rank
        self.factors = [1] + [2] * (rank - 1) if video else [2] * rank
        k = math.prod(self.factors)
        self.norm = nn.LayerNorm(k * dim)
        self.reduction = nn.Linear(k * dim, 2 * dim, bias=False)

    def forward(self, x):
        n, *grid, c = x.shape
        split = [v for g, f in zip(grid, self.factors) for v in (g // f, f)]
        x = x.reshape(n, *split, c)
        order = [0, *range(1, 2 * self.rank, 2), *range(2, 2 * self.rank + 1, 2), 2 * self.rank + 1]
        x = x.permute(*order).reshape(n, *(g // f for g, f in zip(grid, self.factors)), -1)
        return self.reduction(self.norm(x))


class Swin(nn.Module):
    """Swin of any rank, torchvision layout: ``features`` (patch embedding conv + Permute + LayerNorm, stages and
    patch merging, all channels-last), ``norm``, ``permute`` to channel-first, ``avgpool``, ``flatten``, ``head``.
    ``video``: the patch merging keeps the first (time) axis (torchvision's ``swin3d_t``)."""

    def __init__(self, rank: int, patch: int = 4, dim: int = 8, stages: int = 2, in_channels: int = 1,
                 classes: int = 3, video: bool = False):
        super().__init__()
        layers: list[nn.Module] = [nn.Sequential(CONV[rank](in_channels, dim, patch, stride=patch),
                                                 Permute(to_last(rank)), nn.LayerNorm(dim))]
        for s in range(stages):
            layers.append(nn.Sequential(SwinBlock(dim)))
            if s < stages - 1:
                layers.append(PatchMerging(rank, dim, video))
                dim *= 2
        self.features = nn.Sequential(*layers)
        self.norm = nn.LayerNorm(dim)
        self.permute = Permute(to_first(rank))
        self.avgpool = GAP[rank](1)
        self.flatten = nn.Flatten(1)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        return self.head(self.flatten(self.avgpool(self.permute(self.norm(self.features(x))))))


# -- MViT (pooling attention) ------------------------------------------------------------------------------------
def _pool_tokens(t: torch.Tensor, grid: tuple[int, ...], pool) -> tuple[torch.Tensor, tuple[int, ...]]:
    """Tokens ``(B, 1 + prod(grid), D)`` (a class token first): the patch tokens laid on ``grid`` as ``(B, D, *grid)``,
    pooled by ``pool``, flattened back behind the class token."""
    b, _, d = t.shape
    rest = pool(t[:, 1:].transpose(1, 2).reshape(b, d, *grid))
    return torch.cat([t[:, :1], rest.flatten(2).transpose(1, 2)], 1), tuple(rest.shape[2:])


class PoolingAttention(nn.Module):
    """MViT's pooling attention: queries, keys and values pooled by depthwise convolutions run on the batch folded
    with the heads, ``(N * heads, D / heads, *grid)`` (so their outputs are per-head internals, not feature maps);
    returns ``(tokens, grid)`` as torchvision's ``MultiscaleAttention``."""

    def __init__(self, rank: int, dim: int, heads: int, stride: tuple[int, ...]):
        super().__init__()
        self.heads, hd = heads, dim // heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.pool_q, self.pool_k, self.pool_v = (CONV[rank](hd, hd, 3, stride=s, padding=1, groups=hd)
                                                 for s in (stride, 1, 1))
        self.proj = nn.Linear(dim, dim)

    def forward(self, x, grid):
        n, t, c = x.shape
        qkv = self.qkv(x).reshape(n, t, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        pooled, grids = [], []
        for conv, u in zip((self.pool_q, self.pool_k, self.pool_v), qkv):
            u, g = _pool_tokens(u.flatten(0, 1), grid, conv)
            pooled.append(u.unflatten(0, (n, self.heads)))
            grids.append(g)
        out = F.scaled_dot_product_attention(*pooled).transpose(1, 2).flatten(2)
        return self.proj(out), grids[0]  # the queries' grid


class MultiscaleBlock(nn.Module):
    def __init__(self, rank: int, dim: int, heads: int, stride: tuple[int, ...]):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = PoolingAttention(rank, dim, heads, stride)
        self.stride = stride
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x, grid):
        h, new = self.attn(self.norm1(x), grid)
        if new != grid:  # the skip connection pooled like the queries
            x = _pool_tokens(x, grid, lambda m: (F.max_pool3d if m.ndim == 5 else F.max_pool2d)(m, self.stride))[0]
        x = x + h
        return x + self.mlp(self.norm2(x)), new


class MViT(nn.Module):
    """MViT (torchvision's video ``MViT``, any rank 2 or 3): patch embedding, class token, blocks taking and returning
    ``(tokens, grid)`` (so the blocks' outputs are tuples), pooling attention that halves the space (not the time,
    in 3D) in ``pools`` blocks, final norm, head on the class token."""

    def __init__(self, rank: int, size: tuple[int, ...], patch: int = 4, dim: int = 8, pools: int = 3,
                 heads: int = 2, in_channels: int = 1, classes: int = 3):
        super().__init__()
        self.grid = tuple(s // patch for s in size)
        self.patch_embed = CONV[rank](in_channels, dim, patch, stride=patch)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.5)
        self.pos_embed = nn.Parameter(torch.randn(1, 1 + math.prod(self.grid), dim) * 0.5)
        half = (1, 2, 2) if rank == 3 else (2,) * rank
        strides = [(1,) * rank] + [half, (1,) * rank] * pools
        self.blocks = nn.ModuleList([MultiscaleBlock(rank, dim, heads, s) for s in strides])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        t = self.patch_embed(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls_token.expand(len(t), -1, -1), t], 1) + self.pos_embed
        grid = self.grid
        for block in self.blocks:
            t, grid = block(t, grid)
        return self.head(self.norm(t)[:, 0])


# -- ConvNeXt ----------------------------------------------------------------------------------------------------
class LayerNormCF(nn.LayerNorm):
    """LayerNorm over the channels of a channel-first map (torchvision's ``LayerNorm2d``, any rank)."""

    def forward(self, x):
        return super().forward(x.movedim(1, -1)).movedim(-1, 1)


class CNBlock(nn.Module):
    def __init__(self, rank: int, dim: int):
        super().__init__()
        self.block = nn.Sequential(
            CONV[rank](dim, dim, 7, padding=3, groups=dim), Permute(to_last(rank)), nn.LayerNorm(dim),
            nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim), Permute(to_first(rank)),
        )
        self.layer_scale = nn.Parameter(torch.full((dim,) + (1,) * rank, 0.5))

    def forward(self, x):
        return x + self.layer_scale * self.block(x)


class ConvNeXt(nn.Module):
    """ConvNeXt of any rank, torchvision layout (``features`` = stem, stages and downsamplings)."""

    def __init__(self, rank: int, dims: tuple[int, ...] = (8, 16), in_channels: int = 1, classes: int = 3):
        super().__init__()
        layers: list[nn.Module] = [nn.Sequential(CONV[rank](in_channels, dims[0], 4, stride=4), LayerNormCF(dims[0]))]
        for i, d in enumerate(dims):
            layers.append(nn.Sequential(CNBlock(rank, d), CNBlock(rank, d)))
            if i < len(dims) - 1:
                layers.append(nn.Sequential(LayerNormCF(d), CONV[rank](d, dims[i + 1], 2, stride=2)))
        self.features = nn.Sequential(*layers)
        self.avgpool = GAP[rank](1)
        self.classifier = nn.Sequential(LayerNormCF(dims[-1]), nn.Flatten(1), nn.Linear(dims[-1], classes))

    def forward(self, x):
        return self.classifier(self.avgpool(self.features(x)))


# -- MobileNetV3 -------------------------------------------------------------------------------------------------
class SqueezeExcitation(nn.Module):
    def __init__(self, rank: int, c: int, r: int = 4):
        super().__init__()
        self.avgpool = GAP[rank](1)
        self.fc1 = CONV[rank](c, max(1, c // r), 1)
        self.fc2 = CONV[rank](max(1, c // r), c, 1)

    def forward(self, x):
        return x * F.hardsigmoid(self.fc2(F.relu(self.fc1(self.avgpool(x)))))


def conv_bn_act(rank: int, cin: int, cout: int, k: int, stride: int = 1, groups: int = 1,
                act: type[nn.Module] | None = nn.Hardswish) -> nn.Sequential:
    layers = [CONV[rank](cin, cout, k, stride, k // 2, groups=groups, bias=False), BN[rank](cout)]
    return nn.Sequential(*layers, *([act()] if act is not None else []))


class InvertedResidual(nn.Module):
    def __init__(self, rank: int, cin: int, exp: int, cout: int, stride: int):
        super().__init__()
        self.use_res = stride == 1 and cin == cout
        self.block = nn.Sequential(conv_bn_act(rank, cin, exp, 1), conv_bn_act(rank, exp, exp, 3, stride, exp),
                                   SqueezeExcitation(rank, exp), conv_bn_act(rank, exp, cout, 1, act=None))

    def forward(self, x):
        y = self.block(x)
        return x + y if self.use_res else y


class MobileNetV3(nn.Module):
    """MobileNetV3 of any rank, torchvision layout: ``features``, ``avgpool``, ``classifier`` =
    Linear -> Hardswish -> Dropout -> Linear (so the Linear fed by the pooled features is a hidden layer)."""

    def __init__(self, rank: int, in_channels: int = 1, classes: int = 3, last: int = 24, hidden: int = 32):
        super().__init__()
        self.features = nn.Sequential(
            conv_bn_act(rank, in_channels, 8, 3, 2), InvertedResidual(rank, 8, 16, 8, 1),
            InvertedResidual(rank, 8, 24, 12, 2), conv_bn_act(rank, 12, last, 1),
        )
        self.avgpool = GAP[rank](1)
        self.classifier = nn.Sequential(nn.Linear(last, hidden), nn.Hardswish(), nn.Dropout(0.2),
                                        nn.Linear(hidden, classes))

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


# -- DenseNet ----------------------------------------------------------------------------------------------------
class DenseLayer(nn.Module):
    def __init__(self, rank: int, cin: int, growth: int):
        super().__init__()
        self.norm1, self.relu1 = BN[rank](cin), nn.ReLU(inplace=True)
        self.conv1 = CONV[rank](cin, 2 * growth, 1, bias=False)
        self.norm2, self.relu2 = BN[rank](2 * growth), nn.ReLU(inplace=True)
        self.conv2 = CONV[rank](2 * growth, growth, 3, padding=1, bias=False)

    def forward(self, x):
        return self.conv2(self.relu2(self.norm2(self.conv1(self.relu1(self.norm1(x))))))


class DenseBlock(nn.ModuleDict):
    def __init__(self, rank: int, cin: int, n: int, growth: int):
        super().__init__({f"denselayer{i + 1}": DenseLayer(rank, cin + i * growth, growth) for i in range(n)})

    def forward(self, x):
        feats = [x]
        for layer in self.values():
            feats.append(layer(torch.cat(feats, 1)))
        return torch.cat(feats, 1)


class DenseNet(nn.Module):
    """DenseNet of any rank, torchvision layout: ``features`` ends with ``norm5``; the forward applies ``F.relu``
    (in place), pools and classifies -- the features before that ReLU are not what the classifier averages."""

    def __init__(self, rank: int, in_channels: int = 1, classes: int = 3, growth: int = 4):
        super().__init__()
        c = 8
        f: dict[str, nn.Module] = {
            "conv0": CONV[rank](in_channels, c, 3, padding=1, bias=False), "norm0": BN[rank](c),
            "relu0": nn.ReLU(inplace=True), "pool0": AVG[rank](2),
            "denseblock1": DenseBlock(rank, c, 2, growth),
        }
        c += 2 * growth
        f["transition1"] = nn.Sequential(BN[rank](c), nn.ReLU(inplace=True), CONV[rank](c, c // 2, 1, bias=False),
                                         AVG[rank](2))
        c //= 2
        f["denseblock2"] = DenseBlock(rank, c, 2, growth)
        c += 2 * growth
        f["norm5"] = BN[rank](c)
        self.features = nn.Sequential(OrderedDict(f))
        self.classifier = nn.Linear(c, classes)
        self.rank = rank

    def forward(self, x):
        out = F.relu(self.features(x), inplace=True)
        return self.classifier(torch.flatten(GAP[self.rank](1)(out), 1))


# -- SE-ResNet (MONAI-style squeeze-excitation with Linear layers) ------------------------------------------------
class ChannelSE(nn.Module):
    def __init__(self, rank: int, c: int, r: int = 4):
        super().__init__()
        self.avg_pool = GAP[rank](1)
        self.fc = nn.Sequential(nn.Linear(c, c // r), nn.ReLU(inplace=True), nn.Linear(c // r, c), nn.Sigmoid())

    def forward(self, x):
        y = self.fc(self.avg_pool(x).flatten(1))
        return x * y.reshape(y.shape + (1,) * (x.ndim - 2))


class SEBottleneck(nn.Module):
    def __init__(self, rank: int, cin: int, width: int, stride: int):
        super().__init__()
        cout = 4 * width
        self.conv1 = conv_bn_act(rank, cin, width, 1, act=nn.ReLU)
        self.conv2 = conv_bn_act(rank, width, width, 3, stride, act=nn.ReLU)
        self.conv3 = conv_bn_act(rank, width, cout, 1, act=None)
        self.se_layer = ChannelSE(rank, cout)
        self.downsample = None if stride == 1 and cin == cout else conv_bn_act(rank, cin, cout, 1, stride, act=None)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x):
        out = self.se_layer(self.conv3(self.conv2(self.conv1(x))))
        return self.act(out + (x if self.downsample is None else self.downsample(x)))


class SEResNet(nn.Module):
    """SE-ResNet of any rank in MONAI's layout: ``layer0``, ``layer1..4``, ``adaptive_avg_pool``, ``last_linear``."""

    def __init__(self, rank: int, in_channels: int = 1, classes: int = 3, widths: tuple[int, ...] = (2, 4, 4, 8)):
        super().__init__()
        self.layer0 = conv_bn_act(rank, in_channels, 8, 3, act=nn.ReLU)
        cin = 8
        for i, w in enumerate(widths):
            setattr(self, f"layer{i + 1}", nn.Sequential(SEBottleneck(rank, cin, w, 1 if i == 0 else 2),
                                                         SEBottleneck(rank, 4 * w, w, 1)))
            cin = 4 * w
        self.adaptive_avg_pool = GAP[rank](1)
        self.last_linear = nn.Linear(cin, classes)

    def forward(self, x):
        for i in range(5):
            x = getattr(self, f"layer{i}")(x)
        return self.last_linear(self.adaptive_avg_pool(x).flatten(1))


SIZE = {1: (64,), 2: (32, 32), 3: (16, 16, 16)}


def _grid(rank: int, patch: int, merges: int = 0) -> tuple[int, ...]:
    return tuple(s // patch // 2**merges for s in SIZE[rank])


def families() -> list[tuple[str, object, tuple[int, ...], str, str, object]]:
    """``(id, factory, input shape, expected automatic layer, expert layer, expert reshape or None)`` per family and
    rank (1D audio/ECG, 2D images, 3D volumes)."""
    out = []
    for r in (1, 2, 3):
        shape = (2, 1, *SIZE[r])
        out += [
            # the final norm's patch tokens never reach a class-token head: the norm before the last attention
            (f"vit-{r}d", lambda r=r: ViT(r, SIZE[r]), shape, "blocks.1.norm1", "blocks.1.norm1",
             ndcam.TokenGrid(_grid(r, 4), prefix=1)),
            (f"deit-{r}d", lambda r=r: ViT(r, SIZE[r], prefix=2), shape, "blocks.1.norm1", "blocks.1.norm1",
             ndcam.TokenGrid(_grid(r, 4), prefix=2)),
            (f"swin-{r}d", lambda r=r: Swin(r), shape, "norm", "norm", ndcam.TokenGrid(_grid(r, 4, 1), channels_last=True)),
            (f"convnext-{r}d", lambda r=r: ConvNeXt(r), shape, "features", "features.3", None),
            (f"mobilenetv3-{r}d", lambda r=r: MobileNetV3(r), shape, "features", "features.3", None),
            (f"densenet-{r}d", lambda r=r: DenseNet(r), shape, "features", "features.norm5", None),
            (f"seresnet-{r}d", lambda r=r: SEResNet(r), shape, "layer4", "layer4", None),
        ]
    # video transformers merge or pool space and keep time (torchvision's swin3d_t, mvit_v2_s)
    grid = _grid(3, 4)
    out.append(("videoswin-3d", lambda: Swin(3, video=True), (2, 1, *SIZE[3]), "norm", "norm",
                ndcam.TokenGrid((grid[0], grid[1] // 2, grid[2] // 2), channels_last=True)))
    # 16x64x64 -> a (4, 16, 16) patch grid pooled three times to (4, 2, 2): 16 tokens, which the all-axes grid
    # (1, 4, 4) two merges away fits as well; the last block's norm1 feeds the last attention
    out.append(("mvit-3d", lambda: MViT(3, (16, 64, 64)), (2, 1, 16, 64, 64), "blocks.6.norm1", "blocks.6.norm1",
                ndcam.TokenGrid((4, 2, 2), prefix=1)))
    out.append(("mvit-2d", lambda: MViT(2, (32, 32), pools=2), (2, 1, 32, 32), "blocks.4.norm1", "blocks.4.norm1",
                ndcam.TokenGrid((2, 2), prefix=1)))
    return out
