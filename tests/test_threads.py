"""Threads: concurrent calls on one model -- or on models that share modules -- give the maps of sequential calls and
leave the model as it was; calls on models that share nothing run in parallel.

The audit behind issue 12 saw errors, wrong maps without a word (63 of 120 Score-CAM calls), the model left in eval
mode and BatchNorm statistics changed when two threads explained one model; the same happened with two heads on one
backbone while each root model had a lock of its own. Every method holds all modules of its model
(:func:`ndcam.capture.model_lock`) for a whole call, taken at once so that no order of locking can deadlock.
"""

from __future__ import annotations

import gc
import threading
import time
import weakref
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from torch import nn

import ndcam
from ndcam.capture import _CLAIMS, model_lock

from .conftest import BN, CONV, GAP, GapNet, make_input, make_net, randomize_bn
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


def _blocks(hold: nn.Module, call: nn.Module, seconds: float = 0.2) -> bool:
    """Whether taking ``call``'s lock in another thread waits while this thread holds ``hold``'s."""
    entered = threading.Event()

    def other():
        with model_lock(call):
            entered.set()

    with model_lock(hold):
        t = threading.Thread(target=other, daemon=True)
        t.start()
        waited = not entered.wait(seconds)
    t.join(5)
    assert entered.is_set() and not t.is_alive()
    return waited


def test_the_lock_covers_every_module_and_is_reentrant():
    a, b = make_net(1), make_net(1)
    wrapper = _Wrap(a)
    assert _blocks(a, a) and _blocks(a, wrapper) and _blocks(wrapper, a) and _blocks(a.feat, a)
    assert not _blocks(a, b) and not _blocks(a.feat, a.conv1)
    with model_lock(a):  # a method calling another method on the same model (Guided Grad-CAM) does not block itself
        ndcam.GuidedGradCAM(a, "feat")(make_input(1))
        with model_lock(wrapper), model_lock(a.feat):  # nor a call on a wrapper or on a submodule of what it holds
            ndcam.GradCAM(wrapper, "net.feat")(make_input(1))
    assert _CLAIMS.held() == 0


def test_the_lock_keeps_nothing_once_released():
    """Only modules held now are recorded: nothing stays behind for a collected model, after success or error."""
    model = make_net(2)
    ndcam.GradCAM(model, "feat")(make_input(2), 1)
    with pytest.raises(ndcam.ForwardError):
        ndcam.GradCAM(model, "feat")(make_input(1), 1)  # a 1D input into a 2D model: the forward fails inside the lock
    assert _CLAIMS.held() == 0
    ref = weakref.ref(model)
    del model
    gc.collect()
    assert ref() is None


def test_an_error_while_locking_holds_nothing():
    class Broken(nn.Module):
        def modules(self):  # the walk over the modules fails half-way
            yield self
            raise RuntimeError("broken modules()")

    with pytest.raises(RuntimeError, match="broken"), model_lock(Broken()):
        pass
    assert _CLAIMS.held() == 0
    a = make_net(1)
    with pytest.raises(ZeroDivisionError), model_lock(a):
        raise ZeroDivisionError
    assert _CLAIMS.held() == 0

    def take():
        with model_lock(a):
            return True

    assert _run_threads(take, timeout=2) == [("ok", True)]  # another thread takes every module at once
    assert _CLAIMS.held() == 0


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


# -- models that share modules --------------------------------------------------------------------------------------
# Hooks, ``training`` flags and BatchNorm statistics live on the *modules*, so two root models that share a backbone
# (two heads, one model wrapped twice, a model and one of its own submodules) must not be explained at the same time.

SHARED_ROUNDS = 8


class _Slow(nn.Module):
    """Identity whose forward sleeps: two forwards through it are sure to overlap in time."""

    def __init__(self, seconds: float = 0.004):
        super().__init__()
        self.seconds = seconds

    def forward(self, x):
        time.sleep(self.seconds)
        return x


class _Wrap(nn.Module):
    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x)


def _backbone(rank: int) -> nn.Module:
    torch.manual_seed(0)
    body = nn.Sequential(OrderedDict(
        conv1=CONV[rank](2, 6, 3, padding=1), bn=BN[rank](6), slow=_Slow(), feat=nn.ReLU(),
        conv2=CONV[rank](6, 6, 3, padding=1), act=nn.Tanh()))
    return randomize_bn(body)


