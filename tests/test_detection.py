"""Detection target: IoU of boxes of any rank, scores of matching predictions, gradients through a small detector."""

from __future__ import annotations

import itertools
import runpy
from pathlib import Path

import pytest
import torch
from torch import nn

import ndcam
from ndcam.detection import DetectionTarget, box_iou

CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
ROOT = Path(__file__).resolve().parents[1]


def _iou_loop(a, b):
    """Float64 voxel-free reference: product of per-axis overlaps, one pair at a time."""
    r = len(a) // 2
    inter = 1.0
    for d in range(r):
        inter *= max(0.0, min(a[r + d], b[r + d]) - max(a[d], b[d]))
    va = 1.0
    vb = 1.0
    for d in range(r):
        va *= max(0.0, a[r + d] - a[d])
        vb *= max(0.0, b[r + d] - b[d])
    union = va + vb - inter
    return inter / union if union > 0 else 0.0


@pytest.mark.parametrize("rank", [1, 2, 3])
def test_box_iou_of_any_rank_matches_a_loop(rank):
    g = torch.Generator().manual_seed(rank)
    lo = torch.rand(5, rank, generator=g, dtype=torch.float64) * 10
    hi = lo + torch.rand(5, rank, generator=g, dtype=torch.float64) * 8
    a = torch.cat([lo, hi], 1)
    b = torch.cat([a[:2] + 1.0, torch.tensor([[0.0] * rank + [0.0] * rank], dtype=torch.float64)])  # + an empty box
    got = box_iou(a, b)
    expected = torch.tensor([[_iou_loop(p.tolist(), q.tolist()) for q in b] for p in a], dtype=torch.float64)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(box_iou(a, a).diagonal(), torch.ones(5, dtype=torch.float64))


def _dets():
    s = torch.tensor([0.9, 0.8, 0.7, 0.6], requires_grad=True)
    return s, [
        {"boxes": torch.tensor([[10.0, 10, 20, 20], [11, 10, 21, 20], [10, 10, 20, 20], [40, 40, 50, 50]]),
         "labels": torch.tensor([1, 1, 2, 1]), "scores": s},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long), "scores": s[:0] * 1},
    ]


def test_scores_sum_the_matching_boxes_of_the_class():
    s, dets = _dets()
    got = DetectionTarget([10.0, 10, 20, 20], label=1)(dets)
    # boxes 0 and 1 overlap (IoU 1 and 0.82) and have class 1; box 2 has class 2, box 3 does not overlap
    torch.testing.assert_close(got, torch.tensor([0.9 + 0.8, 0.0]))
    got.sum().backward()
    torch.testing.assert_close(s.grad, torch.tensor([1.0, 1.0, 0.0, 0.0]))
    assert float(DetectionTarget([10.0, 10, 20, 20], label=1, iou_threshold=0.9)(dets)[0].detach()) == pytest.approx(0.9)
    assert float(DetectionTarget([10.0, 10, 20, 20], label=2)(dets)[0]) == pytest.approx(0.7)


def test_k_boxes_per_sample_give_k_scores():
    _, dets = _dets()
    box = torch.tensor([[[10.0, 10, 20, 20], [40, 40, 50, 50]], [[0.0, 0, 5, 5], [1, 1, 2, 2]]])
    got = DetectionTarget(box, label=torch.tensor([[1, 1], [0, 0]]))(dets)
    torch.testing.assert_close(got, torch.tensor([[1.7, 0.6], [0.0, 0.0]]))


def test_bad_boxes_and_outputs_get_clear_errors():
    _, dets = _dets()
    with pytest.raises(ValueError, match="2r"):
        DetectionTarget([1.0, 2, 3], 0)
    with pytest.raises(ValueError, match="hi >= lo"):
        DetectionTarget([5.0, 5, 1, 1], 0)
    with pytest.raises(TypeError, match="bool"):
        DetectionTarget([0.0, 0, 1, 1], True)
    with pytest.raises(ValueError, match="no key"):
        DetectionTarget([0.0, 0, 1, 1], 0, scores_key="score")(dets)
    with pytest.raises(ValueError, match=r"\(M, 6\)"):
        DetectionTarget([0.0, 0, 0, 1, 1, 1], 0)(dets)
    with pytest.raises(TypeError, match="list of dicts"):
        DetectionTarget([0.0, 0, 1, 1], 0)(torch.zeros(2, 4))


class DenseDetector(nn.Module):
    """Backbone + per-cell class logits, decoded into one dict per sample (differentiable scores), any rank."""

    def __init__(self, rank: int, classes: int = 2):
        super().__init__()
        self.rank = rank
        self.backbone = nn.Sequential(CONV[rank](1, 6, 3, padding=1), nn.ReLU(), CONV[rank](6, 6, 3, padding=1), nn.ReLU())
        self.head = CONV[rank](6, classes, 3, padding=1)

    def forward(self, x):
        heat = torch.sigmoid(self.head(self.backbone(x)))
        out = []
        for n in range(len(x)):
            flat = heat[n].flatten(1)  # (classes, cells)
            scores, cells = flat.max(1)  # the best cell per class: one box per class
            centre = torch.stack(torch.unravel_index(cells, heat.shape[2:]), 1).to(x.dtype)  # (classes, rank)
            boxes = torch.cat([centre - 2, centre + 3], 1)
            out.append({"boxes": boxes, "labels": torch.arange(len(scores)), "scores": scores})
        return out


@pytest.mark.parametrize("rank", [1, 2, 3])
def test_gradient_methods_explain_a_box_of_a_list_of_dicts_output(rank):
    torch.manual_seed(0)
    model = DenseDetector(rank).double().eval()
    x = torch.randn(2, 1, *(12,) * rank, dtype=torch.float64)
    with torch.no_grad():
        dets = model(x)
    boxes = torch.stack([d["boxes"] for d in dets])  # (N, classes, 2r): explain each predicted box
    target = DetectionTarget(boxes, label=torch.tensor([[0, 1], [0, 1]]))
    both = ndcam.HiResCAM(model, "backbone")(x, target, normalize=False)
    assert both.shape == (2, 2, *(12,) * rank) and torch.isfinite(both).all()
    for k in range(2):  # K boxes at once == K calls
        one = ndcam.HiResCAM(model, "backbone")(x, DetectionTarget(boxes[:, k], label=k), normalize=False)
        torch.testing.assert_close(both[:, k], one)
    # the score is a single head cell: HiResCAM's map lies within that cell's receptive field (3x3 head conv)
    assert float(both.sum()) > 0
    for n, k in itertools.product(range(2), range(2)):
        centre = (boxes[n, k, :rank] + 2).long().tolist()
        window = both[n, k][tuple(slice(max(0, c - 1), c + 2) for c in centre)]
        assert float(window.sum()) == pytest.approx(float(both[n, k].sum()), rel=1e-5, abs=1e-8)


def test_detection_example_runs(tmp_path, capsys):
    runpy.run_path(str(ROOT / "examples" / "detection.py"), run_name="not_main")["main"](
        ["--out", str(tmp_path), "--steps", "30"])
    assert (tmp_path / "detection.png").stat().st_size > 5000
    assert "HiResCAM" in capsys.readouterr().out


@pytest.mark.slow
def test_detection_example_finds_its_boxes(tmp_path, capsys):
    runpy.run_path(str(ROOT / "examples" / "detection.py"), run_name="not_main")["main"](["--out", str(tmp_path)])
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("HiResCAM")]
    assert lines and all("100% of the map's mass inside the box" in ln for ln in lines)
