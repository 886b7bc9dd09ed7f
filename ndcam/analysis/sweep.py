"""Layer sweep: one method's map at successive stages of a network, for any spatial rank.

``ndcam.layer_sweep(model, x, method="gradcam", layers="stages")`` explains ``x`` once per stage and returns a
:class:`SweepResult` with one map per stage at the input's resolution, a side-by-side picture (:meth:`SweepResult.plot`)
and a report section (:meth:`SweepResult.html`). Early stages give fine, edge-like maps; late stages coarse,
class-specific ones -- the view the Grad-CAM and LayerCAM papers use to show what each depth contributes.

**How stages are found** (:func:`find_stages`, ``layers="stages"``), for CNNs of any rank:

1. torchvision-style networks: when the model has direct children named ``layer1``, ``layer2``, ... whose outputs
   are spatial maps, those are the stages, in execution order (``layer1..layer4`` of a ResNet, MONAI's ResNets).
2. otherwise, the *last module output at each resolution level*. The forward pass of one sample is traced
   (:func:`ndcam.list_layers`), and the modules whose output is an ``(N, C, *spatial)`` map of the input's rank are
   taken in the order they complete, leaving out modules called more than once (a shared ReLU), globally pooled
   outputs (every spatial axis 1) and detours inside a block (a module whose output resolution differs from that of
   an enclosing module that has already produced its own resolution, e.g. the 1x1 convolution of a bottleneck that
   runs after the block's strided shortcut). Consecutive outputs of equal spatial size form one level; the stage is
   the last module that completes at that level -- the outermost one when a container ends with its last child's
   output. So a ``Sequential`` of conv-BN-ReLU-pool blocks gets the ReLU before each pooling and the feature
   extractor itself for the last level (the automatic Grad-CAM layer), and a ResNet without torchvision names gets
   its stem activation and each residual stage.

``layers`` may also be an explicit list of names or modules (any order, drawn in that order).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from ..core.errors import InputError, InputTypeError, LayerError
from ..core.explain import explain
from ..core.layers import list_layers, resolve_layers
from ..core.methods import FullGrad, GuidedBackprop, get_method
from ..core.targets import TargetSpec

__all__ = ["layer_sweep", "SweepResult", "find_stages"]


# -- stage discovery --------------------------------------------------------------------------------------------------
def _torchvision_stages(model: nn.Module, infos: dict[str, Any]) -> list[str]:
    names = [n for n, _ in model.named_children() if n.startswith("layer") and n[5:].isdigit()]
    names = [n for n in names if n in infos and infos[n].spatial and infos[n].calls == 1]
    return sorted(names, key=lambda n: infos[n].order) if len(names) >= 2 else []


@dataclass
class _Info:
    name: str
    shape: tuple[int, ...]
    spatial: bool
    calls: int
    order: int


def find_stages(model: nn.Module, x: torch.Tensor) -> list[str]:
    """Names of the stage outputs of ``model`` for inputs like ``x`` (rule in the module docstring).

    Args:
        model: a CNN of any rank.
        x: an example input ``(N, C, *spatial)``; only its first sample is run (in eval mode, without gradients).

    Returns:
        Dotted module names in execution order, shallow to deep.

    Raises:
        LayerError: the model has no spatial feature map of the input's rank.

    Example:
        >>> import torch, ndcam
        >>> net = torch.nn.Sequential(torch.nn.Conv1d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool1d(2),
        ...                           torch.nn.Conv1d(4, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool1d(1))
        >>> find_stages(net, torch.randn(1, 1, 32))
        ['1', '4']
    """
    return _stages(model, x, list_layers(model, x))


def _stages(model: nn.Module, x: torch.Tensor, layer_infos: list) -> list[str]:
    infos = [_Info(i.name, tuple(i.shape or ()), i.spatial, i.calls, k) for k, i in enumerate(layer_infos)]
    by_name = {i.name: i for i in infos}
    tv = _torchvision_stages(model, by_name)
    if tv:
        return tv
    in_spatial = tuple(x.shape[2:])
    usable = [
        i for i in infos
        if i.spatial and i.calls == 1 and not (all(s == 1 for s in i.shape[2:]) and any(s != 1 for s in in_spatial))
    ]
    kept: list[_Info] = []
    for i in usable:
        detour = False
        parts = i.name.split(".")
        for depth in range(1, len(parts)):
            anc = by_name.get(".".join(parts[:depth]))
            if anc is None or not anc.spatial or anc.shape[2:] == i.shape[2:]:
                continue
            prefix = anc.name + "."
            if any(j.name.startswith(prefix) and j.order < i.order and j.shape[2:] == anc.shape[2:] for j in usable):
                detour = True
                break
        if not detour:
            kept.append(i)
    if not kept:
        raise LayerError(
            f"no spatial feature map of rank {x.ndim - 2} found in {type(model).__name__} for an input of shape "
            f"{tuple(x.shape)}; pass layers=[...] explicitly (ndcam.list_layers(model, x) lists candidates)"
        )
    stages = []
    for a, b in zip(kept, kept[1:] + [None]):
        if b is None or b.shape[2:] != a.shape[2:]:
            stages.append(a.name)
    return stages


# -- the sweep --------------------------------------------------------------------------------------------------------
@dataclass
class SweepResult:
    """One method's maps at successive layers.

    Attributes:
        names: layer names, shallow to deep (as swept).
        maps: ``(N, n_layers, *spatial)`` float32 maps at the input's resolution, each min-max normalized to ``[0, 1]``
            (``(N, n_layers, K, *spatial)`` for K targets per sample).
        scores: the explained target scores ``(N,)`` / ``(N, K)`` (the same for every layer).
        targets: class indices ``(N,)`` / ``(N, K)``, or ``None`` when a callable chose the scores.
        method: registry name of the method.
        layer_shapes: each layer's own output shape ``(C, *spatial)`` for one sample (its channels and resolution).
        raw_min, raw_max: each map's raw range, ``(N, n_layers)`` / ``(N, n_layers, K)``.
        input_shape: shape of the explained input.
    """

    names: list[str]
    maps: torch.Tensor
    scores: torch.Tensor
    targets: torch.Tensor | None
    method: str
    raw_min: torch.Tensor
    raw_max: torch.Tensor
    layer_shapes: list[tuple[int, ...]] = field(default_factory=list)
    input_shape: tuple[int, ...] = ()

    @property
    def rank(self) -> int:
        """Spatial rank of the explained input."""
        return len(self.input_shape) - 2

    def __getitem__(self, name: str) -> torch.Tensor:
        """Maps of one layer by name: ``(N, *spatial)``."""
        if name not in self.names:
            raise LayerError(f"layer {name!r} is not in this sweep; swept layers: {', '.join(self.names)}")
        return self.maps[:, self.names.index(name)]

    def _caption(self, index: int, k: int) -> str:
        multi = self.scores.ndim == 2
        score = float(self.scores[index, k] if multi else self.scores[index])
        if self.targets is None:
            return f"{self.method}, score {score:.3g}"
        t = self.targets[index, k] if multi else self.targets[index]
        return f"{self.method}, target class {int(t)}, score {score:.3g}"

    def _label(self, j: int) -> str:
        shape = self.layer_shapes[j] if j < len(self.layer_shapes) else ()
        if len(shape) == 2:
            return f"{self.names[j]}\n{shape[1]} samples, {shape[0]} ch"
        if len(shape) > 2:
            return f"{self.names[j]}\n{'x'.join(map(str, shape[1:]))}, {shape[0]} ch"
        return self.names[j]

    def plot(self, x: torch.Tensor, index: int = 0, k: int = 0, *, fs: float | None = None, lead: int = 0,
             units: str | None = None, cmap: str = "jet", title: str | None = None):
        """Draw sample ``index`` (target ``k`` when there are K maps per sample) at every swept layer.

        Rank 1: stacked signal panels (lead ``lead``) with each layer's map as a heat band; rank 2: a row of overlays
        after the input; rank 3: a row of axial slices through each map's peak and a row of maximum-intensity
        projections (along the first spatial axis). Panels are titled with the layer name, its resolution and channel
        count; the figure with the method, target and score.

        Args:
            x: the explained input ``(N, C, *spatial)``.
            index: sample to draw.
            k: target to draw when there are K maps per sample.
            fs: sampling rate in Hz (rank 1: time in seconds).
            lead: the input channel drawn under the bands (rank 1) or as the grey image (ranks 2, 3).
            units: signal units for the rank-1 y label (e.g. ``"mV"``).
            cmap: colormap of the maps.
            title: figure title (default: method, target, score).
        """
        from ..app.viz.panels import sample_under_maps

        _check_sample(x, self.input_shape, index)
        chosen = self.maps[index]
        if self.scores.ndim == 2:
            chosen = chosen[:, k]
        maps = _to_np(chosen)
        sample = _to_np(x[index])[lead]
        title = title if title is not None else f"Layer sweep: {self._caption(index, k)}"
        labels = [self._label(j) for j in range(len(self.names))]
        return sample_under_maps(sample, maps, labels, fs=fs, units=units, cmap=cmap, title=title,
                                 what="SweepResult.maps")

    def html(self, x: torch.Tensor, index: int = 0, k: int = 0, **plot_kwargs: Any) -> str:
        """A report section: heading, the picture of :meth:`plot` and a table of the layers (resolution, channels,
        raw map range). Self-contained HTML (the picture is a data URI); pass it to
        :func:`ndcam.report.html_report` as a block.
        """
        from ..app.report import html_section, table

        multi = self.scores.ndim == 2
        rows = []
        for j, name in enumerate(self.names):
            shape = self.layer_shapes[j] if j < len(self.layer_shapes) else ()
            lo, hi = self.raw_min[index, j], self.raw_max[index, j]
            if multi:
                lo, hi = lo[k], hi[k]
            rows.append([name, "x".join(map(str, shape[1:])) or "-", shape[0] if shape else "-",
                         f"{float(lo):.3g} .. {float(hi):.3g}"])
        return html_section(f"Layer sweep: {self._caption(index, k)}", self.plot(x, index, k, **plot_kwargs),
                            table(rows, ["layer", "resolution", "channels", "raw map range"]))


def layer_sweep(
    model: nn.Module,
    x: torch.Tensor,
    method: str | type = "gradcam",
    layers: str | Sequence[str | nn.Module] = "stages",
    targets: TargetSpec = None,
    **method_options: Any,
) -> SweepResult:
    """Explain ``x`` with one method at successive layers of ``model``.

    Each layer's map is exactly ``ndcam.explain(model, x, method, targets, layers=layer, **method_options).maps``
    (one forward and backward pass per layer), upsampled to the input's resolution and min-max normalized.

    Args:
        model: the model (a CNN of any rank for ``layers="stages"``).
        x: input ``(N, C, *spatial)``.
        method: a registry name or method class that reads a layer (the Grad-CAM family, Score-CAM, Ablation-CAM,
            Eigen-CAM, Guided Grad-CAM, ...). FullGrad and Guided Backpropagation have no per-layer map and are refused.
        layers: ``"stages"`` (found automatically, see :func:`find_stages`) or an explicit list of names/modules.
        targets: as for :func:`ndcam.explain` (None = top-1 class, int, per-sample sequence, ``(N, K)``, callable).
        **method_options: passed to the method (``eigen_smooth=``, ``batch_size=``, ...).

    Returns:
        A :class:`SweepResult`.

    Example:
        >>> import torch
        >>> from ndcam.models import ResNet
        >>> net = ResNet(2, (1, 1, 1, 1), 3, 4, base=4)
        >>> sweep = layer_sweep(net, torch.randn(2, 3, 32, 32))
        >>> sweep.names, tuple(sweep.maps.shape)
        (['layer1', 'layer2', 'layer3', 'layer4'], (2, 4, 32, 32))
    """
    cls = get_method(method)
    if issubclass(cls, (FullGrad, GuidedBackprop)):
        raise InputError(
            f"layer_sweep needs a method that makes a map at a layer; {cls.__name__} reads the input gradient "
            f"(try 'gradcam', 'layercam', 'scorecam', 'guidedgradcam')"
        )
    if not isinstance(x, torch.Tensor) or x.ndim < 3:
        raise InputError(f"x must be a tensor (N, C, *spatial); got {getattr(x, 'shape', type(x).__name__)}")
    if isinstance(layers, str):
        if layers != "stages":
            raise InputError(
                f"layers must be 'stages' or a list of layer names/modules, got {layers!r}; for one layer use "
                f"ndcam.explain(..., layers={layers!r}) or layers=[{layers!r}]"
            )
        names = None
    elif isinstance(layers, (list, tuple, nn.Module)):
        names = [n for n, _ in resolve_layers(model, layers)]
    else:
        raise InputTypeError(f"layers must be 'stages' or a list of names/modules, got {type(layers).__name__}")
    listed = list_layers(model, x)
    if names is None:
        names = _stages(model, x, listed)
    infos = {i.name: i for i in listed}
    exps = []
    for name in names:
        exp = explain(model, x, cls, targets, layers=name, **method_options)
        if exp.layers != [name]:
            raise InputError(f"{cls.__name__} did not make its map at layer {name!r} (it used {exp.layers}); "
                             f"layer_sweep needs a method that reads the layer it is given")
        exps.append(exp)
    first = exps[0]
    return SweepResult(
        names=names,
        maps=torch.stack([e.maps for e in exps], dim=1),
        scores=first.scores,
        targets=first.targets,
        method=first.method,
        raw_min=torch.stack([e.raw_min for e in exps], dim=1),
        raw_max=torch.stack([e.raw_max for e in exps], dim=1),
        layer_shapes=[_channels_and_size(infos.get(n)) for n in names],
        input_shape=tuple(x.shape),
    )


def _channels_and_size(info: Any) -> tuple[int, ...]:
    shape = None if info is None else info.shape
    return tuple(shape[1:]) if shape else ()


# -- shared by the sweep, channel and lead-wise results (the pictures live in ndcam.app.viz.panels) --------------
def _to_np(t: Any) -> np.ndarray:
    if isinstance(t, torch.Tensor):
        t = t.detach().float().cpu().numpy()
    return np.asarray(t, dtype=np.float32)


def _check_sample(x: Any, input_shape: tuple[int, ...], index: int) -> None:
    if not isinstance(x, torch.Tensor) or (input_shape and tuple(x.shape[1:]) != tuple(input_shape[1:])):
        raise InputError(
            f"plot needs the explained input, shape (N, {', '.join(map(str, input_shape[1:]))}); got "
            f"{tuple(getattr(x, 'shape', ())) or type(x).__name__}"
        )
    if not -x.shape[0] <= index < x.shape[0]:
        raise InputError(f"index {index} out of range for a batch of {x.shape[0]}")
