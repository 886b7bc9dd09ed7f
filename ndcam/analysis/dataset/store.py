"""On-disk layout of a dataset explanation: a folder holding a zarr v3 store, commit markers, a lock and the settings.

::

    out/
      settings.json        the run's settings (method, options, layers, weights hash, dataset length, ...)
      data.zarr/           zarr v3 group (arrays below, sample axis first, chunk = one work unit of U samples)
        maps               (N, [K], *S) maps of the samples whose map shape is the common one (NaN elsewhere)
        samples/<i>        (K?, *S_i) one array per sample whose map shape differs (variable-size inputs)
        scores, raw_min, raw_max   (N, [K]) float32
        targets            (N, [K]) int64 (-1: targets were not classes)
        labels             (N,) int64 (-1: the item carried no label)
        input_shape        (N, 1 + rank) int64: channels and spatial size of each input
        metrics/<name>     (N, [K]) float32 per-sample metrics
      done/<unit>.json     commit marker of unit ``u`` (samples ``u*U .. u*U+U-1``): keys, affines, rank, seconds
      commits.log          one line per commit (append-only; a unit listed twice would be a double commit)
      lock                 JSON {job, pid, host, started}: which job writes this store
      summary.json         written by rank 0 at the end of a run

A unit's arrays are written whole (one chunk of every array), then its marker is created atomically (temporary file,
``os.replace``). Readers consider only units with a marker, so a crash between the two leaves nothing half-written
visible, and a resumed run redoes exactly the units without a marker.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import socket
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ...core.errors import InputError, NdcamWarning

__all__ = ["zarr_module", "weights_sha256", "Lock", "StoreLockedError", "SettingsMismatchError", "compare_settings",
           "commit_unit", "done_units", "read_markers", "DATA", "SETTINGS"]

DATA = "data.zarr"
SETTINGS = "settings.json"
#: settings that describe the run and must match on resume (the rest are derived facts, kept for the reader)
COMPARED = ("method", "method_options", "targets", "layers", "normalize", "weights_sha256", "dataset_length",
            "first_item_shape", "unit", "resolution", "dtype", "metrics")


class StoreLockedError(InputError):
    """Another job holds the store's lock."""


class SettingsMismatchError(InputError):
    """A resume asked for different settings than those the store was written with."""


def zarr_module():
    """Import zarr (>= 3.1.3, the optional extra ``store``) with a clear error when it is missing or too old."""
    try:
        import zarr
    except ImportError as err:
        raise ImportError("explaining a dataset to a store needs the optional package zarr>=3.1.3: "
                          "pip install 'ndcam[store]' (or pip install 'zarr>=3.1.3')") from err
    parts = tuple(int(p) for p in zarr.__version__.split(".")[:3] if p.isdigit())
    if parts < (3, 1, 3):
        raise ImportError(f"ndcam's dataset store needs zarr>=3.1.3 (zarr v3 format), found {zarr.__version__}")
    return zarr


def weights_sha256(model: nn.Module) -> str:
    """SHA-256 over the model's ``state_dict`` (names sorted; name, dtype, shape and bytes of every tensor)."""
    h = hashlib.sha256()
    state = model.state_dict()
    for name in sorted(state):
        t = state[name]
        if not isinstance(t, torch.Tensor):
            h.update(f"{name}={t!r};".encode())
            continue
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def compare_settings(stored: dict, asked: dict) -> list[str]:
    """Human-readable differences between stored and asked settings (empty when a resume may go on)."""
    diffs = []
    for key in COMPARED:
        if stored.get(key) != asked.get(key):
            diffs.append(f"{key}: store has {stored.get(key)!r}, this run asks {asked.get(key)!r}")
    return diffs


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_settings(out: Path, settings: dict) -> None:
    _write_atomic(out / SETTINGS, json.dumps(settings, indent=1, sort_keys=True))


def read_settings(out: Path) -> dict | None:
    p = Path(out) / SETTINGS
    return json.loads(p.read_text()) if p.exists() else None


