r"""Perturbation methods: Score-CAM and Ablation-CAM, batched, chunked, any rank.

Both need many extra forward passes -- one per (sample, channel) -- so they run them in large batches
(``batch_size`` inputs per forward), never hold all perturbed inputs at once (a 3D volume with hundreds of channels
is processed chunk by chunk), and show a :mod:`tqdm` progress bar on stderr for long runs (``progress=None``: on a
terminal, once a run has taken 2 seconds; ``True`` always -- rarely updated when stderr is not a terminal, so logs get
no carriage-return spam --; ``False`` never).

Perturbed batches are laid out *channel-major*: a batch holds the N samples for channels ``c0 .. c0+b-1``, so any
target (class indices, or a callable written for an N-sample output) is applied to N-sample slices of the output
(:func:`ndcam.capture.slice_batch`: tensors, dicts, ``ModelOutput``, tuples, dataclasses) exactly as in an ordinary
call, and the model's extra per-sample inputs are repeated with the batch.

**Fixed-batch models** (static-shape exports, models holding per-sample side data): when the first perturbed forward of
``b * N`` inputs fails, the call falls back to forwards of exactly N inputs (the batch size the model just accepted)
and goes on; ``batch_size=N`` asks for that from the start.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from tqdm import tqdm  # type: ignore[import-untyped]

from .. import ops
from ..capture import slice_batch, this_thread
from ..errors import InputError, InputTypeError, LayerError, NdcamError, forward_failed
from ..progress import progress_bar
from .base import BaseCAM, CallContext, register

__all__ = ["scorecam_weights", "ablationcam_weights", "ScoreCAM", "AblationCAM", "LayerSite"]


def scorecam_weights(masked_scores: torch.Tensor) -> torch.Tensor:
    r"""Score-CAM channel weights :math:`w_c = \mathrm{softmax}_c\big(f(X \circ H_c)\big)`.

    Wang et al., "Score-CAM: Score-Weighted Visual Explanations for Convolutional Neural Networks", CVPR-W 2020,
    https://arxiv.org/abs/1910.01279, Algorithm 1: the target scores of the inputs masked by each channel's
    upsampled, min-max normalized activation :math:`H_c`, softmax-normalized over channels (as pytorch-grad-cam).

    Args:
        masked_scores: ``(N, C)`` target score of each sample masked by each channel.
    """
    return torch.softmax(masked_scores, dim=1)


def ablationcam_weights(scores: torch.Tensor, ablated_scores: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    r"""Ablation-CAM channel weights :math:`w_c = (y - y_c) / y`, with :math:`y_c` the score when channel :math:`c`
    of the layer is zeroed.

    Desai & Ramaswamy, "Ablation-CAM", WACV 2020, https://doi.org/10.1109/WACV45572.2020.9093360. A score of exactly
    0 is replaced by ``eps`` (keeping its sign convention) to avoid a division by zero.

    Args:
        scores: ``(N,)`` unperturbed target score.
        ablated_scores: ``(N, C)`` target score with each channel ablated.
        eps: stand-in for an unperturbed score of exactly 0.
    """
    denom = torch.where(scores == 0, torch.full_like(scores, eps), scores)[:, None]
    return (scores[:, None] - ablated_scores) / denom


def _progress_bar(total: int, label: str, progress: bool | None) -> tqdm:
    """A tqdm bar over ``total`` channels (the rule of :mod:`ndcam.core.progress`)."""
    return progress_bar(total, label, progress, unit="ch")


class _ModelFailed(Exception):
    """The model's own forward raised on a perturbed batch (the original exception is the cause)."""


def unit_masks(maps: torch.Tensor, size) -> torch.Tensor:
    """Score-CAM masks: each map upsampled to ``size`` and min-max normalized to [0, 1] (constant maps -> 0).

    Interpolation weights sum to one, so normalizing commutes with upsampling: the exact range of the upsampled map
    (:func:`ndcam.ops.upsampled_minmax`) normalizes the small map, and the large mask is written once, already scaled.
    """
    lo, hi = ops.upsampled_minmax(maps, size)
    rng = hi - lo
    constant = ops.constant_maps(lo, hi)
    scale = torch.where(constant, torch.zeros_like(rng), 1.0 / torch.where(constant, torch.ones_like(rng), rng))
    return ops.upsample((maps - ops.expand_like(lo, maps)) * ops.expand_like(scale, maps), size)


def _check_batch_size(batch_size: int) -> int:
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise InputError(f"batch_size must be a positive int (inputs per forward pass), got {batch_size!r}")
    return batch_size


@dataclass
class LayerSite:
    """One captured target layer during a perturbation call: its name and module, its raw output (as the model
    produced it, detached) and its activation ``(N, C, *S)`` (after ``reshape``).
    """

    name: str
    module: nn.Module
    raw: torch.Tensor
    activation: torch.Tensor


