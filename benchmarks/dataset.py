"""Throughput of ``explain_dataset``: samples per second on 1 and 2 ranks (torchrun, gloo), and the store's write time
against compute time.

For three workloads -- ECG-like signals (2 leads x 2048 samples), images (1 x 128 x 128) and volumes (1 x 48^3),
each with an untrained :class:`ndcam.data.TinyNet` (seeded) and Grad-CAM, maps stored in float16 at the input's
resolution -- it runs ``explain-dataset`` in fresh processes (``python -m ndcam`` for 1 rank,
``python -m torch.distributed.run --nproc_per_node 2`` for 2), one thread per rank, and reads back:

* samples per second: dataset length / the run's own time (``summary.json``; process start and rendezvous excluded);
* the wall time of the whole command (with start-up);
* compute vs write: summed over units (all ranks), the seconds inside ``ndcam.explain`` and the seconds writing the
  unit's chunks to zarr; the write rate in MB/s of map data (uncompressed float16 bytes) and the store's size on disk.

Usage::

    python benchmarks/dataset.py            # prints a Markdown table (paste it into benchmarks/RESULTS.md)
    python benchmarks/dataset.py --quick    # smaller datasets, for a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

WORKLOADS = {  # name: (shape of one sample, samples, samples for --quick, unit)
    "signals": ((2, 2048), 2048, 256, 64),
    "images": ((1, 128, 128), 1024, 128, 32),
    "volumes": ((1, 48, 48, 48), 96, 16, 4),
}


class Synthetic(torch.utils.data.Dataset):
    """Deterministic random items of one shape (generated per item: nothing held in memory)."""

    def __init__(self, shape, n: int) -> None:
        self.shape, self.n = tuple(shape), n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        g = torch.Generator().manual_seed(i)
        return {"x": torch.randn(self.shape, generator=g), "y": i % 2}


def _workload() -> tuple:
    name = os.environ.get("NDCAM_BENCH_WORKLOAD", "signals")
    shape, n, n_quick, unit = WORKLOADS[name]
    return shape, (n_quick if os.environ.get("NDCAM_BENCH_QUICK") else n), unit


def dataset() -> Synthetic:
    shape, n, _ = _workload()
    return Synthetic(shape, n)


def model() -> torch.nn.Module:
    from ndcam.data import TinyNet

    shape, _, _ = _workload()
    torch.manual_seed(0)
    return TinyNet(len(shape) - 1, shape[0], 2).eval()


def run(name: str, ranks: int, quick: bool, store: Path) -> dict:
    shape, n, unit = WORKLOADS[name][0], WORKLOADS[name][2 if quick else 1], WORKLOADS[name][3]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "NDCAM_BENCH_WORKLOAD": name, **({"NDCAM_BENCH_QUICK": "1"} if quick else {})}
    args = ["-m", "ndcam", "explain-dataset", "--model", "benchmarks.dataset:model", "--dataset",
            "benchmarks.dataset:dataset", "--out", str(store), "--batch-size", str(unit), "--dtype", "float16",
            "--no-progress"]
    if ranks > 1:
        args = ["-m", "torch.distributed.run", "--nproc_per_node", str(ranks), "--master-port", str(_port()), *args]
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise RuntimeError(f"{name} on {ranks} ranks failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    summary = json.loads((store / "summary.json").read_text())
    map_bytes = n * 2 * int(torch.tensor(shape[1:]).prod())
    disk = sum(p.stat().st_size for p in (store / "data.zarr").rglob("*") if p.is_file())
    return {"workload": name, "shape": "x".join(map(str, shape)), "n": n, "unit": unit, "ranks": ranks,
            "samples_per_s": n / summary["seconds_this_run"], "wall_s": wall,
            "compute_s": summary["compute_seconds"], "write_s": summary["write_seconds"],
            "write_mb_s": map_bytes / 1e6 / max(summary["write_seconds"], 1e-9), "map_mb": map_bytes / 1e6,
            "disk_mb": disk / 1e6}


def _port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def table(rows: list[dict]) -> str:
    lines = ["| workload | samples | unit | ranks | samples/s | command wall s | compute s | write s | write / compute "
             "| map MB/s written | maps MB (float16) | on disk MB |", "|" + "---|" * 12]
    for r in rows:
        lines.append(f"| {r['workload']} {r['shape']} | {r['n']} | {r['unit']} | {r['ranks']} | {r['samples_per_s']:.1f} "
                     f"| {r['wall_s']:.1f} | {r['compute_s']:.2f} | {r['write_s']:.2f} "
                     f"| {r['write_s'] / max(r['compute_s'], 1e-9):.2f} | {r['write_mb_s']:.0f} | {r['map_mb']:.1f} "
                     f"| {r['disk_mb']:.1f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--workloads", default=",".join(WORKLOADS))
    args = ap.parse_args(argv)
    import zarr

    import ndcam

    rows = []
    tmp = Path(tempfile.mkdtemp(prefix="ndcam-bench-dataset-"))
    try:
        for name in args.workloads.split(","):
            for ranks in (1, 2):
                store = tmp / f"{name}-{ranks}"
                rows.append(run(name, ranks, args.quick, store))
                shutil.rmtree(store)
                print(table(rows[-1:]).splitlines()[-1], flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print()
    print(f"Machine: {platform.machine()}, {os.cpu_count()} cores (shared); torch {torch.__version__}, "
          f"zarr {zarr.__version__}, ndcam {ndcam.__version__}, Python {platform.python_version()}. "
          f"Command: `python benchmarks/dataset.py{' --quick' if args.quick else ''}`; one thread per rank, gloo.")
    print()
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
