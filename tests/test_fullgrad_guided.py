"""FullGrad, Guided Backprop and Guided Grad-CAM against independent references on every rank."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import ndcam

from . import reference as R
from .conftest import make_input, make_net
from .test_hygiene import assert_same, snapshot


def _ref_post(t):
    """abs, then per-sample min-max over everything (loop over samples), eps 1e-6, as the FullGrad authors."""
    t = np.abs(t)
    out = np.zeros_like(t)
    for i in range(t.shape[0]):
        lo = t[i].min()
        u = t[i] - lo
        out[i] = u / (u.max() + 1e-6)
    return out


def test_fullgrad_matches_reference(rank):
    model, x = make_net(rank), make_input(rank)
    targets = torch.tensor([0, 2, 4])
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.BatchNorm1d,
                                                           nn.BatchNorm2d, nn.BatchNorm3d))]
    outs = []
    hooks = [m.register_forward_hook(lambda m, i, o: outs.append((m, o))) for m in layers]
    xx = x.clone().requires_grad_(True)
    score = model(xx).gather(1, targets[:, None]).sum()
    for h in hooks:
        h.remove()
    grads = torch.autograd.grad(score, [xx] + [o for _, o in outs])
    total = _ref_post((grads[0] * x).detach().numpy()).sum(1)
    for (m, _), g in zip(outs, grads[1:]):
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            b = (m.bias - m.running_mean * m.weight / torch.sqrt(m.running_var + m.eps)).detach()
        else:
            b = m.bias.detach()
        term = _ref_post((g * b.reshape((1, -1) + (1,) * rank)).detach().numpy()).sum(1)
        total = total + R.ref_upsample(term, x.shape[2:])
    got = ndcam.FullGrad(model)(x, targets, normalize=False)
    np.testing.assert_allclose(got.double().numpy(), total, rtol=1e-5, atol=1e-5)
    assert model.conv1.weight.grad is None


class GuidedRef(nn.Module):
    """A ReLU whose backward is guided, written with a tensor hook (independent of ndcam's autograd function)."""

    def forward(self, z):
        y = torch.relu(z)
        if y.requires_grad:
            y.register_hook(lambda g: g.clamp(min=0))
        return y


def test_guided_backprop_matches_tensor_hook_reference(rank):
    model, x = make_net(rank), make_input(rank)
    ref = make_net(rank)
    ref.act1, ref.feat = GuidedRef(), GuidedRef()
    xx = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(ref(xx)[:, 1].sum(), xx)
    gb = ndcam.GuidedBackprop(model)
    torch.testing.assert_close(gb.guided_gradients(x, 1), g)
    torch.testing.assert_close(gb(x, 1, normalize=False), g.abs().sum(1).float())
    # differs from the plain gradient (the test discriminates)
    (plain,) = torch.autograd.grad(model(xx)[:, 1].sum(), xx)
    assert not torch.allclose(plain, g)


def test_guided_gradcam_is_the_product(rank):
    model, x = make_net(rank), make_input(rank)
    gb = ndcam.GuidedBackprop(model)(x, [1, 2, 3], normalize=False)
    gc = ndcam.GradCAM(model, "feat")(x, [1, 2, 3], normalize=False)
    got = ndcam.GuidedGradCAM(model, "feat")(x, [1, 2, 3])
    torch.testing.assert_close(got, ndcam.ops.minmax_normalize(gb * gc))


@pytest.mark.parametrize("method", ["guidedbackprop", "fullgrad", "guidedgradcam"])
def test_no_hooks_left_and_inplace_relus_work(method, rank):
    from .test_hygiene import InplaceBlock

    torch.manual_seed(0)
    model = InplaceBlock(rank).double().eval()
    before = snapshot(model)
    x = make_input(rank)
    maps = ndcam.explain(model, x, method, targets=1).maps
    assert torch.isfinite(maps).all() and maps.shape == (3, *x.shape[2:])
    assert_same(before, snapshot(model))
    with pytest.raises(ValueError):
        ndcam.explain(model, x, method, targets=[1])
    assert_same(before, snapshot(model))


def test_fullgrad_probes_which_layers_run_once_per_model_and_shape(rank):
    """The bias layers that run are found by one probe per model and input shape, not by an extra forward per call."""
    model, x = make_net(rank), make_input(rank)
    calls: list[int] = []
    model.register_forward_pre_hook(lambda m, a: calls.append(1))
    cam = ndcam.FullGrad(model)
    first = cam(x, [0, 1, 2])
    n_first = len(calls)
    again = cam(x, [0, 1, 2])
    assert len(calls) - n_first == 1, "a second call ran more than its one captured forward"
    torch.testing.assert_close(again, first)