def _classifier(rank: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(GAP[rank](1), nn.Flatten(), nn.Linear(6, 5))


def _sharing_pair(kind: str, rank: int) -> tuple[tuple[nn.Module, str], tuple[nn.Module, str]]:
    """Two root models that share modules, each with the dotted name of the shared layer ``feat``."""
    backbone = _backbone(rank)
    if kind == "two heads":
        heads = [nn.Sequential(backbone, _classifier(rank, seed)) for seed in (1, 2)]
        return (heads[0], "0.feat"), (heads[1], "0.feat")
    model = nn.Sequential(backbone, _classifier(rank, 1))
    if kind == "wrapped twice":
        return (_Wrap(model), "net.0.feat"), (_Wrap(model), "net.0.feat")
    assert kind == "model and its submodule"
    return (_Wrap(model), "net.0.feat"), (model, "0.feat")


@pytest.mark.parametrize("kind", ["two heads", "wrapped twice", "model and its submodule"])
def test_models_sharing_modules_give_the_maps_of_sequential_calls(kind):
    """Before the per-module locks each root had its own lock: the two calls hooked the same layer at once, and maps
    came out wrong (or the call raised), the shared backbone was left in eval mode and its BatchNorm statistics moved."""
    (a, la), (b, lb) = _sharing_pair(kind, 2)
    a.train(), b.train()  # training flags: a call that saved the other's eval flags leaves the model in eval mode
    xs = [make_input(2, n=2, seed=s, dtype=torch.float32) for s in range(SHARED_ROUNDS)]
    expected = {(m, i): ndcam.GradCAM(m, layer)(x, i % 5) for m, layer in ((a, la), (b, lb)) for i, x in enumerate(xs)}
    before_a, before_b = snapshot(a), snapshot(b)
    barrier = threading.Barrier(2)

    def worker(model, layer):
        out = []
        for i, x in enumerate(xs):
            barrier.wait(timeout=10)  # both calls of round i start together
            out.append(ndcam.GradCAM(model, layer)(x, i % 5))
        return out

    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(worker, a, la), pool.submit(worker, b, lb)]
        got = [f.result(timeout=60) for f in futures]
    for (model, _), maps in zip(((a, la), (b, lb)), got):
        for i, m in enumerate(maps):
            torch.testing.assert_close(m, expected[model, i], rtol=0, atol=0, msg=f"{kind}: round {i}")
    assert_same(before_a, snapshot(a))
    assert_same(before_b, snapshot(b))


