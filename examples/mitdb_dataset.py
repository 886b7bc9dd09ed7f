"""Explain every beat of two MIT-BIH records into a resumable store, then summarize per beat class.

    python examples/mitdb_dataset.py [../shared/data/mitdb] [--out mitdb-dataset-out] [--epochs 4]

Reads records 100 and 208 (WFDB; needs the optional ``wfdb`` package) and their beat annotations (``wfdb.rdann``),
cuts one window around every annotated beat (0.25 s before the R peak to 0.46 s after, both leads), groups the beat
symbols into classes N (normal), V (premature ventricular), F (fusion) and "other" (atrial premature, paced, ...),
trains a tiny 1D network on the first 20 minutes of each record, and explains *every* beat window with Grad-CAM
into a store with :func:`ndcam.explain_dataset` (stop it at any time and run it again: it resumes). It then prints
the per-class table (pointing game: does the map's maximum fall on the QRS complex, R - 80 ms .. R + 120 ms?) and
writes ``summary.html`` with the mean map over the mean beat of each class. Without the records it says so and exits.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from ndcam import data
from ndcam.dataset import explain_dataset, summarize

RECORDS = ("100", "208")
CLASSES = {0: "N", 1: "V", 2: "F", 3: "other"}
BEATS = "NLRBAaJSVEFjen/fQ"
BEFORE_S, AFTER_S = 0.25, 0.46


def beat_class(symbol: str) -> int:
    return {"N": 0, "L": 0, "R": 0, "e": 0, "j": 0, "V": 1, "E": 1, "F": 2}.get(symbol, 3)


class BeatWindows(torch.utils.data.Dataset):
    """Every annotated beat of the records: dict items with ``x`` (2 leads, standardized), ``y`` (class), ``mask``
    (the QRS complex) and ``key`` (``record:sample``); ``minute`` gives each beat's time in its record.
    """

    def __init__(self, folder: str | Path, records=RECORDS) -> None:
        import wfdb

        xs, ys, keys, minutes = [], [], [], []
        for name in records:
            path = str(Path(folder) / name)
            rec, ann = wfdb.rdrecord(path), wfdb.rdann(path, "atr")
            self.fs = fs = float(rec.fs)
            sig = torch.nan_to_num(torch.as_tensor(rec.p_signal.T, dtype=torch.float32))
            before, after = int(BEFORE_S * fs), int(AFTER_S * fs)
            for r, sym in zip(ann.sample, ann.symbol):
                if sym not in BEATS or r - before < 0 or r + after > sig.shape[1]:
                    continue
                w = sig[:, r - before : r + after]
                xs.append((w - w.mean(1, keepdim=True)) / (w.std(1, keepdim=True) + 1e-6))
                ys.append(beat_class(sym))
                keys.append(f"{name}:{r}")
                minutes.append(r / fs / 60)
            self.leads = list(rec.sig_name)
        self.x, self.y = torch.stack(xs), torch.tensor(ys)
        self.keys, self.minutes = keys, torch.tensor(minutes)
        self.mask = torch.zeros(self.x.shape[-1], dtype=torch.bool)
        self.mask[before - int(0.08 * fs) : before + int(0.12 * fs)] = True

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return {"x": self.x[i], "y": int(self.y[i]), "mask": self.mask, "key": self.keys[i]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", nargs="?", default="../shared/data/mitdb", help="folder with records 100 and 208")
    ap.add_argument("--out", default="mitdb-dataset-out", help="the store (resumed when it exists)")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=64)
    args = ap.parse_args(argv)
    if not all((Path(args.folder) / f"{r}.hea").exists() for r in RECORDS):
        print(f"records {RECORDS} not found in {args.folder!r} -- skipping")
        return 0
    try:
        import wfdb  # noqa: F401
    except ImportError:
        print("the optional package wfdb is not installed (pip install wfdb) -- skipping")
        return 0

    ds = BeatWindows(args.folder)
    counts = {CLASSES[c]: int((ds.y == c).sum()) for c in CLASSES}
    print(f"{len(ds)} beat windows of {ds.x.shape[-1] / ds.fs:.2f} s from records {', '.join(RECORDS)}: {counts}")
    train = ds.minutes < 20
    t0 = time.perf_counter()
    model, acc = data.train_tiny(ds.x[train], ds.y[train], epochs=args.epochs, width=24, blocks=4, removal=0.0,
                                 label_smoothing=0.0, seed=0)
    with torch.no_grad():
        test_acc = float((model(ds.x[~train]).argmax(1) == ds.y[~train]).float().mean())
    print(f"tiny model trained in {time.perf_counter() - t0:.0f} s: train accuracy {acc:.3f}, "
          f"accuracy on the last {float(ds.minutes.max()) - 20:.0f} minutes {test_acc:.3f}")

    t0 = time.perf_counter()
    ex = explain_dataset(model, ds, args.out, method="gradcam", targets="label", batch_size=args.batch_size,
                               metrics=("pointing",))
    print(f"explained {int(ex.done.sum())}/{len(ds)} beats into {args.out} in {time.perf_counter() - t0:.1f} s")
    header, rows = ex.metric_table("label")
    print("\t".join(["class", *header[1:]]))
    for r in rows:
        print("\t".join([CLASSES.get(r[0], str(r[0])), *(str(c) for c in r[1:])]))
    page = summarize(args.out, by="label", dataset=ds, names=CLASSES, fs=ds.fs, leads=ds.leads)
    print(f"summary: {page}")
    first_v = int(torch.nonzero(ds.y == 1)[0])
    for p in ex.export([0, first_v], Path(args.out) / "export", dataset=ds, fs=ds.fs, channels=ds.leads):
        print(f"picture: {p}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