class _PerturbationCAM(BaseCAM):
    """Shared machinery: one captured forward, then batched perturbed forwards scored by the same target.

    Subclasses define :meth:`perturbed_scores` (with :meth:`_run_blocks` doing the batching, the fixed-batch fallback
    and the progress bar) and :meth:`weights_from`. Nothing of a call is stored on the instance.
    """

    uses_gradients = False
    perturbative = True

    def __init__(self, model: nn.Module, layers=None, *, batch_size: int = 64, progress: bool | None = None,
                 **options) -> None:
        super().__init__(model, layers, **options)
        self.batch_size = _check_batch_size(batch_size)
        if progress is not None and not isinstance(progress, bool):
            raise InputTypeError(f"progress must be None (only long runs), True or False, got {progress!r}")
        self.progress = progress

    def perturbed_scores(self, ctx: CallContext, site: LayerSite) -> torch.Tensor:
        """Target scores ``(N, C[, K])`` of the perturbed forwards for the layer ``site``."""
        raise NotImplementedError

    def weights_from(self, scores: torch.Tensor, base_scores: torch.Tensor) -> torch.Tensor:
        """Channel weights ``(N, C)`` from perturbed scores ``(N, C)`` and unperturbed scores ``(N,)``."""
        raise NotImplementedError

    def _layer_maps(self, ctx: CallContext) -> list[torch.Tensor]:
        cap, sc = ctx.cap, ctx.scores
        assert cap is not None and sc is not None, "_layer_maps runs inside the captured forward"
        names = list(cap.names)
        if len(names) != len(set(names)):
            raise LayerError(
                f"{type(self).__name__} needs target layers that run once per forward pass; {names} ran several "
                f"times -- choose another layer"
            )
        modules = dict(cap.layers)
        raws, acts = cap.raw_outputs, cap.activations
        cap.remove_hooks()  # the perturbed forwards must not be recorded
        out = []
        for name, raw, a in zip(names, raws, acts):
            scores = self.perturbed_scores(ctx, LayerSite(name, modules[name], raw, a))
            scores = scores if scores.ndim == 3 else scores[..., None]
            maps, a = [], ops.wide(a)  # weights and maps in float32 or wider, whatever the model's dtype
            for k in range(sc.shape[1]):
                w = self.weights_from(ops.wide(scores[..., k]), ops.wide(sc[:, k])).to(a.dtype)
                if self.eigen_smooth:
                    m = ops.first_principal_component(ops.expand_like(w, a.ndim) * a)
                else:
                    m = ops.weighted_sum(w, a)
                maps.append(torch.relu(m) if self.relu else m)
            out.append(torch.stack(maps, dim=1))
        return out

    def _run_blocks(self, ctx: CallContext, channels: int, run_block: Callable[[int, int], torch.Tensor]) -> torch.Tensor:
        """Scores ``(N, channels[, K])`` from ``run_block(c0, c1)`` over channel blocks of ``batch_size // N``.

        When the model refuses the first batch of ``b * N`` inputs (``b > 1``), the blocks shrink to one channel --
        forwards of exactly N inputs, the batch size the captured forward used -- for the rest of the call.
        """
        n = ctx.n
        per = max(1, ops.bounded_batch(self.batch_size, ctx.x[0].numel()) // n)
        out: list[torch.Tensor] = []
        c0, first = 0, True
        with _progress_bar(channels, type(self).__name__, self.progress) as bar:
            while c0 < channels:
                c1 = min(channels, c0 + per)
                try:
                    out.append(run_block(c0, c1))
                except _ModelFailed as failed:
                    err = failed.__cause__ or failed
                    if not first or c1 - c0 == 1:
                        raise forward_failed(self.model, ctx.x, err) from err
                    per, first = 1, False  # the model takes only N inputs per forward: go on with exactly N
                    continue
                first = False
                bar.update(c1 - c0)
                c0 = c1
        return torch.cat(out, dim=1)

    def _scores_of(self, ctx: CallContext, batch: torch.Tensor) -> torch.Tensor:
        """Forward a channel-major perturbed batch ``(b * N, ...)``; target scores ``(N, b)`` or ``(N, b, K)``."""
        n = ctx.n
        try:
            output = ctx.model_call(self.model, batch)
        except NdcamError:
            raise
        except Exception as err:  # noqa: BLE001 -- whatever the model raises; re-raised with context by _run_blocks
            raise _ModelFailed() from err
        total = batch.shape[0]
        b = total // n
        parts = [self._check_scores(ctx.score_fn(slice_batch(output, i * n, (i + 1) * n, total)), n) for i in range(b)]
        return torch.stack(parts, dim=1)


@register("scorecam", "score-cam")
class ScoreCAM(_PerturbationCAM):
    """Score-CAM: each channel's upsampled, normalized activation masks the input; the target scores of the masked
    inputs, softmax-normalized over channels, weight the channels (see :func:`scorecam_weights`).

    Args:
        model: the model.
        layers: target layer(s) (default: automatic).
        batch_size: masked inputs per forward pass.
        top_k: opt-in speed-up: only the ``top_k`` channels with the largest mean activation (per sample) get masked
            forwards; the others get weight 0.
        progress: progress bar on stderr (``None``: only for long runs).

    Masks are upsampled with the rank's (multi)linear mode, ``align_corners=False`` (pytorch-grad-cam's 2D code uses
    ``align_corners=True``), and a channel whose activation is constant gets an all-zero mask (pytorch-grad-cam
    divides by zero there).

    Wang et al., "Score-CAM", CVPR-W 2020, https://arxiv.org/abs/1910.01279.
    """

    def __init__(self, model: nn.Module, layers=None, *, batch_size: int = 64, top_k: int | None = None,
                 progress: bool | None = None, **options) -> None:
        super().__init__(model, layers, batch_size=batch_size, progress=progress, **options)
        if top_k is not None and (not isinstance(top_k, int) or top_k < 1):
            raise InputError(f"top_k must be None or a positive int, got {top_k!r}")
        self.top_k = top_k

    def perturbed_scores(self, ctx: CallContext, site: LayerSite) -> torch.Tensor:
        """Target scores ``(N, C[, K])`` of ``x`` masked by each channel of the layer's activation."""
        x, a = ctx.x, site.activation
        n, c = a.shape[:2]
        rank = x.ndim - 2
        channels = torch.arange(c, device=a.device)[None].expand(n, c)
        if self.top_k is not None and self.top_k < c:
            channels = ops.spatial_mean(a).topk(self.top_k, dim=1).indices
        cc = channels.shape[1]

        def block(c0: int, c1: int) -> torch.Tensor:
            b = c1 - c0
            sel = channels[:, c0:c1].T  # (b, n): channel-major from the start, so no batch-sized copy is needed
            idx = sel.reshape(b, n, 1, *([1] * rank)).expand(b, n, 1, *a.shape[2:])
            acts = a[None].expand(b, *a.shape).gather(2, idx)[:, :, 0]  # (b, n, *S)
            masks = unit_masks(acts.reshape(b * n, *a.shape[2:]), x.shape[2:])  # (b * n, *X)
            masks = masks.reshape(b, n, 1, *x.shape[2:])
            # (b, n, C_in, *X), contiguous; with one input channel the masks' memory is reused (no new volume-sized
            # allocation, whose page faults cost as much as the multiplication on large 3D inputs)
            batch = masks.mul_(x[None]) if x.shape[1] == 1 else masks * x[None]
            del masks
            return self._scores_of(ctx, batch.reshape(b * n, *x.shape[1:]))

        scores = self._run_blocks(ctx, cc, block)  # (n, cc[, K])
        if cc == c:
            return scores
        full = torch.full((n, c) + scores.shape[2:], float("-inf"), dtype=scores.dtype, device=scores.device)
        index = channels.reshape(n, cc, *([1] * (scores.ndim - 2))).expand_as(scores)
        return full.scatter(1, index, scores)

    def weights_from(self, scores, base_scores):
        return scorecam_weights(scores)


@register("ablationcam", "ablation-cam")
class AblationCAM(_PerturbationCAM):
    """Ablation-CAM: the relative drop of the target score when a channel of the layer is zeroed weighs the channel
    (see :func:`ablationcam_weights`).

    The ablation is a forward hook on the target layer that replaces its output by copies with one channel zeroed;
    it is removed before the call returns, also when it raises (the model is never modified).

    Args:
        model: the model.
        layers: target layer(s) (default: automatic).
        batch_size: ablated copies per forward pass.
        progress: progress bar on stderr (``None``: only for long runs).

    Desai & Ramaswamy, "Ablation-CAM", WACV 2020, https://doi.org/10.1109/WACV45572.2020.9093360.
    """

    def perturbed_scores(self, ctx: CallContext, site: LayerSite) -> torch.Tensor:
        """Target scores ``(N, C[, K])`` with each channel of the captured layer zeroed."""
        x, n, c = ctx.x, ctx.n, site.activation.shape[1]
        raw, reshape = site.raw, ctx.reshape
        state: dict = {}

        def hook(module, inputs, output):
            b = output.shape[0] // n
            rep = raw.repeat(b, *([1] * (raw.ndim - 1)))
            view = reshape(rep) if reshape is not None else rep
            if view.untyped_storage().data_ptr() != rep.untyped_storage().data_ptr():
                raise LayerError(
                    "AblationCAM zeroes channels through reshape=, but this reshape returns a copy of the layer's "
                    "output, so the zeroed channels would never reach the model; give a reshape that returns a view "
                    "(ndcam.TokenGrid does), or use another method")
            c0 = state["c0"]
            for j in range(b):  # zero channel c0 + j in the j-th group of n copies (a view into `rep`)
                view[j * n : (j + 1) * n, c0 + j] = 0
            return rep

        def block(c0: int, c1: int) -> torch.Tensor:
            state["c0"] = c0
            return self._scores_of(ctx, x.repeat(c1 - c0, *([1] * (x.ndim - 1))))

        handle = site.module.register_forward_hook(this_thread(hook))
        try:
            return self._run_blocks(ctx, c, block)
        finally:
            handle.remove()

    def weights_from(self, scores, base_scores):
        return ablationcam_weights(base_scores, scores)
