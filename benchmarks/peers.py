"""pytorch-grad-cam side by side with ndcam, in an environment where it is installed.

pytorch-grad-cam needs torchvision; on our machines that means a separate environment with the CUDA builds of
torch 2.14.1 + torchvision 0.29.1 (CPU is still what runs). Run this file with that environment's Python:

    python benchmarks/peers.py          # writes the "peers" block of benchmarks/RESULTS.md

It measures, on the models of ``speed.py`` / ``perturbation.py``: Grad-CAM time / no-grad forward and extra peak
memory / inference for both libraries, Score-CAM time / its forward bound, whether each library runs on 1D/2D/3D,
and the largest difference between the two libraries' maps in 2D.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import traceback
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from perturbation import bound_fn  # noqa: E402
from perturbation import build as build_small  # noqa: E402
from speed import _no_grad, child_extra_mib, peak_extra_mib, ratio, update_results  # noqa: E402
from speed import build as build_big  # noqa: E402

import ndcam  # noqa: E402

CPU = torch.device("cpu")


def pgc_gradcam(model, layer):
    from pytorch_grad_cam import GradCAM

    cam = GradCAM(model=model, target_layers=[model.get_submodule(layer)])
    return lambda x: cam(input_tensor=x, targets=None)


def pgc_scorecam(model, layer, batch_size):
    from pytorch_grad_cam import ScoreCAM

    cam = ScoreCAM(model=model, target_layers=[model.get_submodule(layer)])
    cam.batch_size = batch_size
    return lambda x: cam(input_tensor=x, targets=None)


def child(case: str, mode: str) -> dict:
    model, x, layer = build_big(case, False, CPU)
    run = {"inference": lambda: model(x), "ndcam": lambda: ndcam.GradCAM(model, layer)(x),
           "pgc": lambda: pgc_gradcam(model, layer)(x)}[mode]
    def once():
        with torch.no_grad() if mode == "inference" else torch.enable_grad():
            run()

    return {"extra_mib": peak_extra_mib(once)}


def memory(case: str, mode: str):
    return child_extra_mib([__file__, "--child", case, mode])


def attempt(fn):
    try:
        return fn(), None
    except Exception as err:  # the point is to record what fails
        return None, f"{type(err).__name__}: {str(err).splitlines()[0][:90] if str(err) else ''}"


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        print(json.dumps(child(sys.argv[2], sys.argv[3])))
        return 0
    import pytorch_grad_cam

    lines = [
        "### pytorch-grad-cam side by side (cpu)",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores; torch {torch.__version__}, grad-cam "
        f"{getattr(pytorch_grad_cam, '__version__', 'installed')}, ndcam {ndcam.__version__}. Command: "
        "`python benchmarks/peers.py` in an environment with torch 2.14.1 + torchvision 0.29.1 + grad-cam.",
        "",
        "Grad-CAM, time / no-grad forward and extra peak memory / inference (same environment, same models):",
        "",
        "| case | ndcam time | pytorch-grad-cam time | ndcam memory | pytorch-grad-cam memory |",
        "|---|---|---|---|---|",
    ]
    for case in ("resnet50-2d", "ecg-1d", "volume-3d"):
        model, x, layer = build_big(case, False, CPU)
        fwd = _no_grad(model, x)
        ours = ratio(lambda: ndcam.GradCAM(model, layer)(x), fwd, CPU, 3)
        peer_fn, err = attempt(lambda: pgc_gradcam(model, layer))
        theirs, err2 = (None, err) if peer_fn is None else attempt(lambda: ratio(lambda: peer_fn(x), fwd, CPU, 3))
        inf = memory(case, "inference")
        m_ours, m_pgc = memory(case, "ndcam"), memory(case, "pgc")
        fmt = lambda v: "n/a" if v is None else f"{v:.2f}"  # noqa: E731
        lines.append(f"| {case} | {fmt(ours)} | {fmt(theirs) if theirs else 'fails: ' + str(err2)} | "
                     f"{fmt(m_ours / inf if m_ours and inf else None)} | {fmt(m_pgc / inf if m_pgc and inf else None)} |")
        print(lines[-1], flush=True)
    lines += ["", "Score-CAM, time / forwarding its N*C masked inputs in batches of 64:", "",
              "| case | ndcam | pytorch-grad-cam |", "|---|---|---|"]
    for case in ("vgg-2d", "resnet-1d", "resnet18-3d"):
        model, x, layer = build_small(case, False)
        bound = bound_fn(model, x, layer, 64)
        ours = ratio(lambda: ndcam.ScoreCAM(model, layer, progress=False)(x), bound, CPU, 3)
        theirs, err = attempt(lambda: ratio(lambda: pgc_scorecam(model, layer, 64)(x), bound, CPU, 3))
        lines.append(f"| {case} | {ours:.2f} | {f'{theirs:.2f}' if theirs else 'fails: ' + str(err)} |")
        print(lines[-1], flush=True)
    # agreement in 2D
    from pytorch_grad_cam import GradCAM, GradCAMPlusPlus, HiResCAM, LayerCAM, XGradCAM

    model, x, layer = build_small("vgg-2d", False)
    diffs = []
    for ours_cls, peer_cls in ((ndcam.GradCAM, GradCAM), (ndcam.GradCAMPlusPlus, GradCAMPlusPlus),
                               (ndcam.XGradCAM, XGradCAM), (ndcam.HiResCAM, HiResCAM), (ndcam.LayerCAM, LayerCAM)):
        a = ours_cls(model, layer)(x)
        b = torch.as_tensor(peer_cls(model=model, target_layers=[model.get_submodule(layer)])(input_tensor=x, targets=None))
        diffs.append(f"{ours_cls.__name__} {float((a - b).abs().max()):.3f}")
    lines += ["", "Largest |ndcam - pytorch-grad-cam| over normalized 2D maps (vgg-2d, top-1 class; they normalize before "
              "resizing, ndcam after): " + ", ".join(diffs) + "."]
    update_results(HERE / "RESULTS.md", "peers:cpu", "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except ImportError:
        traceback.print_exc()
        print("pytorch-grad-cam is not installed in this environment (see the module docstring)")
        raise SystemExit(0) from None
