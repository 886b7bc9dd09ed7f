"""Channel pictures: top-k channels of a layer by Grad-CAM weight or mean activation, against a loop reference."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import ndcam
from ndcam.channels import ChannelResult, top_channels
from ndcam.targets import ClassTarget

from .conftest import make_input, make_net
from .reference import capture_reference, positions, ref_normalize, ref_upsample
from .test_hygiene import _train_mode_net, assert_same, snapshot


def ref_weights(A, G, kind):
    """Channel weights by explicit loops: mean over positions of the gradient (Grad-CAM) or of the activation."""
    n, c, *sp = A.shape
    src = G if kind == "gradcam" else A
    P = positions(sp)
    return np.array([[sum(src[(i, k, *p)] for p in P) / len(P) for k in range(c)] for i in range(n)])


@pytest.mark.parametrize("kind", ["gradcam", "activation"])
def test_weights_order_and_maps_match_loop_reference(kind, rank):
    model, x = make_net(rank), make_input(rank)
    targets = [1, 4, 0]
    res = top_channels(model, x, layer="feat", targets=targets, k=5, weights=kind)
    A, G, _ = capture_reference(model, model.feat, x, ClassTarget(targets))
    W = ref_weights(A, G, kind)
    order = np.argsort(-W, axis=1, kind="stable")[:, :5]
    assert res.channels.tolist() == order.tolist()
    np.testing.assert_allclose(res.weights.numpy(), np.take_along_axis(W, order, 1), rtol=1e-10, atol=1e-12)
    assert bool((res.weights[:, :-1] >= res.weights[:, 1:]).all()), "not ordered by weight"
    for i in range(x.shape[0]):
        ref = ref_normalize(ref_upsample(A[i, order[i]], x.shape[2:]))
        np.testing.assert_allclose(res.maps[i].numpy(), ref, atol=2e-6)
    assert res.maps.dtype == torch.float32 and res.layer == "feat" and res.num_channels == 8
    assert res.targets.tolist() == targets and res.kind == kind


def test_default_layer_and_top1_targets_follow_explain(rank):
    model, x = make_net(rank), make_input(rank)
    res = top_channels(model, x, k=100)  # k beyond the channel count is clamped
    exp = ndcam.explain(model, x)
    assert res.layer == exp.layers[0] and torch.equal(res.targets, exp.targets)
    assert res.channels.shape == (3, res.num_channels)
    # Grad-CAM weights of every channel, summed with the activations, give the Grad-CAM map
    A, G, _ = capture_reference(model, model.get_submodule(res.layer), x, ClassTarget(exp.targets))
    np.testing.assert_allclose(np.sort(res.weights.numpy(), 1)[:, ::-1],
                               np.sort(ref_weights(A, G, "gradcam"), 1)[:, ::-1], rtol=1e-10, atol=1e-12)


def test_callable_target():
    model, x = make_net(2), make_input(2)
    fn = lambda out: out[:, 2] - out[:, 0]  # noqa: E731
    res = top_channels(model, x, "feat", fn, k=3)
    A, G, _ = capture_reference(model, model.feat, x, fn)
    W = ref_weights(A, G, "gradcam")
    assert res.targets is None
    np.testing.assert_allclose(res.weights.numpy(), -np.sort(-W, 1)[:, :3], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("bad, err", [
    ({"k": 0}, ndcam.InputTypeError),
    ({"k": 2.5}, ndcam.InputTypeError),
    ({"weights": "eigen"}, ndcam.InputError),
    ({"layer": ["act1", "feat"]}, ndcam.InputError),
    ({"layer": "nope"}, ndcam.LayerError),
    ({"targets": torch.tensor([[0, 1]] * 3)}, ndcam.InputError),
    ({"targets": 9}, ndcam.InputError),
])
def test_bad_arguments_raise_and_leave_the_model_untouched(bad, err):
    model, x = _train_mode_net(1), make_input(1)
    before = snapshot(model)
    with pytest.raises(err):
        top_channels(model, x, **bad)
    assert_same(before, snapshot(model))


def test_successful_call_leaves_the_model_untouched(rank):
    model, x = _train_mode_net(rank), make_input(rank)
    before = snapshot(model)
    top_channels(model, x, "feat", k=3)
    assert_same(before, snapshot(model))


@pytest.mark.parametrize("rank", [1, 2, 3])
def test_plot_titles(rank):
    import matplotlib.pyplot as plt

    model, x = make_net(rank, dtype=torch.float32), make_input(rank, dtype=torch.float32)
    res = top_channels(model, x, "feat", targets=1, k=4)
    assert isinstance(res, ChannelResult) and res.rank == rank
    fig = res.plot(x, index=2)
    text = " ".join(t.get_text() for t in fig.findobj(match=lambda o: hasattr(o, "get_text")))
    for c, w in zip(res.channels[2], res.weights[2]):
        assert f"channel {int(c)}" in text and f"weight {float(w):.3g}" in text
    assert "feat" in text and "target class 1" in text
    plt.close(fig)
    block = res.html(x, index=0)
    assert block.startswith("<section>") and "data:image/png;base64," in block
    assert f"<td>{int(res.channels[0, 0])}</td>" in block


@pytest.mark.parametrize("kind", ["gradcam", "activation"])
def test_conv1d_net_and_its_twins_give_the_same_channels(kind):
    from .conftest import randomize_bn
    from .test_invariants import TwinNet, _twin

    torch.manual_seed(0)
    net1 = randomize_bn(TwinNet(1)).double().eval()
    x1 = make_input(1, n=3)
    r1 = top_channels(net1, x1, "feat", k=4, weights=kind)
    for rank in (2, 3):
        xr = x1.reshape(x1.shape[:2] + (1,) * (rank - 1) + x1.shape[2:])
        rr = top_channels(_twin(net1, rank), xr, "feat", k=4, weights=kind)
        assert torch.equal(rr.channels, r1.channels)
        torch.testing.assert_close(rr.weights, r1.weights, atol=1e-12, rtol=1e-9)
        torch.testing.assert_close(rr.maps.reshape(r1.maps.shape), r1.maps, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("kind", ["gradcam", "activation"])
def test_no_warning_about_the_grad_cam_map_it_does_not_return(kind):
    # every Grad-CAM weight negative: the Grad-CAM map is all zero, yet the top channels are all there; top_channels
    # validates through ndcam.explain("gradcam") and must not pass on that map's ConstantMapWarning
    torch.manual_seed(0)
    conv = torch.nn.Conv1d(1, 4, 3, padding=1)
    fc = torch.nn.Linear(4, 2)
    with torch.no_grad():
        fc.weight.copy_(-torch.rand(2, 4) - 0.1)
    model = torch.nn.Sequential(conv, torch.nn.ReLU(), torch.nn.AdaptiveAvgPool1d(1), torch.nn.Flatten(), fc).eval()
    x = torch.randn(2, 1, 32)
    with pytest.warns(ndcam.ConstantMapWarning):
        ndcam.explain(model, x, targets=0, layers="1")  # the case: Grad-CAM has nothing to show
    with warnings.catch_warnings():
        warnings.simplefilter("error", ndcam.ConstantMapWarning)
        res = top_channels(model, x, layer="1", targets=0, k=3, weights=kind)
    assert res.maps.shape == (2, 3, 32) and bool((res.maps.amax((1, 2)) == 1).all())
