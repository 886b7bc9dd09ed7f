"""Loading models for the command line: ``package.module:factory`` (+ weights) or a checked ``torch.export`` archive.

Which model forms run code when loaded:

* ``package.module:factory`` imports and runs your Python module (that is the point: it builds the model);
* ``--weights`` files are read with ``torch.load(weights_only=True)``: tensors only, no code;
* ``.pt2`` archives are inspected with :mod:`zipfile` before torch sees them (:func:`check_pt2`): only the entries
  of a plain ``torch.export`` archive are accepted (JSON graph, raw tensor bytes, pickled tensors that torch's
  restricted ``weights_only`` unpickler can read); compiled AOTInductor code, custom/opaque pickled objects, legacy
  pickled weight files and any pickle that would need the unrestricted unpickler are refused;
* TorchScript files are refused (they cannot take forward hooks).
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import logging
import os
import re
import sys
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ...core.errors import InputError

__all__ = ["load_model", "check_pt2", "import_object", "quiet_torch"]

# Entries (below the archive's root folder) of a plain torch.export archive and how torch reads each.
_PLAIN = [
    (re.compile(r"archive_format|archive_version|byteorder|\.data/version|\.data/serialization_id"), "text"),
    (re.compile(r"models/[^/]+\.json"), "json"),
    (re.compile(r"data/(weights|constants)/model[^/]*_config\.json|data/(weights|constants)/[^/]+_config\.json"), "json"),
    (re.compile(r"data/weights/weight_\d+"), "tensor"),
    (re.compile(r"data/constants/tensor_\d+"), "tensor"),
    (re.compile(r"data/sample_inputs/[^/]+\.pt"), "pickle"),
    (re.compile(r"extra/.+"), "text"),
]


@contextlib.contextmanager
def quiet_torch():
    """Silence torch's load-time warnings and log lines (deprecations, "legacy format", fallbacks)."""
    loggers = [logging.getLogger(n) for n in ("torch.export", "torch._export", "torch._export.serde.serialize",
                                              "torch.export.pt2_archive._package")]
    levels = [lg.level for lg in loggers]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for lg, lv in zip(loggers, levels):
                lg.setLevel(lv)


def _safe_pickle(blob: bytes) -> str | None:
    """``None`` when torch's restricted unpickler (``weights_only=True``, which never calls arbitrary code) reads the
    payload; else the reason. torch.export would retry such a payload with the unrestricted unpickler.
    """
    try:
        with quiet_torch():
            torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any failure means torch would fall back to full unpickling
        return f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"[:200]
    return None


def check_pt2(path: str | Path) -> None:
    """Inspect a ``.pt2`` archive before torch loads it; raise :class:`InputError` unless it is a plain
    ``torch.export`` archive whose payloads are JSON, raw tensor bytes or tensors-only pickles.

    Refused: compiled AOTInductor/ExecuTorch payloads (native code), custom or opaque pickled objects
    (``custom_obj_*``/``opaque_obj_*``, read with the unrestricted unpickler), legacy pickled weight/constant files,
    payloads marked ``use_pickle`` or sample inputs that torch's ``weights_only`` unpickler cannot read (torch would
    retry them with ``weights_only=False``, which runs whatever the pickle asks for), and unknown entries.
    """
    p = Path(path)
    try:
        zf = zipfile.ZipFile(p)
    except (zipfile.BadZipFile, OSError) as err:
        raise InputError(f"{str(p)!r} is not a torch.export archive (not a zip file: {err})") from err
    with zf:
        names = [n for n in zf.namelist() if not n.endswith("/")]
        roots = {n.split("/", 1)[0] for n in names}
        if len(roots) != 1 or not names:
            raise InputError(f"{str(p)!r} is not a torch.export archive (expected one root folder, found {sorted(roots)})")
        root = roots.pop() + "/"
        kinds: dict[str, str] = {}
        for name in names:
            rel = name[len(root):]
            kind = next((k for rx, k in _PLAIN if rx.fullmatch(rel)), None)
            if kind is None:
                why = ("compiled code (AOTInductor/ExecuTorch)" if rel.startswith(("data/aotinductor", "data/executorch",
                                                                                    "data/mtia")) else
                       "a custom or opaque pickled object" if re.search(r"(custom_obj|opaque_obj)", rel) else
                       "a legacy pickled weight/constant file" if re.fullmatch(r"data/(weights|constants)/[^/]+\.pt", rel)
                       else "an entry that is not part of a plain torch.export archive")
                raise InputError(f"refusing {str(p)!r}: entry {rel!r} is {why}; loading it could run code. Only plain "
                                 f"torch.export archives (torch.export.save of a model without custom objects) are accepted")
            kinds[rel] = kind
        if not any(k == "json" and r.startswith("models/") for r, k in kinds.items()):
            raise InputError(f"{str(p)!r} is not a torch.export archive (no models/*.json entry)")
        for rel, kind in kinds.items():
            if kind == "json":
                try:
                    cfg = json.loads(zf.read(root + rel))
                except ValueError as err:
                    raise InputError(f"refusing {str(p)!r}: {rel!r} is not valid JSON ({err})") from err
                if rel.startswith("data/") and isinstance(cfg, dict):
                    for fqn, meta in (cfg.get("config") or {}).items():
                        if isinstance(meta, dict) and meta.get("use_pickle"):
                            sub = "weights" if "/weights/" in rel else "constants"
                            blob_name = f"{root}data/{sub}/{meta.get('path_name')}"
                            if blob_name not in zf.namelist():
                                raise InputError(f"refusing {str(p)!r}: pickled payload for {fqn!r} is missing")
                            reason = _safe_pickle(zf.read(blob_name))
                            if reason:
                                raise InputError(f"refusing {str(p)!r}: payload {meta.get('path_name')!r} ({fqn}) is a "
                                                 f"pickle that needs the unrestricted unpickler ({reason}); it could run code")
            elif kind == "pickle":
                reason = _safe_pickle(zf.read(root + rel))
                if reason:
                    raise InputError(f"refusing {str(p)!r}: entry {rel!r} is a pickle that torch would load with the "
                                     f"unrestricted unpickler ({reason}); loading it could run code")


