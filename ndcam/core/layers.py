"""Target-layer selection: names, modules, lists, and the automatic choice for convolutional and token models.

The automatic choice traces one forward pass of a single sample (cached per model and input shape) and picks the
outermost module that still gives the feature map of the last convolution matching the input's rank:

* the *anchor* is the last executed ``nn.Conv1d``/``Conv2d``/``Conv3d`` (matching the input's spatial rank) whose
  output is not globally pooled (squeeze-excitation convolutions on ``1 x 1`` maps are skipped) and keeps the traced
  batch (convolutions on the batch folded with attention heads, MViT's pooling attention, are skipped);
* every later module output that is still that feature map, in one of three layouts, belongs to it: channel-first
  ``(N, C, *grid)`` on the anchor's grid; channels-last ``(N, *grid, C)`` (ConvNeXt blocks, Swin stages); tokens
  ``(N, prefix + prod(grid), C)`` with up to 8 class/distillation/register tokens (ViT, DeiT, audio/ECG/volume
  transformers). Channels-last and token outputs may sit on a grid halved by patch merging (Swin; in 3D also the
  last two axes only, as video transformers merge space and keep time); a channel-first output on a coarser grid
  (after pooling) ends the feature map;
* the last of those wins, unless it is a module called several times (a shared ReLU): then the one before it.

Side branches do not stop the search: a squeeze-excitation's pooled ``(N, C, 1, 1)`` outputs, a ConvNeXt block's
channels-last permutation, a token reshape are skipped, and the block or stage that completes after them is taken. So
a torchvision-style ResNet gets ``layer4`` (the block output after the residual addition and ReLU, as the Grad-CAM
paper's "last convolutional layer"), MONAI's SEResNet50 gets ``layer4`` (after BatchNorm, squeeze-excitation and the
residual), a ConvNeXt its stage (or the ``features`` container ending with it), a VGG the ReLU after its last
convolution, a plain ``nn.Sequential`` ECG net the activation after its last Conv1d; a ViT/DeiT (or a video MViT)
the norm feeding its last attention (a class-token head gives the final norm's patch tokens no gradient, see
:func:`_reaching`) with ``TokenGrid(grid, prefix=1 or 2)``, a Swin (2D or video) its final norm with
``TokenGrid(grid, channels_last=True)`` (:func:`auto_choice` returns that reshape). The model itself (the root module)
is never chosen. A model without a convolution of the input's rank gets an error with the exact
``layers=``/``reshape=`` to pass where it can be read.
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

from .capture import ModelState, model_lock, this_thread
from .errors import ForwardError, InputError, InputTypeError, LayerError, model_forward
from .ranks import CONV

__all__ = [
    "LayerInfo", "LayerSpec", "TokenGrid", "resolve_layers", "auto_layer", "auto_choice", "list_layers", "module_name",
    "check_not_scripted",
]

LayerSpec = Union[None, str, nn.Module, Sequence[Union[str, nn.Module]]]



@dataclass(frozen=True)
class LayerInfo:
    """One module of a traced forward pass.

    Attributes:
        name: dotted name as in ``model.named_modules()``.
        type: class name of the module.
        shape: output shape for the traced sample (batch axis 1), or ``None`` if the output is not a tensor.
        spatial: whether the output is ``(N, C, *spatial)`` with the input's spatial rank and batch size (a usable CAM
            layer).
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
    check_not_scripted(model)
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


def _is_spatial(shape: tuple[int, ...] | None, floating: bool, rank: int, batch: int | None = None) -> bool:
    """A floating ``(N, C, *spatial)`` output of the input's rank, whose first axis is the traced batch (``batch``):
    a convolution over a batch folded with attention heads, ``(N * heads, C, *grid)`` (MViT's pooling attention), is
    a per-head internal, not a feature map of the samples.
    """
    return shape is not None and floating and len(shape) == rank + 2 and (batch is None or shape[0] == batch)


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
            handles.append(m.register_forward_hook(this_thread(make_hook(name))))
    try:
        with torch.no_grad(), model_forward(model, x):
            model(x)
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


def _records_to_infos(records: list[_Record], rank: int, batch: int | None = None) -> list[LayerInfo]:
    calls = _call_counts(records)
    return [
        LayerInfo(name, type(m).__name__, shape, _is_spatial(shape, fl, rank, batch), calls[name])
        for name, m, shape, fl in records
    ]


