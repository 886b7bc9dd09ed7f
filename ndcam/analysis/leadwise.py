r"""Lead-wise (input-channel-resolved) maps ``(N, C_in, *S)``: which lead of an ECG (or which input channel of an
image or volume) carries the evidence, and where.

A CAM lives at a layer whose channels are features, not leads, so it says *when* but not *in which lead*. The
methods that reach the input resolve it per input channel :math:`c`:

* ``"gradxinput"`` -- gradient x input weighted by the CAM:
  :math:`M_c = |\partial y / \partial x_c \odot x_c| \cdot \psi(L^c_{\text{Grad-CAM}})`;
* ``"guided"`` -- Guided Grad-CAM per channel (Selvaraju et al. 2017, https://arxiv.org/abs/1610.02391):
  :math:`M_c = |G_c| \cdot \psi(L^c_{\text{Grad-CAM}})`, with :math:`G` the guided-backpropagation gradient
  (:meth:`ndcam.GuidedBackprop.guided_gradients`);
* ``"fullgrad"`` -- FullGrad's input-gradient term per channel (Srinivas & Fleuret 2019,
  https://arxiv.org/abs/1905.00780): :math:`M_c = \phi(\partial y / \partial x \odot x)_c`, with :math:`\phi` the
  authors' post-processing (absolute value, min-max over all channels and positions of the sample). FullGrad's
  bias terms live at hidden layers and have no input channel, so they are not part of a lead-wise map.

:math:`\psi(L)` is the raw (ReLU-ed) Grad-CAM map at ``layers`` upsampled to the input's resolution. Each sample's
``(C_in, *S)`` map is then min-max normalized **jointly over all leads and positions**, so leads are comparable: a
lead whose map stays near 0 carries little evidence relative to the others (per-lead normalization would inflate
noise in irrelevant leads). :meth:`LeadExplanation.lead_energy` gives each lead's share of the map's total.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..core import ops
from ..core.capture import Capture
from ..core.errors import ConstantMapWarning, InputError
from ..core.explain import explain
from ..core.explanation import Explanation
from ..core.layers import LayerSpec
from ..core.methods import GuidedBackprop
from ..core.methods.fullgrad import fullgrad_postprocess
from ..core.targets import TargetSpec, as_score_fn
from .sweep import _check_sample, _to_np

__all__ = ["explain_leads", "LeadExplanation", "input_gradient", "METHODS"]

METHODS = ("gradxinput", "guided", "fullgrad")


@dataclass
class LeadExplanation(Explanation):
    """An :class:`~ndcam.Explanation` whose maps are ``(N, C_in, *spatial)``: one map per input channel (lead),
    normalized per sample across leads. ``raw_min``/``raw_max`` are ``(N,)``.
    """

    def lead_energy(self) -> torch.Tensor:
        """``(N, C_in)``: each lead's share of the sample's total map (rows sum to 1; all-zero maps give zeros)."""
        e = self.maps.flatten(2).sum(-1)
        total = e.sum(1, keepdim=True)
        return torch.where(total > 0, e / total.clamp_min(torch.finfo(e.dtype).tiny), torch.zeros_like(e))

    def describe(self) -> str:
        """What the maps are, in words (the default picture title)."""
        at = f" at layer {', '.join(self.layers)}" if self.layers else ""
        return {
            "leadwise-gradxinput": f"Lead-wise |gradient x input| x Grad-CAM{at}",
            "leadwise-guided": f"Lead-wise Guided Grad-CAM{at}",
            "leadwise-fullgrad": "Lead-wise FullGrad input-gradient term",
        }.get(self.method, f"Lead-wise {self.method}{at}")

    def plot(self, x: torch.Tensor | None = None, index: int = 0, *, fs: float | None = None,
             leads: list[str] | None = None, units: Any = None, cmap: str = "jet", title: str | None = None,
             **kwargs: Any):
        """Rank 1: every lead with its own heat band (see :func:`ndcam.viz.plot_leads`); other ranks: one overlay per input
        channel (rank 2) or per-channel slices through the peak (rank 3).
        """
        from ..app.viz.panels import overlay_row, plot_leads, volume_rows

        if x is None:
            raise InputError("LeadExplanation.plot needs the explained input x")
        _check_sample(x, self.input_shape, index)
        target = "" if self.targets is None else f", target class {int(self.targets[index])}"
        title = title if title is not None else f"{self.describe()}{target}, score {float(self.scores[index]):.3g}"
        names = leads or [f"ch {c}" for c in range(self.maps.shape[1])]
        if self.rank == 1:
            return plot_leads(x[index], self.maps[index], fs=fs, leads=leads, units=units, cmap=cmap, title=title,
                              energy=self.lead_energy()[index])
        xs, maps = _to_np(x[index]), _to_np(self.maps[index])
        share = self.lead_energy()[index]
        labels = [f"{names[c]} ({100 * float(share[c]):.0f}%)" for c in range(len(maps))]
        if self.rank == 2:
            fig = overlay_row(xs[0], maps, labels, cmap=cmap, title=title, input_panel=False)
            for ax, img in zip(fig.axes, xs):  # each channel over its own input channel
                if ax.images:
                    ax.images[0].set_data((img - img.min()) / (img.max() - img.min() + 1e-12))
            return fig
        if self.rank == 3:
            return volume_rows(xs[0], maps, labels, cmap=cmap, title=title)
        raise InputError(f"no picture for spatial rank {self.rank}; draw slices of maps yourself")


def input_gradient(model: nn.Module, x: torch.Tensor, targets: TargetSpec = None) -> torch.Tensor:
    """``d score / d x`` ``(N, C, *S)`` for one target score per sample (the model is left as it was)."""
    score_fn = as_score_fn(targets, x.shape[0], x.device)[0]
    with Capture(model, [], x.ndim - 2, grads=True, input_grad=True) as cap:
        out = cap.forward(x.detach())
        g, _ = cap.input_and_layer_gradients(score_fn(out))
        cap.clear()
    return g.detach()


def explain_leads(
    model: nn.Module,
    x: torch.Tensor,
    method: str = "gradxinput",
    targets: TargetSpec = None,
    layers: LayerSpec = None,
) -> LeadExplanation:
    """Lead-wise maps ``(N, C_in, *spatial)`` (see the module docstring for the three methods).

    Args:
        model: the model.
        x: input ``(N, C_in, *spatial)``, any spatial rank (12-lead ECG: ``(N, 12, L)``).
        method: ``"gradxinput"``, ``"guided"`` or ``"fullgrad"``.
        targets: None (top-1 class), int, one class per sample, or a callable ``output -> (N,)`` scores.
        layers: the Grad-CAM layer(s) for the CAM weighting (None = automatic); unused by ``"fullgrad"``.

    Returns:
        A :class:`LeadExplanation` with maps normalized per sample jointly over leads and positions.

    Example:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Conv1d(12, 8, 7, padding=3), torch.nn.ReLU(),
        ...                           torch.nn.AdaptiveAvgPool1d(1), torch.nn.Flatten(), torch.nn.Linear(8, 3))
        >>> exp = explain_leads(net, torch.randn(2, 12, 500))
        >>> tuple(exp.maps.shape), tuple(exp.lead_energy().shape)
        ((2, 12, 500), (2, 12))
    """
    if method not in METHODS:
        raise InputError(f"method must be one of {METHODS}, got {method!r}")
    if isinstance(targets, torch.Tensor) and targets.ndim == 2:
        raise InputError("explain_leads takes one target per sample; for K targets call it once per target column")
    # validation, layer choice and target resolution as ndcam.explain does them; raw Grad-CAM at the input's size
    # (a constant Grad-CAM map is reported below, for the lead-wise maps it empties; "fullgrad" does not use it)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConstantMapWarning)
        cam = explain(model, x, "gradcam", targets, layers=layers, normalize=False)
    if cam.scores.ndim != 1:
        raise InputError("explain_leads takes one target score per sample; the target callable returned (N, K)")
    fixed = cam.targets if cam.targets is not None else targets  # the top-1 class found by the CAM pass
    xd = x.detach()
    if method == "guided":
        raw = GuidedBackprop(model).guided_gradients(xd, fixed).abs() * cam.maps.to(x.dtype).unsqueeze(1)
    else:
        gx = input_gradient(model, xd, fixed) * xd
        raw = fullgrad_postprocess(gx) if method == "fullgrad" else gx.abs() * cam.maps.to(x.dtype).unsqueeze(1)
    lo, hi = ops.spatial_minmax(raw)
    maps = ops.minmax_normalize(raw, inplace=True, minmax=(lo, hi))
    flat = ops.constant_maps(lo, hi)
    if bool(flat.any()):
        warnings.warn(
            f"the lead-wise maps of sample(s) {flat.nonzero().flatten().tolist()} are constant (all-zero): "
            f"{'the input gradient is zero' if method == 'fullgrad' else 'the Grad-CAM map is all-zero after its ReLU'}"
            f"; try another target or layers=, or method='fullgrad' (no CAM weighting)",
            ConstantMapWarning, stacklevel=2)
    return LeadExplanation(maps=maps.float(), scores=cam.scores, targets=cam.targets,
                           layers=[] if method == "fullgrad" else cam.layers, method=f"leadwise-{method}",
                           raw_min=lo.float(), raw_max=hi.float(), input_shape=tuple(x.shape))
