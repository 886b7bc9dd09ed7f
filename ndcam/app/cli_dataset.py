"""Command line for whole datasets: ``ndcam explain-dataset`` and ``ndcam summarize``.

``explain-dataset --model pkg.mod:factory [--weights w.pt] --dataset pkg.mod:factory --out STORE`` explains every item
of the dataset the factory returns into a resumable store (see :func:`ndcam.explain_dataset`); run the same command
again to resume, or under ``torchrun --nproc_per_node K [--max-restarts N] -m ndcam explain-dataset ...``
to spread the work over K processes (the integrated ``ndcam`` command routes there too).
``summarize STORE`` prints the metric table and writes one HTML page with tables and the mean map per group.

Errors are one clear line on stderr and exit code 2 (``--debug`` shows the traceback).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from typing import Any

__all__ = ["add_subcommands", "run"]


def add_subcommands(subparsers: Any) -> None:
    """Add the ``explain-dataset`` and ``summarize`` parsers to an ``argparse`` subparsers object."""
    e = subparsers.add_parser("explain-dataset", help="explain every item of a dataset into a resumable store")
    e.add_argument("--model", required=True, help="package.module:factory, or a torch.export archive (.pt2)")
    e.add_argument("--weights", help="state dict for a factory model")
    e.add_argument("--dataset", required=True, help="package.module:factory returning a map-style torch Dataset")
    e.add_argument("--out", required=True, help="the store's folder (created; an existing one is resumed)")
    e.add_argument("--method", default="gradcam", help="a name from `ndcam methods` (default gradcam)")
    e.add_argument("--layer", action="append", help="target layer (dotted name); repeat to fuse several")
    e.add_argument("--target", action="append",
                   help="class index (repeat for K maps per sample), or 'label' for each item's y (default: top-1)")
    e.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="method option (VALUE read as JSON when it parses, else a string); repeatable")
    e.add_argument("--batch-size", type=int, default=16, help="samples per work unit (= chunk length; default 16)")
    e.add_argument("--num-workers", type=int, default=0, help="DataLoader worker processes (default 0)")
    e.add_argument("--resolution", choices=["input", "layer"], default="input",
                   help="store maps at the input's size or the layer's (upsampled on read); default input")
    e.add_argument("--dtype", choices=["float16", "float32"], default="float16", help="map storage type")
    e.add_argument("--metrics", default="", help="comma-separated per-sample metrics: pointing,deletion,insertion")
    e.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda:LOCAL_RANK under torchrun with CUDA, else cpu)")
    e.add_argument("--restart", action="store_true", help="delete what the store holds and start over")
    e.add_argument("--no-progress", action="store_true", help="no progress bar or progress lines")
    s = subparsers.add_parser("summarize", help="tables and mean-map pictures of a dataset store, as one HTML page")
    s.add_argument("store", help="a store written by explain-dataset")
    s.add_argument("--html", help="output page (default STORE/summary.html)")
    s.add_argument("--by", choices=["label", "target", "all"], default="label", help="group samples by (default label)")
    s.add_argument("--dataset", help="package.module:factory of the dataset: signals get the mean input per lead, "
                                     "exports are drawn over the inputs")
    s.add_argument("--export", help="comma-separated sample indices to export as pictures (and NIfTI for volumes)")
    s.add_argument("--export-dir", help="folder for exported samples (default STORE/export)")


def _import_factory(spec: str, what: str) -> Any:
    from ..core.errors import InputError

    if ":" not in spec:
        raise InputError(f"--{what} {spec!r} must be package.module:factory")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())  # factories in the current folder, as with `python -m`
    mod_name, fn_name = spec.split(":", 1)
    try:
        factory = getattr(importlib.import_module(mod_name), fn_name)
    except (ImportError, AttributeError) as err:
        raise InputError(f"cannot import --{what} {spec!r}: {err}") from err
    return factory()


def _option(text: str) -> tuple[str, Any]:
    from ..core.errors import InputError

    if "=" not in text:
        raise InputError(f"--option {text!r} must be KEY=VALUE")
    key, value = text.split("=", 1)
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def _targets(values: list[str] | None) -> Any:
    from ..core.errors import InputError

    if not values:
        return None
    if values == ["label"]:
        return "label"
    try:
        ints = [int(v) for v in values]
    except ValueError:
        raise InputError(f"--target takes class indices or 'label', got {values}") from None
    return ints[0] if len(ints) == 1 else ints


def _explain_dataset(args: argparse.Namespace) -> int:
    import torch

    from ..analysis.dataset import explain_dataset
    from .io import load_model

    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    model = load_model(args.model, args.weights, device="cpu")
    dataset = _import_factory(args.dataset, "dataset")
    targets = _targets(args.target)
    if isinstance(targets, list):  # K classes for every sample: (N, K) rows
        targets = torch.tensor([targets] * len(dataset))
    opts = dict(_option(o) for o in args.option)
    ex = explain_dataset(model, dataset, args.out, method=args.method, targets=targets, layers=args.layer,
                         batch_size=args.batch_size, num_workers=args.num_workers, resolution=args.resolution,
                         dtype=args.dtype, metrics=[m for m in args.metrics.split(",") if m], device=args.device,
                         resume=not args.restart, progress=False if args.no_progress else None, **opts)
    if int(os.environ.get("RANK", 0)) == 0:
        print(f"{int(ex.done.sum())}/{ex.n} samples committed in {args.out}")
    return 0


def _summarize(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..analysis.dataset import open_explanations, summarize

    dataset = _import_factory(args.dataset, "dataset") if args.dataset else None
    ex = open_explanations(args.store)
    print(f"{args.store}: {ex.settings['method']}, {int(ex.done.sum())}/{ex.n} samples committed")
    if ex.done.any():
        header, rows = ex.metric_table(args.by if args.by != "label" or (ex.labels[ex.done] >= 0).any() else "all")
        print("\t".join(header))
        for r in rows:
            print("\t".join(str(c) for c in r))
    page = summarize(args.store, args.html, by=args.by, dataset=dataset)
    print(f"wrote {page}")
    if args.export:
        idx = [int(i) for i in args.export.split(",") if i.strip()]
        formats = ("png", "nifti") if ex.rank == 3 else ("png",)
        folder = Path(args.export_dir or Path(args.store) / "export")
        for p in ex.export(idx, folder, formats=formats, dataset=dataset):
            print(f"wrote {p}")
    return 0


def run(args: argparse.Namespace) -> int:
    """Run ``explain-dataset`` or ``summarize`` from parsed arguments (``args.cmd``); errors propagate."""
    if args.cmd == "explain-dataset":
        return _explain_dataset(args)
    if args.cmd == "summarize":
        return _summarize(args)
    raise ValueError(f"cli_dataset cannot run {args.cmd!r}")