def _is_conv(m: nn.Module, rank: int) -> bool:
    """A convolution of ``rank``: by class, or by the class name an exported-and-unflattened module remembers."""
    cls = CONV.get(rank)
    return cls is not None and (isinstance(m, cls) or getattr(m, "_ndcam_type", None) == cls.__name__)


_POOLS = (
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d,
    nn.AdaptiveMaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d,
)


def _is_pool(m: nn.Module) -> bool:
    return isinstance(m, _POOLS) or "Pool" in type(m).__name__


def _is_patch_embedding(m: nn.Module) -> bool:
    """A convolution that cuts the input into non-overlapping patches (kernel == stride > 1): ViT/Swin-style."""
    kernel, stride = getattr(m, "kernel_size", None), getattr(m, "stride", None)
    if kernel is None or stride is None:
        return False
    return tuple(kernel) == tuple(stride) and any(s > 1 for s in stride)


def _coarser(grid: tuple[int, ...]) -> list[tuple[int, ...]]:
    """Grids reached from ``grid`` by patch merging: every axis halved 1 to 6 times (floor or ceil) and, for a rank-3
    grid, also its last two axes only -- video transformers (Swin3D, MViT) merge space and keep time.

    Ordered by the number of halvings, all axes before the last two, so that a token count two grids fit (``(1, 4,
    4)`` and ``(4, 2, 2)`` from ``(4, 16, 16)``) is first laid on the one fewer merges reach; :func:`_choose` then
    prefers the grid the previous member of the feature map's family reaches.
    """
    rank = len(grid)
    patterns = [range(rank)] + ([range(1, rank)] if rank == 3 else [])
    out: list[tuple[int, ...]] = []
    for k in range(1, 7):
        for axes in patterns:
            for rnd in (math.floor, math.ceil):
                g = tuple(max(1, int(rnd(s / 2**k))) if i in axes else s for i, s in enumerate(grid))
                if g != grid and g not in out and math.prod(g) > 1:
                    out.append(g)
    return out


_MAX_PREFIX = 8  # class token, distillation token, register tokens


@dataclass(frozen=True)
class _Choice:
    """The automatic layer with the layout of its output: ``cf`` (N, C, *grid), ``cl`` (N, *grid, C) or ``tokens``
    (N, prefix + prod(grid), C).
    """

    name: str
    layout: str
    grid: tuple[int, ...]
    prefix: int
    shape: tuple[int, ...]

    @property
    def expected(self) -> tuple[int, ...]:
        """The ``(N, C, *grid)`` shape a correct reshape turns the traced output into."""
        channels = self.shape[1] if self.layout == "cf" else self.shape[-1]
        return (self.shape[0], channels, *self.grid)

    def reshape(self) -> TokenGrid | None:
        if self.layout == "cf":
            return None
        if self.layout == "cl":
            return TokenGrid(self.grid, channels_last=True)
        return TokenGrid(self.grid, prefix=self.prefix)

    def suggestion(self) -> str:
        r = self.reshape()
        if r is None:
            return f"layers={self.name!r}"
        args = f"{self.grid}" + (f", prefix={self.prefix}" if self.prefix else "")
        args += ", channels_last=True" if self.layout == "cl" else ""
        return f"layers={self.name!r}, reshape=ndcam.TokenGrid({args})"


