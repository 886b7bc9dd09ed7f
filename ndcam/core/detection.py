"""A ready-made target for object detectors of any rank (torchvision-style outputs: one dict per sample).

A detector returns, per sample, a dict with ``boxes`` ``(M, 2r)``, ``labels`` ``(M,)`` and ``scores`` ``(M,)`` (the
layout of torchvision's Faster R-CNN / RetinaNet / FCOS in eval mode, and of MONAI's RetinaNet detector for 3D).
:class:`DetectionTarget` turns that into one score per sample to explain: the summed score of the predicted boxes of
a given class that overlap a given box (IoU at least ``iou_threshold``). The scores keep their graph, so every
gradient method explains "why this box"; the boxes and labels only select.

Box layout: ``(lo_1, ..., lo_r, hi_1, ..., hi_r)`` -- the low corner, then the high corner, in the detector's own
axis order: ``(x1, y1, x2, y2)`` for torchvision in 2D, ``(x1, x2)`` for an interval on a 1D signal,
``(x1, y1, z1, x2, y2, z2)`` for MONAI's default 3D ``"xyzxyz"`` mode (``(z1, y1, x1, z2, y2, x2)`` if the detector
uses that order). The IoU does not depend on the order of the axes, so the reference box only has to be written in
the same order as the detector's predictions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from .errors import InputError, InputTypeError

__all__ = ["DetectionTarget", "box_iou"]


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Intersection over union of boxes of any rank: ``a`` ``(K, 2r)``, ``b`` ``(M, 2r)`` -> ``(K, M)``.

    Boxes are ``(lo_1..lo_r, hi_1..hi_r)``; an empty box (``hi <= lo`` on an axis) has volume 0 and IoU 0.

    Example:
        >>> box_iou(torch.tensor([[0., 0, 2, 2]]), torch.tensor([[1., 1, 3, 3], [0, 0, 2, 2]]))
        tensor([[0.1429, 1.0000]])
    """
    if a.shape[-1] != b.shape[-1] or a.shape[-1] % 2:
        raise InputError(f"boxes must be (K, 2r) with the same even width, got {tuple(a.shape)} and {tuple(b.shape)}")
    r = a.shape[-1] // 2
    lo = torch.maximum(a[:, None, :r], b[None, :, :r])
    hi = torch.minimum(a[:, None, r:], b[None, :, r:])
    inter = (hi - lo).clamp_min(0).prod(-1)
    vol_a = (a[:, r:] - a[:, :r]).clamp_min(0).prod(-1)
    vol_b = (b[:, r:] - b[:, :r]).clamp_min(0).prod(-1)
    union = vol_a[:, None] + vol_b[None, :] - inter
    return torch.where(union > 0, inter / union.clamp_min(torch.finfo(union.dtype).tiny), torch.zeros_like(union))


