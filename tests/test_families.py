"""The automatic layer on the architecture families users explain most, for every rank each family has.

For each family (small random-weight models in :mod:`tests.families`, MONAI's SEResNet50 and ViT when MONAI is
installed) the automatic choice names the layer an expert would pass, with the right ``TokenGrid`` for token
models, and its Grad-CAM maps equal the expert call's.
"""

from __future__ import annotations

import inspect

import pytest
import torch
from torch import nn

import ndcam
from ndcam.layers import auto_choice, auto_layer
from ndcam.methods.base import BaseCAM

from .families import CONV, SIZE, ConvNeXt, DenseNet, MobileNetV3, MViT, SEResNet, Swin, ViT, families

FAMILIES = families()


def _corr(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.flatten().double(), b.flatten().double()
    a, b = a - a.mean(), b - b.mean()
    return float((a @ b) / (a.norm() * b.norm()).clamp_min(1e-30))


@pytest.mark.parametrize("fid, factory, shape, expected, expert, expert_reshape", FAMILIES,
                         ids=[f[0] for f in FAMILIES])
def test_automatic_layer_is_the_experts(fid, factory, shape, expected, expert, expert_reshape):
    torch.manual_seed(0)
    model = factory().eval()
    x = torch.randn(*shape)
    (name, module), reshape = auto_choice(model, x)[0][0], auto_choice(model, x)[1]
    assert name == expected and module is model.get_submodule(expected)
    if expert_reshape is None:
        assert reshape is None
    else:
        assert isinstance(reshape, ndcam.TokenGrid)
        assert (reshape.grid, reshape.prefix, reshape.channels_last) == (
            expert_reshape.grid, expert_reshape.prefix, expert_reshape.channels_last)
    every_class = torch.tensor([[0, 1, 2]] * shape[0])
    auto = ndcam.GradCAM(model, name, reshape=reshape)(x, every_class).flatten(0, 1)
    ref = ndcam.GradCAM(model, expert, reshape=expert_reshape)(x, every_class).flatten(0, 1)
    assert auto.shape == (3 * shape[0], *shape[2:])
    informative = [i for i in range(len(ref)) if ref[i].std() > 0]
    assert len(informative) >= 2, "the expert's maps are constant: the comparison would be empty"
    for i in informative:
        assert _corr(auto[i], ref[i]) > 0.99
    torch.testing.assert_close(auto, ref)


_BASE_USES_AUTO_CHOICE = "auto_choice" in inspect.getsource(BaseCAM)


@pytest.mark.skipif(not _BASE_USES_AUTO_CHOICE, reason="BaseCAM does not call layers.auto_choice yet (integration)")
@pytest.mark.parametrize("fid, factory, shape, expected, expert, expert_reshape", FAMILIES,
                         ids=[f[0] for f in FAMILIES])
def test_layers_none_gives_the_experts_map(fid, factory, shape, expected, expert, expert_reshape):
    torch.manual_seed(0)
    model = factory().eval()
    x = torch.randn(*shape)
    torch.testing.assert_close(ndcam.GradCAM(model)(x, 1), ndcam.GradCAM(model, expert, reshape=expert_reshape)(x, 1))


@pytest.mark.parametrize("rank", [1, 2, 3])
def test_swin_with_a_user_reshape_gets_a_layer_the_reshape_fits(rank):
    torch.manual_seed(0)
    model = Swin(rank).eval()
    x = torch.randn(1, 1, *(32,) * rank if rank < 3 else (16,) * 3)
    layers, reshape = auto_choice(model, x, reshape=ndcam.TokenGrid(channels_last=True))
    assert layers[0][0] == "norm" and reshape.channels_last
    # a token reshape on channels-last maps, or a channels-last permutation on a channel-first map, is refused
    with pytest.raises(LookupError, match=r"does not fit.*channels_last=True"):
        auto_choice(model, x, reshape=ndcam.TokenGrid(rank=rank, prefix=1))
    with pytest.raises(LookupError, match=r"does not fit the automatic layer 'features'.*\(no reshape\)"):
        auto_choice(ConvNeXt(rank).eval(), x, reshape=ndcam.TokenGrid(channels_last=True))


def test_token_model_through_auto_layer_names_the_reshape():
    model = ViT(2, (16, 16)).eval()
    with pytest.raises(LookupError, match=r"layers='blocks.1.norm1', reshape=ndcam.TokenGrid\(\(4, 4\), prefix=1\)"):
        auto_layer(model, torch.randn(1, 1, 16, 16))


def test_a_class_token_model_whose_last_attention_has_no_module_input_is_refused():
    """One nn.TransformerEncoderLayer: nothing between the patch embedding and the head gives patch-token gradient."""
    from .test_tokens import TinyViT

    with pytest.raises(LookupError, match=r"no module output after its patch embedding carries gradient.*TokenGrid"):
        auto_choice(TinyViT(2, (4, 4)).eval(), torch.randn(1, 1, 8, 8))


@pytest.mark.parametrize("pool, trained", [("token", "blocks.1.norm1"), ("mean", "norm")])
def test_a_class_token_model_with_a_zero_head_gets_the_class_token_readers_layer_until_trained(pool, trained):
    """torchvision's VisionTransformer initialises its head to zero: before training its output depends on no token,
    so the gradient probe cannot see which tokens the head reads. The choice is then the layer a class-token head
    needs (the norm feeding the last attention), and it is not cached: with weights, the probe runs again and a head
    on the mean of the patch tokens gets the final norm. (The final norm is a LayerNorm of unit weight, whose outputs'
    sum and squared norm are constant: a probe reading the class token along those sees rounding noise only.)"""
    torch.manual_seed(0)
    model = ViT(2, SIZE[2], pool=pool).eval()
    nn.init.zeros_(model.head.weight)
    nn.init.zeros_(model.head.bias)
    x = torch.randn(2, 1, *SIZE[2])
    layers, reshape = auto_choice(model, x)
    assert layers[0][0] == "blocks.1.norm1"
    assert (reshape.grid, reshape.prefix) == ((8, 8), 1)
    with pytest.warns(ndcam.ConstantMapWarning):  # no gradient anywhere: the maps are empty, and said to be
        maps = ndcam.GradCAM(model)(x, 1)
    assert maps.shape == (2, *SIZE[2]) and not maps.any()
    nn.init.normal_(model.head.weight)  # "trained"
    layers, reshape = auto_choice(model, x)
    assert layers[0][0] == trained and reshape.prefix == 1
    assert ndcam.GradCAM(model)(x, 1).amax() == 1


def test_convolutions_on_the_batch_folded_with_attention_heads_are_not_feature_maps():
    """MViT pools queries, keys and values with convolutions on (N * heads, D / heads, *grid): their output has the
    input's rank but not its batch, so they are not usable layers (nor the automatic choice's anchor)."""
    torch.manual_seed(0)
    model = MViT(3, (16, 64, 64)).eval()
    x = torch.randn(3, 1, 16, 64, 64)
    infos = {i.name: i for i in ndcam.list_layers(model, x)}
    assert infos["patch_embed"].spatial
    for block in range(7):
        for conv in ("pool_q", "pool_k", "pool_v"):
            info = infos[f"blocks.{block}.attn.{conv}"]
            assert info.shape[0] == 2 and info.type == "Conv3d" and not info.spatial
    with pytest.raises(LookupError, match=r"not \(N=3, C, D H W\)"):
        ndcam.GradCAM(model, "blocks.6.attn.pool_q")(x)


class LinearPatchTransformer(nn.Module):
    """An ECG transformer whose patch embedding is a Linear on reshaped patches: no convolution to anchor on."""

    def __init__(self, patch: int = 8, dim: int = 16):
        super().__init__()
        self.patch = patch
        self.embed = nn.Linear(patch, dim)
        self.cls = nn.Parameter(torch.randn(1, 1, dim))
        self.block = nn.TransformerEncoderLayer(dim, 2, 32, dropout=0.0, batch_first=True)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 2)

    def forward(self, x):
        t = self.embed(x.reshape(len(x), -1, self.patch))
        t = torch.cat([self.cls.expand(len(t), -1, -1), t], 1)
        return self.head(self.norm(self.block(t))[:, 0])


