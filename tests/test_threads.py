"""Threads: concurrent calls on one model give the maps of sequential calls and leave the model as it was; calls on
different models run in parallel.

The audit behind issue 12 saw errors, wrong maps without a word (63 of 120 Score-CAM calls), the model left in eval
mode and BatchNorm statistics changed when two threads explained one model. Every method holds the model's lock
(:func:`ndcam.capture.model_lock`) for a whole call.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from torch import nn

import ndcam
from ndcam.capture import model_lock

from .conftest import GapNet, make_input, make_net
from .test_hygiene import assert_same, snapshot

ALL = ndcam.methods()
THREADS = 6


def _layer(method: str) -> str | None:
    return None if method in ("cam", "guidedbackprop", "fullgrad") else "feat"


def _model(rank: int) -> nn.Module:
    model = make_net(rank, dtype=torch.float32)
    model.train()  # a training model: a call that leaks eval mode or runs BatchNorm in train mode shows up
    model.conv3.eval()
    return model


def _run_concurrently(fn, jobs):
    barrier = threading.Barrier(len(jobs))

    def start(job):
        barrier.wait(timeout=30)
        return fn(*job)

    with ThreadPoolExecutor(len(jobs)) as pool:
        return list(pool.map(start, jobs))


@pytest.mark.parametrize("method", ALL)
@pytest.mark.parametrize("rank", [1, 2])
def test_concurrent_calls_equal_sequential_calls(method, rank):
    model = _model(rank)
    xs = [make_input(rank, n=2, seed=s, dtype=torch.float32) for s in range(THREADS)]
    targets = [s % 5 for s in range(THREADS)]
    cam = ndcam.get_method(method)(model, _layer(method))
    expected = [cam(x, t) for x, t in zip(xs, targets)]
    before = snapshot(model)
    # one shared instance, and fresh instances: both must serialize on the model
    got_shared = _run_concurrently(lambda x, t: cam(x, t), list(zip(xs, targets)))
    got_fresh = _run_concurrently(lambda x, t: ndcam.get_method(method)(model, _layer(method))(x, t), list(zip(xs, targets)))
    for e, a, b in zip(expected, got_shared, got_fresh):
        torch.testing.assert_close(a, e, rtol=0, atol=0)
        torch.testing.assert_close(b, e, rtol=0, atol=0)
    assert_same(before, snapshot(model))


def test_concurrent_mixed_methods_on_a_3d_model():
    model = _model(3)
    x = make_input(3, n=2, dtype=torch.float32)
    methods = ["gradcam", "scorecam", "ablationcam", "fullgrad", "guidedgradcam", "layercam", "eigencam", "gradcam++"]
    expected = {m: ndcam.explain(model, x, m, targets=1, layers=_layer(m)).maps for m in methods}
    before = snapshot(model)
    got = _run_concurrently(lambda m: (m, ndcam.explain(model, x, m, targets=1, layers=_layer(m)).maps), [(m,) for m in methods])
    for m, maps in got:
        torch.testing.assert_close(maps, expected[m], rtol=0, atol=0)
    assert_same(before, snapshot(model))


def test_concurrent_calls_with_automatic_layer_choice():
    """The automatic choice probes the model (eval mode, hooks) inside the lock too."""
    models = [_model(2) for _ in range(2)]
    x = make_input(2, n=2, dtype=torch.float32)
    expected = ndcam.GradCAM(models[0])(x, 1)
    before = snapshot(models[1])
    got = _run_concurrently(lambda: ndcam.GradCAM(models[1])(x, 1), [()] * THREADS)
    for g in got:
        torch.testing.assert_close(g, expected, rtol=0, atol=0)
    assert_same(before, snapshot(models[1]))


class _Rendezvous(nn.Module):
    """Waits in its first forward until the other model's forward has started too: only parallel calls get through."""

    def __init__(self, net: nn.Module, barrier: threading.Barrier):
        super().__init__()
        self.net = net
        self.barrier = barrier
        self.waited = False

    def forward(self, x):
        if not self.waited:
            self.waited = True
            self.barrier.wait(timeout=10)  # BrokenBarrierError if the two calls were serialized
        return self.net(x)


def test_different_models_run_in_parallel(rank):
    barrier = threading.Barrier(2)
    a, b = (_Rendezvous(make_net(rank, seed=s, dtype=torch.float32), barrier) for s in (0, 1))
    x = make_input(rank, dtype=torch.float32)
    got = _run_concurrently(lambda m: ndcam.GradCAM(m, "net.feat")(x, 1), [(a,), (b,)])
    torch.testing.assert_close(got[0], ndcam.GradCAM(a, "net.feat")(x, 1))
    torch.testing.assert_close(got[1], ndcam.GradCAM(b, "net.feat")(x, 1))


def test_the_lock_is_per_model_and_reentrant():
    a, b = make_net(1), make_net(1)
    assert model_lock(a) is model_lock(a) and model_lock(a) is not model_lock(b)
    with model_lock(a):  # a method calling another method on the same model (Guided Grad-CAM) does not block itself
        ndcam.GuidedGradCAM(a, "feat")(make_input(1))


def test_guided_gradients_of_a_shared_instance_under_threads():
    """Guided Backprop used to keep the gradients of a call on the instance (``_store``)."""
    model = _model(2)
    gb = ndcam.GuidedBackprop(model)
    xs = [make_input(2, n=2, seed=s, dtype=torch.float32) for s in range(THREADS)]
    expected = [gb.guided_gradients(x, s % 5) for s, x in enumerate(xs)]
    got = _run_concurrently(lambda s, x: gb.guided_gradients(x, s % 5), list(enumerate(xs)))
    for e, g in zip(expected, got):
        torch.testing.assert_close(g, e, rtol=0, atol=0)


def _state_of(obj):
    return {k: v for k, v in vars(obj).items() if not k.startswith("_legacy")}


@pytest.mark.parametrize("method", ALL)
def test_calls_leave_the_instance_as_it_was(method):
    """Method instances hold configuration only: nothing of a call is stored on them."""
    model = make_net(1, cls=GapNet) if method == "cam" else make_net(1)
    cam = ndcam.get_method(method)(model, _layer(method) if method != "cam" else None)
    before = _state_of(cam)
    cam(make_input(1), 1)
    cam(make_input(1), torch.tensor([[0, 1]] * 3))
    after = _state_of(cam)
    assert after.keys() == before.keys()
    for k, v in before.items():
        assert after[k] is v or after[k] == v, k
