"""Command line: ``ndcam demo``, ``ndcam methods``, ``ndcam layers``.

``ndcam demo [--out DIR]`` is the main job: it trains tiny models on the synthetic 1D, 2D and 3D tasks of
:mod:`ndcam.data`, explains held-out positives with several methods, scores the pointing game against the known
ground truth, and writes pictures and one self-contained HTML report into ``DIR`` (default ``ndcam-demo``).

Errors are one clear line on stderr and exit code 2 (``--debug`` shows the traceback).
"""

from __future__ import annotations

import argparse
import html
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

DEMO_METHODS = ["gradcam", "gradcam++", "hirescam", "layercam", "xgradcam", "eigencam"]
RANK_NAMES = {1: "1D ECG-like beat trains (abnormal beat)", 2: "2D scenes (ring among square frames)",
              3: "3D volumes (blob among hollow cubes)"}


def pointing_game(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Hit when a map's maximum falls inside the ground-truth mask: ``(N,)`` bool."""
    flat = maps.reshape(maps.shape[0], -1)
    peak = flat.argmax(1)
    return masks.reshape(masks.shape[0], -1).gather(1, peak[:, None])[:, 0]


def demo(out: Path, quick: bool = False, log=print) -> dict:
    """Run the demo into ``out``; returns the scores table ``{rank: {method: pointing game}}``."""
    from . import data, explain, viz
    from .report import png_bytes

    t0 = time.time()
    results: dict[int, dict[str, float]] = {}
    sections = []
    files: dict[str, bytes] = {}
    for rank in (1, 2, 3):
        n_train = {1: 256, 2: 256, 3: 192}[rank] // (2 if quick else 1)
        x, y, mask = data.task(rank, n=n_train, seed=0)
        model, acc = data.train_tiny(x, y)
        xt, yt, mt = data.task(rank, n=32, seed=1)
        pos = yt == 1
        xt, mt = xt[pos], mt[pos]
        with torch.no_grad():
            test_acc = float((model(data.task(rank, n=32, seed=1)[0]).argmax(1) == yt).float().mean())
        maps = {}
        results[rank] = {}
        for m in DEMO_METHODS:
            exp = explain(model, xt, method=m, targets=1)
            maps[m] = exp.maps
            results[rank][m] = float(pointing_game(exp.maps, mt).float().mean())
        grid = png_bytes(viz.plot_grid(xt, maps, index=0, fs=360.0 if rank == 1 else None))
        exp = explain(model, xt, method="gradcam", targets=1)
        view = png_bytes(exp.plot(xt, index=0, **({"fs": 360.0} if rank == 1 else {})))
        files[f"rank{rank}_methods.png"] = grid
        files[f"rank{rank}_gradcam.png"] = view
        log(f"[{rank}D] {RANK_NAMES[rank]}: train acc {acc:.2f}, test acc {test_acc:.2f}, pointing game "
            + ", ".join(f"{k} {v:.2f}" for k, v in results[rank].items()))
        extra = (xt[0, 0], exp.maps[0]) if rank == 3 else None
        sections.append((rank, acc, test_acc, grid, view, extra))
    files["report.html"] = _report(sections, results, time.time() - t0).encode()
    _write_atomic(out, files)
    log(f"wrote {len(files)} files to {out} in {time.time() - t0:.0f} s (open {out / 'report.html'})")
    return results


def _report(sections, results, seconds: float) -> str:
    from . import __version__
    from .report import html_report, table, volume_slider

    blocks: list = [("", f"<p>ndcam {html.escape(__version__)}, torch {html.escape(torch.__version__)}, {seconds:.0f} s. "
                         "Tiny models trained on synthetic tasks with known evidence; maps of held-out positive samples "
                         "(target class 1).</p>"),
                    ("Pointing game (map maximum inside the ground-truth region)",
                     table([[f"{r}D"] + [f"{results[r][m]:.2f}" for m in DEMO_METHODS] for r in results],
                           ["rank"] + DEMO_METHODS))]
    for rank, acc, test_acc, grid, view, extra in sections:
        blocks += [(f"{rank}D: {RANK_NAMES[rank]}", f"<p>train accuracy {acc:.2f}, test accuracy {test_acc:.2f}</p>"),
                   ("", view), ("", grid)]
        if extra is not None:
            blocks.append(("Grad-CAM slice by slice", volume_slider(extra[0], extra[1], f"vol{rank}")))
    return html_report("ndcam demo", blocks)


def _write_atomic(out: Path, files: dict[str, bytes]) -> None:
    """Write every file into a temporary folder next to ``out`` and move them in: nothing half-written is left."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".ndcam-", dir=out.parent))
    try:
        for name, blob in files.items():
            (tmp / name).write_bytes(blob)
        out.mkdir(parents=True, exist_ok=True)
        for name in files:
            os.replace(tmp / name, out / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _cmd_layers(args) -> int:
    from .io import load_model
    from .layers import list_layers

    model = load_model(args.model, getattr(args, "weights", None))
    shape = tuple(int(s) for s in args.shape.split(","))
    for info in list_layers(model, torch.zeros(shape)):
        print(info)
    return 0


def _cmd_explain(args) -> int:
    from . import viz
    from .explain import explain
    from .io import load_input, load_model, save_maps
    from .methods import get_method
    from .report import html_report, png_bytes, table, volume_slider

    cls = get_method(args.method)  # unknown method: clear error before loading anything heavy
    model = load_model(args.model, args.weights, args.device)
    x, info = load_input(args.input, single=args.single, spectrogram=args.spectrogram)
    x = x.to(args.device)
    if args.fs:
        info.fs = args.fs
    targets = None
    if args.target:
        ts = [int(t) for t in args.target]
        targets = ts[0] if len(ts) == 1 else torch.tensor([ts] * x.shape[0], device=x.device)
    options = {}
    if cls.registry_name in ("scorecam", "ablationcam"):
        options = {"batch_size": args.batch_size, "progress": True}
    layers = args.layer or None
    print(f"ndcam: {cls.__name__} on {args.input} {tuple(x.shape)} ({info.kind})", file=sys.stderr)
    exp = explain(model, x, method=cls, targets=targets, layers=layers, **options)
    files: dict[str, bytes] = {}
    rank = x.ndim - 2
    blocks: list = []
    settings = [["method", cls.registry_name], ["layers", ", ".join(exp.layers) or "-"], ["model", args.model],
                ["weights", args.weights or "-"], ["input", f"{args.input} ({info.kind})"], ["shape", tuple(x.shape)]]
    blocks.append(("Settings", table(settings, ["setting", "value"])))
    sc = exp.scores if exp.scores.ndim == 2 else exp.scores[:, None]
    tg = None if exp.targets is None else (exp.targets if exp.targets.ndim == 2 else exp.targets[:, None])
    rows = [[i, "-" if tg is None else tg[i].tolist(), [round(float(v), 4) for v in sc[i]]] for i in range(len(sc))]
    blocks.append(("Scores", table(rows, ["sample", "target", "score"])))
    for i in range(min(x.shape[0], args.max_pictures)):
        m = exp.maps[i] if exp.scores.ndim == 1 else exp.maps[i, 0]
        if info.kind == "spectrogram":
            fig = viz.plot_spectrogram(x[i], m, freqs=info.extra.get("freqs"), times=info.extra.get("times"))
        elif rank == 1:
            fig = viz.plot_signal(x[i], m, fs=info.fs, leads=info.channels)
        elif rank == 2:
            fig = viz.plot_image(x[i], m)
        elif rank == 3:
            fig = viz.plot_volume(x[i], m)
            blocks.append((f"sample {i}: slices", volume_slider(x[i, 0].cpu(), m.cpu(), f"s{i}")))
        else:
            continue
        files[f"sample{i}.png"] = png_bytes(fig)
        blocks.append((f"sample {i}", files[f"sample{i}.png"]))
    files["report.html"] = html_report(f"ndcam: {cls.__name__}", blocks).encode()
    files["scores.json"] = json.dumps({"method": cls.registry_name, "layers": exp.layers, "rows": rows}).encode()
    out = Path(args.out)
    tmp = Path(tempfile.mkdtemp(prefix=".ndcam-maps-"))
    try:
        for name in save_maps(exp.maps, info, tmp):
            files[name] = (tmp / name).read_bytes()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _write_atomic(out, files)
    print(f"wrote {', '.join(sorted(files))} to {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``ndcam`` console script and ``python -m ndcam``."""
    ap = argparse.ArgumentParser(prog="ndcam", description="Class Activation Maps for 1D, 2D and 3D PyTorch models")
    ap.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("demo", help="train tiny 1D/2D/3D models on synthetic tasks, explain them, write a report")
    d.add_argument("--out", default="ndcam-demo", help="output folder (default: ndcam-demo)")
    d.add_argument("--quick", action="store_true", help="smaller training sets")
    e = sub.add_parser("explain", help="explain a model on an input file")
    e.add_argument("--model", required=True, help="package.module:factory, or a torch.export archive (.pt2)")
    e.add_argument("--weights", help="state dict for a factory model")
    e.add_argument("--input", required=True, help=".npy/.npz/.pt, PNG/JPEG, WAV, NIfTI (.nii/.nii.gz), WFDB (.hea)")
    e.add_argument("--method", default="gradcam", help="a name from `ndcam methods` (default gradcam)")
    e.add_argument("--layer", action="append", help="target layer (dotted name); repeat to fuse several")
    e.add_argument("--target", action="append", help="class index; repeat for K maps per sample (default: top-1)")
    e.add_argument("--out", default="ndcam-out", help="output folder (default ndcam-out)")
    e.add_argument("--single", action="store_true", help="the array is one sample (C, *spatial), not a batch")
    e.add_argument("--spectrogram", action="store_true", help="turn WAV audio into a log-power spectrogram")
    e.add_argument("--fs", type=float, help="sampling rate for the time axis of signals")
    e.add_argument("--device", default="cpu")
    e.add_argument("--batch-size", type=int, default=64, help="perturbed inputs per forward (Score-/Ablation-CAM)")
    e.add_argument("--max-pictures", type=int, default=8)
    sub.add_parser("methods", help="list method names")
    lay = sub.add_parser("layers", help="list candidate layers with output shapes")
    lay.add_argument("--model", required=True, help="package.module:factory, or a torch.export archive (.pt2)")
    lay.add_argument("--weights", help="state dict for a factory model")
    lay.add_argument("--shape", required=True, help="input shape, e.g. 1,12,5000")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "methods":
            from .methods import methods

            print("\n".join(methods()))
            return 0
        if args.cmd == "demo":
            demo(Path(args.out), quick=args.quick)
            return 0
        if args.cmd == "layers":
            return _cmd_layers(args)
        if args.cmd == "explain":
            return _cmd_explain(args)
    except KeyboardInterrupt:
        print("ndcam: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # one clear line, no traceback unless --debug
        if args.debug:
            raise
        print(f"ndcam: error: {type(err).__name__}: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