def test_token_model_without_convolution_is_refused_with_the_exact_options():
    model = LinearPatchTransformer().eval()
    x = torch.randn(1, 1, 96)
    with pytest.raises(LookupError, match=r"layers='norm', reshape=ndcam.TokenGrid\(\(12,\), prefix=1\)") as err:
        auto_choice(model, x)
    # and those options work
    assert "patch size 8" in str(err.value)
    maps = ndcam.GradCAM(model, "norm", reshape=ndcam.TokenGrid((12,), prefix=1))(x)
    assert maps.shape == (1, 96)


def test_torchscript_gets_one_clear_error():
    net = nn.Sequential(nn.Conv1d(1, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(4, 2)).eval()
    x = torch.randn(1, 1, 16)
    traced = torch.jit.trace(net, x)
    for call in (lambda: ndcam.list_layers(traced, x), lambda: auto_choice(traced, x),
                 lambda: ndcam.GradCAM(traced, "1")):
        with pytest.raises(TypeError, match="TorchScript modules cannot take forward hooks.*original Python"):
            call()


# -- MONAI's own networks (no torchvision needed) -----------------------------------------------------------------
monai_nets = pytest.importorskip("monai.networks.nets", reason="MONAI is not installed")


@pytest.mark.parametrize("rank, size", [(1, (128,)), (2, (64, 64)), (3, (48, 48, 48))])
def test_monai_seresnet50_gets_layer4(rank, size):
    torch.manual_seed(0)
    model = monai_nets.SEResNet50(spatial_dims=rank, in_channels=1, num_classes=3).eval()
    x = torch.randn(1, 1, *size)
    (name, _), reshape = auto_choice(model, x)[0][0], auto_choice(model, x)[1]
    assert name == "layer4" and reshape is None
    # layer4 is the last map before pooling: its map is the one Grad-CAM reads there (and not layer4.2.conv3's)
    maps = ndcam.GradCAM(model, name)(x, 1)
    assert maps.shape == (1, *size) and torch.isfinite(maps).all()


@pytest.mark.parametrize("rank, size, patch", [(1, (64,), 8), (2, (32, 32), 8), (3, (16, 16, 16), 8)])
def test_monai_vit_gets_its_final_norm(rank, size, patch):
    torch.manual_seed(0)
    model = monai_nets.ViT(in_channels=1, img_size=size, patch_size=(patch,) * rank, hidden_size=32, mlp_dim=64,
                           num_layers=2, num_heads=2, classification=True, num_classes=3, spatial_dims=rank).eval()
    x = torch.randn(2, 1, *size)
    layers, reshape = auto_choice(model, x)
    grid = tuple(s // patch for s in size)
    # its head reads the class token: the final norm's patch tokens get no gradient, the last block's first norm does
    assert layers[0][0] == "blocks.1.norm1" and (reshape.grid, reshape.prefix) == (grid, 1)

    def logits(out):  # MONAI's ViT returns (logits, hidden states)
        return out[0][:, 1]

    auto = ndcam.GradCAM(model, "blocks.1.norm1", reshape=reshape)(x, logits)
    ref = ndcam.GradCAM(model, "blocks.1.norm1", reshape=ndcam.TokenGrid(grid, prefix=1))(x, logits)
    torch.testing.assert_close(auto, ref)
    assert all(m.std() > 0 for m in auto)
    final = ndcam.GradCAM(model, "norm", reshape=reshape)(x, logits, normalize=False)
    assert float(final.abs().max()) == 0  # what the final norm would have given


# -- CAM checks that the layer feeds global pooling and ONE class layer -------------------------------------------
@pytest.mark.parametrize("rank", [1, 2, 3])
def test_cam_refuses_a_hidden_linear_as_class_weights(rank):
    """MobileNetV3: the pooled features feed Linear -> Hardswish -> Dropout -> Linear; the first has no class rows."""
    torch.manual_seed(0)
    model = MobileNetV3(rank).eval()
    x = torch.randn(2, 1, *SIZE[rank])
    with pytest.raises(LookupError, match=r"'classifier.0' \(Linear\) receives the global average.*not the model's"):
        ndcam.CAM(model)(x, 1)
    with pytest.raises(LookupError, match="channels"):  # the real class layer has 32 inputs, not 24
        ndcam.CAM(model, fc="classifier.3")(x, 1)


@pytest.mark.parametrize("rank", [1, 2, 3])
def test_cam_refuses_features_read_before_the_relu_that_feeds_the_pooling(rank):
    """DenseNet: forward is features -> F.relu -> pool -> classifier, so 'features' is not what is averaged."""
    torch.manual_seed(0)
    model = DenseNet(rank).eval()
    for bn in model.modules():  # BatchNorm with real statistics, so that norm5's output has negative values
        if isinstance(bn, nn.modules.batchnorm._BatchNorm):
            bn.running_mean.uniform_(-1, 1)
    x = torch.randn(2, 1, *SIZE[rank])
    for layers in (None, "features.norm5"):
        with pytest.raises(LookupError, match=r"do not receive the global average.*F.relu"):
            ndcam.CAM(model, layers)(x, 1)
    with pytest.raises(LookupError, match="do not receive the global average"):
        ndcam.CAM(model, "features.norm5", fc="classifier")(x, 1)


@pytest.mark.parametrize("rank", [1, 2, 3])
def test_cam_on_a_global_pooling_linear_head_is_the_papers_formula(rank):
    """SE-ResNet: layer4 -> global pooling -> last_linear: CAM = sum_c W[k, c] A_c (float64 reference)."""
    torch.manual_seed(0)
    model = SEResNet(rank).double().eval()
    x = torch.randn(2, 1, *SIZE[rank], dtype=torch.float64)
    got = ndcam.CAM(model)(x, [0, 2], upsample=False, normalize=False)
    store = {}
    h = model.layer4.register_forward_hook(lambda m, i, o: store.setdefault("a", o.detach().clone()))
    with torch.no_grad():
        model(x)
    h.remove()
    w = model.last_linear.weight[[0, 2]].detach()
    expected = torch.einsum("nc,nc...->n...", w, store["a"])
    torch.testing.assert_close(got, expected.float())


class ClassMapNet(nn.Module):
    """Fully convolutional classifier: a kernel-1 convolution gives class maps, averaged, then softmax."""

    def __init__(self, rank: int):
        super().__init__()
        self.conv = CONV[rank](1, 6, 3, padding=1)
        self.act = nn.ReLU()
        self.classes = CONV[rank](6, 3, 1)

    def forward(self, x):
        return torch.softmax(self.classes(self.act(self.conv(x))).flatten(2).mean(2), 1)


@pytest.mark.parametrize("rank", [1, 2, 3])
def test_cam_accepts_class_maps_pooled_afterwards_and_a_softmax(rank):
    torch.manual_seed(0)
    model = ClassMapNet(rank).double().eval()
    x = torch.randn(2, 1, *SIZE[rank], dtype=torch.float64)
    cam = ndcam.CAM(model, "act")
    store = {}
    h = model.act.register_forward_hook(lambda m, i, o: store.setdefault("a", o.detach().clone()))
    with torch.no_grad():
        model(x)
    h.remove()
    expected = torch.einsum("c,nc...->n...", model.classes.weight[1].flatten().detach(), store["a"])
    torch.testing.assert_close(cam.explain(x, 1, upsample=False, normalize=False).maps, expected.float())


def test_the_gradient_probe_of_class_token_models_leaves_the_model_as_it_was():
    torch.manual_seed(0)
    model = ViT(2, (16, 16), prefix=2).train()
    model.blocks[0].eval()
    flags = {n: m.training for n, m in model.named_modules()}
    state = {k: v.clone() for k, v in model.state_dict().items()}
    layers, reshape = auto_choice(model, torch.randn(3, 1, 16, 16))
    assert layers[0][0] == "blocks.1.norm1" and reshape.prefix == 2
    assert {n: m.training for n, m in model.named_modules()} == flags
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert not any(m._forward_hooks for m in model.modules())
    # a user's token reshape that fits is kept
    mine = ndcam.TokenGrid(rank=2, prefix=2)
    assert auto_choice(model, torch.randn(3, 1, 16, 16), reshape=mine) == (layers, mine)


@pytest.mark.parametrize("rank, size", [(1, (64,)), (2, (64, 64)), (3, (64, 64, 64))])
def test_monai_densenet121_gets_the_relu_that_feeds_its_pooling_and_cam_holds_there(rank, size):
    """MONAI's DenseNet applies its final ReLU as a module (class_layers.relu): that post-ReLU map is chosen, CAM's
    check passes there (paper formula), and CAM refuses the pre-ReLU 'features'."""
    torch.manual_seed(0)
    model = monai_nets.DenseNet121(spatial_dims=rank, in_channels=1, out_channels=3).eval()
    x = torch.randn(1, 1, *size)
    (name, module), reshape = auto_choice(model, x)[0][0], auto_choice(model, x)[1]
    assert name == "class_layers.relu" and reshape is None
    got = ndcam.CAM(model)(x, 2, upsample=False, normalize=False)
    store = {}
    h = module.register_forward_hook(lambda m, i, o: store.setdefault("a", o.detach().clone()))
    with torch.no_grad():
        model(x)
    h.remove()
    expected = torch.einsum("c,nc...->n...", model.class_layers.out.weight[2].detach(), store["a"])
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
    with pytest.raises(LookupError, match="do not receive the global average"):
        ndcam.CAM(model, "features")(x, 2)


@pytest.mark.parametrize("gamma", [1.0, 1e-3, 1e-5])
def test_class_token_models_with_layerscale_get_the_same_layer(gamma):
    """LayerScale (CaiT, DeiT-III: residual branches scaled by 1e-5 at init) scales every patch-token path, so the
    noise threshold of the gradient probe must be relative to each layer's own gradient, not to the head's."""
    from .families import Block

    class ScaledBlock(Block):
        def __init__(self, dim: int, g: float):
            super().__init__(dim)
            self.g1 = nn.Parameter(torch.full((dim,), g))
            self.g2 = nn.Parameter(torch.full((dim,), g))

        def forward(self, x):
            h = self.norm1(x)
            x = x + self.g1 * self.attn(h, h, h, need_weights=False)[0]
            return x + self.g2 * self.mlp(self.norm2(x))

    torch.manual_seed(0)
    model = ViT(2, (16, 16))
    model.blocks = nn.Sequential(*[ScaledBlock(16, gamma) for _ in range(2)])
    model.eval()
    (name, _), = auto_choice(model, torch.randn(1, 1, 16, 16))[0]
    assert name == "blocks.1.norm1"