class DetectionTarget:
    """Target for detectors: summed score of the predicted boxes of ``label`` with IoU >= ``iou_threshold`` with ``box``.

    Args:
        box: the reference box ``(2r,)`` for every sample, ``(N, 2r)`` one per sample, or ``(N, K, 2r)`` K per sample
            (then the scores are ``(N, K)``: K maps from one forward pass). Layout: see the module docstring.
        label: the class of the reference box(es): an int, or ``(N,)`` / ``(N, K)`` like ``box``.
        iou_threshold: minimum IoU of a predicted box with the reference box to count.
        boxes_key, labels_key, scores_key: keys of the per-sample dicts.

    Returns (when called on the model output): ``(N,)`` scores, or ``(N, K)``. A sample where no predicted box
    matches scores 0 (its map is then all-zero, with ndcam's constant-map warning).

    Example:
        >>> out = [{"boxes": torch.tensor([[10., 10, 20, 20], [0, 0, 5, 5]]), "labels": torch.tensor([1, 1]),
        ...         "scores": torch.tensor([0.9, 0.8])}]
        >>> DetectionTarget([11., 10, 21, 20], label=1)(out)
        tensor([0.9000])
    """

    def __init__(self, box: Any, label: int | Sequence[int] | torch.Tensor, iou_threshold: float = 0.5, *,
                 boxes_key: str = "boxes", labels_key: str = "labels", scores_key: str = "scores") -> None:
        self.box = torch.as_tensor(box, dtype=torch.float64)
        if self.box.ndim not in (1, 2, 3) or self.box.shape[-1] == 0 or self.box.shape[-1] % 2:
            raise InputError(
                f"box must be (2r,), (N, 2r) or (N, K, 2r) with 2r = twice the spatial rank (lo corner then hi "
                f"corner), got shape {tuple(self.box.shape)}"
            )
        if bool((self.box[..., self.box.shape[-1] // 2:] < self.box[..., : self.box.shape[-1] // 2]).any()):
            raise InputError(f"box must be (lo_1..lo_r, hi_1..hi_r) with hi >= lo, got {self.box.tolist()}")
        if isinstance(label, bool):
            raise InputTypeError("label must be a class index (int), not a bool")
        self.label = torch.as_tensor(label)
        if self.label.is_floating_point():
            raise InputTypeError(f"label must be integer class indices, got {self.label.dtype}")
        if not 0 < iou_threshold <= 1:
            raise InputError(f"iou_threshold must lie in (0, 1], got {iou_threshold}")
        self.iou_threshold = float(iou_threshold)
        self.keys = (boxes_key, labels_key, scores_key)

    def __repr__(self) -> str:
        return (f"DetectionTarget(box={self.box.tolist()}, label={self.label.tolist()}, "
                f"iou_threshold={self.iou_threshold})")

    def _per_sample(self, n: int) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """Reference boxes ``(N, K, 2r)`` and labels ``(N, K)``, and whether K was asked for."""
        box, multi = self.box, self.box.ndim == 3
        if box.ndim == 1:
            box = box.expand(n, 1, -1)
        elif box.ndim == 2:
            box = box[:, None]
        if box.shape[0] != n:
            raise InputError(f"box gives {box.shape[0]} rows for a batch of {n} samples; pass one box or one per sample")
        label = self.label
        label = label.reshape(1, 1).expand(n, box.shape[1]) if label.ndim == 0 else label.reshape(n, -1)
        if label.shape != box.shape[:2]:
            label = label.expand(n, box.shape[1]) if label.shape[1] == 1 else label
        if label.shape != box.shape[:2]:
            raise InputError(f"label of shape {tuple(self.label.shape)} does not match box of shape {tuple(self.box.shape)}")
        return box, label, multi

    def __call__(self, output: Any) -> torch.Tensor:
        dets = [output] if isinstance(output, Mapping) else output
        if not isinstance(dets, (list, tuple)) or not all(isinstance(d, Mapping) for d in dets):
            raise InputTypeError(
                f"DetectionTarget expects the detector's output as a list of dicts (one per sample) with keys "
                f"{self.keys}, got {type(output).__name__}"
            )
        ref, label, multi = self._per_sample(len(dets))
        rows = []
        for i, det in enumerate(dets):
            missing = [k for k in self.keys if k not in det]
            if missing:
                raise InputError(f"detection {i} has no key(s) {missing}; its keys are {list(det)} (set boxes_key=, "
                                 f"labels_key=, scores_key=)")
            boxes, labels, scores = (det[k] for k in self.keys)
            if boxes.ndim != 2 or boxes.shape[-1] != ref.shape[-1]:
                raise InputError(
                    f"predicted boxes of sample {i} have shape {tuple(boxes.shape)}, the reference box has "
                    f"{ref.shape[-1]} coordinates; they must be (M, {ref.shape[-1]}) in the same layout"
                )
            iou = box_iou(ref[i].to(boxes.device, boxes.dtype if boxes.is_floating_point() else torch.float64),
                          boxes.to(torch.float64 if not boxes.is_floating_point() else boxes.dtype))  # (K, M)
            same_class = labels[None, :] == label[i].to(labels.device)[:, None]
            match = (iou >= self.iou_threshold) & same_class.to(iou.device)
            rows.append((scores[None, :] * match.to(scores.dtype)).sum(1))
        out = torch.stack(rows)
        return out if multi else out[:, 0]
