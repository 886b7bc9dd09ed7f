"""Target-layer selection: names, modules, lists, and the automatic choice for Conv1d/2d/3d networks.

The automatic choice traces one forward pass of a single sample (cached per model and input shape) and picks the
outermost module that still produces the feature map of the last convolution matching the input's rank:

* the last executed ``nn.Conv1d``/``Conv2d``/``Conv3d`` (matching the input's spatial rank) whose output is not
  globally pooled (squeeze-excitation convolutions on ``1 x 1`` maps are skipped);
* then every module that completes after it with an output of the same spatial shape (its BatchNorm, activation,
  residual block, stage) until something changes the shape (pooling, flattening, the classifier).

So a torchvision-style ResNet gets ``layer4`` (the block output after the residual addition and ReLU, as the
Grad-CAM paper's "last convolutional layer"), a VGG gets the ReLU after its last convolution, a plain
``nn.Sequential`` ECG net gets the activation after its last Conv1d, and a MONAI/timm-style network gets the stage or
head convolution before global pooling. The model itself (the root module) is never chosen.
"""

from __future__ import annotations

import difflib
import math
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Union

import torch
from torch import nn

from ._errors import ForwardError, InputError, InputTypeError, LayerError, forward_failed
from .models import CONV

__all__ = [
    "LayerInfo", "LayerSpec", "TokenGrid", "resolve_layers", "auto_layer", "auto_choice", "list_layers", "module_name",
]

LayerSpec = Union[None, str, nn.Module, Sequence[Union[str, nn.Module]]]



@dataclass(frozen=True)
class LayerInfo:
    """One module of a traced forward pass.

    Attributes:
        name: dotted name as in ``model.named_modules()``.
        type: class name of the module.
        shape: output shape for the traced sample (batch axis 1), or ``None`` if the output is not a tensor.
        spatial: whether the output is ``(N, C, *spatial)`` with the input's spatial rank (a usable CAM layer).
        calls: how many times the module ran in one forward pass.
    """

    name: str
    type: str
    shape: tuple[int, ...] | None
    spatial: bool
    calls: int = 1

    def __str__(self) -> str:
        shape = "x".join(map(str, self.shape)) if self.shape is not None else "-"
        mark = "*" if self.spatial else " "
        calls = f" (called {self.calls}x)" if self.calls > 1 else ""
        return f"{mark} {self.name:<40s} {self.type:<24s} {shape}{calls}"


def module_name(model: nn.Module, module: nn.Module) -> str:
    """Dotted name of ``module`` inside ``model``; raises :class:`LayerError` if it is not a submodule."""
    for name, m in model.named_modules():
        if m is module:
            return name
    raise LayerError(
        f"layer {type(module).__name__} is not a submodule of the model ({type(model).__name__}); pass a module "
        f"from model.modules() or its dotted name"
    )


def _lookup(model: nn.Module, name: str) -> nn.Module:
    names = [n for n, _ in model.named_modules() if n]
    try:
        return model.get_submodule(name)
    except AttributeError:
        pass
    close = difflib.get_close_matches(name, names, n=5, cutoff=0.5)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    tail = names[-8:]
    raise LayerError(
        f"layer {name!r} does not exist in {type(model).__name__}{hint} (last module names: {', '.join(tail)}; "
        f"ndcam.list_layers(model, x) lists all with their output shapes)"
    )


def resolve_layers(model: nn.Module, layers: LayerSpec) -> list[tuple[str, nn.Module]]:
    """Turn a layer specification (not ``None``) into ``[(name, module), ...]``.

    Args:
        model: the model.
        layers: a dotted name, a module, or a non-empty sequence of those.

    Raises:
        LayerError: a name that does not exist (with close matches) or a module outside the model.
        InputTypeError: an entry that is neither a string nor a module.
    """
    if isinstance(layers, (str, nn.Module)):
        items: list = [layers]
    elif isinstance(layers, Sequence):
        items = list(layers)
    else:
        raise InputTypeError(
            f"layers must be None, a dotted module name, an nn.Module or a list of those, got {type(layers).__name__}: "
            f"{layers!r}"
        )
    if not items:
        raise InputError("layers is an empty list; pass None (automatic), a dotted name, a module, or a list of those")
    out: list[tuple[str, nn.Module]] = []
    for item in items:
        if isinstance(item, str):
            out.append((item, _lookup(model, item)))
        elif isinstance(item, nn.Module):
            out.append((module_name(model, item), item))
        else:
            raise InputTypeError(
                f"a layer must be a dotted module name or an nn.Module, got {type(item).__name__}: {item!r}"
            )
        if out[-1][1] is model:
            raise LayerError("the model itself cannot be a target layer; name one of its submodules")
    seen: set[int] = set()
    unique = []
    for name, m in out:
        if id(m) not in seen:
            seen.add(id(m))
            unique.append((name, m))
    return unique