def _layout(record: _Record, rank: int, g0: tuple[int, ...], coarser: list[tuple[int, ...]], patch: bool,
            merged: bool = True, channels: int | None = None, batch: int | None = None,
            prev: tuple[int, ...] | None = None):
    """``(layout, grid, prefix)`` if a traced output is the anchor's feature map in some layout, else ``None``.

    Channel-first maps must keep the anchor convolution's grid exactly (a pooling that halves it ends the feature
    map, as in VGG); channels-last and token outputs may also be on a grid halved by patch merging (Swin), once
    ``merged`` says the feature map already went channels-last or to tokens. Outputs whose first axis is not the
    traced ``batch`` are not the samples' feature maps. A token count that several grids fit is laid on one the
    previous member's grid ``prev`` reaches (itself or merged), if any.
    """
    _, module, shape, floating = record
    if shape is None or not floating or (batch is not None and shape[0] != batch):
        return None
    cf = len(shape) == rank + 2 and shape[2:] == g0
    if _is_pool(module) or isinstance(module, nn.modules.conv._ConvNd) or _is_conv(module, rank):
        return ("cf", g0, 0) if cf else None  # convolutions and poolings of any rank give channel-first maps
    # coarser grids only once the map is channels-last or tokens (patch merging), never for a pooled CNN map
    grids = ([g0] if math.prod(g0) > 1 else []) + (coarser if merged else [])
    tok = None
    if len(shape) == 3 and shape[2] > 1:
        reach = [] if prev is None else [prev, *_coarser(prev)]
        for p in range(_MAX_PREFIX + 1):
            fits = [g for g in grids if math.prod(g) == shape[1] - p]
            hit = next((g for g in fits if g in reach), fits[0] if fits else None)
            if hit is not None:
                tok = ("cl" if rank == 1 and p == 0 else "tokens", hit, p)  # rank 1: (N, L, C) is channels-last
                break
    if cf:
        # rank 1: (N, C, L) and tokens (N, T, D) look alike; after a patch embedding, tokens win
        return tok if tok is not None and rank == 1 and patch else ("cf", g0, 0)
    if rank >= 2 and len(shape) == rank + 2 and shape[-1] > 1 and shape[1:-1] in grids:
        return ("cl", shape[1:-1], 0)
    if tok is not None:
        if rank == 1 and not merged and channels is not None and shape[2] != channels:
            return None  # going to (N, L, C) keeps the channel count of the channel-first map it transposes
        if rank == 1 and not patch and shape[2] in {g[0] for g in [g0, *coarser]}:
            return None  # a channel-first map on a coarser grid (after pooling), not tokens
        return tok
    return None


def _choose(records: list[_Record], rank: int, batch: int | None = None) -> list[_Choice]:
    """Candidates for the automatic layer, best first (see the module docstring); empty without a convolution of the
    input's rank. ``batch``: the traced batch size (outputs with another first axis are not feature maps).
    """
    convs = [i for i, (_, m, shape, fl) in enumerate(records)
             if _is_conv(m, rank) and _is_spatial(shape, fl, rank, batch)]
    if not convs:
        return []
    shapes = [r[2] or () for r in records]  # every conv candidate has a shape; () keeps the type checker calm
    unpooled = [i for i in convs if any(s != 1 for s in shapes[i][2:])]
    anchor = (unpooled or convs)[-1]
    g0 = shapes[anchor][2:]
    coarser = _coarser(g0)
    patch = _is_patch_embedding(records[anchor][1])
    family: list[tuple[int, tuple]] = [(anchor, ("cf", g0, 0))]
    for j in range(anchor + 1, len(records)):
        merged = any(lay[0] != "cf" for _, lay in family)
        lay = _layout(records[j], rank, g0, coarser, patch, merged, shapes[family[-1][0]][1], batch,
                      family[-1][1][1])
        prev_j, prev = family[-1]
        shape, before = shapes[j], shapes[prev_j]
        if lay is not None and rank == 1 and prev[0] == "cl" and len(before) == 3 and shape == (
                before[0], before[2], before[1]):
            # (N, L, C) transposed back to (N, C, L): channel-first, a feature map only on the anchor's grid
            lay = ("cf", g0, 0) if shape[2:] == g0 else None
        if lay is not None:
            family.append((j, lay))
    # a module called several times (a shared ReLU) is a poor target: step back to the nearest single-call module
    calls = _call_counts(records)
    out = [_Choice(records[j][0], lay[0], tuple(lay[1]), lay[2], records[j][2])
           for j, lay in reversed(family) if calls[records[j][0]] == 1 or j == anchor]
    return out


def _first_tensor(out: object) -> torch.Tensor | None:
    """The output tensor the gradient probe sums: what class targets read (``targets.logits_of``), else -- for an
    output that rule finds ambiguous -- the first floating tensor in it.
    """
    from .targets import logits_of

    try:
        logits = logits_of(out)
        return logits if logits.is_floating_point() else None
    except InputTypeError:
        return _first_floating(out)


def _first_floating(out: object) -> torch.Tensor | None:
    if isinstance(out, torch.Tensor):
        return out if out.is_floating_point() else None
    if isinstance(out, dict):
        out = list(out.values())
    elif hasattr(out, "__dataclass_fields__"):
        out = [getattr(out, k) for k in out.__dataclass_fields__]
    if isinstance(out, (list, tuple)):
        for item in out:
            t = _first_floating(item)
            if t is not None:
                return t
    return None


