"""``explain_dataset``: stream a dataset through a method into a store, resumable, on one or many processes.

Under ``torchrun`` (``torch.distributed``) every rank runs the same call: rank 0 prepares the store (lock, settings,
arrays), the pending units are dealt round-robin, each rank explains its units on its own device, and a barrier ends
the run before rank 0 writes ``summary.json``. A crashed run is resumed by running it again (or automatically with
``torchrun --max-restarts N``): only units without a commit marker are redone.
"""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
import socket
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ...core import ops
from ...core.errors import InputError, InputTypeError
from ...core.explain import explain
from ...core.methods import get_method
from . import store as st
from .items import Item, parse_item

__all__ = ["explain_dataset", "METRICS"]

METRICS = ("pointing", "deletion", "insertion")


def _check_args(model, dataset, method, targets, layers, method_options, batch_size, num_workers, resolution, dtype,
                metrics) -> tuple[str, ...]:
    if not isinstance(model, nn.Module):
        raise InputTypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if not hasattr(dataset, "__getitem__") or not hasattr(dataset, "__len__"):
        raise InputTypeError(f"dataset must be a map-style dataset (__len__ and __getitem__), got {type(dataset).__name__}")
    if len(dataset) == 0:
        raise InputError("the dataset is empty; nothing to explain")
    get_method(method)(model, layers, **method_options)  # unknown methods, layers and options raise here
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise InputError(f"batch_size must be a positive int (samples per work unit), got {batch_size!r}")
    if not isinstance(num_workers, int) or num_workers < 0:
        raise InputError(f"num_workers must be an int >= 0, got {num_workers!r}")
    if resolution not in ("input", "layer"):
        raise InputError(f"resolution must be 'input' (maps at the input's size) or 'layer' (the layer's size, "
                         f"upsampled on read), got {resolution!r}")
    if dtype not in ("float16", "float32"):
        raise InputError(f"dtype must be 'float16' or 'float32', got {dtype!r}")
    if isinstance(metrics, str):
        metrics = tuple(m for m in metrics.split(",") if m)
    metrics = tuple(metrics)
    bad = [m for m in metrics if m not in METRICS]
    if bad:
        raise InputError(f"unknown metrics {bad}; choose from {list(METRICS)}")
    if targets is not None and not isinstance(targets, (int, str, Sequence, torch.Tensor, np.ndarray)) \
            and not callable(targets):
        raise InputTypeError(f"targets must be None, an int, 'label', a per-sample sequence or a callable, got "
                             f"{type(targets).__name__}")
    if isinstance(targets, str) and targets != "label":
        raise InputError(f"targets {targets!r}: the only string target is 'label' (explain each sample's label y)")
    if isinstance(targets, (Sequence, torch.Tensor, np.ndarray)) and not isinstance(targets, str) \
            and len(targets) != len(dataset):
        raise InputError(f"per-sample targets must have one entry per dataset item ({len(dataset)}), got {len(targets)}")
    if callable(targets) and not isinstance(targets, nn.Module) and any(m in ("deletion", "insertion") for m in metrics):
        raise InputError("deletion/insertion metrics need class targets; a target callable gives no class")
    return metrics


def _init_distributed() -> tuple[int, int, bool]:
    """(rank, world size, whether this call initialized the process group)."""
    import torch.distributed as dist

    created = False
    if dist.is_available() and not dist.is_initialized() and "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        backend = "gloo"
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
            backend = "nccl"
        restart = os.environ.get("TORCHELASTIC_RESTART_COUNT")
        if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True" and restart is not None:
            # torchrun's agent may keep one store across --max-restarts restarts; keys of the crashed attempt (peer
            # addresses) would then be read by the new one: give every attempt its own key prefix
            rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
            base = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world, is_master=False)
            store = dist.PrefixStore(f"ndcam/attempt_{restart}", base)
            dist.init_process_group(backend, store=store, rank=rank, world_size=world)
        else:
            dist.init_process_group(backend)
        created = True
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), created
    return 0, 1, False


