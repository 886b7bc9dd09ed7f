"""Speed and memory of the gradient family against the model's own no-grad forward pass (and MONAI when installed).

For each case -- a ResNet-50-like 2D net (batch 8, 224x224), a 1D ECG ResNet (12 leads x 5000 samples, batch 64) and a
3D ResNet (96^3, batch 2) -- it reports:

* time of each method / time of ``model(x)`` under ``torch.no_grad()`` (median of repeats, after a warm-up);
* time of Grad-CAM with K=10 targets per sample / time with one target;
* extra peak memory of one call / extra peak memory of one no-grad forward, each measured in a fresh process
  (peak RSS reset through ``/proc/self/clear_refs``, large allocations forced to ``mmap`` so freed memory leaves RSS).

Usage::

    python benchmarks/speed.py                # full run, writes the table into benchmarks/RESULTS.md
    python benchmarks/speed.py --quick        # smaller inputs, for a smoke run
    python benchmarks/speed.py --device cuda  # on a GPU (memory then from torch.cuda.max_memory_allocated)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import ndcam  # noqa: E402
from ndcam.models import ecg_net, resnet18_3d, resnet50_like, volume_net  # noqa: E402

METHODS = ["gradcam", "gradcam++", "xgradcam", "hirescam", "gradcamelementwise", "layercam", "eigengradcam", "eigencam"]


def cases(quick: bool):
    s = 0.5 if quick else 1.0
    return {
        "resnet50-2d": (lambda: resnet50_like(2, 3, 1000), (8, 3, int(224 * s), int(224 * s)), "layer4"),
        "ecg-1d": (lambda: ecg_net(12, 5), (64, 12, int(5000 * s)), "layer4"),
        "volume-3d": (lambda: resnet18_3d(1, 2), (2, 1, *(int(96 * s),) * 3), "layer4"),
        "volume-3d-light": (lambda: volume_net(1, 2), (2, 1, *(int(96 * s),) * 3), "layer4"),
    }


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _once(fn, device) -> float:
    sync(device)
    t = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t


def timeit(fn, device, reps: int) -> float:
    for _ in range(2):  # warm-up: first calls of a shape pay for kernel/primitive selection
        fn()
    return statistics.median(_once(fn, device) for _ in range(reps))


def ratio(fn, base, device, reps: int) -> float:
    """median(fn) / median(base), the two timed alternately so drifts (turbo, other load) hit both alike."""
    for _ in range(2):
        fn()
        base()
    a, b = [], []
    for _ in range(reps):
        b.append(_once(base, device))
        a.append(_once(fn, device))
    return statistics.median(a) / statistics.median(b)


def _no_grad(model, x):
    def run():
        with torch.no_grad():
            return model(x)

    return run


def build(case: str, quick: bool, device: torch.device):
    make, shape, layer = cases(quick)[case]
    torch.manual_seed(0)
    model = make().to(device).eval()
    x = torch.randn(*shape, device=device)
    return model, x, layer


def monai_gradcam(model, layer):
    try:
        from monai.visualize import GradCAM as MonaiGradCAM
    except Exception:
        return None
    cam = MonaiGradCAM(model, target_layers=layer)
    return lambda x, t=None: cam(x, class_idx=t)


# ---------------------------------------------------------------- memory, in a fresh process
def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _rss_kib() -> int:
    return _status_kib("VmRSS")


def _hwm_kib() -> int:
    return _status_kib("VmHWM")


def peak_extra_mib(run) -> float:
    """Extra peak RSS (MiB) of ``run()`` over the RSS before it (the peak is reset first via clear_refs)."""
    base = _rss_kib()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak RSS to the current RSS
    run()
    return (_hwm_kib() - base) / 1024


def memory_child(case: str, mode: str, quick: bool, device: str) -> dict:
    dev = torch.device(device)
    model, x, layer = build(case, quick, dev)
    if mode == "inference":
        run = lambda: model(x)  # noqa: E731
    elif mode == "monai-gradcam":
        run = monai_gradcam(model, layer)
        if run is None:
            return {"extra_mib": None}
        run_ = run
        run = lambda: run_(x)  # noqa: E731
    else:
        cam = ndcam.get_method(mode)(model, layer)
        run = lambda: cam(x)  # noqa: E731
    if dev.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        with torch.no_grad() if mode == "inference" else _Null():
            out = run()
        torch.cuda.synchronize()
        del out
        return {"extra_mib": (torch.cuda.max_memory_allocated() - base) / 2**20}
    def once():
        with torch.no_grad() if mode == "inference" else _Null():
            run()

    return {"extra_mib": peak_extra_mib(once)}


class _Null:
    def __enter__(self):
        return None

    def __exit__(self, *a):
        return False


def child_extra_mib(argv: list[str]) -> float | None:
    """Run ``python argv...`` in a fresh process (large allocations forced to mmap, so freed memory leaves RSS) and
    return the ``extra_mib`` it prints as its last JSON line, or None if it failed."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
    res = subprocess.run([sys.executable, *argv], capture_output=True, text=True, env=env, check=False)
    if res.returncode != 0:
        print(res.stderr[-2000:], file=sys.stderr)
        return None
    return json.loads(res.stdout.strip().splitlines()[-1])["extra_mib"]


