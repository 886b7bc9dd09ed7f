"""Detection: why did the detector find this box? Grad-CAM at the backbone for one predicted box at a time.

    python examples/detection.py [--out DIR] [--steps 300]

Builds a tiny CenterNet-style detector (a conv backbone at stride 4 and a dense head: per cell, class heat-map logits
and a box size), trains it for a few hundred steps on synthetic images with filled squares (class 0) and hollow
squares (class 1), and decodes its output into torchvision's format: one dict per image with ``boxes`` (x1, y1, x2,
y2), ``labels`` and ``scores`` (the sigmoid heat of the box's cell, differentiable). ``ndcam.detection.DetectionTarget``
turns that list of dicts into one score per box (the predicted boxes of the box's class overlapping it, IoU >= 0.5),
and Grad-CAM at the backbone explains every kept box of an image in one call (K boxes -> K maps). The picture shows
each box with its map; the script prints how much of each map's mass lies inside its own box.

Reading the maps: the box score comes from one cell of a 1x1-convolution head, so its gradient at the backbone is
non-zero only in that cell's receptive field. Grad-CAM averages that gradient over the whole map into one weight per
channel, so it shows where the features of the box's *class* are (every object of that class lights up); HiResCAM
(gradient x activation, no averaging) keeps the locality and shows the evidence for *this* box. Both are in the
picture.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

import ndcam  # noqa: E402
from ndcam.detection import DetectionTarget  # noqa: E402

SIZE, STRIDE, CLASSES = 64, 4, ("filled square", "hollow square")


def make_images(n: int, seed: int) -> tuple[torch.Tensor, list[list[tuple[int, int, int, int, int]]]]:
    """Images (n, 1, 64, 64) with two objects each: (x1, y1, x2, y2, label) per object, apart from each other."""
    g = torch.Generator().manual_seed(seed)
    x = 0.15 * torch.randn(n, 1, SIZE, SIZE, generator=g)
    objects = []
    for i in range(n):
        placed: list[tuple[int, int, int, int, int]] = []
        while len(placed) < 2:
            side = int(torch.randint(10, 18, (1,), generator=g))
            x1, y1 = (int(v) for v in torch.randint(2, SIZE - side - 2, (2,), generator=g))
            box = (x1, y1, x1 + side, y1 + side)
            if any(not (box[2] + 3 < b[0] or b[2] + 3 < box[0] or box[3] + 3 < b[1] or b[3] + 3 < box[1]) for b in placed):
                continue
            label = len(placed) if torch.rand(1, generator=g) < 0.5 else 1 - len(placed)
            bright = 0.7 + 0.6 * float(torch.rand(1, generator=g))
            x[i, 0, y1:y1 + side, x1:x1 + side] += bright
            if label == 1:  # hollow: clear the inside, 2-pixel walls
                x[i, 0, y1 + 2:y1 + side - 2, x1 + 2:x1 + side - 2] -= bright
            placed.append((*box, label))
        objects.append(placed)
    return x, objects


class TinyDetector(nn.Module):
    """Conv backbone (stride 4) + dense head: per cell, class heat logits and log box size; ``forward`` decodes."""

    def __init__(self, classes: int = 2, width: int = 24, threshold: float = 0.3, max_boxes: int = 10):
        super().__init__()
        self.backbone = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, width, 3, padding=2, dilation=2), nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=2, dilation=2), nn.ReLU(),
        )
        self.head = nn.Conv2d(width, classes + 1, 1)
        self.classes, self.threshold, self.max_boxes = classes, threshold, max_boxes

    def raw(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.head(self.backbone(x))
        return h[:, : self.classes], h[:, self.classes]

    def forward(self, x: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        logits, log_size = self.raw(x)
        heat = torch.sigmoid(logits)
        peaks = heat == F.max_pool2d(heat, 3, 1, 1)  # one box per local maximum
        out = []
        for n in range(len(x)):
            keep = torch.nonzero(peaks[n] & (heat[n] > self.threshold))
            scores = heat[n][keep[:, 0], keep[:, 1], keep[:, 2]]
            order = scores.argsort(descending=True)[: self.max_boxes]
            keep, scores = keep[order], scores[order]
            cy, cx = (keep[:, 1] + 0.5) * STRIDE, (keep[:, 2] + 0.5) * STRIDE
            half = torch.exp(log_size[n][keep[:, 1], keep[:, 2]]).detach() * STRIDE / 2
            boxes = torch.stack([cx - half, cy - half, cx + half, cy + half], 1)
            out.append({"boxes": boxes, "labels": keep[:, 0], "scores": scores})
        return out


def train(model: TinyDetector, steps: int, seed: int = 0) -> None:
    x, objects = make_images(256, seed)
    grid = SIZE // STRIDE
    heat = torch.zeros(len(x), model.classes, grid, grid)
    size = torch.zeros(len(x), grid, grid)
    mask = torch.zeros(len(x), grid, grid, dtype=torch.bool)
    yy, xx = torch.meshgrid(torch.arange(grid) + 0.5, torch.arange(grid) + 0.5, indexing="ij")
    for i, objs in enumerate(objects):
        for x1, y1, x2, y2, label in objs:
            cx, cy = (x1 + x2) / 2 / STRIDE, (y1 + y2) / 2 / STRIDE
            blob = torch.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * 0.8**2))
            heat[i, label] = torch.maximum(heat[i, label], blob)
            r, c = int(cy), int(cx)
            size[i, r, c], mask[i, r, c] = torch.log(torch.tensor((x2 - x1) / STRIDE)), True
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, len(x), (32,), generator=g)
        logits, log_size = model.raw(x[idx])
        weight = 1 + 20 * heat[idx].amax(1, keepdim=True)  # objects are few cells: weigh them up, in every class
        loss = F.binary_cross_entropy_with_logits(logits, heat[idx], weight=weight)
        loss = loss + F.l1_loss(log_size[mask[idx]], size[idx][mask[idx]])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="detection-out")
    ap.add_argument("--steps", type=int, default=300)
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = TinyDetector()
    train(model, args.steps)

    x, objects = make_images(4, seed=1)
    with torch.no_grad():
        dets = model(x)
    i = max(range(len(x)), key=lambda k: len(dets[k]["boxes"]))  # the image with the most boxes
    image, det = x[i:i + 1], dets[i]
    kept = det["boxes"][: max(1, int((det["scores"] > 0.5).sum()))][:4]  # confident boxes (at least the best one)
    print(f"image {i}: {len(det['boxes'])} boxes, ground truth {objects[i]}")
    if len(kept) == 0:
        print("the detector found no box (train longer: --steps)")
        return
    # K boxes of one image -> K maps from one forward pass: box (1, K, 4), label (1, K)
    target = DetectionTarget(kept[None], det["labels"][: len(kept)][None], iou_threshold=0.5)
    rows = {"Grad-CAM": ndcam.GradCAM(model, "backbone")(image, target)[0],  # (K, 64, 64)
            "HiResCAM": ndcam.HiResCAM(model, "backbone")(image, target)[0]}

    fig, axes = plt.subplots(2, len(kept) + 1, figsize=(3.0 * (len(kept) + 1), 6.2), squeeze=False)
    for r, (method, maps) in enumerate(rows.items()):
        axes[r, 0].imshow(image[0, 0].numpy(), cmap="gray")
        axes[r, 0].set_title("input and detections", fontsize=9)
        for k, (box, m) in enumerate(zip(kept.tolist(), maps)):
            x1, y1, x2, y2 = box
            label, score = int(det["labels"][k]), float(det["scores"][k])
            inside = torch.zeros_like(m, dtype=torch.bool)
            inside[max(0, round(y1)):round(y2), max(0, round(x1)):round(x2)] = True
            share = float(m[inside].sum() / m.sum().clamp_min(1e-12))
            print(f"{method:<8s} box {k}: {CLASSES[label]} score {score:.2f} at ({x1:.0f}, {y1:.0f}, {x2:.0f}, {y2:.0f}): "
                  f"{100 * share:.0f}% of the map's mass inside the box ({100 * inside.float().mean():.0f}% of the area)")
            for ax in (axes[r, 0], axes[r, k + 1]):
                ax.add_patch(plt.Rectangle((x1 - 0.5, y1 - 0.5), x2 - x1, y2 - y1, fill=False, lw=1.5,
                                           color="tab:orange" if label else "tab:cyan"))
            axes[r, k + 1].imshow(image[0, 0].numpy(), cmap="gray")
            axes[r, k + 1].imshow(m.numpy(), cmap="jet", alpha=0.45, vmin=0, vmax=1)
            axes[r, k + 1].set_title(f"{method}, box {k}: {CLASSES[label]} ({score:.2f})", fontsize=9)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("One map per detected box (DetectionTarget), read at the backbone")
    fig.tight_layout()
    fig.savefig(out / "detection.png", dpi=80)
    print(f"wrote {out / 'detection.png'}")


if __name__ == "__main__":
    main()