def _broadcast(obj: Any, world: int) -> Any:
    if world == 1:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


def _model_device(model: nn.Module) -> torch.device:
    for t in list(model.parameters()) + list(model.buffers()):
        return t.device
    return torch.device("cpu")


def _unit_targets(targets, indices: list[int], items: list[Item]):
    if targets is None or isinstance(targets, int) or (callable(targets) and not isinstance(targets, torch.Tensor)):
        return targets
    if isinstance(targets, str):  # "label"
        missing = [i for i, it in zip(indices, items) if it.y is None]
        if missing:
            raise InputError(f"targets='label' but dataset items {missing[:5]} carry no label y")
        return torch.tensor([it.y for it in items])
    t = torch.as_tensor(np.asarray(targets)[indices] if not isinstance(targets, torch.Tensor) else targets[indices])
    return t


def _groups(items: list[Item]) -> list[list[int]]:
    """Positions of the unit's items, grouped by input shape (first-seen order), each group explained as one batch."""
    groups: dict[tuple, list[int]] = {}
    for p, it in enumerate(items):
        groups.setdefault(tuple(it.x.shape), []).append(p)
    return list(groups.values())


class _Writer:
    """Explains units and writes them into the store (the arrays of one chunk, then the marker)."""

    def __init__(self, model, out: Path, settings: dict, method, targets, layers, metrics, device, opts, rank: int):
        zarr = st.zarr_module()
        self.root = zarr.open_group(str(out / st.DATA), mode="r+")
        self.model, self.out, self.s, self.method = model, out, settings, method
        self.targets, self.layers, self.metrics, self.device, self.opts, self.rank = \
            targets, layers, metrics, device, opts, rank
        self.common = tuple(settings["map_shape"])  # ([K,] *S) of the common array
        self.k = settings["k"]

    def explain_group(self, xb: torch.Tensor, tgt):
        s = self.s
        return explain(self.model, xb.to(self.device), method=self.method, targets=tgt, layers=self.layers,
                       upsample=s["resolution"] == "input", normalize=s["normalize"], **self.opts)

    def _metrics(self, exp, xb: torch.Tensor, items: list[Item], first: int) -> dict[str, np.ndarray]:
        if not self.metrics:
            return {}
        from .. import metrics as M

        n = xb.shape[0]
        k = self.k or 1
        maps = exp.maps.reshape(n, k, *exp.maps.shape[-(xb.ndim - 2):])
        if tuple(maps.shape[2:]) != tuple(xb.shape[2:]):  # layer resolution: compare at the input's
            flat = ops.upsample(maps.reshape(n * k, *maps.shape[2:]).float(), tuple(xb.shape[2:]))
            maps = ops.minmax_normalize(flat, batch_dims=1).reshape(n, k, *xb.shape[2:])
        xd = xb.to(maps.device)
        res = {}
        for name in self.metrics:
            vals = torch.empty(n, k)
            for j in range(k):
                if name == "pointing":
                    missing = [first + p for p, it in enumerate(items) if it.mask is None]
                    if missing:
                        raise InputError(f"metric 'pointing' needs a 'mask' in every item; items {missing[:5]} have none")
                    masks = torch.stack([it.mask for it in items if it.mask is not None]).to(maps.device)
                    vals[:, j] = M.pointing_game(maps[:, j], masks).float().cpu()
                else:
                    tj = None if exp.targets is None else (exp.targets[:, j] if exp.targets.ndim == 2 else exp.targets)
                    fn = M.deletion_auc if name == "deletion" else M.insertion_auc
                    vals[:, j] = fn(self.model, xd, maps[:, j], tj).float().cpu()
            res[name] = (vals if self.k else vals[:, 0]).numpy()
        return res

    def run_unit(self, unit: int, indices: list[int], raw_items: list) -> int:
        t0 = time.perf_counter()
        items = [parse_item(it, i) for it, i in zip(raw_items, indices)]
        n, s = len(items), self.s
        dt = np.float16 if s["dtype"] == "float16" else np.float32
        kshape = (self.k,) if self.k else ()
        block = {
            "maps": np.full((n,) + self.common, np.nan, dtype=dt),
            "scores": np.full((n,) + kshape, np.nan, np.float32),
            "raw_min": np.full((n,) + kshape, np.nan, np.float32),
            "raw_max": np.full((n,) + kshape, np.nan, np.float32),
            "targets": np.full((n,) + kshape, -1, np.int64),
            "labels": np.array([-1 if it.y is None else it.y for it in items], np.int64),
            "input_shape": np.zeros((n, s["rank"] + 1), np.int64),
        }
        for name in self.metrics:
            block[f"metrics/{name}"] = np.full((n,) + kshape, np.nan, np.float32)
        extra: dict[int, np.ndarray] = {}
        t_compute = 0.0
        for group in _groups(items):
            gi = [indices[p] for p in group]
            git = [items[p] for p in group]
            xb = torch.stack([it.x for it in git])
            if xb.ndim - 2 != s["rank"]:
                raise InputError(f"dataset item {gi[0]} has spatial rank {xb.ndim - 2}; item 0 has rank {s['rank']} "
                                 f"(one store holds one spatial rank)")
            tc = time.perf_counter()
            exp = self.explain_group(xb, _unit_targets(self.targets, gi, git))
            k = exp.scores.shape[1] if exp.scores.ndim == 2 else 0
            if k != self.k:
                raise InputError(f"items {gi[:3]}... give {k or 1} target(s) per sample, item 0 gave {self.k or 1}")
            met = self._metrics(exp, xb, git, gi[0])
            t_compute += time.perf_counter() - tc
            maps32 = exp.maps.detach().cpu().numpy()
            if dt == np.float16 and np.isfinite(maps32).all() and float(np.abs(maps32).max(initial=0)) > 65504:
                raise InputError(f"maps of items {gi[:3]}... exceed the float16 range (raw maps with normalize=False?); "
                                 f"store them with dtype='float32'")
            maps = maps32.astype(dt)
            for j, p in enumerate(group):
                if maps.shape[1:] == self.common:
                    block["maps"][p] = maps[j]
                else:
                    extra[indices[p]] = maps[j]
                block["scores"][p] = exp.scores[j].cpu().numpy()
                block["raw_min"][p] = exp.raw_min[j].cpu().numpy()
                block["raw_max"][p] = exp.raw_max[j].cpu().numpy()
                if exp.targets is not None:
                    block["targets"][p] = exp.targets[j].cpu().numpy()
                block["input_shape"][p] = xb.shape[1:]
                for name, v in met.items():
                    block[f"metrics/{name}"][p] = v[j]
        tw = time.perf_counter()
        lo, hi = indices[0], indices[-1] + 1
        for name, arr in block.items():
            self.root[name][lo:hi] = arr
        samples = self.root["samples"]
        for i, m in extra.items():
            a = samples.create_array(str(i), shape=m.shape, chunks=m.shape, dtype=m.dtype, fill_value=np.nan,
                                     overwrite=True)
            a[...] = m
        t_write = time.perf_counter() - tw
        st.commit_unit(self.out, unit, {
            "unit": unit, "indices": [lo, hi], "rank": self.rank, "host": socket.gethostname(),
            "keys": [it.key for it in items] if any(it.key is not None for it in items) else None,
            "affines": [it.affine for it in items] if any(it.affine is not None for it in items) else None,
            "variable": sorted(extra), "compute_s": t_compute, "write_s": t_write,
            "seconds": time.perf_counter() - t0,
        })
        return n