#: patch-token gradients below this fraction of the largest gradient of the same layer are rounding noise (a path
#: that cancels exactly in real arithmetic, e.g. through the channel sum of a LayerNorm's output), not a reaching path
_NOISE = 1e-4


def _reaching(model: nn.Module, x: torch.Tensor, candidates: list[_Choice]) -> tuple[_Choice | str, bool]:
    """For class-token models: the last token layer whose *patch* tokens still reach the output, and whether that
    finding may be cached.

    After the last attention, a ViT's head reads the class token only, so the patch tokens of the final norm get
    exactly zero gradient (an all-zero map). One probe forward and backward of a single sample (eval mode, no
    parameter ``.grad`` written) finds the last candidate with a non-zero patch-token gradient: the normalization
    that feeds the last attention (timm's ``blocks[-1].norm1``).

    When the output depends on none of the token layers -- every gradient, class tokens included, is zero, as for a
    head initialised to zero (torchvision's ``VisionTransformer`` before training) -- the output cannot tell which
    tokens its head reads. The probe then differentiates a fixed random projection of the prefix (class) tokens of the
    last token layer instead -- what a class-token head reads -- and finds the same layer as for trained weights.
    That finding is not cached, so the model is probed again once its weights make the output depend on the tokens.
    """
    tokens = [c for c in candidates if c.layout == "tokens"]
    norms = [c for c in tokens if "Norm" in type(model.get_submodule(c.name)).__name__]
    tokens = norms or tokens  # the block's normalization, never a projection inside the attention
    store: dict[str, torch.Tensor] = {}
    handles = [model.get_submodule(c.name).register_forward_hook(this_thread(
        lambda m, i, o, name=c.name: store.setdefault(name, o) if isinstance(o, torch.Tensor) else None))
        for c in tokens]
    state = ModelState.save(model)
    state.eval()
    try:
        with torch.enable_grad():
            xs = x[:1].detach().clone().requires_grad_(True)
            try:
                out = _first_tensor(model(xs))
            except (RuntimeError, ValueError, TypeError, IndexError, AssertionError):
                store.clear()
                with model_forward(model, x):
                    out = _first_tensor(model(x.detach().clone().requires_grad_(True)))
            have = [c for c in tokens if c.name in store and store[c.name].requires_grad]
            inputs = [store[c.name] for c in have]
            grads = list(torch.autograd.grad(out.sum(), inputs, allow_unused=True, retain_graph=True)) \
                if out is not None and out.requires_grad and have else []
            cacheable = True
            if have and all(g is None or not bool(g.abs().amax() > 0) for g in grads):
                # the output is constant in every token layer (a zero head): read the class tokens instead, along a
                # fixed random direction -- their sum and squared norm are constant after a LayerNorm of unit weight
                cacheable = False
                prefix_tokens = inputs[0][:, : have[0].prefix]
                direction = torch.randn(prefix_tokens.shape[-1], generator=torch.Generator().manual_seed(0))
                surrogate = (prefix_tokens * direction.to(prefix_tokens)).sum()
                grads = list(torch.autograd.grad(surrogate, inputs, allow_unused=True))
    finally:
        for h in handles:
            h.remove()
        state.restore()
    # a layer's patch-token gradient counts when it is above rounding noise relative to the same layer's largest
    # gradient (its class tokens): both pass through the same residual scales (LayerScale's 1e-5 init), so the ratio
    # stays O(1) for a real path and at rounding level for one that cancels
    for c, g in zip(have, grads):
        if g is None:
            continue
        scale = float(g.abs().amax())
        if scale > 0 and float(g[:, c.prefix:].abs().amax()) > _NOISE * scale:
            return c, cacheable
    last = tokens[0]
    return (f"{type(model).__name__} looks like a token model, but no module output after its patch embedding carries "
            f"gradient to the patch tokens (the head reads the class token, which reads patch tokens only through "
            f"attention, and the modules before the last attention give no tensor); pass a module whose output feeds "
            f"the last attention, e.g. the previous block, with layers='<name>', "
            f"reshape=ndcam.TokenGrid({last.grid}, prefix={last.prefix})"), True


