"""Bad input gets a clear error, raised before heavy work, of a built-in type, naming what is wrong and what is right."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import ndcam

from .conftest import make_input, make_net


class CountingNet(nn.Module):
    def __init__(self, rank):
        super().__init__()
        self.net = make_net(rank)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.net(x)


@pytest.mark.parametrize(
    "x, exc, match",
    [
        (lambda r: make_input(r).numpy(), TypeError, "torch.Tensor"),
        (lambda r: make_input(r).long(), TypeError, "floating"),
        (lambda r: torch.randn(3, 2), ValueError, r"\(N, C, \*spatial\)"),
        (lambda r: make_input(r)[:0], ValueError, "empty"),
        (lambda r: make_input(r).index_fill(0, torch.tensor([1]), float("nan")), ValueError, "NaN/inf"),
        (lambda r: make_input(r).index_fill(0, torch.tensor([0]), float("inf")), ValueError, "NaN/inf"),
    ],
    ids=["numpy", "int", "rank0", "empty", "nan", "inf"],
)
def test_bad_input_is_rejected_before_the_forward(x, exc, match, rank):
    model = CountingNet(rank)
    with pytest.raises(exc, match=match):
        ndcam.GradCAM(model, "net.feat")(x(rank))
    assert model.calls == 0


@pytest.mark.parametrize(
    "targets, exc, match",
    [
        ([0, 1], ValueError, "2 class indices for a batch of 3"),
        (torch.tensor([[0, 1]]), ValueError, "batch of 3"),
        ([-1, 0, 0], ValueError, "negative"),
        (1.5, TypeError, "targets must be"),
        ("cat", TypeError, "targets must be"),
        (torch.tensor([0.0, 1.0, 2.0]), TypeError, "integers"),
        (torch.zeros(3, 1, 1, dtype=torch.long), ValueError, r"\(N,\) or \(N, K\)"),
    ],
    ids=["short", "2d-short", "negative", "float", "str", "float-tensor", "3d"],
)
def test_bad_targets_are_rejected_before_the_forward(targets, exc, match, rank):
    model = CountingNet(rank)
    with pytest.raises(exc, match=match):
        ndcam.GradCAM(model, "net.feat")(make_input(rank), targets)
    assert model.calls == 0


@pytest.mark.parametrize(
    "targets, exc, match",
    [
        (torch.zeros(3, 0, dtype=torch.long), ValueError, r"\(3, 0\) tensor asks for K=0"),
        (torch.tensor([[0, -2]] * 3), ValueError, "negative"),
        (torch.tensor([True, False, True]), TypeError, "integers"),
        (True, TypeError, "bool is not a class index"),
        (ndcam.targets.ClassTarget([0, 1]), ValueError, "ClassTarget.classes: got 2 class indices for a batch of 3"),
        (ndcam.targets.Contrastive(1, [0, -1, 0]), ValueError, "Contrastive.q: negative"),
        (ndcam.targets.SoftmaxProbability(0.5), TypeError, "SoftmaxProbability.classes must be"),
        (ndcam.targets.MultiLabel([[0, 1]]), ValueError, "MultiLabel.labels: got 1"),
        (ndcam.targets.SegmentationMask(torch.zeros(3, 2, dtype=torch.long)), ValueError, "one class per sample"),
    ],
    ids=["k0", "negative-2d", "bool-tensor", "bool", "classtarget-length", "contrastive-negative", "softmax-float",
         "multilabel-length", "segmentation-2d"],
)
@pytest.mark.parametrize("method", ["gradcam", "scorecam", "ablationcam", "fullgrad", "guidedgradcam"])
def test_more_bad_targets_are_rejected_before_the_forward(method, targets, exc, match, rank):
    model = CountingNet(rank)
    layers = None if method == "fullgrad" else "net.feat"
    with pytest.raises(exc, match=match):
        ndcam.explain(model, make_input(rank), method, targets=targets, layers=layers)
    assert model.calls == 0


@pytest.mark.parametrize(
    "call, exc, match",
    [
        ({"upsample": "yes"}, TypeError, "upsample must be True or False"),
        ({"normalize": None}, TypeError, "normalize must be True or False"),
        ({"forward_args": "mask"}, TypeError, "forward_args must be a tuple"),
        ({"forward_kwargs": {1: 2}}, TypeError, "forward_kwargs must be a dict"),
    ],
    ids=["upsample", "normalize", "forward-args", "forward-kwargs"],
)
def test_bad_call_options_are_rejected_before_the_forward(call, exc, match):
    model = CountingNet(1)
    with pytest.raises(exc, match=match):
        ndcam.GradCAM(model, "net.feat")(make_input(1), **call)
    assert model.calls == 0
    with pytest.raises(TypeError, match="per_sample must be True or False"):
        ndcam.GradCAM(model, "net.feat", per_sample="yes")


def test_target_out_of_range_names_the_class_count(rank):
    with pytest.raises(ValueError, match=r"out of range for an output with 5 classes \(0..4\)"):
        ndcam.GradCAM(make_net(rank), "feat")(make_input(rank), [0, 7, 1])


def test_unknown_layer_lists_close_matches():
    with pytest.raises(LookupError, match="did you mean 'feat'"):
        ndcam.GradCAM(make_net(1), "fet")
    with pytest.raises(LookupError, match="conv2"):
        ndcam.GradCAM(make_net(1), "conv_2")
    with pytest.raises(LookupError, match="not a submodule"):
        ndcam.GradCAM(make_net(1), nn.Conv1d(1, 1, 1))
    with pytest.raises(TypeError, match="a dotted module name, an nn.Module"):
        ndcam.GradCAM(make_net(1), 3)
    with pytest.raises(ValueError, match="empty"):
        ndcam.GradCAM(make_net(1), [])
    with pytest.raises(TypeError, match="nn.Module"):
        ndcam.GradCAM(lambda x: x)


class Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(2, 4, 3)
        self.unused = nn.Conv1d(4, 4, 3)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(self.conv(x).mean(2))


def test_layer_never_reached():
    with pytest.raises(LookupError, match="never ran"):
        ndcam.GradCAM(Branchy(), "unused")(torch.randn(2, 2, 10))


def test_non_spatial_layer_and_wrong_rank_layer(rank):
    with pytest.raises(LookupError, match=r"not \(N=3, C"):
        ndcam.GradCAM(make_net(rank), "fc")(make_input(rank))


def test_input_of_the_wrong_rank_for_the_model(rank):
    x = make_input(rank)
    wrong = x.reshape(3, 2, -1) if rank > 1 else x[..., None]
    for layers in ("feat", None):
        with pytest.raises(ValueError, match=r"forward pass failed on x of shape .*spatial rank") as info:
            ndcam.GradCAM(make_net(rank), layers)(wrong)
        assert isinstance(info.value.__cause__, RuntimeError)


def test_model_on_another_device_or_dtype_is_reported():
    model = make_net(1)
    with pytest.raises(ValueError, match="on meta but the model is on cpu"):
        ndcam.GradCAM(model, "feat")(torch.empty(2, 2, 21, device="meta"))
    with pytest.raises(ValueError, match=r"x is torch.float32 but the model's parameters are torch.float64"):
        ndcam.GradCAM(model, "feat")(make_input(1).float())


def test_no_convolution_for_automatic_choice():
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(20, 3))
    with pytest.raises(LookupError, match="no Conv1d"):
        ndcam.GradCAM(mlp)(torch.randn(2, 1, 20))


def test_unknown_method_name():
    with pytest.raises(ValueError, match="did you mean gradcam"):
        ndcam.explain(make_net(1), make_input(1), method="gradcma")


def test_cam_rejects_callable_targets_before_the_forward():
    model = CountingNet(1)
    with pytest.raises(TypeError, match="CAM needs class indices"):
        ndcam.CAM(model, "net.feat")(make_input(1), lambda out: out[:, 0])
    assert model.calls == 0


def test_nonfinite_scores(rank):
    with pytest.raises(ValueError, match="NaN/inf"):
        ndcam.GradCAM(make_net(rank), "feat")(make_input(rank), lambda out: out[:, 0] / 0.0)


def test_errors_are_ndcam_errors():
    with pytest.raises(ndcam.NdcamError):
        ndcam.GradCAM(make_net(1), "fet")
    with pytest.raises(ndcam.NdcamError):
        ndcam.GradCAM(make_net(1), "feat")(make_input(1).int())


class _Raises(nn.Module):
    """A rank-2 net whose forward raises ``exc`` after its conv (so the layer is reached first)."""

    def __init__(self, exc: BaseException):
        super().__init__()
        self.feat = nn.Conv2d(1, 3, 3, padding=1)
        self.exc = exc

    def forward(self, x):
        self.feat(x)
        raise self.exc


def test_what_the_model_raises_is_a_forward_error_but_out_of_memory_and_warnings_pass_through():
    x = torch.randn(2, 1, 8, 8)
    with pytest.raises(ndcam.ForwardError, match="KeyError") as info:
        ndcam.GradCAM(_Raises(KeyError("logits")), "feat")(x, 0)
    assert isinstance(info.value.__cause__, KeyError)
    oom = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    with pytest.raises(torch.OutOfMemoryError):  # catchable as itself, not relabelled as a shape problem
        ndcam.GradCAM(_Raises(oom), "feat")(x, 0)
    with pytest.raises(MemoryError):
        ndcam.ScoreCAM(_Raises(MemoryError()), "feat")(x, 0)
    with pytest.raises(DeprecationWarning):  # e.g. -W error: the warning the model raised, as it is
        ndcam.HiResCAM(_Raises(DeprecationWarning("old API")), "feat")(x, 0)


def test_a_failing_reshape_adapter_is_a_layer_error_naming_the_layer():
    model, x = make_net(2), make_input(2)

    def bad(t):
        raise KeyError("tokens")

    with pytest.raises(ndcam.LayerError, match=r"reshape= \(bad\) failed on the output .* of layer 'feat'"):
        ndcam.GradCAM(model, "feat", reshape=bad)(x, 0)


def test_fullgrad_takes_biases_of_any_shape():
    """A custom layer may hold its bias as (1, C, 1, 1); FullGrad's bias term is the same as for a flat (C,) bias."""

    class Shift(nn.Module):
        def __init__(self, bias):
            super().__init__()
            self.bias = nn.Parameter(bias)

        def forward(self, t):
            return t + self.bias.reshape(1, -1, 1, 1)

    torch.manual_seed(0)
    maps = []
    for shape in [(4,), (1, 4, 1, 1), (4, 1, 1)]:
        torch.manual_seed(0)
        conv = nn.Conv2d(1, 4, 3, padding=1, bias=False)
        shift = Shift(torch.linspace(-0.5, 0.5, 4).reshape(shape))
        net = nn.Sequential(conv, shift, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
        maps.append(ndcam.FullGrad(net, layers=["1"])(torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(1)), 0))
    torch.testing.assert_close(maps[1], maps[0])
    torch.testing.assert_close(maps[2], maps[0])


def test_expand_like_refuses_a_tensor_with_more_axes():
    assert ndcam.ops.expand_like(torch.ones(2), torch.ones(2, 3, 4)).shape == (2, 1, 1)
    with pytest.raises(ValueError, match="cannot broadcast"):
        ndcam.ops.expand_like(torch.ones(1, 4, 1, 1, 1), torch.ones(2, 4, 5, 5))
