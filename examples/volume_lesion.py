"""Volumes: does a 3D classifier look at the lesion? Orthogonal slices, a montage and a report with a slice slider.

    python examples/volume_lesion.py [--out DIR]

Trains a tiny Conv3d network on 192 of ndcam's synthetic volumes (a Gaussian blob among hollow cubes decides the class), explains
held-out positives with several methods, scores them against the known lesion, and writes pictures plus a
self-contained HTML report.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

import ndcam
from ndcam import data, metrics, report, viz


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="volume-out")
    ap.add_argument("--n", type=int, default=192, help="training volumes (the demo's size: 192)")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    x, y, _ = data.volume_task(n=args.n, seed=0)
    model, acc = data.train_tiny(x, y)
    xt, yt, mt = data.volume_task(n=64, seed=1)
    with torch.no_grad():
        test_acc = float((model(xt).argmax(1) == yt).float().mean())
    xp, mp = xt[yt == 1], mt[yt == 1]
    rows = []
    for method in ("gradcam", "gradcam++", "layercam", "scorecam"):
        maps = ndcam.explain(model, xp, method, targets=1).maps
        rows.append([method, f"{metrics.pointing_game(maps, mp, tolerance=1).float().mean():.2f}",
                     f"{metrics.energy_pointing_game(maps, mp).mean():.2f}"])
        print(f"{method:<10s} pointing game {rows[-1][1]}  energy {rows[-1][2]}")
        if method == "gradcam":
            pointing = float(rows[-1][1])
    exp = ndcam.explain(model, xp[:1], "gradcam", targets=1)
    views = viz.plot_volume(xp[0], exp.maps[0], title="Grad-CAM: slices through the peak, and projections")
    montage = viz.plot_montage(xp[0], exp.maps[0], n=12, title="Grad-CAM montage (axial)")
    views.savefig(out / "volume_views.png", dpi=80)
    montage.savefig(out / "volume_montage.png", dpi=80)
    html = report.html_report("ndcam: 3D lesion example", [
        ("Scores", report.table(rows, ["method", "pointing game", "energy pointing game"])),
        ("Slices through the peak", report.png_bytes(views)),
        ("Montage", report.png_bytes(montage)),
        ("Slice viewer", report.volume_viewer(xp[0, 0], exp.maps[0], "v0")),
    ])
    (out / "report.html").write_text(html)
    print(f"accuracy train {acc:.2f} / test {test_acc:.2f}; pictures and report in {out}/")
    print(f"RESULT accuracy={test_acc:.3f} pointing={pointing:.3f}")


if __name__ == "__main__":
    main()