def _token_hint(records: list[_Record], x: torch.Tensor) -> str:
    """For a model without a convolution of the input's rank: the exact ``layers=``/``reshape=`` if its last
    token output ``(N, T, D)`` can be laid on a grid proportional to the input, else what to fill in.
    """
    tokens = [(n, s) for n, _, s, fl in records if fl and s is not None and len(s) == 3 and s[2] > 1]
    if not tokens:
        return ""
    calls = _call_counts(records)
    name, shape = next(((n, s) for n, s in reversed(tokens) if calls[n] == 1), tokens[-1])
    size = tuple(x.shape[2:])
    for p in range(_MAX_PREFIX + 1):
        for patch in range(1, max(size) + 1):
            grid = tuple(s // patch for s in size)
            if all(s % patch == 0 for s in size) and math.prod(grid) == shape[1] - p:
                pre = f", prefix={p}" if p else ""
                return (f"; if it is a token model whose last normalization is {name!r} (output {shape}), pass "
                        f"layers={name!r}, reshape=ndcam.TokenGrid({grid}{pre}) (patch size {patch} assumed)")
    return (f"; if it is a token model whose last normalization is {name!r} (output {shape}), pass layers={name!r}, "
            f"reshape=ndcam.TokenGrid(grid=<patch grid>, prefix=<number of class/register tokens>)")


def check_not_scripted(model: object) -> None:
    """Refuse, with one clear error each, the models whose layers ndcam cannot watch: TorchScript modules (no forward
    hooks) and ``nn.DataParallel`` over several devices (its replicas run in worker threads, while ndcam's hooks act on
    the calling thread only; see :func:`ndcam.capture.this_thread`).
    """
    if isinstance(model, nn.DataParallel) and len(model.device_ids) > 1:
        raise InputTypeError(
            f"nn.DataParallel over {len(model.device_ids)} devices runs its replicas in worker threads, where ndcam "
            f"does not record (so that predictions served from other threads are never touched); explain "
            f"model.module on one device -- the maps are the same -- and split large batches yourself, or use "
            f"torch.distributed (ndcam.explain_dataset scales out that way)"
        )
    if isinstance(model, torch.jit.ScriptModule):
        raise InputTypeError(
            f"{type(model).__name__} is a TorchScript module (torch.jit.script/trace/load): TorchScript modules cannot "
            f"take forward hooks, so ndcam can neither list their layers nor read activations from them; explain the "
            f"original Python nn.Module (build the model class and load_state_dict the weights), or export it with "
            f"torch.export.export(model, (x,)) and load the archive with ndcam.io.load_model('model.pt2')"
        )


def _probe(model: nn.Module, x: torch.Tensor) -> tuple[list[_Record], int]:
    """The traced records and the batch size they were traced with."""
    check_not_scripted(model)
    with model_lock(model):  # a probe switches the model to eval: never while another thread explains it
        return _probe_locked(model, x)


def _probe_locked(model: nn.Module, x: torch.Tensor) -> tuple[list[_Record], int]:
    state = ModelState.save(model)
    state.eval()
    try:
        try:
            return _trace(model, x[:1]), 1
        except ForwardError:
            if x.shape[0] == 1:
                raise
            return _trace(model, x), x.shape[0]  # models with a fixed batch size (e.g. torch.export archives)
    finally:
        state.restore()


def _auto(model: nn.Module, x: torch.Tensor) -> _Choice:
    """The cached automatic choice for inputs shaped like ``x``; :class:`LayerError` when there is none."""
    check_not_scripted(model)
    rank = x.ndim - 2
    key = (tuple(x.shape[1:]), x.dtype, x.device, sum(1 for _ in model.modules()))
    cache = _AUTO_CACHE.setdefault(model, {})
    if key not in cache:
        records, batch = _probe(model, x)
        candidates = _choose(records, rank, batch)
        if not candidates:
            kind = {1: "Conv1d", 2: "Conv2d", 3: "Conv3d"}.get(rank, f"rank-{rank} convolution")
            dims = {1: "L", 2: "H, W", 3: "D, H, W"}.get(rank, f"<{rank} axes>")
            cache[key] = (
                f"no {kind} producing a (N, C, {dims}) map was found in {type(model).__name__} for an input of shape "
                f"{tuple(x.shape)}; pass layers='<dotted name>' (ndcam.list_layers(model, x) shows candidates with "
                f"their output shapes){_token_hint(records, x)}"
            )
        elif candidates[0].layout == "tokens" and candidates[0].prefix > 0:
            with model_lock(model):  # the gradient probe switches the model to eval, like the trace
                found, cacheable = _reaching(model, x, candidates)
            if not cacheable:  # found with a stand-in for the output (see _reaching): probed again next time
                return _chosen(found)
            cache[key] = found
        else:
            cache[key] = candidates[0]
    return _chosen(cache[key])


def _chosen(choice: _Choice | str) -> _Choice:
    """The choice, or the :class:`LayerError` its message stands for."""
    if isinstance(choice, str):
        raise LayerError(choice)
    return choice


def auto_layer(model: nn.Module, x: torch.Tensor) -> tuple[str, nn.Module]:
    """Choose the target layer for ``model`` on inputs shaped like ``x`` (see the module docstring).

    The choice is cached per model and per input shape/dtype/device, so only the first call pays for the probe (one
    forward pass of a single sample, in eval mode, without gradients). For token models, whose layer needs a
    ``reshape``, use :func:`auto_choice`.

    Raises:
        LayerError: no convolution of the input's rank produces a spatial map, or the choice is a token layer that
            needs a reshape (the message gives the exact ``layers=``/``reshape=``).
    """
    choice = _auto(model, x)
    if choice.layout != "cf":
        raise LayerError(
            f"the automatic layer of {type(model).__name__} is {choice.name!r}, whose output {choice.shape} is "
            f"{'channels-last' if choice.layout == 'cl' else 'tokens'}; it needs a reshape: pass {choice.suggestion()}"
        )
    return choice.name, model.get_submodule(choice.name)


def auto_choice(
    model: nn.Module, x: torch.Tensor, reshape: Callable | None = None
) -> tuple[list[tuple[str, nn.Module]], Callable | None]:
    """The automatic choice for ``layers=None``: ``([(name, module)], reshape or None)``.

    For convolutional networks the layer is the one :func:`auto_layer` returns and the reshape is ``None``. For
    token models (a patch-embedding convolution followed by tokens ``(N, prefix + prod(grid), D)`` or channels-last
    maps ``(N, *grid, D)``) the layer is the last module that still gives one feature vector per patch (the final
    normalization before the head) and the reshape is the matching :class:`TokenGrid`.

    Args:
        model: the model.
        x: an input like the ones to explain.
        reshape: the caller's own ``reshape=``, if any: it must turn the chosen layer's output into
            ``(N, C, *grid)``; it is then returned as the reshape to use.

    Raises:
        LayerError: no usable layer (with the exact ``layers=``/``reshape=`` to pass where it can be read off the
            model), or a given ``reshape`` that does not fit the chosen layer's output (a channels-last permutation
            applied to an ``(N, C, H, W)`` map would silently give a wrong map).
    """
    choice = _auto(model, x)
    module = model.get_submodule(choice.name)
    if reshape is None:
        return [(choice.name, module)], choice.reshape()
    got: object
    try:
        got = reshape(torch.zeros(choice.shape, dtype=x.dtype))
        got = tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
    except Exception as err:  # noqa: BLE001 - any failure of the user's callable means "does not fit"
        got = f"an error ({type(err).__name__}: {err})"
    if got != choice.expected:
        layout = {"cf": "channel-first (N, C, *grid)", "cl": "channels-last (N, *grid, C)", "tokens": "tokens"}
        raise LayerError(
            f"reshape={reshape!r} does not fit the automatic layer {choice.name!r} of {type(model).__name__}: its "
            f"output {choice.shape} is {layout[choice.layout]} and must become {choice.expected}, but the reshape "
            f"gives {got}; pass {choice.suggestion()}"
            + (" (no reshape)" if choice.layout == "cf" else "")
            + ", or name the layer your reshape is meant for with layers="
        )
    return [(choice.name, module)], reshape


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
    check_not_scripted(model)
    if not isinstance(x, torch.Tensor) or x.ndim < 3:
        raise InputError(f"x must be a tensor (N, C, *spatial); got {getattr(x, 'shape', type(x).__name__)}")
    records, batch = _probe(model, x)
    seen: dict[str, LayerInfo] = {}
    for info in _records_to_infos(records, x.ndim - 2, batch):
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
        rank = self.rank
        if rank is None:  # only reachable for channels_last=True without a grid, which never infers
            raise LayerError("TokenGrid needs grid=(...) or rank= to lay tokens on a grid")
        side = round(count ** (1 / rank))
        if side**rank != count:
            raise LayerError(
                f"TokenGrid cannot infer a rank-{rank} grid from {count} tokens (not a perfect power); pass grid="
            )
        return (side,) * rank