def _settings(model, dataset, first: Item, method, method_options, targets, layers, batch_size, resolution, dtype,
              metrics, normalize) -> dict:
    from ..._version import __version__

    name = method if isinstance(method, str) else getattr(method, "registry_name", None) or method.__name__
    return {
        "format": "ndcam-dataset/1",
        "method": name,
        "method_options": st.jsonable(method_options),
        "targets": st.jsonable(targets),
        "layers": st.jsonable(layers),
        "normalize": bool(normalize),
        "weights_sha256": st.weights_sha256(model),
        "dataset_length": len(dataset),
        "first_item_shape": list(first.x.shape),
        "unit": batch_size,
        "resolution": resolution,
        "dtype": dtype,
        "metrics": list(metrics),
        "ndcam_version": __version__,
        "rank": first.x.ndim - 1,
    }


def _create_arrays(out: Path, settings: dict, exp) -> None:
    """Probe facts into ``settings`` (map shape, K, layers) and create the store's arrays (rank 0, fresh store)."""
    zarr = st.zarr_module()
    k = exp.scores.shape[1] if exp.scores.ndim == 2 else 0
    common = tuple(exp.maps.shape[1:])
    settings.update(k=k, map_shape=list(common), layers_resolved=list(exp.layers))
    n, u = settings["dataset_length"], settings["unit"]
    kshape = (k,) if k else ()
    root = zarr.open_group(str(out / st.DATA), mode="w")
    root.attrs["ndcam"] = {key: settings[key] for key in ("method", "unit", "resolution", "dtype", "format")}
    root.create_array("maps", shape=(n,) + common, chunks=(u,) + common, dtype=settings["dtype"], fill_value=np.nan)
    for name in ("scores", "raw_min", "raw_max"):
        root.create_array(name, shape=(n,) + kshape, chunks=(u,) + kshape, dtype="float32", fill_value=np.nan)
    root.create_array("targets", shape=(n,) + kshape, chunks=(u,) + kshape, dtype="int64", fill_value=-1)
    root.create_array("labels", shape=(n,), chunks=(u,), dtype="int64", fill_value=-1)
    root.create_array("input_shape", shape=(n, settings["rank"] + 1), chunks=(u, settings["rank"] + 1), dtype="int64",
                      fill_value=0)
    mg = root.create_group("metrics")
    for name in settings["metrics"]:
        mg.create_array(name, shape=(n,) + kshape, chunks=(u,) + kshape, dtype="float32", fill_value=np.nan)
    root.create_group("samples")


