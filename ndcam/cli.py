"""Command line: ``ndcam demo``, ``ndcam methods``, ``ndcam layers``.

``ndcam demo [--out DIR]`` is the main job: it trains tiny models on the synthetic 1D, 2D and 3D tasks of
:mod:`ndcam.data`, explains held-out positives with several methods, scores the pointing game against the known
ground truth, and writes pictures and one self-contained HTML report into ``DIR`` (default ``ndcam-demo``).

Errors are one clear line on stderr and exit code 2 (``--debug`` shows the traceback).
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from ._errors import NdcamError

DEMO_METHODS = ["gradcam", "gradcam++", "hirescam", "layercam", "xgradcam", "eigencam"]
RANK_NAMES = {1: "1D ECG-like beat trains (abnormal beat)", 2: "2D scenes (ring among squares)",
              3: "3D volumes (blob among cubes)"}


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()


def pointing_game(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Hit when a map's maximum falls inside the ground-truth mask: ``(N,)`` bool."""
    flat = maps.reshape(maps.shape[0], -1)
    peak = flat.argmax(1)
    return masks.reshape(masks.shape[0], -1).gather(1, peak[:, None])[:, 0]


def demo(out: Path, quick: bool = False, log=print) -> dict:
    """Run the demo into ``out``; returns the scores table ``{rank: {method: pointing game}}``."""
    from . import data, explain, viz

    t0 = time.time()
    results: dict[int, dict[str, float]] = {}
    sections = []
    files: dict[str, bytes] = {}
    for rank in (1, 2, 3):
        n_train = {1: 256, 2: 256, 3: 96}[rank] // (2 if quick else 1)
        x, y, mask = data.task(rank, n=n_train, seed=0)
        model, acc = data.train_tiny(x, y, epochs={1: 6, 2: 8, 3: 8}[rank])
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
        grid = _png(viz.plot_grid(xt, maps, index=0, fs=360.0 if rank == 1 else None))
        view = _png(explain(model, xt, method="gradcam", targets=1).plot(xt, index=0, **({"fs": 360.0} if rank == 1 else {})))
        files[f"rank{rank}_methods.png"] = grid
        files[f"rank{rank}_gradcam.png"] = view
        log(f"[{rank}D] {RANK_NAMES[rank]}: train acc {acc:.2f}, test acc {test_acc:.2f}, pointing game "
            + ", ".join(f"{k} {v:.2f}" for k, v in results[rank].items()))
        sections.append((rank, acc, test_acc, grid, view))
    report = _report(sections, results, time.time() - t0)
    files["report.html"] = report.encode()
    # write atomically: nothing half-written is left in the output folder
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
    log(f"wrote {len(files)} files to {out} in {time.time() - t0:.0f} s (open {out / 'report.html'})")
    return results


def _report(sections, results, seconds: float) -> str:
    from . import __version__

    def img(b: bytes) -> str:
        return f'<img src="data:image/png;base64,{base64.b64encode(b).decode()}" style="max-width:100%">'

    rows = "".join(
        f"<tr><td>{r}D</td>" + "".join(f"<td>{results[r][m]:.2f}</td>" for m in DEMO_METHODS) + "</tr>" for r in results
    )
    body = [
        "<h1>ndcam demo</h1>",
        f"<p>ndcam {html.escape(__version__)}, torch {html.escape(torch.__version__)}, {seconds:.0f} s. Tiny models trained "
        "on synthetic tasks with known evidence; maps of held-out positive samples (target class 1).</p>",
        "<h2>Pointing game (map maximum inside the ground-truth region)</h2>",
        "<table border=1 cellpadding=4><tr><th>rank</th>"
        + "".join(f"<th>{html.escape(m)}</th>" for m in DEMO_METHODS) + f"</tr>{rows}</table>",
    ]
    for rank, acc, test_acc, grid, view in sections:
        body += [f"<h2>{rank}D: {html.escape(RANK_NAMES[rank])}</h2>",
                 f"<p>train accuracy {acc:.2f}, test accuracy {test_acc:.2f}</p>", img(view), img(grid)]
    return ("<!doctype html><html><head><meta charset='utf-8'><title>ndcam demo</title>"
            "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}</style></head><body>"
            + "\n".join(body) + "</body></html>")


def _cmd_layers(args) -> int:
    from .layers import list_layers

    factory = args.model
    if ":" not in factory:
        raise NdcamError(f"--model must be package.module:factory, got {factory!r}")
    mod, fn = factory.split(":", 1)
    import importlib

    model = getattr(importlib.import_module(mod), fn)()
    shape = tuple(int(s) for s in args.shape.split(","))
    for info in list_layers(model, torch.zeros(shape)):
        print(info)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``ndcam`` console script and ``python -m ndcam``."""
    ap = argparse.ArgumentParser(prog="ndcam", description="Class Activation Maps for 1D, 2D and 3D PyTorch models")
    ap.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("demo", help="train tiny 1D/2D/3D models on synthetic tasks, explain them, write a report")
    d.add_argument("--out", default="ndcam-demo", help="output folder (default: ndcam-demo)")
    d.add_argument("--quick", action="store_true", help="smaller training sets")
    sub.add_parser("methods", help="list method names")
    lay = sub.add_parser("layers", help="list candidate layers with output shapes")
    lay.add_argument("--model", required=True, help="package.module:factory returning an nn.Module")
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
