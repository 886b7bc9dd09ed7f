"""Quick start: the same three lines explain a 1D, a 2D and a 3D model.

    python examples/quickstart.py [--out DIR]

Trains a tiny model per rank on ndcam's synthetic tasks (seconds on a CPU), explains held-out positives with
Grad-CAM and saves one picture per rank.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

import ndcam
from ndcam import data


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="quickstart-out")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for rank in (1, 2, 3):
        x, y, _ = data.task(rank, n=64 if rank == 3 else 128)
        model, acc = data.train_tiny(x, y, epochs=5)
        xt, yt, masks = data.task(rank, n=8, seed=1)

        exp = ndcam.explain(model, xt, method="gradcam", targets=1)     # <- the three lines
        fig = exp.plot(xt, index=1)
        fig.savefig(out / f"gradcam_{rank}d.png")

        peak_in_mask = masks.flatten(1).gather(1, exp.maps.flatten(1).argmax(1, keepdim=True))[:, 0]
        print(f"{rank}D: layer {exp.layers}, accuracy {acc:.2f}, maps {tuple(exp.maps.shape)}, "
              f"peak inside the true region for {int(peak_in_mask[yt == 1].sum())}/{int((yt == 1).sum())} positives")
    print(f"pictures in {out}/")


if __name__ == "__main__":
    torch.set_num_threads(max(1, torch.get_num_threads()))
    main()