def _clear(out: Path) -> None:
    for name in (st.DATA, "done"):
        if (out / name).exists():
            shutil.rmtree(out / name)
    for name in (st.SETTINGS, "commits.log", "summary.json"):
        (out / name).unlink(missing_ok=True)


def _prepare(out: Path, model, dataset, method, method_options, targets, layers, batch_size, resolution, dtype,
             metrics, normalize, resume, lock: st.Lock, device) -> list[int]:
    """Rank 0: lock, check or create the store; returns the pending units."""
    out.mkdir(parents=True, exist_ok=True)
    lock.acquire()
    stored = st.read_settings(out)
    if stored is not None and not resume:
        _clear(out)
        stored = None
    first = parse_item(dataset[0], 0)
    asked = _settings(model, dataset, first, method, method_options, targets, layers, batch_size, resolution, dtype,
                      metrics, normalize)
    if stored is not None:
        diffs = st.compare_settings(stored, asked)
        if diffs:
            raise st.SettingsMismatchError(
                f"the store {out} was written with other settings, so it cannot be resumed with these:\n  "
                + "\n  ".join(diffs) + "\nrun with the store's settings, choose another --out, or pass resume=False "
                "(--restart) to start it over")
    else:
        _clear(out)
        (out / "done").mkdir()
        tgt = _unit_targets(targets, [0], [first])
        exp = explain(model, first.x[None].to(device), method=method, targets=tgt, layers=layers,
                      upsample=resolution == "input", normalize=normalize, **method_options)
        _create_arrays(out, asked, exp)
        st.write_settings(out, asked)  # last: a store with settings is a ready store
    n_units = math.ceil(len(dataset) / batch_size)
    done = st.done_units(out)
    return [u for u in range(n_units) if u not in done]


