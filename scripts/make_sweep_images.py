"""Make the README pictures of the layer sweep, the channel pictures and the lead-wise maps.

Tiny models are trained on the synthetic tasks of :mod:`ndcam.data` (an ECG-like signal, an image, a volume) in a
few seconds each; the lead-wise picture uses the real two-lead MIT-BIH record 208 (normal beats vs premature
ventricular contractions) when its path is given, and is skipped otherwise.

Usage::

    python scripts/make_sweep_images.py [--out docs/images] [--mitdb /work/shared/data/mitdb/208]

Writes ``sweep_{ecg,image,volume}.png``, ``channels_{ecg,image,volume}.png`` and ``leadwise_ecg.png``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from ndcam import data
from ndcam.channels import top_channels
from ndcam.leadwise import explain_leads
from ndcam.report import png_bytes
from ndcam.sweep import layer_sweep

FS_TASK = 360.0  # sampling rate of data.ecg_task


def _confident_positive(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
    """Index of the class-1 sample the model calls class 1 most confidently."""
    with torch.no_grad():
        p = model(x).softmax(1)[:, 1]
    p = torch.where(y == 1, p, torch.full_like(p, -1.0))
    return int(p.argmax())


def _save(fig, path: Path) -> None:
    path.write_bytes(png_bytes(fig, dpi=100))
    print(f"wrote {path}")


def synthetic(out: Path) -> None:
    # 3 blocks at every rank, so the sweep has three resolution levels (the library default for 2D/3D is 2 blocks)
    for rank, name, kw in [(1, "ecg", {}), (2, "image", {"blocks": 3}), (3, "volume", {"blocks": 3})]:
        t0 = time.time()
        x, y, _ = data.task(rank)
        model, acc = data.train_tiny(x, y, **kw)
        i = _confident_positive(model, x, y)
        sample = x[i : i + 1]
        print(f"{name}: trained in {time.time() - t0:.1f} s, train accuracy {acc:.3f}, sample {i}")
        sweep = layer_sweep(model, sample, "gradcam", targets=1)
        print(f"  stages: {sweep.names}")
        plot_kw = {"fs": FS_TASK, "units": "a.u."} if rank == 1 else {}
        _save(sweep.plot(sample, **plot_kw), out / f"sweep_{name}.png")
        # the middle stage: its channels are more varied than the last stage's, which all see the class evidence
        res = top_channels(model, sample, layer=sweep.names[-2], targets=1, k=8)
        print(f"  top channels of {res.layer}: {res.channels[0].tolist()} weights "
              f"{[round(float(w), 4) for w in res.weights[0]]}")
        _save(res.plot(sample, **plot_kw), out / f"channels_{name}.png")


def mitdb_windows(record: str, length: int = 720, per_class: int = 500, seed: int = 0):
    """Two-lead windows of an MIT-BIH record at random positions: label 1 if a PVC ('V') has its R peak inside the
    window (away from the edges), 0 if every beat in the window is normal ('N'); windows with other beats are left out.

    Each lead has its window median subtracted (baseline); amplitudes stay in mV. Also returns the annotated beats of
    each window as ``[(sample offset, symbol), ...]``.
    """
    import wfdb

    rec = wfdb.rdrecord(record)
    ann = wfdb.rdann(record, "atr")
    sig = torch.as_tensor(rec.p_signal.T, dtype=torch.float32)
    beats = [(int(s), a) for s, a in zip(ann.sample, ann.symbol) if a.isalpha()]
    margin = int(0.15 * rec.fs)
    g = torch.Generator().manual_seed(seed)
    xs: list[list[torch.Tensor]] = [[], []]
    marks: list[list[list[tuple[int, str]]]] = [[], []]
    for start in torch.randint(0, sig.shape[1] - length, (20 * per_class,), generator=g).tolist():
        inside = [a for s, a in beats if start <= s < start + length]
        core = [a for s, a in beats if start + margin <= s < start + length - margin]
        if not inside or any(a not in "NV" for a in inside):
            continue
        label = 1 if "V" in core else 0 if "V" not in inside else -1
        if label >= 0 and len(xs[label]) < per_class:
            w = sig[:, start : start + length]
            xs[label].append(w - w.median(dim=1, keepdim=True).values)
            marks[label].append([(s - start, a) for s, a in beats if start <= s < start + length])
    x = torch.stack(xs[0] + xs[1])
    y = torch.tensor([0] * len(xs[0]) + [1] * len(xs[1]))
    return x, y, float(rec.fs), list(rec.sig_name), list(rec.units), marks[0] + marks[1]


def leadwise(out: Path, record: str) -> None:
    if not Path(record + ".hea").exists():
        print(f"no WFDB record at {record}; leadwise_ecg.png skipped")
        return
    t0 = time.time()
    x, y, fs, leads, units, marks = mitdb_windows(record)
    model, acc = data.train_tiny(x, y, epochs=15)
    i = _confident_positive(model, x, y)
    sample = x[i : i + 1]
    with torch.no_grad():
        p = float(model(sample).softmax(1)[0, 1])
    print(f"mitdb: {len(x)} windows, trained in {time.time() - t0:.1f} s, train accuracy {acc:.3f}, sample {i}")
    for method in ("gradxinput", "guided", "fullgrad"):
        exp = explain_leads(model, sample, method, targets=1)
        print(f"  {method}: lead energy {dict(zip(leads, [round(float(e), 3) for e in exp.lead_energy()[0]]))}")
    exp = explain_leads(model, sample, "gradxinput", targets=1)
    fig = exp.plot(sample, fs=fs, leads=leads, units=units,
                   title=f"Lead-wise |gradient x input| weighted by Grad-CAM -- MIT-BIH 208, PVC window (p = {p:.2f})")
    top = fig.axes[0]
    for offset, symbol in marks[i]:  # the reference annotations above the first lead
        top.annotate(symbol, xy=(offset / fs, 1.0), xycoords=("data", "axes fraction"), xytext=(0, 2),
                     textcoords="offset points", ha="center", va="bottom", fontsize=8,
                     color="crimson" if symbol == "V" else "dimgray", fontweight="bold")
    _save(fig, out / "leadwise_ecg.png")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="docs/images")
    ap.add_argument("--mitdb", default="/work/shared/data/mitdb/208", help="WFDB record path (without extension)")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    synthetic(out)
    leadwise(out, args.mitdb)


if __name__ == "__main__":
    main()