# a traced call: (name, module, output shape or None, output is a floating tensor)
_Record = tuple[str, nn.Module, "tuple[int, ...] | None", bool]


def _is_spatial(shape: tuple[int, ...] | None, floating: bool, rank: int) -> bool:
    return shape is not None and floating and len(shape) == rank + 2


def _trace(model: nn.Module, x: torch.Tensor) -> list[_Record]:
    """Run ``model`` on ``x`` without gradients and record each module's output shape at its completion."""
    records: list[_Record] = []
    handles = []

    def make_hook(name: str):
        def hook(module: nn.Module, inputs: object, output: object) -> None:
            if isinstance(output, torch.Tensor):
                records.append((name, module, tuple(output.shape), output.is_floating_point()))
            else:
                records.append((name, module, None, False))

        return hook

    for name, m in model.named_modules():
        if name:
            handles.append(m.register_forward_hook(make_hook(name)))
    try:
        with torch.no_grad():
            model(x)
    except (RuntimeError, ValueError, TypeError, IndexError) as err:
        raise forward_failed(model, x, err) from err
    finally:
        for h in handles:
            h.remove()
    return records


_AUTO_CACHE: weakref.WeakKeyDictionary[nn.Module, dict] = weakref.WeakKeyDictionary()


def _call_counts(records: list[_Record]) -> dict[str, int]:
    calls: dict[str, int] = {}
    for name, *_ in records:
        calls[name] = calls.get(name, 0) + 1
    return calls


def _records_to_infos(records: list[_Record], rank: int) -> list[LayerInfo]:
    calls = _call_counts(records)
    return [
        LayerInfo(name, type(m).__name__, shape, _is_spatial(shape, fl, rank), calls[name])
        for name, m, shape, fl in records
    ]


def _is_conv(m: nn.Module, rank: int) -> bool:
    """A convolution of ``rank``: by class, or by the class name an exported-and-unflattened module remembers."""
    cls = CONV.get(rank)
    return cls is not None and (isinstance(m, cls) or getattr(m, "_ndcam_type", None) == cls.__name__)


def _choose(records: list[_Record], rank: int) -> str | None:
    candidates = [i for i, (_, m, shape, fl) in enumerate(records) if _is_conv(m, rank) and _is_spatial(shape, fl, rank)]
    if not candidates:
        return None
    unpooled = [i for i in candidates if any(s != 1 for s in records[i][2][2:])]
    last_conv = (unpooled or candidates)[-1]
    conv_spatial = records[last_conv][2][2:]
    chosen = last_conv
    for j in range(last_conv + 1, len(records)):
        _, _, shape, fl = records[j]
        if not (_is_spatial(shape, fl, rank) and shape[2:] == conv_spatial):
            break
        chosen = j
    # a module called several times (a shared ReLU) is a poor target: step back to the nearest single-call module
    calls = _call_counts(records)
    while chosen > last_conv and calls[records[chosen][0]] > 1:
        chosen -= 1
    return records[chosen][0]


def _probe(model: nn.Module, x: torch.Tensor) -> list[_Record]:
    was_training = {m: m.training for m in model.modules()}
    model.eval()
    try:
        try:
            return _trace(model, x[:1])
        except ForwardError:
            if x.shape[0] == 1:
                raise
            return _trace(model, x)  # models with a fixed batch size (e.g. torch.export archives)
    finally:
        for m, flag in was_training.items():
            m.training = flag


def auto_layer(model: nn.Module, x: torch.Tensor) -> tuple[str, nn.Module]:
    """Choose the target layer for ``model`` on inputs shaped like ``x`` (see the module docstring).

    The choice is cached per model and per input shape/dtype/device, so only the first call pays for the probe (one
    forward pass of a single sample, in eval mode, without gradients).

    Raises:
        LayerError: no convolution of the input's rank produces a spatial map; pass ``layers=`` explicitly.
    """
    rank = x.ndim - 2
    key = (tuple(x.shape[1:]), x.dtype, x.device, sum(1 for _ in model.modules()))
    cache = _AUTO_CACHE.setdefault(model, {})
    if key not in cache:
        records = _probe(model, x)
        cache[key] = _choose(records, rank)
    name = cache[key]
    if name is None:
        kind = {1: "Conv1d", 2: "Conv2d", 3: "Conv3d"}.get(rank, f"rank-{rank} convolution")
        dims = {1: "L", 2: "H, W", 3: "D, H, W"}.get(rank, f"<{rank} axes>")
        raise LayerError(
            f"no {kind} producing a (N, C, {dims}) map was found in "
            f"{type(model).__name__} for an input of shape {tuple(x.shape)}; pass layers='<dotted name>' "
            f"(ndcam.list_layers(model, x) shows candidates with their output shapes)"
        )
    return name, model.get_submodule(name)