def measure_memory(case: str, mode: str, quick: bool, device: str) -> float | None:
    return child_extra_mib([__file__, "--child", case, mode, "--device", device] + (["--quick"] if quick else []))


# ---------------------------------------------------------------- main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--cases", nargs="*", default=None)
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--out", default=str(HERE / "RESULTS.md"))
    ap.add_argument("--child", nargs=2, metavar=("CASE", "MODE"))
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(memory_child(*args.child, args.quick, args.device)))
        return 0

    device = torch.device(args.device)
    rows = []
    for case in args.cases or list(cases(args.quick)):
        model, x, layer = build(case, args.quick, device)
        fwd = _no_grad(model, x)
        t_fwd = timeit(fwd, device, args.reps)
        row = {"case": case, "shape": "x".join(map(str, x.shape)), "forward_s": t_fwd}
        for m in METHODS:
            cam = ndcam.get_method(m)(model, layer)
            row[m] = ratio(lambda: cam(x), fwd, device, args.reps)
        cam = ndcam.GradCAM(model, layer)
        k10 = torch.stack([torch.randperm(model.fc.out_features)[:10] if model.fc.out_features >= 10 else
                           torch.arange(10) % model.fc.out_features for _ in range(x.shape[0])]).to(device)
        row["k10_vs_k1"] = ratio(lambda: cam(x, k10), lambda: cam(x), device, args.reps)
        peer = monai_gradcam(model, layer)
        row["monai_gradcam"] = ratio(lambda: peer(x), fwd, device, args.reps) if peer else None
        if not args.no_memory:
            inf = measure_memory(case, "inference", args.quick, args.device)
            row["mem_inference_mib"] = inf
            for mode in ("gradcam", "gradcam++", "monai-gradcam"):
                extra = measure_memory(case, mode, args.quick, args.device)
                row[f"mem_{mode}"] = None if (extra is None or not inf) else extra / inf
        rows.append(row)
        print(json.dumps(row), flush=True)
    write_results(rows, args)
    return 0


def fmt(v, spec="{:.2f}"):
    return "n/a" if v is None else spec.format(v)


def write_results(rows, args) -> None:
    try:
        import monai

        monai_v = monai.__version__
    except Exception:
        monai_v = "not installed"
    dev = args.device
    if dev.startswith("cuda") and torch.cuda.is_available():
        dev_name = torch.cuda.get_device_name(0)
    else:
        dev_name = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads"
    lines = [
        f"### Speed and memory vs the model's own forward pass ({dev}{', quick' if args.quick else ''})",
        "",
        f"Machine: {dev_name}; Python {platform.python_version()}, torch {torch.__version__}, ndcam "
        f"{ndcam.__version__}, MONAI {monai_v}. Command: `python benchmarks/speed.py"
        f"{' --quick' if args.quick else ''}{' --device ' + dev if dev != 'cpu' else ''}`. Median of {args.reps} runs.",
        "",
        "Time of one call / time of one no-grad forward of the same batch (1.00 = free):",
        "",
        "| case | input | forward (s) | " + " | ".join(METHODS) + " | K=10 / K=1 | MONAI Grad-CAM |",
        "|---|---|---|" + "---|" * len(METHODS) + "---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['case']} | {r['shape']} | {r['forward_s']:.3f} | "
            + " | ".join(fmt(r[m]) for m in METHODS)
            + f" | {fmt(r['k10_vs_k1'])} | {fmt(r['monai_gradcam'])} |"
        )
    if rows and "mem_inference_mib" in rows[0]:
        lines += [
            "",
            "Extra peak memory of one call / extra peak memory of one no-grad forward (fresh process each):",
            "",
            "| case | inference extra (MiB) | Grad-CAM | Grad-CAM++ | MONAI Grad-CAM |",
            "|---|---|---|---|---|",
        ]
        for r in rows:
            lines.append(
                f"| {r['case']} | {fmt(r['mem_inference_mib'], '{:.0f}')} | {fmt(r['mem_gradcam'])} | "
                f"{fmt(r['mem_gradcam++'])} | {fmt(r['mem_monai-gradcam'])} |"
            )
    block = "\n".join(lines) + "\n"
    update_results(Path(args.out), f"speed:{dev}{':quick' if args.quick else ''}", block)


def update_results(out: Path, key: str, block: str) -> None:
    """Replace (or append) the block between ``<!-- key -->`` markers in RESULTS.md."""
    start, end = f"<!-- {key} -->", f"<!-- /{key} -->"
    text = out.read_text() if out.exists() else "# Benchmark results\n\n"
    new = f"{start}\n{block}{end}"
    if start in text:
        pre, rest = text.split(start, 1)
        post = rest.split(end, 1)[1] if end in rest else ""
        text = pre + new + post
    else:
        text = text.rstrip("\n") + "\n\n" + new + "\n"
    out.write_text(text)
    print(f"wrote {out}")


if __name__ == "__main__":
    raise SystemExit(main())
