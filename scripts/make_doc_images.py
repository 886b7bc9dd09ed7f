"""Make the documentation's real-format pictures (``docs/images/real_*.png``) with ``ndcam.viz``.

    python scripts/make_doc_images.py [--out docs/images] [--mitdb /work/shared/data/mitdb/208] [--only NAME ...]

Each picture comes from a file in a real format read with the library made for it, and a tiny model trained here
in seconds on CPU (no weights are downloaded):

1. ``real_ecg_mitdb.png`` -- MIT-BIH record 208 (``wfdb``): a Conv1d trained on 5 s windows to tell windows with a
   premature ventricular beat (annotation ``V``) from windows without, one held-out PVC window drawn in mV on ECG
   paper with the beat annotations written above the trace. Skipped when the record is absent.
2. ``real_photo.png`` -- scikit-image's astronaut photo (512 x 512) with a small red square pasted on it; a tiny CNN
   trained on crops of other scikit-image photos to detect such a square. Drawn at native resolution.
3. ``real_nifti.png`` -- nibabel's test scan ``anatomical.nii`` (stored LAS, 2 mm) with a bright synthetic lesion
   in the patient's LEFT hemisphere; a tiny Conv3d trained to detect lesions. Drawn in world orientation
   (radiological: the lesion must appear on the image's right, under the "L").
4. ``real_spectrogram.png`` -- a WAV written and read back with ``soundfile`` (tones in noise, some with a rising
   chirp), its STFT from scipy; a tiny CNN detects the chirp. Drawn with frequency up, Hz and seconds.
5. ``real_ecg12.png`` -- a SYNTHESIZED 12-lead ECG (MIT-BIH has two leads) with one wide premature beat, to show the
   3x4 layout with a rhythm strip on ECG paper; a tiny Conv1d trained on such synthetic records.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import ndcam  # noqa: E402
from ndcam import data  # noqa: E402
from ndcam.report import png_bytes  # noqa: E402

BEATS = set("NLRBAaJSVEFjen/fQ")


def save(fig, out: Path, name: str) -> None:
    (out / name).write_bytes(png_bytes(fig))
    print(f"  wrote {out / name}")


# ------------------------------------------------------------------------------------------------ 1. MIT-BIH
def ecg_mitdb(out: Path, record: str) -> None:
    import wfdb

    rec = wfdb.rdrecord(record)
    ann = wfdb.rdann(record, "atr")
    fs = float(rec.fs)
    raw = np.nan_to_num(rec.p_signal.T.astype(np.float32))  # (2, samples), mV
    win, stride, margin = int(5 * fs), int(2.5 * fs), int(0.3 * fs)
    pvc = np.array([s for s, a in zip(ann.sample, ann.symbol) if a == "V"])
    xs, ys, starts = [], [], []
    for s in range(0, raw.shape[1] - win, stride):
        inside = ((pvc >= s + margin) & (pvc < s + win - margin)).sum()
        edge = ((pvc >= s) & (pvc < s + win)).sum() - inside
        if edge:
            continue
        w = raw[:, s : s + win]
        xs.append((w - w.mean(1, keepdims=True)) / (w.std(1, keepdims=True) + 1e-6))
        ys.append(int(inside > 0))
        starts.append(s)
    x, y, starts = torch.as_tensor(np.stack(xs)), torch.as_tensor(ys), np.array(starts)
    train = starts < 20 * 60 * fs
    model, acc = data.train_tiny(x[train], y[train], epochs=4, width=24, blocks=4, removal=0.0, label_smoothing=0.0)
    test = ~train
    with torch.no_grad():
        pred = model(x[test]).argmax(1)
    test_acc = float((pred == y[test]).float().mean())
    print(f"  MIT-BIH 208: {len(x)} windows of 5 s, train acc {acc:.2f}, test acc (last 10 min) {test_acc:.2f}")
    test_idx = np.nonzero(test)[0]
    cand = test_idx[(y[test].numpy() == 1) & (pred.numpy() == 1)]
    i = int(cand[len(cand) // 2])
    s0 = int(starts[i])
    exp = ndcam.explain(model, x[i : i + 1], "gradcam", targets=1)
    raw_w = torch.as_tensor(raw[:, s0 : s0 + win])[None]
    fig = exp.plot(raw_w, fs=fs, units=list(rec.units), channels=list(rec.sig_name), offset=s0 / fs,
                   labels=["no PVC", "PVC"], title=f"MIT-BIH record 208, window at {s0 / fs:.1f} s; tiny Conv1d "
                   f"trained on the first 20 min (test accuracy {test_acc:.2f})")
    lead_axes = [ax for ax in fig.axes if ax.get_ylabel().startswith(rec.sig_name[0])]
    for smp, sym in zip(ann.sample, ann.symbol):
        if s0 <= smp < s0 + win and sym in BEATS:
            ax = lead_axes[0]
            ax.text(smp / fs, ax.get_ylim()[1], sym, ha="center", va="bottom", fontsize=8,
                    color="#b00000" if sym == "V" else "black", fontweight="bold", clip_on=False)
    save(fig, out, "real_ecg_mitdb.png")


# ------------------------------------------------------------------------------------------------ 2. photo
def _red_square(img: np.ndarray, r: int, c: int, side: int) -> None:
    img[:, r : r + side, c : c + side] = np.array([0.9, 0.1, 0.1], dtype=np.float32)[:, None, None]


def photo(out: Path) -> None:
    from skimage import data as skd

    photos = [skd.coffee(), skd.chelsea(), skd.rocket(), skd.hubble_deep_field()]
    rng = np.random.default_rng(0)
    xs, ys = [], []
    for _ in range(480):
        p = photos[rng.integers(len(photos))]
        r0, c0 = rng.integers(0, p.shape[0] - 96), rng.integers(0, p.shape[1] - 96)
        crop = np.moveaxis(p[r0 : r0 + 96, c0 : c0 + 96, :3], -1, 0).astype(np.float32) / 255.0
        lab = int(rng.random() < 0.5)
        if lab:
            side = int(rng.integers(14, 24))
            _red_square(crop, int(rng.integers(0, 96 - side)), int(rng.integers(0, 96 - side)), side)
        xs.append(crop)
        ys.append(lab)
    x, y = torch.as_tensor(np.stack(xs)), torch.as_tensor(ys)
    model, acc = data.train_tiny(x, y, epochs=8, removal=0.0, label_smoothing=0.0, blocks=3, width=16)
    astro = np.moveaxis(skd.astronaut(), -1, 0).astype(np.float32) / 255.0
    _red_square(astro, 300, 380, 20)
    xa = torch.as_tensor(astro)[None]
    exp = ndcam.explain(model, xa, "gradcam", targets=1)
    print(f"  photo: train acc {acc:.2f}, P(square) on the astronaut {float(model(xa).detach().softmax(1)[0, 1]):.2f}")
    fig = exp.plot(xa, labels=["no red square", "red square"],
                   title="scikit-image astronaut with a red square pasted at x 380-399, y 300-319; tiny CNN "
                         "trained on crops of other photos")
    save(fig, out, "real_photo.png")


# ------------------------------------------------------------------------------------------------ 3. NIfTI
def nifti(out: Path) -> None:
    import nibabel as nib

    path = Path(nib.__file__).parent / "tests" / "data" / "anatomical.nii"
    img = nib.load(str(path))
    vol = np.asanyarray(img.dataobj).astype(np.float32)
    vol = (vol - vol.mean()) / (vol.std() + 1e-6)
    aff = img.affine
    codes = "".join(nib.aff2axcodes(aff))
    inv = np.linalg.inv(aff)
    rng = np.random.default_rng(0)
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in vol.shape], indexing="ij"), -1).astype(np.float32)

    def lesion(v: np.ndarray, center_vox: np.ndarray) -> np.ndarray:
        d2 = (((grid - center_vox) * np.abs(np.diag(aff)[:3])) ** 2).sum(-1)
        return v + 4.0 * np.exp(-d2 / (2 * 5.0**2)).astype(np.float32)

    brain = np.argwhere(vol > np.percentile(vol, 60))
    xs, ys = [], []
    for _ in range(200):
        v = vol + 0.15 * rng.standard_normal(vol.shape).astype(np.float32)
        lab = int(rng.random() < 0.5)
        if lab:
            v = lesion(v, brain[rng.integers(len(brain))].astype(np.float32))
        xs.append(v[None])
        ys.append(lab)
    x, y = torch.as_tensor(np.stack(xs)), torch.as_tensor(ys)
    model, acc = data.train_tiny(x, y, epochs=10, removal=0.0, label_smoothing=0.0, width=12, lr=1e-2)
    world = np.array([-20.0, -10.0, 16.0])  # patient's LEFT (x < 0), slightly posterior, superior
    vox = (inv @ np.append(world, 1.0))[:3]
    xt = torch.as_tensor(lesion(vol, vox.astype(np.float32))[None, None])
    exp = ndcam.explain(model, xt, "gradcam", targets=1)
    print(f"  NIfTI {path.name} {vol.shape} {codes}: train acc {acc:.2f}, lesion voxel {np.round(vox, 1)}")
    fig = exp.plot(xt, affine=aff, labels=["no lesion", "lesion"],
                   title=f"nibabel anatomical.nii (stored {codes}, {vol.shape}) + synthetic lesion at world "
                         f"({world[0]:g}, {world[1]:g}, {world[2]:g}) mm, patient's left; tiny Conv3d")
    save(fig, out, "real_nifti.png")


# ------------------------------------------------------------------------------------------------ 4. spectrogram
def _clip(rng: np.random.Generator, fs: int, chirp: bool) -> np.ndarray:
    t = np.arange(int(1.0 * fs)) / fs
    sig = 0.05 * rng.standard_normal(t.size)
    for _ in range(2):
        f0, a, b = rng.uniform(300, 3500), rng.uniform(0, 0.6), rng.uniform(0.2, 0.4)
        sig += 0.3 * np.sin(2 * np.pi * f0 * t) * ((t > a) & (t < a + b))
    if chirp:
        a = rng.uniform(0.05, 0.65)
        tt = np.clip(t - a, 0, 0.3)
        on = (t > a) & (t < a + 0.3)
        sig += 0.4 * on * np.sin(2 * np.pi * (1000 * tt + 0.5 * (2000 / 0.3) * tt**2))
    return sig.astype(np.float32)


def spectrogram(out: Path) -> None:
    import soundfile as sf
    from scipy.signal import stft

    fs, nper, hop = 8000, 256, 64
    rng = np.random.default_rng(0)

    def spec(sig):
        f, t, z = stft(sig, fs=fs, nperseg=nper, noverlap=nper - hop)
        return f, t, np.log1p(np.abs(z) * 20).astype(np.float32)

    xs, ys = [], []
    for _ in range(200):
        lab = int(rng.random() < 0.5)
        xs.append(spec(_clip(rng, fs, bool(lab)))[2][None])
        ys.append(lab)
    x, y = torch.as_tensor(np.stack(xs)), torch.as_tensor(ys)
    model, acc = data.train_tiny(x, y, epochs=6, removal=0.0, label_smoothing=0.0)
    with tempfile.TemporaryDirectory() as tmp:
        wav = os.path.join(tmp, "clip.wav")
        sf.write(wav, _clip(np.random.default_rng(7), fs, True), fs, subtype="PCM_16")
        audio, sr = sf.read(wav, dtype="float32")
    f, t, s = spec(audio)
    xt = torch.as_tensor(s)[None, None]
    exp = ndcam.explain(model, xt, "gradcam", targets=1)
    print(f"  spectrogram: train acc {acc:.2f}, P(chirp) {float(model(xt).detach().softmax(1)[0, 1]):.2f}")
    fig = exp.plot(xt, kind="spectrogram", freqs=f, times=t, labels=["no chirp", "chirp"],
                   title=f"16-bit WAV (soundfile), {sr} Hz: tones in noise + a chirp rising 1-3 kHz; STFT 256/64, "
                         "log magnitude; tiny CNN")
    save(fig, out, "real_spectrogram.png")


# ------------------------------------------------------------------------------------------------ 5. 12 leads
LEAD_GAIN = {  # rough P, QRS, T amplitudes (mV) per lead of a normal ECG
    "I": (0.1, 0.9, 0.25), "II": (0.15, 1.3, 0.35), "III": (0.05, 0.5, 0.1), "aVR": (-0.12, -1.0, -0.3),
    "aVL": (0.05, 0.3, 0.1), "aVF": (0.1, 0.9, 0.2), "V1": (0.08, -0.9, -0.1), "V2": (0.1, -1.2, 0.5),
    "V3": (0.1, 0.8, 0.5), "V4": (0.1, 1.5, 0.45), "V5": (0.1, 1.4, 0.35), "V6": (0.1, 1.1, 0.3)}


def _ecg12(rng: np.random.Generator, fs: float, n: int, pvc: bool) -> tuple[np.ndarray, list[float]]:
    t = np.arange(n) / fs
    rr = rng.uniform(0.75, 0.95)
    beats = list(np.arange(rng.uniform(0.2, 0.6), n / fs - 0.4, rr))
    k = int(rng.integers(3, len(beats) - 3)) if pvc else -1
    sig = np.zeros((12, n), np.float32)
    g = lambda c, w: np.exp(-((t - c) ** 2) / (2 * w**2))  # noqa: E731
    for b, c in enumerate(beats):
        if b == k:
            c = c - 0.25 * rr  # premature, wide, no P wave, discordant T
        for j, (p, q, tw) in enumerate(LEAD_GAIN.values()):
            if b == k:
                sig[j] += 1.4 * np.sign(q) * -1 * g(c, 0.045) - 0.5 * np.sign(q) * -1 * g(c + 0.28, 0.07)
            else:
                sig[j] += p * g(c - 0.16, 0.02) + q * g(c, 0.012) - 0.15 * q * g(c + 0.03, 0.01) + tw * g(c + 0.3, 0.05)
    sig += 0.02 * rng.standard_normal(sig.shape).astype(np.float32)
    return sig, ([beats[k] - 0.25 * rr] if pvc else [])


def ecg12(out: Path) -> None:
    fs, n = 250.0, 2500
    rng = np.random.default_rng(0)
    xs, ys = [], []
    for _ in range(200):
        lab = int(rng.random() < 0.5)
        xs.append(_ecg12(rng, fs, n, bool(lab))[0])
        ys.append(lab)
    x, y = torch.as_tensor(np.stack(xs)), torch.as_tensor(ys)
    model, acc = data.train_tiny(x, y, epochs=4, removal=0.0, label_smoothing=0.0, width=16)
    sig, at = _ecg12(np.random.default_rng(11), fs, n, True)
    xt = torch.as_tensor(sig)[None]
    exp = ndcam.explain(model, xt, "gradcam", targets=1)
    print(f"  12-lead (synthetic): train acc {acc:.2f}, PVC at {at[0]:.2f} s")
    fig = exp.plot(xt, fs=fs, channels=list(LEAD_GAIN), units="mV", labels=["normal", "PVC"],
                   title=f"SYNTHESIZED 12-lead ECG (to show the layout; MIT-BIH has 2 leads), premature wide beat at "
                         f"{at[0]:.2f} s; tiny Conv1d trained on synthetic records")
    save(fig, out, "real_ecg12.png")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "docs" / "images"))
    ap.add_argument("--mitdb", default="/work/shared/data/mitdb/208", help="WFDB record path without extension")
    ap.add_argument("--only", nargs="*", default=None,
                    help="subset of: ecg_mitdb photo nifti spectrogram ecg12")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    jobs = {"ecg_mitdb": lambda: ecg_mitdb(out, args.mitdb), "photo": lambda: photo(out),
            "nifti": lambda: nifti(out), "spectrogram": lambda: spectrogram(out), "ecg12": lambda: ecg12(out)}
    for name, job in jobs.items():
        if args.only and name not in args.only:
            continue
        if name == "ecg_mitdb" and not Path(args.mitdb + ".hea").exists():
            print(f"{name}: record {args.mitdb} not found -- skipped")
            continue
        t0 = time.time()
        print(f"{name}:")
        job()
        print(f"  {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
