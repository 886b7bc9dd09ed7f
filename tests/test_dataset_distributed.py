"""explain_dataset on 2 gloo ranks under torchrun: SIGKILL a worker mid-run, resume (by hand and with
--max-restarts), and check that every unit is committed exactly once with maps bit-identical to ndcam.explain."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import ndcam
from ndcam.dataset import open_explanations

from . import dataset_fixtures as F

pytest.importorskip("zarr")
ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rendezvous(kind: str) -> list[str]:
    if kind == "static":
        return ["--master-port", str(free_port())]
    return ["--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{free_port()}"]


def torchrun(out: Path, n: int, unit: int, env: dict, *extra: str, restarts: int = 0, wait: bool = True,
             rdzv: str = "static"):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", *rendezvous(rdzv),
           "--max-restarts", str(restarts), "-m", "ndcam", "explain-dataset",
           "--model", "tests.dataset_fixtures:signal_net", "--dataset", "tests.dataset_fixtures:signals",
           "--out", str(out), "--batch-size", str(unit), "--dtype", "float32", *extra]
    full = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "NDCAM_TEST_N": str(n), **env}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=full, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)  # its own process group: the test can stop torchrun and workers
    if not wait:
        return proc
    try:
        text, _ = proc.communicate(timeout=240)
    finally:
        stop(proc)
    return proc.returncode, text


def stop(proc: subprocess.Popen) -> None:
    """Kill what is left of a torchrun started by this test (its process group: the agent and its workers)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def check_store(out: Path, n: int, unit: int) -> None:
    """Every unit committed exactly once; maps, scores, targets, labels equal ndcam.explain on the same units."""
    units = [json.loads(line)["unit"] for line in (out / "commits.log").read_text().splitlines()]
    assert sorted(units) == list(range(-(-n // unit)))
    ex = open_explanations(out)
    assert ex.done.all()
    ds, net = F.Signals(n=n), F.signal_net()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the workers
    try:
        for lo in range(0, n, unit):
            hi = min(n, lo + unit)
            exp = ndcam.explain(net, torch.stack([ds[i]["x"] for i in range(lo, hi)]))
            assert torch.equal(ex.maps[lo:hi], exp.maps), f"unit {lo // unit}"
            assert torch.equal(torch.from_numpy(ex.scores[lo:hi]), exp.scores)
            assert ex.targets[lo:hi].tolist() == exp.targets.tolist()
    finally:
        torch.set_num_threads(threads)
    assert ex.labels.tolist() == ds.y.tolist()
    assert not (out / "lock").exists()
    assert json.loads((out / "summary.json").read_text())["samples_done"] == n


@pytest.mark.slow
def test_two_ranks_sigkill_then_resume(tmp_path):
    out, n, unit = tmp_path / "store", 30, 3
    flag = tmp_path / "killed"
    # item 16 is in unit 5, which round-robin gives to rank 1: that worker SIGKILLs itself
    rc, text = torchrun(out, n, unit, {"NDCAM_TEST_KILL_AT": "16", "NDCAM_TEST_KILL_FLAG": str(flag)})
    assert rc != 0 and flag.exists(), text
    done = open_explanations(out).done
    assert not done.all() and not done[15:18].any()
    rc, text = torchrun(out, n, unit, {})  # the same command again resumes
    assert rc == 0, text
    check_store(out, n, unit)
    # a resume with other settings is refused on every rank
    rc, text = torchrun(out, n, unit, {}, "--method", "hirescam")
    assert rc != 0 and "method: store has 'gradcam', this run asks 'hirescam'" in text


@pytest.mark.slow
def test_max_restarts_resume_after_external_sigkill(tmp_path):
    out, n, unit = tmp_path / "store", 40, 2
    pids = tmp_path / "pids"
    pids.mkdir()
    proc = torchrun(out, n, unit, {"NDCAM_TEST_PID_DIR": str(pids), "NDCAM_TEST_SLEEP": "0.02"}, restarts=1,
                    wait=False, rdzv="c10d")
    try:
        deadline = time.time() + 120
        while len(list((out / "done").glob("*.json")) if (out / "done").exists() else []) < 3:
            assert time.time() < deadline and proc.poll() is None, proc.communicate()[0]
            time.sleep(0.01)
        time.sleep(random.uniform(0, 0.1))  # a random moment: reading, computing or writing
        victim = [p for p in pids.iterdir() if p.name.startswith("1.")][0]
        os.kill(int(victim.name.split(".")[1]), signal.SIGKILL)
        text, _ = proc.communicate(timeout=240)
    finally:
        stop(proc)
    assert proc.returncode == 0, text
    assert len([p for p in pids.iterdir() if p.name.startswith("1.")]) == 2  # rank 1 ran twice: killed, restarted
    check_store(out, n, unit)
