"""Score-CAM and Ablation-CAM against the bound they cannot beat: forwarding their N*C perturbed inputs.

For each case, the bound is the time of ``model(batch)`` over ready-made batches of ``batch_size`` inputs holding all
N*C perturbed inputs (no mask building, no scoring); the ratio is ndcam's full call over that bound. Memory: extra
peak RSS of a Score-CAM call on a 3D volume for several ``batch_size`` values (fresh process each), beside the
extra peak of one plain forward of a batch of that size.

    python benchmarks/perturbation.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from speed import child_extra_mib, peak_extra_mib, ratio, timeit, update_results  # noqa: E402

import ndcam  # noqa: E402
from ndcam.models import ResNet, resnet18_3d, vgg_like  # noqa: E402


def cases(quick: bool):
    q = 2 if quick else 1
    return {
        "vgg-2d": (lambda: vgg_like(2, 3, 10, widths=(16, 32, 64)), (4, 3, 64 // q, 64 // q), "features.13"),
        "resnet-1d": (lambda: ResNet(1, (1, 1, 1, 1), 12, 5, base=8), (4, 12, 2000 // q), "layer4"),
        "resnet18-3d": (lambda: resnet18_3d(1, 2, base=16), (2, 1, *(48 // q,) * 3), "layer4"),
        "resnet-3d-light": (lambda: ResNet(3, (1, 1, 1, 1), 1, 2, base=4), (2, 1, *(48 // q,) * 3), "layer4"),
    }


def build(case, quick):
    make, shape, layer = cases(quick)[case]
    torch.manual_seed(0)
    return make().eval(), torch.randn(*shape), layer


def bound_fn(model, x, layer, batch_size: int):
    """A callable forwarding N*C inputs (x repeated: same cost as masked copies) in batches of batch_size."""
    with torch.no_grad():
        store = {}
        h = model.get_submodule(layer).register_forward_hook(lambda m, i, o: store.update(c=o.shape[1]))
        model(x)
        h.remove()
    total = x.shape[0] * store["c"]
    per = max(1, batch_size // x.shape[0]) * x.shape[0]
    batch = x.repeat(per // x.shape[0], *([1] * (x.ndim - 1)))

    def run():
        with torch.no_grad():
            done = 0
            while done < total:
                b = batch[: min(per, total - done)]
                model(b)
                done += b.shape[0]

    return run


def memory_child(mode: str, batch_size: int, quick: bool) -> dict:
    model, x, layer = build("resnet-3d-light", quick)
    if mode == "forward":
        batch = x.repeat(max(1, batch_size // x.shape[0]), 1, 1, 1, 1)
        run = lambda: model(batch)  # noqa: E731
    else:
        cam = ndcam.ScoreCAM(model, layer, batch_size=batch_size)
        run = lambda: cam(x)  # noqa: E731
    def once():
        with torch.no_grad():
            run()

    return {"extra_mib": peak_extra_mib(once)}


def memory(mode: str, batch_size: int, quick: bool):
    return child_extra_mib([__file__, "--child", mode, str(batch_size)] + (["--quick"] if quick else []))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--out", default=str(HERE / "RESULTS.md"))
    ap.add_argument("--child", nargs=2)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(memory_child(args.child[0], int(args.child[1]), args.quick)))
        return 0
    try:
        import pytorch_grad_cam  # noqa: F401

        pgc = "installed"
    except Exception:
        pgc = "not installed (it needs torchvision, which comes only as a CUDA build here)"
    rows = []
    for case in cases(args.quick):
        model, x, layer = build(case, args.quick)
        bound = bound_fn(model, x, layer, args.batch_size)
        sc = ndcam.ScoreCAM(model, layer, batch_size=args.batch_size, progress=False)
        ab = ndcam.AblationCAM(model, layer, batch_size=args.batch_size, progress=False)
        dev = torch.device("cpu")
        row = {"case": case, "shape": "x".join(map(str, x.shape)), "bound_s": timeit(bound, dev, args.reps),
               "scorecam": ratio(lambda: sc(x), bound, dev, args.reps),
               "ablationcam": ratio(lambda: ab(x), bound, dev, args.reps)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    mem = []
    for bs in (8, 32, 128):
        mem.append((bs, memory("forward", bs, args.quick), memory("scorecam", bs, args.quick)))
        print(mem[-1], flush=True)
    q = " --quick" if args.quick else ""
    lines = [
        f"### Perturbation methods vs their bound (cpu{', quick' if args.quick else ''})",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores; torch {torch.__version__}. Command: "
        f"`python benchmarks/perturbation.py{q}`; batch_size {args.batch_size}; medians of {args.reps} alternating "
        f"runs. pytorch-grad-cam: {pgc}.",
        "",
        "Time of one call / time of forwarding its N*C perturbed inputs in plain batches (1.00 = the bound):",
        "",
        "| case | input | bound (s) | Score-CAM | Ablation-CAM |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {r['case']} | {r['shape']} | {r['bound_s']:.2f} | {r['scorecam']:.2f} | {r['ablationcam']:.2f} |"
              for r in rows]
    _, x3, _ = build("resnet-3d-light", args.quick)
    lines += ["", f"Score-CAM extra peak memory on a 3D volume {tuple(x3.shape)} (fresh process each), beside one plain "
              "forward of a batch of batch_size inputs:", "", "| batch_size | forward (MiB) | Score-CAM (MiB) |",
              "|---|---|---|"]
    lines += [f"| {bs} | {f:.0f} | {s:.0f} |" if f is not None and s is not None else f"| {bs} | n/a | n/a |"
              for bs, f, s in mem]
    update_results(Path(args.out), f"perturbation:cpu{':quick' if args.quick else ''}", "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
