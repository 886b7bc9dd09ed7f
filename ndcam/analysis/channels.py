r"""Channel pictures: a layer's most important channels for a target, each with its activation map, any rank.

:func:`top_channels` ranks the channels :math:`c` of one layer by a weight and returns the ``k`` largest with their
activation maps :math:`A^c` (upsampled to the input's resolution and min-max normalized per channel):

* ``weights="gradcam"``: the Grad-CAM weight :math:`w_c = \frac{1}{|S|}\sum_{s\in S} \partial y / \partial A^c_s`
  (spatial mean of the gradient of the target score; Selvaraju et al. 2017, https://arxiv.org/abs/1610.02391) --
  the channels whose weighted sum makes the Grad-CAM map, most positive first;
* ``weights="activation"``: the mean activation :math:`\frac{1}{|S|}\sum_s A^c_s` (what the layer responds to most,
  whatever the target).

:meth:`ChannelResult.plot` draws them for any rank: stacked heat bands over the signal (1D), a grid of overlays (2D),
a grid of slices through each channel's peak (3D), each titled "channel c, weight w".
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..core import ops
from ..core.capture import Capture
from ..core.errors import ConstantMapWarning, InputError, InputTypeError, LayerError
from ..core.explain import explain
from ..core.layers import LayerSpec
from ..core.targets import TargetSpec, as_score_fn
from .sweep import _check_sample, _to_np

__all__ = ["top_channels", "ChannelResult", "channel_weights"]

WEIGHTS = ("gradcam", "activation")


def channel_weights(activations: torch.Tensor, gradients: torch.Tensor | None, kind: str = "gradcam") -> torch.Tensor:
    """Channel weights ``(N, C)`` from a layer's activations/gradients ``(N, C, *S)``: the spatial mean of the
    gradients (``"gradcam"``) or of the activations (``"activation"``).
    """
    if kind == "gradcam":
        if gradients is None:
            raise InputError("Grad-CAM channel weights need the gradients of the target score")
        return ops.spatial_mean(gradients)
    if kind == "activation":
        return ops.spatial_mean(activations)
    raise InputError(f"weights must be one of {WEIGHTS}, got {kind!r}")


@dataclass
class ChannelResult:
    """The top-k channels of one layer for each sample.

    Attributes:
        layer: the layer's name.
        channels: ``(N, k)`` channel indices, largest weight first.
        weights: ``(N, k)`` their weights (dtype of the layer's activations).
        maps: ``(N, k, *spatial)`` float32 activation maps at the input's resolution, min-max normalized per channel.
        scores: the target scores ``(N,)``.
        targets: class indices ``(N,)``, or ``None`` when a callable chose the scores.
        kind: ``"gradcam"`` or ``"activation"``.
        num_channels: the layer's channel count.
        input_shape: shape of the explained input.
    """

    layer: str
    channels: torch.Tensor
    weights: torch.Tensor
    maps: torch.Tensor
    scores: torch.Tensor
    targets: torch.Tensor | None
    kind: str
    num_channels: int
    input_shape: tuple[int, ...] = ()

    @property
    def rank(self) -> int:
        """Spatial rank of the explained input."""
        return len(self.input_shape) - 2

    def plot(self, x: torch.Tensor, index: int = 0, *, fs: float | None = None, lead: int = 0,
             units: str | None = None, cols: int | None = None, cmap: str = "jet", title: str | None = None):
        """Draw the top channels of sample ``index``: rank 1 stacked heat bands over the signal (lead ``lead``),
        rank 2 a grid of overlays on the input, rank 3 a grid of axial slices through each channel map's peak
        (grids of ``cols`` columns, default about square, the input first).
        Each panel is titled "channel c, weight w"; the figure with the layer, the weighting and the target.
        """
        from ..app.viz.panels import sample_under_maps

        _check_sample(x, self.input_shape, index)
        maps = _to_np(self.maps[index])
        labels = [f"channel {int(c)}, weight {float(w):.3g}"
                  for c, w in zip(self.channels[index], self.weights[index])]
        what = "Grad-CAM weight" if self.kind == "gradcam" else "mean activation"
        target = "" if self.targets is None else f", target class {int(self.targets[index])}"
        title = title if title is not None else (
            f"Top {len(labels)} of {self.num_channels} channels of {self.layer} by {what}{target}")
        sample = _to_np(x[index])[lead]
        if self.rank == 1:
            labels = [lab.replace(", ", "\n") for lab in labels]
        return sample_under_maps(sample, maps, labels, fs=fs, units=units, cmap=cmap, title=title, grid=True,
                                 cols=cols, what="ChannelResult.maps")

    def html(self, x: torch.Tensor, index: int = 0, **plot_kwargs: Any) -> str:
        """A report section: heading, the picture of :meth:`plot` and a table of the channels and their weights."""
        from ..app.report import html_section, table

        rows = [[int(c), f"{float(w):.4g}"] for c, w in zip(self.channels[index], self.weights[index])]
        what = "Grad-CAM weight" if self.kind == "gradcam" else "mean activation"
        return html_section(f"Top channels of {self.layer} by {what}", self.plot(x, index, **plot_kwargs),
                            table(rows, ["channel", what]))


def top_channels(
    model: nn.Module,
    x: torch.Tensor,
    layer: LayerSpec = None,
    targets: TargetSpec = None,
    k: int = 8,
    weights: str = "gradcam",
) -> ChannelResult:
    """The ``k`` channels of ``layer`` with the largest weight for the target, with their activation maps.

    Args:
        model: the model.
        x: input ``(N, C, *spatial)``, any spatial rank.
        layer: one layer (dotted name or module); ``None`` = the automatic Grad-CAM layer.
        targets: None (top-1 class), an int, or one class per sample, or a callable ``output -> (N,)`` scores.
            K targets per sample are refused (call once per target).
        k: how many channels (at most the layer's channel count).
        weights: ``"gradcam"`` (spatial mean of the gradient) or ``"activation"`` (spatial mean of the activation).

    Returns:
        A :class:`ChannelResult`.

    Example:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
        ...                           torch.nn.Flatten(), torch.nn.Linear(8, 4))
        >>> res = top_channels(net, torch.randn(2, 3, 16, 16), k=3)
        >>> res.layer, tuple(res.channels.shape), tuple(res.maps.shape)
        ('1', (2, 3), (2, 3, 16, 16))
    """
    if weights not in WEIGHTS:
        raise InputError(f"weights must be one of {WEIGHTS}, got {weights!r}")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise InputTypeError(f"k must be a positive int (how many channels), got {k!r}")
    if isinstance(targets, torch.Tensor) and targets.ndim == 2:
        raise InputError("top_channels takes one target per sample; for K targets call it once per target column")
    if isinstance(layer, (list, tuple)):
        raise InputError("top_channels pictures one layer; pass a single name or module")
    # validation, layer choice and target resolution exactly as ndcam.explain does them (one cheap extra pass); its
    # Grad-CAM map is not returned, so whether that map is constant is no concern of this call's (other warnings pass)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConstantMapWarning)
        exp = explain(model, x, "gradcam", targets, layers=layer)
    if exp.scores.ndim != 1:
        raise InputError("top_channels takes one target score per sample; the target callable returned (N, K)")
    (name,) = exp.layers
    module = model.get_submodule(name)
    score_fn = as_score_fn(exp.targets if exp.targets is not None else targets, x.shape[0], x.device)[0]
    need_grads = weights == "gradcam"
    with Capture(model, [(name, module)], x.ndim - 2, grads=need_grads) as cap:
        out = cap.forward(x.detach())
        if len(cap.names) != 1:
            raise LayerError(f"layer {name!r} runs {len(cap.names)} times in one forward; pick a layer that runs once")
        grads = cap.gradients(score_fn(out))[0].detach() if need_grads else None
        acts = cap.activations[0]
        cap.clear()
    w = channel_weights(acts, grads, weights)
    k = min(k, acts.shape[1])
    top_w, top_c = w.topk(k, dim=1)
    chosen = acts.gather(1, ops.expand_like(top_c, acts.ndim).expand(-1, -1, *acts.shape[2:]))
    n = acts.shape[0]
    up = ops.upsample(chosen.reshape(n * k, *acts.shape[2:]).float(), tuple(x.shape[2:]))
    maps = ops.minmax_normalize(up.reshape(n, k, *x.shape[2:]), batch_dims=2, inplace=True)
    return ChannelResult(name, top_c, top_w, maps, exp.scores, exp.targets, weights, int(acts.shape[1]),
                         tuple(x.shape))