class _Progress:
    """tqdm bar with samples per second on a terminal; on a pipe or file, one plain line per tenth of the work."""

    def __init__(self, total: int, mode, desc: str) -> None:
        self.total, self.count, self.t0, self.bar = total, 0, time.perf_counter(), None
        self.enabled = mode is not False and total > 0
        self.tty = mode is True or (mode is None and sys.stderr.isatty())
        self.next_line = 0.1
        self.desc = desc
        if self.enabled and self.tty:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, unit="sample", desc=desc, dynamic_ncols=True)

    def update(self, n: int) -> None:
        self.count += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.enabled and self.count / self.total >= self.next_line - 1e-9:
            rate = self.count / max(time.perf_counter() - self.t0, 1e-9)
            print(f"{self.desc}: {self.count}/{self.total} samples ({rate:.1f} samples/s)", file=sys.stderr, flush=True)
            while self.next_line <= self.count / self.total + 1e-9:
                self.next_line += 0.1

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _collate(batch: list) -> list:
    return batch


def explain_dataset(
    model: nn.Module,
    dataset: Any,
    out: str | os.PathLike,
    method: str | type = "gradcam",
    targets: Any = None,
    layers: Any = None,
    *,
    batch_size: int = 16,
    num_workers: int = 0,
    resolution: str = "input",
    dtype: str = "float16",
    metrics: Sequence[str] | str = (),
    device: str | torch.device | None = None,
    resume: bool = True,
    progress: bool | None = None,
    normalize: bool = True,
    **method_options: Any,
):
    """Explain every sample of ``dataset`` into the store ``out``, resumable and on as many processes as torchrun runs.

    The dataset is read through a ``DataLoader`` in *work units* of ``batch_size`` consecutive samples; a unit is
    explained as one batch by :func:`ndcam.explain` and written as one chunk of every array, then committed by its
    marker (see :mod:`ndcam.dataset.store` for the layout). Rerunning the same call redoes only uncommitted units;
    a run with different settings on an existing store is refused (:class:`~ndcam.dataset.store.SettingsMismatchError`
    naming what differs). Under ``torchrun`` (environment variables ``RANK``/``WORLD_SIZE``) the process group is
    initialized if needed (gloo on CPU, nccl with CUDA), pending units are dealt round-robin to the ranks, each rank
    works on its own device (``cuda:LOCAL_RANK``), and the call returns after a barrier.

    Args:
        model: the model (not modified; copied when it must move to ``device``).
        dataset: map-style dataset; items are a tensor ``(C, *spatial)``, ``(x, y)`` with an integer label, or a dict
            with ``x`` and optional ``y``, ``mask`` (``(*spatial)``, for the pointing game), ``key`` (a name) and
            ``affine`` (4x4, kept for NIfTI export). Items of different spatial sizes are stored one array per sample.
        out: the store's folder (created).
        method: a method name or class (see :func:`ndcam.methods`).
        targets: None (top-1 class), an int, ``"label"`` (each item's ``y``), one entry per dataset item, or a callable
            output -> scores (see :mod:`ndcam.targets`).
        layers: layer spec as for :func:`ndcam.explain` (None: the automatic choice).
        batch_size: samples per work unit (= chunk length along the sample axis; fixed for the life of a store).
        num_workers: DataLoader worker processes for reading items.
        resolution: ``"input"`` stores maps upsampled to the input; ``"layer"`` stores the layer's (smaller) maps and
            upsamples them on read.
        dtype: storage type of the maps, ``"float16"`` (half the disk) or ``"float32"`` (bit-exact).
        metrics: per-sample metrics among ``"pointing"`` (needs ``mask``), ``"deletion"``, ``"insertion"``.
        device: where to compute (default: ``cuda:LOCAL_RANK`` under torchrun with CUDA, else the model's device).
        resume: continue an existing store (default); ``False`` deletes what the store holds and starts over.
        progress: True (tqdm bar), False (silent), None (bar on a terminal, a plain line per 10 % otherwise).
        normalize: min-max normalize each map to ``[0, 1]`` (as :func:`ndcam.explain`).
        **method_options: passed to the method class.

    Returns:
        The store opened for reading (:func:`ndcam.open_explanations`).

    Example:
        >>> import tempfile, torch
        >>> from ndcam.dataset import explain_dataset
        >>> net = torch.nn.Sequential(torch.nn.Conv1d(1, 4, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool1d(1),
        ...                           torch.nn.Flatten(), torch.nn.Linear(4, 2))
        >>> data = [(torch.randn(1, 50), i % 2) for i in range(10)]
        >>> ex = explain_dataset(net, data, tempfile.mkdtemp(), batch_size=4, progress=False)
        >>> bool(ex.done.all()), tuple(ex.maps[3].shape), ex.labels.tolist()[:4]
        (True, (50,), [0, 1, 0, 1])
    """
    metrics = _check_args(model, dataset, method, targets, layers, method_options, batch_size, num_workers, resolution,
                          dtype, metrics)
    st.zarr_module()
    out = Path(out)
    rank, world, created = _init_distributed()
    if device is None:
        device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}") if world > 1 and torch.cuda.is_available() \
            else _model_device(model)
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    if _model_device(model) != device:
        model = copy.deepcopy(model).to(device)
    lock = st.Lock(out)
    t0 = time.perf_counter()
    try:
        pending, err = None, None
        if rank == 0:
            try:
                pending = _prepare(out, model, dataset, method, method_options, targets, layers, batch_size,
                                   resolution, dtype, metrics, normalize, resume, lock, device)
            except BaseException as e:  # tell the other ranks, then raise here
                err = f"{type(e).__name__}: {e}"
                _broadcast((None, err, lock.job), world)
                raise
        pending, err, job = _broadcast((pending, err, lock.job), world)
        if err is not None:
            raise InputError(f"rank 0 could not prepare the store: {err}")
        if rank != 0:
            lock = st.Lock(out, job)
            lock.check()
        settings = st.read_settings(out)
        if settings is None:
            raise InputError(f"rank {rank} cannot read {out / st.SETTINGS}: every rank must see the same store "
                             f"(a shared file system)")
        mine = pending[rank::world]
        n = len(dataset)
        unit_indices = [list(range(u * batch_size, min(n, (u + 1) * batch_size))) for u in mine]
        writer = _Writer(model, out, settings, method, targets, layers, metrics, device, method_options, rank)
        loader = torch.utils.data.DataLoader(dataset, batch_sampler=unit_indices, collate_fn=_collate,
                                             num_workers=num_workers)
        bar = _Progress(sum(len(i) for i in unit_indices), progress if rank == 0 else False,
                        f"explain-dataset rank {rank}/{world}")
        try:
            for u, idx, batch in zip(mine, unit_indices, loader):
                bar.update(writer.run_unit(u, idx, batch))
        finally:
            bar.close()
        _barrier(world)
        if rank == 0:
            _write_summary(out, settings, world, len(pending), time.perf_counter() - t0)
    finally:
        if rank == 0:
            lock.release()
        if created:
            import torch.distributed as dist

            dist.destroy_process_group()
    from .read import open_explanations

    return open_explanations(out)


def _write_summary(out: Path, settings: dict, world: int, units_run: int, seconds: float) -> None:
    markers = st.read_markers(out)
    n_done = sum(m["indices"][1] - m["indices"][0] for m in markers.values())
    compute = sum(m.get("compute_s", 0.0) for m in markers.values())
    write = sum(m.get("write_s", 0.0) for m in markers.values())
    summary = {"samples": settings["dataset_length"], "samples_done": n_done, "units": len(markers),
               "units_this_run": units_run, "world_size": world, "seconds_this_run": seconds,
               "compute_seconds": compute, "write_seconds": write}
    st._write_atomic(out / "summary.json", json.dumps(summary, indent=1))

