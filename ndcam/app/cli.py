"""Command line: ``ndcam demo``, ``ndcam explain``, ``ndcam methods``, ``ndcam layers``.

``ndcam demo [--out DIR] [--quick]`` is the main job: it trains tiny models on the synthetic 1D, 2D and 3D tasks of
:mod:`ndcam.data`, explains held-out positives with several methods, scores the pointing game against the known
ground truth, and writes pictures and one self-contained HTML report into ``DIR`` (default ``ndcam-demo``).

``ndcam explain --model M --input FILE`` explains a model on a real file (images, audio, NIfTI, DICOM, WFDB, arrays;
see :mod:`ndcam.io` and ``ndcam explain --help``) and writes pictures, ``maps.npy`` (and ``maps.nii.gz`` for volumes),
``scores.json`` and ``report.html`` into ``--out``; the folder is written all at once (an interrupted run leaves it as
it was, or complete).

Errors are one clear line on stderr and exit code 2; ``--debug`` (anywhere on the line) shows the traceback. Only the
command line selects matplotlib's Agg backend.
"""

from __future__ import annotations

import argparse
import contextlib
import html
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from ..core.errors import InputError

DEMO_METHODS = ["gradcam", "gradcam++", "hirescam", "layercam", "xgradcam", "eigencam"]
RANK_NAMES = {1: "1D ECG-like beat trains (abnormal beat)", 2: "2D scenes (ring among square frames)",
              3: "3D volumes (blob among hollow cubes)"}


def demo(out: Path, quick: bool = False, log=print) -> dict:
    """Run the demo into ``out``; returns the scores table ``{rank: {method: pointing game}}``."""
    from ..analysis import metrics
    from ..core.explain import explain
    from ..synthetic import data
    from . import viz
    from .report import png_bytes

    t0 = time.time()
    results: dict[int, dict[str, float]] = {}
    sections = []
    files: dict[str, bytes] = {}
    for rank in (1, 2, 3):
        # --quick halves the 1D and 2D sets; the 3D task needs all of its 192 volumes (96 give ~0.8 accuracy and
        # maps that miss the blob, which is not what a demo should show)
        n_train = {1: 256, 2: 256, 3: 192}[rank] // (2 if quick and rank < 3 else 1)
        x, y, mask = data.task(rank, n=n_train, seed=0)
        model, acc = data.train_tiny(x, y)
        xt, yt, mt = data.task(rank, n=32, seed=1)
        pos = yt == 1
        xt, mt = xt[pos], mt[pos]
        with torch.no_grad():
            test_acc = float((model(data.task(rank, n=32, seed=1)[0]).argmax(1) == yt).float().mean())
        maps = {}
        results[rank] = {}
        for m in DEMO_METHODS:
            exp = explain(model, xt, method=m, targets=1)
            maps[m] = exp.maps
            results[rank][m] = float(metrics.pointing_game(exp.maps, mt).float().mean())
        grid = png_bytes(viz.plot_grid(xt, maps, index=0, fs=360.0 if rank == 1 else None))
        exp = explain(model, xt, method="gradcam", targets=1)
        view = png_bytes(exp.plot(xt, index=0, **({"fs": 360.0} if rank == 1 else {})))
        files[f"rank{rank}_methods.png"] = grid
        files[f"rank{rank}_gradcam.png"] = view
        log(f"[{rank}D] {RANK_NAMES[rank]}: train acc {acc:.2f}, test acc {test_acc:.2f}, pointing game "
            + ", ".join(f"{k} {v:.2f}" for k, v in results[rank].items()))
        extra = (xt[0, 0], exp.maps[0]) if rank == 3 else None
        sections.append((rank, acc, test_acc, grid, view, extra))
    files["report.html"] = _report(sections, results, time.time() - t0).encode()
    _write_atomic(out, files)
    log(f"wrote {len(files)} files to {out} in {time.time() - t0:.0f} s (open {out / 'report.html'})")
    return results


