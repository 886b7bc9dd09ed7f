"""Lead-wise maps (N, C_in, *S): evidence found in the right lead, loop references, Guided Grad-CAM consistency."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

import ndcam
from ndcam.leadwise import METHODS, LeadExplanation, explain_leads
from ndcam.targets import ClassTarget
from ndcam.viz import plot_leads

from .conftest import CONV, GAP, make_input, make_net
from .reference import capture_reference, ref_gradcam, ref_normalize, ref_upsample
from .test_hygiene import _train_mode_net, assert_same, snapshot


def one_lead_net(rank: int, leads: int, lead: int, seed: int = 0) -> nn.Module:
    """conv -> ReLU -> conv -> ReLU -> GAP -> linear whose logits depend on input channel ``lead`` only."""
    torch.manual_seed(seed)
    C = CONV[rank]
    net = nn.Sequential(C(leads, 6, 5, padding=2), nn.ReLU(), C(6, 8, 3, stride=2, padding=1), nn.ReLU(),
                        GAP[rank](1), nn.Flatten(), nn.Linear(8, 3)).double().eval()
    with torch.no_grad():
        keep = torch.zeros(leads, dtype=torch.bool)
        keep[lead] = True
        net[0].weight[:, ~keep] = 0.0
    return net


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("rank, leads, lead", [(1, 12, 7), (2, 3, 1), (3, 2, 1)])
def test_evidence_in_one_lead_is_found_there(method, rank, leads, lead):
    net = one_lead_net(rank, leads, lead)
    sizes = {1: (64,), 2: (12, 12), 3: (6, 8, 8)}[rank]
    x = torch.randn(4, leads, *sizes, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    exp = explain_leads(net, x, method)
    assert isinstance(exp, LeadExplanation) and exp.maps.shape == x.shape
    energy = exp.lead_energy()
    assert energy.argmax(1).tolist() == [lead] * 4
    others = torch.ones(leads, dtype=torch.bool)
    others[lead] = False
    assert float(exp.maps[:, others].abs().max()) == 0.0  # no gradient reaches the other leads
    torch.testing.assert_close(energy.sum(1), torch.ones(4, dtype=energy.dtype))
    assert float(exp.maps.amax(dim=tuple(range(1, x.ndim)))[0]) == 1.0


def ref_gradxinput(model, layer, x, targets):
    """|dy/dx * x| per channel times the upsampled ReLU-ed Grad-CAM map, normalized per sample over (C, *S); loops."""
    A, G, _ = capture_reference(model, layer, x, ClassTarget(targets))
    cam = ref_upsample(np.maximum(ref_gradcam(A, G), 0), x.shape[2:])
    out = np.zeros(x.shape)
    for i in range(x.shape[0]):  # one sample at a time, whole graph
        xi = x[i : i + 1].detach().clone().requires_grad_(True)
        (g,) = torch.autograd.grad(model(xi)[0, targets[i]], xi)
        gx = (g[0] * x[i]).detach().numpy()
        for c in range(x.shape[1]):
            out[i, c] = np.abs(gx[c]) * cam[i]
    return ref_normalize(out)


def test_gradxinput_matches_loop_reference(rank):
    model, x = make_net(rank), make_input(rank)
    exp = explain_leads(model, x, "gradxinput", targets=[2, 0, 4], layers="feat")
    np.testing.assert_allclose(exp.maps.numpy(), ref_gradxinput(model, model.feat, x, [2, 0, 4]), atol=2e-6)
    assert exp.layers == ["feat"] and exp.method == "leadwise-gradxinput"


def test_fullgrad_is_the_input_gradient_term_per_channel(rank):
    model, x = make_net(rank), make_input(rank)
    exp = explain_leads(model, x, "fullgrad", targets=[1, 1, 3])
    out = np.zeros(x.shape)
    for i in range(x.shape[0]):
        xi = x[i : i + 1].detach().clone().requires_grad_(True)
        (g,) = torch.autograd.grad(model(xi)[0, [1, 1, 3][i]], xi)
        out[i] = np.abs((g[0] * x[i]).detach().numpy())
    np.testing.assert_allclose(exp.maps.numpy(), ref_normalize(out), atol=2e-6)
    assert exp.layers == []


def test_guided_leads_sum_to_guided_gradcam(rank):
    model, x = make_net(rank), make_input(rank)
    exp = explain_leads(model, x, "guided", targets=[0, 1, 2], layers="feat")
    ggc = ndcam.explain(model, x, "guidedgradcam", targets=[0, 1, 2], layers="feat").maps
    # min-max normalization is invariant to positive affine maps, so the lead sum renormalized is Guided Grad-CAM
    torch.testing.assert_close(ndcam.ops.minmax_normalize(exp.maps.double().sum(1)).float(), ggc, atol=1e-5, rtol=0)


def test_all_zero_cam_warns():
    net = one_lead_net(1, 12, 7)
    x = torch.randn(4, 12, 64, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    with pytest.warns(ndcam.ConstantMapWarning, match=r"sample\(s\) \[3\]"):
        exp = explain_leads(net, x, "gradxinput", targets=[0, 1, 2, 0])  # sample 3's Grad-CAM is all-zero
    assert float(exp.maps[3].abs().max()) == 0.0 and not torch.isnan(exp.maps).any()
    assert exp.lead_energy()[3].tolist() == [0.0] * 12


def test_one_warning_per_call_and_none_about_an_unused_grad_cam():
    # the internal Grad-CAM pass (validation, targets, CAM weighting) must not add its own ConstantMapWarning: once
    # from explain_leads for the maps it returns, and not at all for "fullgrad", which does not use the CAM
    net = one_lead_net(1, 12, 7)
    x = torch.randn(4, 12, 64, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        explain_leads(net, x, "gradxinput", targets=[0, 1, 2, 0])
        assert [str(w.message)[:27] for w in caught] == ["the lead-wise maps of sampl"]
        caught.clear()
        exp = explain_leads(net, x, "fullgrad", targets=[0, 1, 2, 0])
        assert not caught and float(exp.maps[3].max()) == 1.0


def test_batch_equals_per_sample():
    model, x = make_net(1), make_input(1, n=3)
    full = explain_leads(model, x, "gradxinput")
    for i in range(3):
        one = explain_leads(model, x[i : i + 1], "gradxinput")
        torch.testing.assert_close(one.maps[0], full.maps[i], atol=1e-6, rtol=0)


@pytest.mark.parametrize("bad, err", [
    ({"method": "gradcam"}, ndcam.InputError),
    ({"targets": torch.tensor([[0, 1]] * 3)}, ndcam.InputError),
    ({"targets": 7}, ndcam.InputError),
    ({"layers": "nope"}, ndcam.LayerError),
])
def test_bad_arguments_raise_and_leave_the_model_untouched(bad, err):
    model, x = _train_mode_net(1), make_input(1)
    before = snapshot(model)
    with pytest.raises(err):
        explain_leads(model, x, **bad)
    assert_same(before, snapshot(model))


@pytest.mark.parametrize("method", METHODS)
def test_successful_call_leaves_the_model_untouched(method):
    model, x = _train_mode_net(1), make_input(1).requires_grad_(True)
    before = snapshot(model)
    explain_leads(model, x, method)
    assert_same(before, snapshot(model))
    assert x.grad is None and torch.is_grad_enabled()


@pytest.mark.parametrize("rank", [1, 2, 3])
def test_plots(rank):
    import matplotlib.pyplot as plt

    model, x = make_net(rank, dtype=torch.float32), make_input(rank, dtype=torch.float32)
    exp = explain_leads(model, x, targets=1)
    fig = exp.plot(x, index=1, fs=250.0, leads=["MLII", "V1"], units="mV")
    text = " ".join(t.get_text() for t in fig.findobj(match=lambda o: hasattr(o, "get_text")))
    assert "MLII" in text and "V1" in text and "target class 1" in text
    assert "Lead-wise |gradient x input| x Grad-CAM at layer" in text and exp.describe() in text
    if rank == 1:
        assert "mV" in text and "time (s)" in text and "% of map" in text
    plt.close(fig)


def test_plot_leads_checks_shapes():
    with pytest.raises(ndcam.InputError, match="same shape"):
        plot_leads(torch.zeros(2, 10), torch.zeros(10))


@pytest.mark.parametrize("method", METHODS)
def test_conv1d_net_and_its_twins_give_the_same_lead_maps(method):
    from .conftest import randomize_bn
    from .test_invariants import TwinNet, _twin

    torch.manual_seed(0)
    net1 = randomize_bn(TwinNet(1)).double().eval()
    x1 = make_input(1, n=3)
    e1 = explain_leads(net1, x1, method, layers="feat")
    for rank in (2, 3):
        xr = x1.reshape(x1.shape[:2] + (1,) * (rank - 1) + x1.shape[2:])
        er = explain_leads(_twin(net1, rank), xr, method, layers="feat")
        torch.testing.assert_close(er.maps.reshape(e1.maps.shape), e1.maps, atol=1e-6, rtol=1e-5)