def auto_choice(model: nn.Module, x: torch.Tensor) -> tuple[list[tuple[str, nn.Module]], Callable | None]:
    """The automatic choice for ``layers=None``: ``([(name, module), ...], reshape or None)``.

    ``reshape`` is the adapter the chosen layer needs (a :class:`TokenGrid` for token models), or ``None`` when its
    output is already ``(N, C, *spatial)``.
    """
    return [auto_layer(model, x)], None


def list_layers(model: nn.Module, x: torch.Tensor, *, spatial_only: bool = False) -> list[LayerInfo]:
    """List the modules of ``model`` in execution order with their output shapes for an input like ``x``.

    Modules whose output is ``(N, C, *spatial)`` with the input's spatial rank are marked ``spatial=True``: those are
    valid target layers. The automatic choice is the one :func:`auto_layer` returns.

    Args:
        model: the model.
        x: an example input ``(N, C, *spatial)``; only its first sample is run.
        spatial_only: keep only usable target layers.

    Example:
        >>> import torch, ndcam
        >>> net = torch.nn.Sequential(torch.nn.Conv1d(1, 4, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool1d(1))
        >>> [i.name for i in ndcam.list_layers(net, torch.randn(1, 1, 32), spatial_only=True)]
        ['0', '1', '2']
    """
    if not isinstance(x, torch.Tensor) or x.ndim < 3:
        raise InputError(f"x must be a tensor (N, C, *spatial); got {getattr(x, 'shape', type(x).__name__)}")
    records = _probe(model, x)
    seen: dict[str, LayerInfo] = {}
    for info in _records_to_infos(records, x.ndim - 2):
        seen.setdefault(info.name, info)
    infos = list(seen.values())
    return [i for i in infos if i.spatial] if spatial_only else infos


class TokenGrid:
    """``reshape=`` adapter for token models: ``(N, T, D)`` tokens -> ``(N, D, *grid)`` of any rank (a view).

    Args:
        grid: the patch grid, e.g. ``(T,)`` for a 1D audio/ECG transformer, ``(14, 14)`` for a ViT-B/16 at 224,
            ``(8, 8, 8)`` for a volume transformer. ``None`` infers it from the token count for a given ``rank``:
            all tokens for rank 1, a square/cubic grid for rank 2/3.
        prefix: number of leading non-patch tokens to drop (class token, distillation token, registers).
        rank: spatial rank used when ``grid`` is ``None``.
        channels_last: the layer gives ``(N, *grid, D)`` (Swin-style) instead of tokens; it is only permuted.

    Example:
        >>> import torch
        >>> TokenGrid((2, 3), prefix=1)(torch.randn(4, 7, 16)).shape
        torch.Size([4, 16, 2, 3])
        >>> TokenGrid(rank=1, prefix=1)(torch.randn(4, 11, 8)).shape
        torch.Size([4, 8, 10])
    """

    def __init__(self, grid: Sequence[int] | None = None, prefix: int = 0, *, rank: int | None = None,
                 channels_last: bool = False) -> None:
        if grid is None and rank is None and not channels_last:
            raise InputError("TokenGrid needs grid=(...) or rank= to infer the grid")
        self.grid = None if grid is None else tuple(int(g) for g in grid)
        self.prefix = int(prefix)
        self.rank = len(self.grid) if self.grid is not None else rank
        self.channels_last = channels_last

    def __repr__(self) -> str:
        return f"TokenGrid(grid={self.grid}, prefix={self.prefix}, rank={self.rank}, channels_last={self.channels_last})"

    def __call__(self, t: torch.Tensor) -> torch.Tensor:
        if not isinstance(t, torch.Tensor):
            raise LayerError(f"TokenGrid expects the layer to output a tensor, got {type(t).__name__}")
        if self.channels_last:
            return t.movedim(-1, 1)
        if t.ndim != 3:
            raise LayerError(f"TokenGrid expects tokens (N, T, D), got {tuple(t.shape)}")
        tokens = t[:, self.prefix :]
        count = tokens.shape[1]
        grid = self.grid or self._infer(count)
        if math.prod(grid) != count:
            raise LayerError(
                f"TokenGrid: {count} patch tokens (after dropping {self.prefix} prefix tokens of {t.shape[1]}) do not "
                f"fill the grid {grid} ({math.prod(grid)} cells); set grid= and prefix= to the model's layout"
            )
        return tokens.transpose(1, 2).unflatten(2, grid)

    def _infer(self, count: int) -> tuple[int, ...]:
        side = round(count ** (1 / self.rank))
        if side**self.rank != count:
            raise LayerError(
                f"TokenGrid cannot infer a rank-{self.rank} grid from {count} tokens (not a perfect power); pass grid="
            )
        return (side,) * self.rank
