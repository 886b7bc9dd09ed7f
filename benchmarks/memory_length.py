"""Peak memory against signal length for every method: each method's extra memory must grow linearly with length.

For each length L (12-lead signals, one record ``(1, 12, L)``) and each registered method, one call runs in a fresh
process; its extra peak RSS is divided by the extra peak RSS of the model's own no-grad forward at that length
(fresh process too). A method whose memory is linear in L keeps a roughly constant ratio down a column; a dense
``(L, L_layer)`` matrix (Score-CAM before issue 12) makes its ratio grow with L.

The model is a small 1D ResNet (``ndcam.models.ResNet(1, (1, 1, 1, 1), 12, 5, base=8)``, the layout of
``ndcam.models.ecg_net`` with fewer, narrower blocks so the slow methods finish on 2 CPU cores). Score-CAM and
Ablation-CAM need one forward per channel of the layer (64 here); at the longest lengths they run with
``top_k=8`` (Score-CAM) or on fewer lengths (Ablation-CAM, see ``--slow-max``): their peak is that of one perturbed
batch, which ``top_k`` does not change.

    python benchmarks/memory_length.py [--lengths 5000 20000 100000 500000] [--methods gradcam scorecam]
    python benchmarks/memory_length.py --quick      # 5k and 20k only
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from speed import child_extra_mib, peak_extra_mib  # noqa: E402

import ndcam  # noqa: E402
from ndcam.models import ResNet  # noqa: E402

LENGTHS = (5_000, 20_000, 100_000, 500_000)
#: methods that run one forward per channel (declared ``perturbative``): above ``--slow-max`` Score-CAM uses top_k,
#: the others are skipped
PERTURBATION = tuple(m for m in ndcam.methods() if ndcam.get_method(m).perturbative)


def build(length: int):
    torch.manual_seed(0)
    model = ResNet(1, (1, 1, 1, 1), 12, 5, base=8).eval()
    return model, torch.randn(1, 12, length)


def child(method: str, length: int, top_k: int | None) -> dict:
    """Extra peak RSS (MiB) of one call of ``method`` (or the no-grad forward, ``inference``) in this process."""
    model, x = build(length)
    if method == "inference":
        def run():
            with torch.no_grad():
                model(x)
    else:
        opts = {"top_k": top_k} if (method == "scorecam" and top_k) else {}
        cam = ndcam.get_method(method)(model, None, **opts)

        def run():
            cam(x, targets=1)
    t0 = time.perf_counter()
    extra = peak_extra_mib(run)
    return {"extra_mib": extra, "seconds": time.perf_counter() - t0}


def measure(method: str, length: int, top_k: int | None = None) -> float | None:
    argv = [__file__, "--child", method, str(length)] + (["--top-k", str(top_k)] if top_k else [])
    return child_extra_mib(argv)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lengths", type=int, nargs="*", default=None)
    ap.add_argument("--methods", nargs="*", default=None)
    ap.add_argument("--quick", action="store_true", help="5k and 20k samples only")
    ap.add_argument("--slow-max", type=int, default=100_000,
                    help="longest length for Ablation-CAM and for Score-CAM on all channels (longer: Score-CAM "
                         "top_k=8, Ablation-CAM skipped)")
    ap.add_argument("--child", nargs=2, metavar=("METHOD", "LENGTH"))
    ap.add_argument("--top-k", type=int, default=None)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child[0], int(args.child[1]), args.top_k)))
        return 0
    lengths = args.lengths or (LENGTHS[:2] if args.quick else LENGTHS)
    methods = args.methods or sorted(set(ndcam.methods()))
    rows: dict[str, dict[int, str]] = {}
    base = {}
    for length in lengths:
        base[length] = measure("inference", length)
        print(f"L={length}: inference forward extra peak {base[length]:.1f} MiB", flush=True)
    for m in methods:
        rows[m] = {}
        for length in lengths:
            top_k = None
            if m in PERTURBATION and length > args.slow_max:
                if m != "scorecam":
                    rows[m][length] = "skipped"
                    continue
                top_k = 8
            extra = measure(m, length, top_k)
            inf = base[length]
            cell = "failed" if extra is None or not inf else f"{extra / inf:.2f}" + (" (top_k=8)" if top_k else "")
            rows[m][length] = cell
            print(f"{m:20s} L={length:>7d}: {cell}  ({extra} MiB)", flush=True)
    print()
    print(f"Extra peak RSS of one call / extra peak RSS of one no-grad forward, (1, 12, L), fresh process each "
          f"({platform.processor() or platform.machine()}, torch {torch.__version__}):")
    print()
    print("| method | " + " | ".join(f"L={n:,}" for n in lengths) + " |")
    print("|---|" + "---|" * len(lengths))
    print("| inference forward (MiB) | " + " | ".join(f"{base[n]:.1f}" for n in lengths) + " |")
    for m in methods:
        print(f"| {m} | " + " | ".join(rows[m][n] for n in lengths) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
