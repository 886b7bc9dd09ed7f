"""Automatic layer choice on common architectures of every rank, listing, names and modules."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import ndcam
from ndcam.layers import auto_layer
from ndcam.models import ResNet, vgg_like

from .conftest import make_input, make_net


@pytest.mark.parametrize("rank", [1, 2, 3])
def test_resnet_gets_its_last_stage(rank):
    model = ResNet(rank, (1, 1, 1, 1), in_channels=2, num_classes=3, base=4).eval()
    x = torch.randn(2, 2, *(64,) * rank)
    name, module = auto_layer(model, x)
    assert name == "layer4" and module is model.layer4
    assert ndcam.GradCAM(model)(x).shape == (2, *(64,) * rank)
    # a stage that ends at 1x1 is useless for a map: the last convolution with a real spatial extent is taken
    assert auto_layer(model, torch.randn(1, 2, *(32,) * rank))[0] == "layer4.0.bn1"


@pytest.mark.parametrize("rank", [1, 2, 3])
def test_vgg_gets_the_relu_after_its_last_convolution(rank):
    model = vgg_like(rank, in_channels=1, widths=(4, 8)).eval()
    x = torch.randn(2, 1, *(16,) * rank)
    assert auto_layer(model, x)[0] == "features.8"  # conv at 7, in-place ReLU at 8, max-pool at 9


class SENet(nn.Module):
    """Squeeze-excitation after the last spatial conv: its 1x1 convs on pooled maps must not be chosen."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.act = nn.ReLU()
        self.se_reduce = nn.Conv2d(8, 2, 1)
        self.se_expand = nn.Conv2d(2, 8, 1)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        h = self.act(self.conv(x))
        s = torch.sigmoid(self.se_expand(torch.relu(self.se_reduce(h.mean((2, 3), keepdim=True)))))
        return self.fc((h * s).mean((2, 3)))


def test_squeeze_excitation_convs_are_skipped():
    assert auto_layer(SENet(), torch.randn(1, 1, 8, 8))[0] == "act"


def test_plain_sequential_ecg_net():
    net = nn.Sequential(nn.Conv1d(12, 8, 7, padding=3), nn.BatchNorm1d(8), nn.ReLU(), nn.Conv1d(8, 8, 5, padding=2),
                        nn.ReLU(), nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(8, 4)).eval()
    assert auto_layer(net, torch.randn(1, 12, 300))[0] == "4"


def test_automatic_choice_matches_input_rank():
    """A 2D net fed a 2D input picks a Conv2d even when it also holds Conv1d modules."""

    class Mixed(nn.Module):
        def __init__(self):
            super().__init__()
            self.c2 = nn.Conv2d(1, 4, 3)
            self.c1 = nn.Conv1d(4, 4, 3)
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            h = torch.relu(self.c2(x)).mean(2)
            return self.fc(self.c1(h).mean(2))

    assert auto_layer(Mixed(), torch.randn(1, 1, 8, 8))[0] == "c2"
    assert auto_layer(Mixed(), torch.randn(1, 1, 8, 8))[0] == "c2"  # cached


def test_probe_leaves_model_untouched_and_is_cached():
    model = make_net(2).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    calls = []
    model.register_forward_pre_hook(lambda m, i: calls.append(i[0].shape[0]))
    x = make_input(2, n=3)
    ndcam.GradCAM(model)(x)
    ndcam.GradCAM(model)(x)
    assert calls == [1, 3, 3]  # one single-sample probe, then the real forwards
    assert model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])


def test_layers_by_name_module_and_list(rank):
    model, x = make_net(rank), make_input(rank)
    a = ndcam.GradCAM(model, "feat")(x, 1)
    b = ndcam.GradCAM(model, model.feat)(x, 1)
    c = ndcam.GradCAM(model, ["feat", model.feat])(x, 1)  # duplicates collapse
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a, c)


def test_list_layers_shows_shapes_and_marks_usable_layers(rank):
    model, x = make_net(rank), make_input(rank)
    infos = ndcam.list_layers(model, x)
    by = {i.name: i for i in infos}
    assert by["feat"].spatial and by["feat"].shape[1] == 8
    assert not by["fc"].spatial and by["fc"].shape == (1, 5)
    assert [i.name for i in infos][:3] == ["conv1", "bn1", "act1"]
    assert all(i.spatial for i in ndcam.list_layers(model, x, spatial_only=True))
    assert "feat" in str(by["feat"])


def test_a_pooled_cnn_map_whose_shape_looks_channels_last_is_not_followed():
    """(N, 4, 4, 4) after pooling an 8x8 map has (C, H) == a halved grid; it is a pooled CNN map, not Swin."""
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Identity(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)).eval()
    assert auto_layer(net, torch.randn(1, 1, 8, 8))[0] == "1"
    ecg = nn.Sequential(nn.Conv1d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool1d(2), nn.Identity(),
                        nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(8, 2)).eval()
    assert auto_layer(ecg, torch.randn(1, 1, 16))[0] == "1"  # (1, 8, 8) after pooling: not tokens
