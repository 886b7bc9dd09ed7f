"""Quality of every method on the synthetic ground-truth tasks of each rank, with random and centre baselines.

For each rank: train the tiny model of ``ndcam.data`` (seconds on a CPU, with counterfactual training: random parts
of the training inputs are zeroed), explain held-out positive samples (target class 1) with every method, and score
localization (pointing game, energy pointing game, IoU at 0.5), faithfulness (deletion and insertion AUC with the
zero baseline the model was trained with, Average Drop, Increase in Confidence, ROAD on the first 16 samples) and
sanity (Spearman correlation of the maps after cascading randomization of all weights; lower is better). Random maps
(white noise, and smooth noise with a CAM's smoothness) and a centre map (a Gaussian bump in the middle) are scored
beside the methods.

    python benchmarks/quality.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from speed import update_results  # noqa: E402

import ndcam  # noqa: E402
from ndcam import data, metrics  # noqa: E402

SLOW = {"scorecam", "ablationcam"}
ROAD_N = 16


def centre_map(shape, device) -> torch.Tensor:
    n, *spatial = shape
    grids = torch.meshgrid(*[torch.linspace(-1, 1, s, device=device) for s in spatial], indexing="ij")
    bump = torch.exp(-sum(g**2 for g in grids) / 0.2)
    return bump.expand(n, *spatial).clone()


def evaluate(model, x, masks, maps, sanity_corr):
    return {
        "pointing": float(metrics.pointing_game(maps, masks).float().mean()),
        "energy": float(metrics.energy_pointing_game(maps, masks).mean()),
        "iou": float(metrics.mask_iou(maps, masks).mean()),
        "deletion": float(metrics.deletion_auc(model, x, maps, 1, steps=20, baseline="zero").mean()),
        "insertion": float(metrics.insertion_auc(model, x, maps, 1, steps=20, baseline="zero").mean()),
        "avg_drop": metrics.average_drop(model, x, maps, 1),
        "increase": metrics.increase_in_confidence(model, x, maps, 1),
        "road": float(metrics.road(model, x[:ROAD_N], maps[:ROAD_N], 1).combined.mean()),
        "sanity": sanity_corr,
    }


def run(quick: bool, log=print):
    tables = {}
    for rank in (1, 2, 3):
        t0 = time.time()
        x, y, _ = data.task(rank, seed=0)
        model, acc = data.train_tiny(x, y)
        xt, yt, mt = data.task(rank, n=48 if quick else 96, seed=1)
        with torch.no_grad():
            test_acc = float((model(xt).argmax(1) == yt).float().mean())
        xp, mp = xt[yt == 1], mt[yt == 1]
        rows = {}
        for name in ndcam.methods():
            if quick and name in SLOW:
                continue
            maps = ndcam.explain(model, xp, name, targets=1).maps
            sanity = metrics.randomization_sanity(name, model, xp[:8], 1).final
            rows[name] = evaluate(model, xp, mp, maps, sanity)
        rows["(random noise map)"] = evaluate(model, xp, mp, data.random_maps(mp.shape, smooth=1), float("nan"))
        rows["(random smooth map)"] = evaluate(model, xp, mp, data.random_maps(mp.shape, smooth=4), float("nan"))
        rows["(centre map)"] = evaluate(model, xp, mp, centre_map(mp.shape, xp.device), float("nan"))
        tables[rank] = (acc, test_acc, len(xp), rows)
        log(f"rank {rank}: train acc {acc:.2f}, test acc {test_acc:.2f}, {time.time() - t0:.0f} s")
    return tables


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=str(HERE / "RESULTS.md"))
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    tables = run(args.quick)
    names = {1: "1D ECG-like beat trains (one abnormal beat decides)", 2: "2D ring among square frames",
             3: "3D blob (lesion) among hollow cubes"}
    lines = [
        f"### Quality on synthetic ground-truth tasks{' (quick)' if args.quick else ''}",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores; torch {torch.__version__}, ndcam {ndcam.__version__}. "
        f"Command: `python benchmarks/quality.py{' --quick' if args.quick else ''}`. Held-out positives, target class 1. "
        "Models trained with label smoothing 0.1 and random removal (counterfactual training, `data.train_tiny`). "
        "Pointing game, energy pointing game, IoU, insertion AUC, Increase in Confidence (%), ROAD (combined "
        f"(LeRF - MoRF) / 2, first {ROAD_N} samples): higher is better; deletion AUC, Average Drop (%), sanity (Spearman "
        "correlation after randomizing all weights): lower is better. Deletion and insertion replace elements by 0. "
        "Baselines: white noise, smooth noise (uniform noise on a 4x coarser grid, upsampled: a CAM's smoothness) and "
        "a centred Gaussian bump.",
    ]
    for rank, (acc, test_acc, n, rows) in tables.items():
        lines += ["", f"**{names[rank]}** -- train accuracy {acc:.2f}, test accuracy {test_acc:.2f}, {n} positives", "",
                  "| method | pointing | energy PG | IoU | deletion AUC | insertion AUC | Average Drop | Increase in Conf. "
                  "| ROAD | sanity |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for name, r in rows.items():
            sanity = "-" if r["sanity"] != r["sanity"] else f"{r['sanity']:.2f}"
            lines.append(f"| {name} | {r['pointing']:.2f} | {r['energy']:.2f} | {r['iou']:.2f} | {r['deletion']:.3f} | "
                         f"{r['insertion']:.3f} | {r['avg_drop']:.1f} | {r['increase']:.1f} | {r['road']:+.3f} | {sanity} |")
    update_results(Path(args.out), f"quality{':quick' if args.quick else ''}", "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