def import_object(spec: str, what: str = "factory") -> Any:
    """Import ``package.module:name`` with the current working folder on ``sys.path`` (as ``python -m`` does), so that
    ``ndcam explain --model mymodels:net`` works from the folder holding ``mymodels.py`` under the installed command.
    """
    if ":" not in spec:
        raise InputError(f"{what} {spec!r} must look like package.module:name")
    mod_name, fn_name = spec.split(":", 1)
    cwd = os.getcwd()
    added = cwd not in sys.path and "" not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        obj = importlib.import_module(mod_name)
        for part in fn_name.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as err:
        raise InputError(f"cannot import {spec!r}: {err}") from err
    finally:
        if added:
            with contextlib.suppress(ValueError):
                sys.path.remove(cwd)
    return obj


def _load_weights(model: nn.Module, weights: str) -> None:
    try:
        with quiet_torch():
            state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as err:
        raise InputError(f"cannot read weights {weights!r} as a tensors-only state dict ({type(err).__name__}: "
                         f"{str(err).splitlines()[0] if str(err) else ''})") from err
    if isinstance(state, dict):
        for key in ("state_dict", "model"):
            if key in state and isinstance(state[key], dict):
                state = state[key]
    if not isinstance(state, dict):
        raise InputError(f"weights {weights!r} hold a {type(state).__name__}, not a state dict")
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs model {tuple(own[k].shape)}" for k in own
              if k in state and hasattr(state[k], "shape") and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        def few(xs: list[str]) -> str:
            return ", ".join(xs[:8]) + (f" (+{len(xs) - 8} more)" if len(xs) > 8 else "")

        parts = ([f"missing keys: {few(missing)}"] if missing else []) + \
                ([f"unexpected keys: {few(unexpected)}"] if unexpected else []) + \
                ([f"shape mismatch: {few(shapes)}"] if shapes else [])
        hint = ""
        if missing and unexpected and all(k.startswith("module.") for k in unexpected):
            hint = " (the checkpoint was saved from DataParallel/DDP: strip the 'module.' prefix)"
        raise InputError(f"weights {weights!r} do not fit the model: " + "; ".join(parts) + hint)
    model.load_state_dict(state)


def load_model(spec: str, weights: str | None = None, device: str = "cpu") -> nn.Module:
    """Load a model from ``package.module:factory`` (+ ``weights``) or a checked ``torch.export`` archive (``.pt2``).

    Args:
        spec: ``package.module:factory`` (a callable returning an ``nn.Module``, imported with the working folder on
            ``sys.path``) or the path of a ``.pt2`` archive (unflattened so submodules keep their names and hooks).
        weights: a state dict saved with ``torch.save`` (or a checkpoint holding one under ``state_dict``/``model``),
            read with ``weights_only=True``.
        device: where to put the model.

    Raises:
        InputError: unknown spec, a TorchScript file, an archive that could run code, weights that do not fit (missing
            and unexpected keys listed).
    """
    path = Path(spec)
    if path.suffix == ".pt2" and path.exists():
        check_pt2(path)
        with quiet_torch():
            ep = torch.export.load(str(path))
            model = torch.export.unflatten(ep)
        _annotate_types(ep, model)
    elif path.exists():
        with zipfile.ZipFile(path) if zipfile.is_zipfile(path) else contextlib.nullcontext() as zf:
            names = zf.namelist() if zf is not None else []
        if any(n.endswith("constants.pkl") or "/code/" in n for n in names):
            raise InputError(f"{spec!r} is a TorchScript model: TorchScript modules do not accept forward hooks, so no "
                             f"CAM can be read from their layers; export it with torch.export (.pt2) or pass "
                             f"package.module:factory with --weights")
        raise InputError(f"cannot read model file {spec!r}: give a torch.export archive (.pt2) or "
                         f"package.module:factory with --weights")
    elif ":" in spec:
        factory = import_object(spec)
        model = factory()
        if not isinstance(model, nn.Module):
            raise InputError(f"{spec!r} returned {type(model).__name__}, not an nn.Module")
    else:
        raise InputError(f"model {spec!r} is neither an existing file (.pt2) nor package.module:factory")
    if weights:
        _load_weights(model, weights)
    return model.to(device).eval()


def _annotate_types(ep: Any, model: nn.Module) -> None:
    """Unflattened submodules lose their classes; keep the original class name (from the graph's module stack) as
    ``_ndcam_type`` so the automatic layer choice still recognizes convolutions.
    """
    for node in ep.graph.nodes:
        for fqn, type_name in (node.meta.get("nn_module_stack") or {}).values():
            try:
                sub = model.get_submodule(fqn) if fqn else None
            except AttributeError:
                continue
            if sub is not None:
                name = type_name if isinstance(type_name, str) else getattr(type_name, "__qualname__", str(type_name))
                sub._ndcam_type = name.rsplit(".", 1)[-1]  # type: ignore[assignment]
