"""Images: compare methods side by side on a 2D task with known evidence.

    python examples/image_scene.py [--out DIR]

Trains a tiny Conv2d network on ndcam's synthetic scenes (a ring among square frames decides the class) and draws every
fast method's map for a few held-out positives in one comparison grid, with each method's pointing game.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import ndcam
from ndcam import data, metrics, viz

METHODS = ["gradcam", "gradcam++", "xgradcam", "hirescam", "layercam", "eigencam", "fullgrad", "guidedgradcam"]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="image-out")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    x, y, _ = data.scene_task(n=256, seed=0)
    model, acc = data.train_tiny(x, y)
    xt, yt, mt = data.scene_task(n=32, seed=1)
    xp, mp = xt[yt == 1], mt[yt == 1]
    maps = {m: ndcam.explain(model, xp, m, targets=1).maps for m in METHODS}
    for m, v in maps.items():
        print(f"{m:<14s} pointing game {metrics.pointing_game(v, mp).float().mean():.2f}")
    for i in range(2):
        viz.plot_grid(xp, maps, index=i).savefig(out / f"methods_{i}.png", dpi=80)
    print(f"accuracy {acc:.2f}; comparison grids in {out}/")


if __name__ == "__main__":
    main()