# ------------------------------------------------------------------------------------------------ markers
def commit_unit(out: Path, unit: int, info: dict) -> None:
    """Commit ``unit``: write its marker atomically (after its data), then append a line to ``commits.log``."""
    _write_atomic(Path(out) / "done" / f"{unit}.json", json.dumps(info))
    line = json.dumps({"unit": unit, "rank": info.get("rank"), "pid": os.getpid(), "time": time.time()}) + "\n"
    fd = os.open(Path(out) / "commits.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def done_units(out: Path) -> set[int]:
    """Units with a commit marker."""
    d = Path(out) / "done"
    if not d.is_dir():
        return set()
    return {int(p.name[:-5]) for p in d.iterdir() if p.name.endswith(".json") and p.name[:-5].isdigit()}


def read_markers(out: Path) -> dict[int, dict]:
    """``{unit: marker}`` for every committed unit."""
    d = Path(out) / "done"
    return {u: json.loads((d / f"{u}.json").read_text()) for u in sorted(done_units(out))}


# ------------------------------------------------------------------------------------------------ lock
def job_id() -> str:
    """Identity of this job, as seen from rank 0: under torchrun the run id, the host and the elastic agent's pid (the
    parent of the workers, the same across ``--max-restarts`` restarts); otherwise this process.
    """
    if "TORCHELASTIC_RUN_ID" in os.environ or "MASTER_ADDR" in os.environ:
        return f"torchrun:{os.environ.get('TORCHELASTIC_RUN_ID')}@{socket.gethostname()}:agent{os.getppid()}"
    return f"process:{os.getpid()}@{socket.gethostname()}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Lock:
    """One writer job per store: ``out/lock`` created with ``O_CREAT | O_EXCL``, holding ``{job, pid, host, started}``.

    Rank 0 takes it; the other ranks of the same job only check that it names their job. A lock left by a dead job is
    *stale*: on the same host a lock whose process no longer runs is taken over (with a warning), and a lock of the
    same job (a torchrun restart) is taken over silently. A lock from another host cannot be checked; the error says
    which file to delete once that job is known to be dead.
    """

    def __init__(self, out: Path, job: str | None = None) -> None:
        self.path = Path(out) / "lock"
        self.job = job or job_id()
        self.held = False

    def _record(self) -> str:
        return json.dumps({"job": self.job, "pid": os.getpid(), "host": socket.gethostname(),
                           "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})

    def read(self) -> dict | None:
        try:
            return json.loads(self.path.read_text() or "{}")
        except FileNotFoundError:
            return None
        except json.JSONDecodeError:
            return {}

    def acquire(self) -> None:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            held = self.read() or {}
            same_host = held.get("host") == socket.gethostname()
            if held.get("job") == self.job:
                pass  # a restart of this job (torchrun --max-restarts): take it over
            elif same_host and isinstance(held.get("pid"), int) and not _alive(held["pid"]):
                warnings.warn(f"taking over the stale lock {self.path} of a job that no longer runs ({held})",
                              NdcamWarning, stacklevel=3)
            else:
                raise StoreLockedError(
                    f"the store {self.path.parent} is being written by another job (lock {held}); wait for it to "
                    f"finish, or, if that job is dead (another host's process cannot be checked from here), delete "
                    f"{self.path} and run again") from None
            _write_atomic(self.path, self._record())
        else:
            with os.fdopen(fd, "w") as f:
                f.write(self._record())
        self.held = True

    def check(self) -> None:
        """For ranks other than 0 (given rank 0's job id): the lock must name this job (the store must be shared)."""
        held = self.read()
        if not held or held.get("job") != self.job:
            raise StoreLockedError(f"the store's lock {self.path} names job {held and held.get('job')!r}, not this "
                                   f"job {self.job!r}: every rank must see the same store (a shared file system)")

    def release(self) -> None:
        if self.held:
            held = self.read() or {}
            if held.get("job") == self.job:
                self.path.unlink(missing_ok=True)
            self.held = False


def jsonable(value: Any) -> Any:
    """A JSON-friendly, comparable description of a setting (tensors and sequences hashed when long)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, torch.Tensor):
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        items = [jsonable(v) for v in value]
        if len(items) > 16:
            return {"sha256": hashlib.sha256(json.dumps(items).encode()).hexdigest(), "length": len(items)}
        return items
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, nn.Module):
        return f"module:{type(value).__name__}:{weights_sha256(value)[:16]}"
    if callable(value):
        from ..._layout import public_name  # the public module name, whatever folder the code lives in

        owner = value if hasattr(value, "__qualname__") else type(value)
        name = f"callable:{public_name(getattr(owner, '__module__', '?'))}.{owner.__qualname__}"
        if dataclasses.is_dataclass(value) and not isinstance(value, type):  # a target's classes, a grid's size...
            return {name: jsonable({f.name: getattr(value, f.name) for f in dataclasses.fields(value)})}
        return name
    return repr(value)
