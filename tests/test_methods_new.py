"""The methods of issue 10 on every rank: float64 loop references (tests/reference_new.py), rank twins, K targets at
once == K calls, batch == per-sample calls, hygiene, seeding, options and errors -- generated from the registry."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch
from torch import nn

import ndcam
from ndcam.methods import factorization, shapley
from ndcam.methods._seeding import draw
from ndcam.methods.random_cam import random_weights

from . import reference as R
from . import reference_new as RN
from .conftest import SHAPES, make_input, make_net
from .test_hygiene import assert_same, snapshot
from .test_invariants import TwinNet, _twin

ndcam_methods = importlib.import_module("ndcam.methods")  # (ndcam.methods is also the function listing names)

NEW = ["fem", "kpcacam", "shapleycam", "finercam", "dff", "randomcam", "sscam", "iscam", "smoothgradcampp", "legrad"]
#: options that keep the stochastic / iterative methods fast in tests
FAST = {"sscam": {"n_samples": 3}, "iscam": {"n_samples": 4}, "smoothgradcampp": {"n_samples": 3},
        "dff": {"iterations": 60}}


def _cam(name, model, layers="feat", **kw):
    return ndcam.get_method(name)(model, layers, **{**FAST.get(name, {}), **kw})


def _close_raw(got, expected):
    got = got.double().numpy()
    assert np.abs(expected).max() > 0, "reference map is all-zero: the test would not discriminate"
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6 * np.abs(expected).max())


# -- registry ---------------------------------------------------------------------------------------------------------
def test_registry_lists_the_new_methods_and_explain_runs_them():
    names = ndcam.methods()
    for name in NEW:
        assert name in names
    for cls in ("FEM", "KPCACAM", "ShapleyCAM", "FinerCAM", "DeepFeatureFactorization", "RandomCAM", "SSCAM", "ISCAM",
                "SmoothGradCAMpp", "LeGrad"):
        assert hasattr(ndcam_methods, cls) and cls in ndcam_methods.__all__
    model, x = make_net(1), make_input(1)
    assert ndcam.explain(model, x, method="fem").maps.shape == (3, *x.shape[2:])
    assert ndcam.get_method("SmoothGradCAM++") is ndcam.get_method("smoothgradcampp")
    assert ndcam.get_method("deep-feature-factorization") is ndcam.get_method("dff")


# -- references -------------------------------------------------------------------------------------------------------
def test_fem_matches_reference(rank):
    model, x = make_net(rank), make_input(rank)
    A, _, _ = R.capture_reference(model, model.feat, x, lambda o: o[:, 0])
    expected = np.maximum(RN.ref_fem(A, 2.0), 0)
    _close_raw(_cam("fem", model)(x, upsample=False, normalize=False), expected)
    np.testing.assert_allclose(_cam("fem", model, k=1.0)(x, upsample=False, normalize=False).double().numpy(),
                               np.maximum(RN.ref_fem(A, 1.0), 0), rtol=1e-5, atol=1e-7)


def test_fem_is_class_agnostic_and_pgc_variant_differs(rank):
    model, x = make_net(rank), make_input(rank)
    cam = _cam("fem", model)
    torch.testing.assert_close(cam(x, 0), cam(x, 4))
    assert not torch.allclose(cam(x), _cam("fem", model, variant="pytorch-grad-cam")(x))


def test_kpcacam_matches_reference(rank):
    model, x = make_net(rank), make_input(rank)
    A, _, _ = R.capture_reference(model, model.feat, x, lambda o: o[:, 0])
    _close_raw(_cam("kpcacam", model)(x, upsample=False, normalize=False), np.maximum(RN.ref_kpca(A), 0))
    _close_raw(_cam("kpcacam", model, gamma=0.3)(x, upsample=False, normalize=False),
               np.maximum(RN.ref_kpca(A, 0.3), 0))


def test_randomcam_matches_reference_and_is_seeded(rank):
    model, x = make_net(rank), make_input(rank)
    A, _, _ = R.capture_reference(model, model.feat, x, lambda o: o[:, 0])
    w = random_weights(3, A.shape[1], 5).numpy()
    assert w.min() >= -1 and w.max() < 1 and (w[0] == w[2]).all()
    _close_raw(_cam("randomcam", model, seed=5)(x, upsample=False, normalize=False),
               np.maximum(RN.ref_weighted(A, w), 0))
    torch.testing.assert_close(_cam("randomcam", model, seed=5)(x), _cam("randomcam", model, seed=5)(x))
    assert not torch.allclose(_cam("randomcam", model, seed=5)(x), _cam("randomcam", model, seed=6)(x))


def test_shapleycam_matches_finite_difference_reference(rank):
    model, x = make_net(rank), make_input(rank)
    targets = [0, 3, 1]
    idx = torch.tensor(targets)

    def rest(out):
        return 2 * out.gather(1, idx[:, None])[:, 0] - torch.logsumexp(out, dim=1)

    A, G, HA = RN.ref_shapley_fd(model, model.feat, x, rest)
    # the second-order term must matter, or the test would not see the Hessian-vector product
    first_order = RN.ref_shapley(A, G, np.zeros_like(HA))
    assert np.abs(RN.ref_shapley(A, G, HA) - first_order).max() > 1e-3 * np.abs(first_order).max()
    exp = _cam("shapleycam", model).explain(x, targets, upsample=False, normalize=False)
    np.testing.assert_allclose(exp.maps.double().numpy(), np.maximum(RN.ref_shapley(A, G, HA), 0), rtol=1e-4,
                               atol=1e-6)
    assert exp.targets.tolist() == targets
    with torch.no_grad():
        np.testing.assert_allclose(exp.scores.double().numpy(), RN.ref_rest(model(x), targets), rtol=1e-6)
    # target="logit": the second-order correction of the plain logit
    A, G, HA = RN.ref_shapley_fd(model, model.feat, x, lambda o: o.gather(1, idx[:, None])[:, 0])
    got = _cam("shapleycam", model, target="logit")(x, targets, upsample=False, normalize=False)
    np.testing.assert_allclose(got.double().numpy(), np.maximum(RN.ref_shapley(A, G, HA), 0), rtol=1e-4, atol=1e-6)


def test_rest_target_works_with_any_method(rank):
    model, x = make_net(rank), make_input(rank)
    got = ndcam.GradCAM(model, "feat")(x, shapley.ReST([1, 2, 0]), normalize=False, upsample=False)
    idx = torch.tensor([1, 2, 0])
    A, G, _ = R.capture_reference(model, model.feat, x,
                                  lambda o: 2 * o.gather(1, idx[:, None])[:, 0] - torch.logsumexp(o, 1))
    _close_raw(got, np.maximum(R.ref_gradcam(A, G), 0))


@pytest.mark.parametrize("alpha, n_similar", [(1.0, None), (0.6, 2)])
def test_finercam_matches_reference(rank, alpha, n_similar):
    model, x = make_net(rank), make_input(rank)
    targets = [4, 0, 2]
    with torch.no_grad():
        out0 = model(x)
    score, comps = RN.ref_finer_score_fn(out0, targets, n_similar or 3, alpha)
    A, G, _ = R.capture_reference(model, model.feat, x, score)
    exp = _cam("finercam", model, alpha=alpha, n_similar=n_similar).explain(x, targets, upsample=False,
                                                                            normalize=False)
    _close_raw(exp.maps, np.maximum(R.ref_gradcam(A, G), 0))
    assert exp.targets.tolist() == targets
    assert all(t not in c for t, c in zip(targets, comps))


def test_finercam_alpha_zero_is_gradcam_and_errors(rank):
    model, x = make_net(rank), make_input(rank)
    torch.testing.assert_close(_cam("finercam", model, alpha=0.0)(x, [1, 2, 3]), ndcam.GradCAM(model, "feat")(x, [1, 2, 3]))
    with pytest.raises(ValueError, match="n_similar=5"):
        _cam("finercam", model, n_similar=5)(x)
    with pytest.raises(TypeError, match="class indices"):
        _cam("finercam", model)(x, lambda o: o[:, 0])
    with pytest.raises(ValueError, match="n_similar"):
        _cam("finercam", model, n_similar=0)


def test_dff_matches_reference(rank):
    model, x = make_net(rank), make_input(rank)
    targets = [1, 0, 3]
    idx = torch.tensor(targets)
    A, G, _ = R.capture_reference(model, model.feat, x, lambda o: o.gather(1, idx[:, None])[:, 0])
    c, s, k, iters = A.shape[1], int(np.prod(A.shape[2:])), 3, 40
    w0, h0 = factorization.nmf_init(c, s, k, seed=0)
    expected = np.maximum(RN.ref_dff(A, G, w0.numpy(), h0.numpy(), k, iters), 0)
    got = _cam("dff", model, n_concepts=k, iterations=iters)(x, targets, upsample=False, normalize=False)
    _close_raw(got, expected)


def test_dff_concepts_factorize_the_activations(rank):
    model, x = make_net(rank), make_input(rank)
    A, _, _ = R.capture_reference(model, model.feat, x, lambda o: o[:, 0])
    A = torch.as_tensor(A)
    errors = []
    for k in (1, 3, 8):
        w, h, off = factorization.dff_factorize(A, k, iterations=300)
        recon = torch.einsum("nck,nk...->nc...", w, h) + off.reshape(off.shape + (1,) * (A.ndim - 2))
        errors.append(float((recon - A).norm() / A.norm()))
        energy = w.norm(dim=1) * h.flatten(2).norm(dim=2)
        assert (energy[:, :-1] >= energy[:, 1:] - 1e-12).all()
    assert errors[0] > errors[1] > errors[2] and errors[2] < 0.15
    maps, vectors = _cam("dff", model, n_concepts=3).concepts(x)
    assert maps.shape == (3, 3, *x.shape[2:]) and vectors.shape == (3, A.shape[1], 3)
    assert maps.min() >= 0 and maps.max() <= 1


def _scorecam_path_reference(model, x, name, transform, n_samples, targets):
    A, _, _ = R.capture_reference(model, model.feat, x, lambda o: o[:, 0])
    S = RN.ref_masked_score_path(model, x, A, targets, transform, n_samples)
    return A, np.maximum(RN.ref_weighted(A, RN.ref_softmax(S)), 0)


def test_sscam_matches_reference(rank):
    model, x = make_net(rank), make_input(rank)
    targets, n, sigma = [2, 0, 4], 3, 0.5
    c = 8  # channels of model.feat
    size = tuple(x.shape[2:])

    def noisy(m, s, k):
        return m + sigma * draw("normal", size, 7, s, k, c, 11).numpy()

    _, expected = _scorecam_path_reference(model, x, "sscam", noisy, n, targets)
    got = _cam("sscam", model, n_samples=n, sigma=sigma, seed=7, batch_size=5)(x, targets, upsample=False,
                                                                               normalize=False)
    _close_raw(got, expected)


@pytest.mark.parametrize("path", ["linear", "cumulative"])
def test_iscam_matches_reference(rank, path):
    model, x = make_net(rank), make_input(rank)
    targets, n = [2, 0, 4], 4
    scales = [i / n for i in range(1, n + 1)] if path == "linear" else [sum(j / n for j in range(1, i + 1))
                                                                         for i in range(1, n + 1)]
    _, expected = _scorecam_path_reference(model, x, "iscam", lambda m, s, k: m * scales[s], n, targets)
    got = _cam("iscam", model, n_samples=n, path=path)(x, targets, upsample=False, normalize=False)
    _close_raw(got, expected)


@pytest.mark.parametrize("relative", [True, False])
def test_smoothgradcampp_matches_reference(rank, relative):
    model, x = make_net(rank), make_input(rank)
    targets, n, sigma = [1, 3, 0], 3, 0.2
    idx = torch.tensor(targets)
    A, _, _ = R.capture_reference(model, model.feat, x, lambda o: o[:, 0])
    grads = []
    rng = (x.flatten(1).amax(1) - x.flatten(1).amin(1)).reshape(-1, *([1] * (x.ndim - 1)))
    for s in range(n):
        e = draw("normal", tuple(x.shape[1:]), 3, s, 13)[None]
        noise = sigma * (rng * e if relative else e)
        _, g, _ = R.capture_reference(model, model.feat, x + noise, lambda o: o.gather(1, idx[:, None])[:, 0])
        grads.append(g)
    expected = np.maximum(RN.ref_smoothgradcampp(A, grads), 0)
    got = _cam("smoothgradcampp", model, n_samples=n, sigma=sigma, relative=relative, seed=3)(
        x, targets, upsample=False, normalize=False)
    _close_raw(got, expected)


def test_smoothgradcampp_without_noise_is_gradcampp(rank):
    model, x = make_net(rank), make_input(rank)
    torch.testing.assert_close(_cam("smoothgradcampp", model, sigma=0.0)(x, [1, 2, 3]),
                               ndcam.GradCAMPlusPlus(model, "feat")(x, [1, 2, 3]), atol=1e-6, rtol=1e-5)


# -- LeGrad on attention maps of any rank -----------------------------------------------------------------------------
class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.softmax = nn.Softmax(dim=-1)  # its output: the attention probabilities (N, heads, T, T)
        self.proj = nn.Linear(dim, dim)

    def forward(self, t):
        n, T, d = t.shape
        q, k, v = self.qkv(t).reshape(n, T, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        p = self.softmax(q @ k.transpose(-1, -2) / (d // self.heads) ** 0.5)
        return self.proj((p @ v).transpose(1, 2).reshape(n, T, d))


class AttnViT(nn.Module):
    def __init__(self, rank: int, dim: int = 8, heads: int = 2, depth: int = 2, classes: int = 3):
        super().__init__()
        self.embed = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[rank](1, dim, 2, stride=2)
        self.cls = nn.Parameter(torch.randn(1, 1, dim))
        self.attn = nn.ModuleList(Attention(dim, heads) for _ in range(depth))
        self.mlp = nn.ModuleList(nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.GELU()) for _ in range(depth))
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        t = self.embed(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls.expand(len(t), -1, -1), t], 1)
        for a, m in zip(self.attn, self.mlp):
            t = t + a(t)
            t = t + m(t)
        return self.head(t[:, 0])


GRIDS = [(1, (12,)), (2, (4, 5)), (3, (3, 2, 4))]


@pytest.mark.parametrize("rank, grid", GRIDS, ids=["1d", "2d", "3d"])
def test_legrad_on_attention_probabilities_matches_reference(rank, grid):
    torch.manual_seed(0)
    model = AttnViT(rank).double().eval()
    x = torch.randn(2, 1, *(2 * g for g in grid), dtype=torch.float64)
    layers = ["attn.0.softmax", "attn.1.softmax"]
    store = []
    hooks = [model.get_submodule(n).register_forward_hook(lambda m, i, o: store.append(o)) for n in layers]
    out = model(x)
    for h in hooks:
        h.remove()
    idx = torch.tensor([0, 2])
    grads = torch.autograd.grad(out.gather(1, idx[:, None]).sum(), store)
    expected = RN.ref_legrad([g.detach().numpy() for g in grads], 1, grid)
    # readout="model": the model's own score differentiated at every layer (the per-layer read-out: test_legrad.py)
    got = ndcam_methods.LeGrad(model, layers, grid=grid, prefix=1, readout="model")(x, [0, 2], upsample=False,
                                                                                   normalize=False)
    assert got.shape == (2, *grid)
    _close_raw(got, expected)
    # one layer, normalized, upsampled to the input
    one = ndcam_methods.LeGrad(model, layers[-1:], grid=grid, prefix=1, readout="model")(x, [0, 2])
    assert one.shape == (2, *x.shape[2:]) and torch.allclose(one.flatten(1).amax(1), torch.ones(2))


def test_legrad_errors():
    model = AttnViT(2).double().eval()
    x = torch.randn(1, 1, 8, 10, dtype=torch.float64)
    with pytest.raises(LookupError, match="do not fill the grid"):
        ndcam_methods.LeGrad(model, "attn.0.softmax", grid=(3, 3), prefix=1)(x)
    with pytest.raises(ValueError, match="either grid= .* or reshape="):
        ndcam_methods.LeGrad(model, "attn.0.softmax", grid=(4, 5), reshape=ndcam.TokenGrid((4, 5), prefix=1))
    with pytest.raises(ValueError, match="grid must be"):
        ndcam_methods.LeGrad(model, "attn.0.softmax", grid=5)


def test_legrad_on_conv_layers_is_the_mean_positive_gradient(rank):
    model, x = make_net(rank), make_input(rank)
    idx = torch.tensor([1, 1, 4])
    _, G, _ = R.capture_reference(model, model.feat, x, lambda o: o.gather(1, idx[:, None])[:, 0])
    _close_raw(_cam("legrad", model)(x, idx.tolist(), upsample=False, normalize=False), np.maximum(G, 0).mean(1))


# -- LayerCAM hierarchical fusion -------------------------------------------------------------------------------------
@pytest.mark.parametrize("gamma", [2.0, 0.7])
@pytest.mark.parametrize("upsample", [True, False])
def test_layercam_hierarchical_fusion_matches_reference(rank, gamma, upsample):
    model, x = make_net(rank), make_input(rank)
    targets = [0, 3, 1]
    idx = torch.tensor(targets)
    maps = []
    for layer in (model.act1, model.feat):
        A, G, _ = R.capture_reference(model, layer, x, lambda o: o.gather(1, idx[:, None])[:, 0])
        maps.append(np.maximum(R.ref_layercam(A, G), 0))
    size = x.shape[2:] if upsample else maps[0].shape[1:]  # act1 is the finest layer
    expected = RN.ref_layercam_fusion(maps, size, gamma)
    got = ndcam.LayerCAM(model, ["act1", "feat"], gamma=gamma)(x, targets, upsample=upsample)
    np.testing.assert_allclose(got.double().numpy(), expected, atol=2e-6)
    # gamma=None: the generic per-layer normalized mean, as GradCAM's fusion
    generic = ndcam.LayerCAM(model, ["act1", "feat"], gamma=None)(x, targets)
    a, b = (ndcam.LayerCAM(model, layer)(x, targets) for layer in ("act1", "feat"))
    torch.testing.assert_close(generic, ndcam.ops.minmax_normalize((a + b) / 2), atol=1e-6, rtol=1e-5)
    assert not torch.allclose(generic, ndcam.LayerCAM(model, ["act1", "feat"], gamma=gamma)(x, targets))


def test_layercam_gamma_is_checked():
    with pytest.raises(ValueError, match="gamma"):
        ndcam.LayerCAM(make_net(1), gamma=0)


# -- invariants generated from the registry ---------------------------------------------------------------------------
@pytest.mark.parametrize("method", NEW)
def test_twins_agree(method):
    from .conftest import randomize_bn

    torch.manual_seed(0)
    net1 = randomize_bn(TwinNet(1)).double().eval()
    x1 = make_input(1)
    m1 = _cam(method, net1)(x1, [0, 2, 4])
    assert m1.max() > 0
    for rank in (2, 3):
        twin = _twin(net1, rank)
        xr = x1.reshape(x1.shape[:2] + (1,) * (rank - 1) + x1.shape[2:])
        torch.testing.assert_close(_cam(method, twin)(xr, [0, 2, 4]).reshape(m1.shape), m1, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("method", NEW)
def test_k_targets_equal_k_calls_and_batch_equals_samples(method, rank):
    model, x = make_net(rank), make_input(rank)
    t = torch.tensor([[0, 3], [2, 2], [1, 4]])
    cam = _cam(method, model)
    exp = cam.explain(x, t)
    assert exp.maps.shape == (3, 2, *x.shape[2:]) and exp.targets.tolist() == t.tolist()
    for k in range(2):
        single = cam.explain(x, t[:, k])
        torch.testing.assert_close(exp.maps[:, k], single.maps, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(exp.scores[:, k], single.scores)
        for i in range(3):
            torch.testing.assert_close(cam(x[i : i + 1], int(t[i, k])), single.maps[i : i + 1], atol=1e-6,
                                       rtol=1e-5)


@pytest.mark.parametrize("method", NEW)
def test_hygiene(method, rank):
    model = make_net(rank)
    model.train()
    model.conv3.eval()
    before = snapshot(model)
    x = make_input(rank).requires_grad_(True)
    _cam(method, model, layers=["act1", "feat"])(x)
    assert_same(before, snapshot(model))
    assert x.grad is None and torch.is_grad_enabled()
    with pytest.raises((ValueError, TypeError, LookupError)):
        _cam(method, model)(x, 99)
    assert_same(before, snapshot(model))


@pytest.mark.parametrize("method", ["randomcam", "sscam", "smoothgradcampp"])
def test_generator_gives_fresh_draws_and_seeds_reproduce(method):
    model, x = make_net(2), make_input(2)
    g = torch.Generator().manual_seed(11)
    cam = _cam(method, model, generator=g)
    first, second = cam(x, 1), cam(x, 1)
    assert not torch.allclose(first, second)
    again = _cam(method, model, generator=torch.Generator().manual_seed(11))(x, 1)
    torch.testing.assert_close(again, first)
    with pytest.raises(TypeError, match="generator"):
        _cam(method, model, generator=11)
    with pytest.raises(TypeError, match="seed"):
        _cam(method, model, seed=1.5)


@pytest.mark.parametrize("option", [
    ("fem", {"k": -1}), ("fem", {"variant": "x"}), ("kpcacam", {"kernel": "laplace"}), ("kpcacam", {"gamma": 0}),
    ("dff", {"n_concepts": 0}), ("sscam", {"n_samples": 0}), ("sscam", {"sigma": -1.0}), ("iscam", {"path": "x"}),
    ("smoothgradcampp", {"sigma": float("nan")}), ("shapleycam", {"target": "softmax"}), ("finercam", {"alpha": "1"}),
], ids=lambda o: f"{o[0]}-{next(iter(o[1]))}" if isinstance(o, tuple) else str(o))
def test_bad_options_are_refused(option):
    name, kw = option
    with pytest.raises(ValueError):
        ndcam.get_method(name)(make_net(1), "feat", **kw)


def test_kpcacam_refuses_huge_layers():
    model, x = make_net(2), make_input(2)
    with pytest.raises(LookupError, match="max_positions"):
        _cam("kpcacam", model, max_positions=10)(x)


def test_methods_run_on_shapes_of_every_rank():
    for rank, shape in SHAPES.items():
        model = make_net(rank, dtype=torch.float32)
        x = make_input(rank, dtype=torch.float32)
        for method in NEW:
            m = _cam(method, model)(x)
            assert m.shape == (3, *shape) and m.dtype == torch.float32 and torch.isfinite(m).all()


@pytest.mark.parametrize("method", NEW)
def test_smoothing_options_work_or_are_refused(method):
    model, x = make_net(2), make_input(2)
    if method == "kpcacam":
        with pytest.raises(ValueError, match="eigen_smooth"):
            _cam(method, model, eigen_smooth=True)
    else:
        m = _cam(method, model, eigen_smooth=True)(x, [0, 1, 2])
        assert m.shape == (3, *x.shape[2:]) and torch.isfinite(m).all() and m.max() > 0
    exp = _cam(method, model, aug_smooth=True).explain(x, torch.tensor([[0, 1]] * 3))
    assert exp.maps.shape == (3, 2, *x.shape[2:]) and torch.isfinite(exp.maps).all()
    assert exp.targets.tolist() == [[0, 1]] * 3


@pytest.mark.parametrize("method", ["randomcam", "sscam", "smoothgradcampp"])
def test_threads_sharing_a_generator_instance_get_the_maps_of_sequential_calls(method):
    """The call seed lives in the call's context (drawn under the model's lock), never on the instance."""
    from concurrent.futures import ThreadPoolExecutor

    model, x = make_net(1), make_input(1)
    seq = _cam(method, model, generator=torch.Generator().manual_seed(3))
    expected = [seq(x, 1) for _ in range(4)]
    cam = _cam(method, model, generator=torch.Generator().manual_seed(3))
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda _: cam(x, 1), range(4)))
    remaining = list(expected)
    for m in got:  # the same four maps, in some order
        hit = next(i for i, e in enumerate(remaining) if torch.allclose(m, e))
        remaining.pop(hit)
    assert not any(hasattr(cam, a) for a in ("_call_seed", "seed_now")) and "state" not in vars(cam)