def _report(sections, results, seconds: float) -> str:
    from .._version import __version__
    from .report import html_report, table, volume_viewer

    blocks: list = [("", f"<p>ndcam {html.escape(__version__)}, torch {html.escape(torch.__version__)}, {seconds:.0f} s. "
                         "Tiny models trained on synthetic tasks with known evidence; maps of held-out positive samples "
                         "(target class 1).</p>"),
                    ("Pointing game (map maximum inside the ground-truth region)",
                     table([[f"{r}D"] + [f"{results[r][m]:.2f}" for m in DEMO_METHODS] for r in results],
                           ["rank"] + DEMO_METHODS))]
    for rank, acc, test_acc, grid, view, extra in sections:
        blocks += [(f"{rank}D: {RANK_NAMES[rank]}", f"<p>train accuracy {acc:.2f}, test accuracy {test_acc:.2f}</p>"),
                   ("", view), ("", grid)]
        if extra is not None:
            blocks.append(("Grad-CAM slice by slice", volume_viewer(extra[0], extra[1], f"vol{rank}")))
    return html_report("ndcam demo", blocks)


@contextlib.contextmanager
def _deferred_interrupt():
    """Hold Ctrl-C (SIGINT) back while the body runs, then raise ``KeyboardInterrupt`` if one came."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list = []
    old = signal.signal(signal.SIGINT, lambda *a: caught.append(a))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)
    if caught:
        raise KeyboardInterrupt


def _write_atomic(out: Path, files: dict[str, bytes]) -> None:
    """Write every file into a temporary folder next to ``out``, then move them in with Ctrl-C held back: an interrupted
    run leaves ``out`` as it was (interrupted while writing) or complete (interrupted while moving), never half-written.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".ndcam-", dir=out.parent))
    try:
        for name, blob in files.items():
            (tmp / name).write_bytes(blob)
        with _deferred_interrupt():
            out.mkdir(parents=True, exist_ok=True)
            for name in files:
                os.replace(tmp / name, out / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _cmd_layers(args) -> int:
    from ..core.layers import list_layers
    from .io import load_model

    model = load_model(args.model, getattr(args, "weights", None))
    shape = tuple(int(s) for s in args.shape.split(","))
    for info in list_layers(model, torch.zeros(shape)):
        print(info)
    return 0


def _labels(spec: str | None) -> list[str] | None:
    """``--labels file.txt`` (one name a line) or ``--labels a,b,c``."""
    if not spec:
        return None
    p = Path(spec)
    if p.is_file():
        return [line.strip() for line in p.read_text().splitlines() if line.strip()]
    return [t.strip() for t in spec.split(",")]


def _floats(spec: str | None, flag: str) -> list[float] | None:
    if spec is None:
        return None
    try:
        return [float(v) for v in spec.split(",")]
    except ValueError as err:
        raise InputError(f"{flag} takes numbers separated by commas, got {spec!r}") from err


def _ints(spec: str | None, flag: str) -> tuple[int, ...] | None:
    if spec is None:
        return None
    try:
        vals = tuple(int(v) for v in spec.split(","))
    except ValueError as err:
        raise InputError(f"{flag} takes integers separated by commas (e.g. 224,224), got {spec!r}") from err
    if any(v < 1 for v in vals):
        raise InputError(f"{flag} sizes must be positive, got {spec!r}")
    return vals


def _method_options(cls, args) -> dict:
    """``batch_size``/``progress`` for perturbation methods: classes marked ``perturbative`` or taking them."""
    import inspect

    params = inspect.signature(cls.__init__).parameters
    opts = {}
    if getattr(cls, "perturbative", False) or "batch_size" in params:
        opts["batch_size"] = args.batch_size
        if getattr(cls, "perturbative", False) or "progress" in params:
            opts["progress"] = None if not sys.stderr.isatty() else True
    return opts


def _read_options(args):
    from .io import ReadOptions

    return ReadOptions(
        single=args.single, channels=args.channels, resize=_ints(args.resize, "--resize"),
        mean=_floats(args.mean, "--mean"), std=_floats(args.std, "--std"), preprocess=args.preprocess,
        spectrogram=args.spectrogram, stft_window=args.stft_window, nfft=args.nfft, hop=args.hop, db=not args.no_db,
        n_mels=args.n_mels, resample=args.resample, fs=args.fs, window=args.window, stride=args.stride,
        annotations=args.annotations, around=[t for t in args.around.split(",") if t] if args.around else None,
        edge=args.edge, leads=[t.strip() for t in args.leads.split(",")] if args.leads else None,
        volume_index=args.volume_index, volumes_as=args.volumes_as, max_bytes=args.max_bytes)


def _cmd_explain(args) -> int:
    import warnings

    from tqdm.auto import tqdm

    from ..core.errors import ForwardError
    from ..core.explain import explain
    from ..core.methods import get_method
    from . import viz
    from .io import load_input, load_model, save_maps
    from .report import html_report, png_bytes, table, volume_viewer

    cls = get_method(args.method)  # unknown method: clear error before loading anything heavy
    labels = _labels(args.labels)
    opts = _read_options(args)
    model = load_model(args.model, args.weights, args.device)
    x, info = load_input(args.input, opts)
    if args.fs and info.source == "array":
        info.fs = args.fs
    info.labels, info.cmap = labels, args.cmap
    x = x.to(args.device)
    targets = None
    if args.target:
        ts = []
        for t in args.target:
            if labels and t in labels:
                ts.append(labels.index(t))
            else:
                try:
                    ts.append(int(t))
                except ValueError as err:
                    raise InputError(f"--target {t!r} is neither a class index nor one of --labels") from err
        targets = ts[0] if len(ts) == 1 else torch.tensor([ts] * x.shape[0], device=x.device)
    layers = args.layer or None
    print(f"ndcam: {cls.__name__} on {args.input} {tuple(x.shape)} ({info.kind}, {info.source})", file=sys.stderr)
    for note in info.notes:
        print(f"ndcam: note: {note}", file=sys.stderr)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            exp = explain(model, x, method=cls, targets=targets, layers=layers, **_method_options(cls, args))
        except ForwardError as err:
            if info.source == "array" and x.ndim >= 3 and not args.single and not opts.window:
                raise ForwardError(f"{err} (the array was read as a batch of {x.shape[0]} samples of shape "
                                   f"{tuple(x.shape[1:])}; if the file holds one sample (C, *spatial), add --single)") from err
            raise
    warned = []
    for w in caught:
        if issubclass(w.category, (DeprecationWarning, PendingDeprecationWarning)):
            continue
        warned.append(f"{w.category.__name__}: {w.message}")
        print(f"ndcam: warning: {w.category.__name__}: {w.message}", file=sys.stderr)
    files: dict[str, bytes] = {}
    blocks: list = []
    settings = [["method", cls.registry_name], ["layers", ", ".join(exp.layers) or "-"], ["model", args.model],
                ["weights", args.weights or "-"], ["input", f"{args.input} ({info.source}, shown as {info.kind})"],
                ["shape", tuple(x.shape)]]
    settings += [["fs", f"{info.fs:g} Hz"]] if info.fs else []
    settings += [["note", n] for n in info.notes]
    blocks.append(("Settings", table(settings, ["setting", "value"])))
    if warned:
        blocks.append(("Warnings", "".join(f"<p style='color:#a40'>&#9888; {html.escape(w)}</p>" for w in warned)))
    sc = exp.scores if exp.scores.ndim == 2 else exp.scores[:, None]
    tg = None if exp.targets is None else (exp.targets if exp.targets.ndim == 2 else exp.targets[:, None])
    rows = []
    for i in range(len(sc)):
        row: dict = {"sample": i, "target": None if tg is None else [int(t) for t in tg[i]],
                     "score": [round(float(v), 6) for v in sc[i]]}
        if labels and tg is not None:
            row["label"] = [labels[int(t)] if 0 <= int(t) < len(labels) else str(int(t)) for t in tg[i]]
        if info.offsets is not None and i < len(info.offsets):
            row["offset"] = info.offsets[i]
        if info.beats is not None and i < len(info.beats):  # the annotated beat this window is centred on
            row["symbol"], row["beat_sample"] = info.beats[i]["symbol"], info.beats[i]["sample"]
        rows.append(row)
    cols = list(dict.fromkeys(k for r in rows for k in r))
    blocks.append(("Scores", table([[r.get(c, "") for c in cols] for r in rows], cols)))
    n_pic = min(x.shape[0], args.max_pictures)
    xc = x.detach().cpu()
    for i in tqdm(range(n_pic), desc="pictures", disable=None if n_pic > 1 else True, file=sys.stderr):
        fig = viz.plot_explanation(exp, xc, index=i, k=0, **info.plot_kwargs(i))
        files[f"sample{i}.png"] = png_bytes(fig)
        head = f"sample {i}" + (f" (t = {info.offsets[i]:.2f} s)" if info.offsets and i < len(info.offsets) else "")
        blocks.append((head, files[f"sample{i}.png"]))
        if info.kind == "volume" and x.ndim == 5:
            m = exp.maps[i] if exp.scores.ndim == 1 else exp.maps[i, 0]
            blocks.append((f"sample {i}: slices", volume_viewer(xc[i, 0], m.cpu(), f"s{i}", affine=info.affine)))
    files["report.html"] = html_report(f"ndcam: {cls.__name__}", blocks).encode()
    meta = {"method": cls.registry_name, "layers": exp.layers, "input": args.input, "kind": info.kind,
            "fs": info.fs, "labels": labels, "warnings": warned, "rows": rows}
    files["scores.json"] = json.dumps(meta).encode()
    out = Path(args.out)
    tmp = Path(tempfile.mkdtemp(prefix=".ndcam-maps-"))
    try:
        for name in save_maps(exp.maps, info, tmp):
            files[name] = (tmp / name).read_bytes()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _write_atomic(out, files)
    print(f"wrote {', '.join(sorted(files))} to {out}")
    return 0


def _explain_parser(sub) -> None:
    e = sub.add_parser("explain", help="explain a model on an input file",
                       description="Explain a model on an input file; writes pictures, maps and a report into --out.")
    g = e.add_argument_group("model and method")
    g.add_argument("--model", required=True, help="package.module:factory (imported from the working folder), or a "
                                                   "torch.export archive (.pt2, checked before loading)")
    g.add_argument("--weights", help="state dict for a factory model (read with weights_only=True)")
    g.add_argument("--method", default="gradcam", help="a name from `ndcam methods` (default gradcam)")
    g.add_argument("--layer", action="append", help="target layer (dotted name); repeat to fuse several")
    g.add_argument("--target", action="append", help="class index or --labels name; repeat for K maps per sample "
                                                      "(default: top-1)")
    g.add_argument("--labels", metavar="FILE|A,B,C", help="class names: a text file (one a line) or a,b,c")
    g.add_argument("--device", default="cpu")
    g.add_argument("--batch-size", type=int, default=64, help="perturbed inputs per forward (perturbation methods)")
    g = e.add_argument_group("input")
    g.add_argument("--input", required=True, help=".npy/.npz/.pt, images (PNG/JPEG/TIFF), audio (WAV/FLAC), NIfTI "
                                                   "(.nii/.nii.gz), DICOM (.dcm file or a folder of slices), WFDB (.hea)")
    g.add_argument("--single", action="store_true", help="the array is one sample (C, *spatial), not a batch")
    g.add_argument("--channels", type=int, metavar="C", help="channels the model expects: images 1 (luma) or 3 (grey repeated); "
                                                "other inputs: average to 1 or repeat 1")
    g.add_argument("--resize", metavar="H,W", help="resize the spatial axes: H,W (or one size for every axis)")
    g.add_argument("--mean", help="subtract per channel (one value or one per channel), after scaling to [0, 1]")
    g.add_argument("--std", help="divide per channel (one value or one per channel)")
    g.add_argument("--preprocess", metavar="MOD:FN", help="package.module:fn, a callable batch -> batch applied last")
    g = e.add_argument_group("audio and spectrograms")
    g.add_argument("--resample", type=float, metavar="HZ", help="resample audio to HZ (polyphase)")
    g.add_argument("--spectrogram", nargs="?", const="linear", choices=["linear", "log", "mel"],
                   help="turn audio into a power spectrogram with a linear (default), log or mel frequency axis")
    g.add_argument("--stft-window", default="hann", help="spectrogram window (scipy name, default hann)")
    g.add_argument("--nfft", type=int, default=256, help="spectrogram segment length (default 256)")
    g.add_argument("--hop", type=int, help="spectrogram hop in samples (default nfft/4)")
    g.add_argument("--n-mels", type=int, default=64, help="mel bands (default 64)")
    g.add_argument("--no-db", action="store_true", help="keep power instead of decibels (10 log10)")
    g = e.add_argument_group("long recordings (WFDB, audio, arrays with --fs)")
    g.add_argument("--fs", type=float, metavar="HZ", help="sampling rate (Hz) of array inputs")
    g.add_argument("--window", type=float, metavar="SECONDS", help="cut the recording into windows that form the batch")
    g.add_argument("--stride", type=float, metavar="SECONDS", help="seconds between window starts (default: the window)")
    g.add_argument("--annotations", metavar="EXT", help="WFDB annotation extension, e.g. atr")
    g.add_argument("--around", metavar="SYMBOLS", help="centre one --window on each beat annotated so, e.g. V or V,A")
    g.add_argument("--edge", default="skip", choices=["skip", "pad"],
                   help="beat windows crossing the record's edge: skip (default) or zero-pad")
    g.add_argument("--leads", metavar="NAMES", help="leads by name or index, e.g. MLII,V1 or 0,1")
    g = e.add_argument_group("volumes")
    g.add_argument("--volume-index", type=int, metavar="I", help="4D NIfTI, or a DICOM file whose frames form several "
                   "volumes (stacks, time points, ...): explain this volume only")
    g.add_argument("--volumes-as", default="channels", choices=["channels", "batch"],
                   help="4D NIfTI: the 4th axis as channels of one sample (default) or as samples")
    g.add_argument("--max-bytes", type=int, metavar="BYTES", default=2 * 1024**3,
                   help="refuse volumes whose decoded float32 size passes this (default 2 GiB)")
    g = e.add_argument_group("output")
    g.add_argument("--out", default="ndcam-out", help="output folder (default ndcam-out)")
    g.add_argument("--cmap", default="jet", help="colormap of the maps (matplotlib name, default jet)")
    g.add_argument("--max-pictures", type=int, default=8, help="pictures for the first N samples (default 8)")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``ndcam`` console script and ``python -m ndcam``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv  # accepted anywhere on the line
    argv = [a for a in argv if a != "--debug"]
    ap = argparse.ArgumentParser(prog="ndcam", description="Class Activation Maps for 1D, 2D and 3D PyTorch models")
    ap.add_argument("--debug", action="store_true", help="show tracebacks (anywhere on the line)")
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("demo", help="train tiny 1D/2D/3D models on synthetic tasks, explain them, write a report")
    d.add_argument("--out", default="ndcam-demo", help="output folder (default: ndcam-demo)")
    d.add_argument("--quick", action="store_true", help="smaller 1D and 2D training sets")
    _explain_parser(sub)
    sub.add_parser("methods", help="list method names")
    lay = sub.add_parser("layers", help="list candidate layers with output shapes")
    lay.add_argument("--model", required=True, help="package.module:factory, or a torch.export archive (.pt2)")
    lay.add_argument("--weights", help="state dict for a factory model")
    lay.add_argument("--shape", required=True, help="input shape, e.g. 1,12,5000")
    from . import cli_dataset

    cli_dataset.add_subcommands(sub)  # explain-dataset, summarize
    args = ap.parse_args(argv)
    args.debug = debug
    try:
        import matplotlib

        matplotlib.use("Agg")  # the command line draws into files; the library never switches backends
        if args.cmd == "methods":
            from ..core.methods import methods

            print("\n".join(methods()))
            return 0
        if args.cmd == "demo":
            demo(Path(args.out), quick=args.quick)
            return 0
        if args.cmd == "layers":
            return _cmd_layers(args)
        if args.cmd == "explain":
            return _cmd_explain(args)
        if args.cmd in ("explain-dataset", "summarize"):
            return cli_dataset.run(args)
    except KeyboardInterrupt:
        if debug:
            raise
        print("ndcam: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # one clear line, no traceback unless --debug
        if debug:
            raise
        msg = " ".join(str(err).split())
        print(f"ndcam: error: {type(err).__name__}: {msg}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
