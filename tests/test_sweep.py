"""Layer sweep: automatic stages for CNNs of any rank, maps equal to per-layer explanations, picture and report."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import ndcam
from ndcam import data, models
from ndcam.sweep import SweepResult, find_stages, layer_sweep

from .conftest import GapNet, make_input, make_net
from .test_hygiene import _train_mode_net, assert_same, snapshot


class Renamed(nn.Module):
    """A ResNet regrouped without torchvision names: ``stem`` / ``blocks`` / ``head`` Sequentials."""

    def __init__(self, net: models.ResNet) -> None:
        super().__init__()
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.blocks = nn.Sequential(net.layer1, net.layer2, net.layer3, net.layer4)
        self.head = nn.Sequential(net.avgpool, nn.Flatten(), net.fc)

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)))


def test_stages_of_conftest_nets(rank):
    x = make_input(rank)
    assert find_stages(make_net(rank), x) == ["act1", "act3"]
    assert find_stages(make_net(rank, cls=GapNet), x) == ["act1", "feat"]


@pytest.mark.parametrize("rank", [1, 2, 3])
def test_stages_of_tiny_nets_are_the_relu_before_each_pooling(rank):
    net = data.TinyNet(rank, blocks=3)
    assert find_stages(net, torch.randn(1, 1, *[16] * rank)) == ["features.2", "features.6", "features"]


@pytest.mark.parametrize("make, x", [
    (lambda: models.ecg_net(), torch.randn(1, 12, 256)),
    (lambda: models.ResNet(2, (1, 1, 1, 1), 3, 4, base=4), torch.randn(1, 3, 32, 32)),
    (lambda: models.resnet18_3d(base=4), torch.randn(1, 1, 16, 16, 16)),
], ids=["ecg_net-1d", "resnet-2d", "resnet18_3d"])
def test_torchvision_style_stages(make, x):
    assert find_stages(make(), x) == ["layer1", "layer2", "layer3", "layer4"]


@pytest.mark.parametrize("make, x", [
    (lambda: models.ecg_net(), torch.randn(2, 12, 256)),
    (lambda: models.ResNet(2, (1, 1, 1, 1), 3, 4, base=4), torch.randn(2, 3, 32, 32)),
    (lambda: models.resnet18_3d(base=4), torch.randn(2, 1, 16, 16, 16)),
], ids=["ecg_net-1d", "resnet-2d", "resnet18_3d"])
def test_sweep_of_reference_models_equals_explain_per_stage(make, x):
    torch.manual_seed(0)
    model = make().eval()
    sweep = layer_sweep(model, x, "gradcam++")
    assert sweep.maps.shape == (2, 4, *x.shape[2:])
    for j, name in enumerate(sweep.names):
        torch.testing.assert_close(sweep.maps[:, j], ndcam.explain(model, x, "gradcam++", layers=name).maps,
                                   rtol=0, atol=0)


@pytest.mark.parametrize("block", [models.BasicBlock, models.Bottleneck])
def test_resnet_without_torchvision_names_skips_detours_inside_blocks(block):
    # the bottleneck's 1x1 conv runs at the old resolution after the strided shortcut: a detour, not a stage
    net = Renamed(models.ResNet(2, (1, 2, 1, 1), 3, 4, base=4, block=block)).eval()
    assert find_stages(net, torch.randn(1, 3, 64, 64)) == ["stem.2", "blocks.0", "blocks.1", "blocks.2", "blocks"]


def test_vgg_stages():
    assert find_stages(models.vgg_like(2), torch.randn(1, 3, 32, 32)) == ["features.3", "features.8", "features.13",
                                                                          "features"]


def test_no_spatial_layer_is_a_layer_error():
    net = nn.Sequential(nn.Flatten(), nn.Linear(8, 2))
    with pytest.raises(ndcam.LayerError, match="layers="):
        find_stages(net, torch.randn(1, 1, 8))


@pytest.mark.parametrize("method", ["gradcam", "layercam", "scorecam"])
def test_each_map_equals_explain_at_that_stage(method, rank):
    model, x = make_net(rank), make_input(rank)
    sweep = layer_sweep(model, x, method=method, targets=[0, 3, 1])
    assert sweep.names == ["act1", "act3"]
    assert sweep.maps.shape == (3, 2, *x.shape[2:])
    for j, name in enumerate(sweep.names):
        exp = ndcam.explain(model, x, method, targets=[0, 3, 1], layers=name)
        torch.testing.assert_close(sweep.maps[:, j], exp.maps, rtol=0, atol=0)
        torch.testing.assert_close(sweep[name], exp.maps, rtol=0, atol=0)
        torch.testing.assert_close(sweep.raw_max[:, j], exp.raw_max, rtol=0, atol=0)
        torch.testing.assert_close(sweep.scores, exp.scores)
    assert sweep.targets.tolist() == [0, 3, 1]
    assert sweep.layer_shapes[0][0] == 6 and sweep.layer_shapes[1][0] == 6  # channels of act1, act3


def test_k_targets_and_method_options(rank):
    model, x = make_net(rank), make_input(rank)
    t = torch.tensor([[0, 1], [2, 3], [4, 0]])
    sweep = layer_sweep(model, x, "gradcam", targets=t, eigen_smooth=True)
    assert sweep.maps.shape == (3, 2, 2, *x.shape[2:])
    for j, name in enumerate(sweep.names):
        exp = ndcam.explain(model, x, "gradcam", targets=t, layers=name, eigen_smooth=True)
        torch.testing.assert_close(sweep.maps[:, j], exp.maps, rtol=0, atol=0)


def test_explicit_layers_keep_their_order():
    model, x = make_net(2), make_input(2)
    sweep = layer_sweep(model, x, layers=["feat", model.act1])
    assert sweep.names == ["feat", "act1"]
    torch.testing.assert_close(sweep.maps[:, 1], ndcam.explain(model, x, layers="act1").maps, rtol=0, atol=0)


@pytest.mark.parametrize("bad, err", [
    ({"layers": "layer9"}, ndcam.InputError),
    ({"layers": ["nope"]}, ndcam.LayerError),
    ({"layers": 3}, ndcam.InputTypeError),
    ({"method": "fullgrad"}, ndcam.InputError),
    ({"method": "guidedbackprop"}, ndcam.InputError),
    ({"targets": [0, 1]}, ndcam.InputError),
    ({"method": "nosuchcam"}, ndcam.InputError),
])
def test_bad_arguments_raise_and_leave_the_model_untouched(bad, err):
    model, x = _train_mode_net(2), make_input(2)
    before = snapshot(model)
    with pytest.raises(err):
        layer_sweep(model, x, **bad)
    assert_same(before, snapshot(model))


def test_successful_sweep_leaves_the_model_untouched():
    model, x = _train_mode_net(1), make_input(1)
    before = snapshot(model)
    layer_sweep(model, x)
    assert_same(before, snapshot(model))


@pytest.mark.parametrize("rank", [1, 2, 3])
def test_plot_and_html(rank):
    import matplotlib.pyplot as plt

    model, x = make_net(rank, dtype=torch.float32), make_input(rank, dtype=torch.float32)
    sweep = layer_sweep(model, x, targets=2)
    fig = sweep.plot(x, index=1, fs=100.0, units="mV")
    text = " ".join(t.get_text() for t in fig.findobj(match=lambda o: hasattr(o, "get_text")))
    assert "act1" in text and "act3" in text and "gradcam" in text and "target class 2" in text
    plt.close(fig)
    block = sweep.html(x, index=0)
    assert block.startswith("<section>") and "data:image/png;base64," in block and "act3" in block
    with pytest.raises(ndcam.InputError, match="explained input"):
        sweep.plot(x[:, :1])
    assert isinstance(sweep, SweepResult) and sweep.rank == rank


def test_conv1d_net_and_its_twins_give_the_same_stages_and_maps():
    from .conftest import randomize_bn
    from .test_invariants import TwinNet, _twin

    torch.manual_seed(0)
    net1 = randomize_bn(TwinNet(1)).double().eval()
    x1 = make_input(1, n=3)
    s1 = layer_sweep(net1, x1, "layercam")
    for rank in (2, 3):
        xr = x1.reshape(x1.shape[:2] + (1,) * (rank - 1) + x1.shape[2:])
        sr = layer_sweep(_twin(net1, rank), xr, "layercam")
        assert sr.names == s1.names == ["act1", "act3"]
        torch.testing.assert_close(sr.maps.reshape(s1.maps.shape), s1.maps, atol=1e-6, rtol=1e-5)


def test_plot_with_k_targets_names_the_chosen_target():
    import matplotlib.pyplot as plt

    model, x = make_net(2, dtype=torch.float32), make_input(2, dtype=torch.float32)
    sweep = layer_sweep(model, x, targets=torch.tensor([[0, 4]] * 3))
    fig = sweep.plot(x, index=0, k=1)
    assert "target class 4" in fig._suptitle.get_text()
    plt.close(fig)
    assert "target class 0" in sweep.html(x, k=0)