def _run_threads(*fns, timeout: float = 10.0) -> list:
    """Run each ``fn`` in a daemon thread; the threads still alive after ``timeout`` s are reported (deadlock)."""
    results: list = [None] * len(fns)

    def run(i, fn):
        try:
            results[i] = ("ok", fn())
        except BaseException as err:  # noqa: BLE001 - handed to the test
            results[i] = ("error", err)

    threads = [threading.Thread(target=run, args=(i, fn), daemon=True) for i, fn in enumerate(fns)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    hung = [i for i, t in enumerate(threads) if t.is_alive()]
    assert not hung, f"threads {hung} still waiting after {timeout} s: deadlock"
    return results


def test_nested_locks_of_sharing_models_in_opposite_orders_do_not_deadlock():
    """Thread 1 holds head A and then explains head B; thread 2 holds B and then explains A (A and B share the
    backbone). With one lock per root this deadlocks: each thread holds the root lock the other waits for."""
    (a, la), (b, lb) = _sharing_pair("two heads", 1)
    x = make_input(1, n=2, dtype=torch.float32)
    expected_a, expected_b = ndcam.GradCAM(a, la)(x, 1), ndcam.GradCAM(b, lb)(x, 1)
    one_holds_a, two_holds_b = threading.Event(), threading.Event()

    def one():
        with model_lock(a):
            one_holds_a.set()
            two_holds_b.wait(0.3)  # old code: thread 2 takes B meanwhile; per-module locks: it waits for the backbone
            return ndcam.GradCAM(a, la)(x, 1), ndcam.GradCAM(b, lb)(x, 1)

    def two():
        one_holds_a.wait(5)
        with model_lock(b):
            two_holds_b.set()
            return ndcam.GradCAM(b, lb)(x, 1), ndcam.GradCAM(a, la)(x, 1)

    (s1, r1), (s2, r2) = _run_threads(one, two)
    assert s1 == s2 == "ok", (r1, r2)
    for got_a, got_b in (r1, r2[::-1]):
        torch.testing.assert_close(got_a, expected_a, rtol=0, atol=0)
        torch.testing.assert_close(got_b, expected_b, rtol=0, atol=0)


def test_calls_on_reversed_module_orders_do_not_deadlock():
    """Two roots that list the same shared blocks in opposite orders (``modules()`` order): locks taken in each
    root's own module order would deadlock; many overlapping calls must all finish."""
    first, second = _backbone(1)[:3], _backbone(1)[3:]

    class Forward(nn.Module):
        def __init__(self):
            super().__init__()
            self.first, self.second, self.head = first, second, _classifier(1, 1)

        def forward(self, x):
            return self.head(self.second(self.first(x)))

    class Reversed(nn.Module):  # registers the shared blocks the other way round, runs them in the same order
        def __init__(self):
            super().__init__()
            self.head, self.second, self.first = _classifier(1, 2), second, first

        def forward(self, x):
            return self.head(self.second(self.first(x)))

    a, b = Forward(), Reversed()
    x = make_input(1, n=2, dtype=torch.float32)
    expected = [ndcam.GradCAM(m, "second.feat")(x, 1) for m in (a, b)]
    barrier = threading.Barrier(2)

    def loop(m):
        def run():
            out = []
            for _ in range(6):
                barrier.wait(timeout=10)
                out.append(ndcam.GradCAM(m, "second.feat")(x, 1))
            return out
        return run

    results = _run_threads(loop(a), loop(b), timeout=20)
    for (status, maps), e in zip(results, expected):
        assert status == "ok", maps
        for m in maps:
            torch.testing.assert_close(m, e, rtol=0, atol=0)


def test_nested_locks_of_disjoint_models_in_opposite_orders_raise_instead_of_hanging():
    """The one true deadlock: thread 1 holds A and waits for B, thread 2 holds B and waits for A (A and B share
    nothing, so both first locks succeed). One thread gets a clear error and releases; the other finishes."""
    a, b = make_net(1, seed=0, dtype=torch.float32), make_net(1, seed=1, dtype=torch.float32)
    x = make_input(1, n=2, dtype=torch.float32)
    barrier = threading.Barrier(2)

    def nested(outer, inner):
        def run():
            with model_lock(outer):
                barrier.wait(timeout=5)
                return ndcam.GradCAM(inner, "feat")(x, 1)
        return run

    results = _run_threads(nested(a, b), nested(b, a))
    statuses = sorted(s for s, _ in results)
    assert statuses == ["error", "ok"], results
    err = next(r for s, r in results if s == "error")
    assert isinstance(err, ndcam.DeadlockError) and "deadlock" in str(err), err


class _Stamped(nn.Module):
    """Records (start, end) of every forward in ``log``; sleeps so that parallel calls visibly overlap."""

    def __init__(self, log: list, seconds: float = 0.05):
        super().__init__()
        self.log, self.seconds = log, seconds

    def forward(self, x):
        t0 = time.perf_counter()
        time.sleep(self.seconds)
        self.log.append((t0, time.perf_counter()))
        return x


def _stamped_net(log: list) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(OrderedDict(conv=nn.Conv1d(2, 4, 3, padding=1), stamp=_Stamped(log), feat=nn.ReLU(),
                                     pool=nn.AdaptiveAvgPool1d(1), flat=nn.Flatten(), fc=nn.Linear(4, 3)))


def _overlap(log_a: list, log_b: list) -> float:
    """Seconds during which a forward of one model ran while a forward of the other did."""
    return sum(max(0.0, min(e1, e2) - max(s1, s2)) for s1, e1 in log_a for s2, e2 in log_b)


def test_disjoint_models_still_overlap_in_time():
    """Per-module locks serialize only calls that share a module: two unrelated models -- even next to a third
    call that shares a backbone with one of them -- keep running at the same time."""
    log_a, log_b = [], []
    a, b = _stamped_net(log_a), _stamped_net(log_b)
    c = _Wrap(a)  # shares every module with a: serialized with a, parallel with b
    x = make_input(1, n=1, dtype=torch.float32)
    barrier = threading.Barrier(3)

    def run(m, layer):
        def go():
            barrier.wait(timeout=10)
            return ndcam.GradCAM(m, layer)(x, 0)
        return go

    results = _run_threads(run(a, "feat"), run(b, "feat"), run(c, "net.feat"))
    assert all(s == "ok" for s, _ in results), results
    assert _overlap(log_a, log_b) > 0.02, (log_a, log_b)  # a and b ran together
    calls_a = sorted(log_a)  # a's own forwards and c's (through a's modules) never overlap
    assert all(e <= s2 + 1e-4 for (_, e), (s2, _) in zip(calls_a, calls_a[1:])), calls_a


def test_a_metric_and_an_explanation_on_a_shared_backbone_leave_the_flags_as_they_were():
    """A metric switches the model to eval for its duration; an explanation of a model sharing the backbone that
    ran in between saved those eval flags and restored them after the metric had put the training flags back."""
    (a, la), (b, _) = _sharing_pair("two heads", 1)
    a.train(), b.train()
    x = make_input(1, n=2, dtype=torch.float32)
    maps = torch.rand(2, *x.shape[2:])
    expected = ndcam.metrics.deletion_auc(b, x, maps, 1, steps=4)
    barrier = threading.Barrier(2)

    def explain():
        for _ in range(6):
            barrier.wait(timeout=10)
            ndcam.GradCAM(a, la)(x, 1)

    def metric():
        out = []
        for _ in range(6):
            barrier.wait(timeout=10)
            out.append(ndcam.metrics.deletion_auc(b, x, maps, 1, steps=4))
        return out

    (s1, r1), (s2, r2) = _run_threads(explain, metric, timeout=20)
    assert s1 == s2 == "ok", (r1, r2)
    for auc in r2:
        torch.testing.assert_close(auc, expected, rtol=0, atol=0)
    assert all(m.training for m in [*a.modules(), *b.modules()])


# -- plain inference next to an explanation --------------------------------------------------------------------------
# A server answers predictions from the model while another thread explains one: the predictions take no ndcam lock,
# so ndcam's hooks (which record activations, zero Ablation-CAM's channels, guide the ReLUs) must act on the
# explaining thread's forwards only.


@pytest.mark.parametrize("method", ["gradcam", "ablationcam", "scorecam", "guidedgradcam", "fullgrad", "cam"])
def test_plain_inference_next_to_an_explanation_is_untouched(method):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.ReLU(), _Slow(0.002), nn.Conv2d(6, 6, 3, padding=1),
                          nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 3)).double().eval()
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    probe = torch.randn(3, 1, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        expected = model(probe)
    layer = None if method == "fullgrad" else "4"
    reference = ndcam.explain(model, x, method, targets=1, layers=layer).maps
    stop, outputs, maps, errors = threading.Event(), [], [], []

    def serve():
        while not stop.is_set():
            try:
                with torch.no_grad():
                    outputs.append(model(probe))
            except Exception as err:  # noqa: BLE001 -- before the fix ndcam's hooks raised into the server
                errors.append(err)
                return

    def explain():
        for _ in range(3):
            maps.append(ndcam.explain(model, x, method, targets=1, layers=layer).maps)

    server = threading.Thread(target=serve)
    server.start()
    try:
        explain()
    finally:
        stop.set()
        server.join()
    assert not errors, f"the serving thread failed: {errors[0]!r}"
    assert len(outputs) >= 3  # the forwards did interleave with the explanations
    for out in outputs:
        torch.testing.assert_close(out, expected, rtol=0, atol=0)
    for m in maps:
        torch.testing.assert_close(m, reference, rtol=0, atol=1e-12)


def test_a_lock_left_on_another_thread_is_released():
    """``with model_lock(m)`` inside a generator that another thread closes: the modules are given back."""
    net = nn.Linear(2, 2)
    lock = model_lock(net)

    def held():
        with lock:
            yield 1

    gen = held()
    next(gen)
    assert _CLAIMS.held() == 1
    errors = []

    def close():
        try:
            gen.close()
        except BaseException as err:  # noqa: BLE001
            errors.append(err)

    t = threading.Thread(target=close)
    t.start()
    t.join()
    assert not errors and _CLAIMS.held() == 0
    ndcam.explain(nn.Sequential(nn.Conv1d(1, 2, 3), nn.AdaptiveAvgPool1d(1), nn.Flatten(), net), torch.randn(1, 1, 8))


def test_layers_run_in_worker_threads_get_a_clear_error():
    from concurrent.futures import ThreadPoolExecutor as Pool

    class Threaded(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU())
            self.fc = nn.Linear(4, 3)
            self.pool = Pool(1)

        def forward(self, x):
            return self.fc(self.pool.submit(self.conv, x).result().mean((2, 3)))

    with pytest.raises(ndcam.LayerError, match="worker threads"):
        ndcam.GradCAM(Threaded().eval(), "conv")(torch.randn(2, 1, 8, 8), 0)
    dp = nn.DataParallel(nn.Sequential(nn.Conv2d(1, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)))
    dp.device_ids = [0, 1]  # as on two GPUs: the replicas would run in worker threads
    with pytest.raises(ndcam.InputTypeError, match="explain model.module"):
        ndcam.GradCAM(dp, "module.0")
