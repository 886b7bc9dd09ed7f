r"""LeGrad for token models: positive gradients of a per-layer score with respect to that layer's attention map,
averaged over heads, queries and layers.

Bousselham et al., "LeGrad: An Explainability Method for Vision Transformers via Feature Formation Sensitivity",
2024, https://arxiv.org/abs/2404.03214. LeGrad asks, for every block :math:`l`, how sensitive the score that the
model's read-out gives to *that block's* tokens is to the block's attention. With :math:`Z^l` ``(N, T, D)`` the tokens
after block :math:`l`, :math:`\rho` the read-out (the model's final normalization, pooling and head, giving class
scores), :math:`c` the target class and :math:`A^l` ``(N, heads, queries, keys)`` the block's post-softmax attention
probabilities,

.. math::
    s^l = \rho(Z^l)_c, \qquad
    E^l_{k} = \frac{1}{H\,Q} \sum_{h=1}^{H}\sum_{q=1}^{Q} \mathrm{ReLU}\Big(\frac{\partial s^l}{\partial A^l_{h,q,k}}\Big),
    \qquad M = \mathrm{minmax}\Big(\frac{1}{L}\sum_l E^l\Big)

with the prefix keys (class token, registers) dropped and the remaining keys laid out on the patch grid of any rank
(1D audio/ECG, 2D images, 3D volumes). Layers are averaged *before* normalizing (their raw maps share one scale),
unlike the per-layer normalized mean of the other methods.

**The read-out** (``readout=``):

* ``"auto"`` (default) on attention layers (given with ``grid=``, i.e. an :class:`AttentionGrid`): ndcam finds the
  model's own read-out and checks it. The layers must sit in a stack of blocks -- the outermost ``nn.ModuleList`` /
  ``nn.Sequential`` above them whose children are all of one class (timm's ``blocks``, torchvision's
  ``encoder.layers``, ``nn.TransformerEncoder``'s ``layers``, Hugging Face's ``encoder.layer``), one layer per block;
  :math:`Z^l` is the output of the block holding layer :math:`l`. During the explained forward pass ndcam records the
  modules that run after the last block (``norm``, ``fc_norm``, ``head``, ...) and accepts them as :math:`\rho` only
  if they form one chain from the last block's tokens to the model's class scores, with at most one step between
  modules that is not a module -- the class token, the mean of all tokens, the mean of the tokens after the
  ``prefix``, or the tokens after the prefix (before an attention-pooling module) -- identified by its values. Tokens
  are ``(N, T, D)``, or ``(T, N, D)`` for sequence-first ``nn.MultiheadAttention`` layers (``batch_first=False``:
  poolings ``tokens[0]``, ``tokens.mean(0)``, ...); the layout is read from the batch size, the layers'
  ``batch_first`` deciding when ``T == N``. The chain re-applied to the last block's tokens must give the model's
  output, so :math:`s^L` *is* the model's own score and the last block's map is the same as with ``readout="model"``.
  Anything else -- several poolings fitting the values (all tokens equal, e.g. a constant input), a module after the
  blocks that is not on the chain, an output changed without a module, no stack -- is refused with an
  :class:`~ndcam.LayerError` naming what did not fit: ndcam never applies a read-out it has not checked.
  :meth:`LeGrad.readout_for` shows the one found, e.g. ``head(norm(tokens)[:, 0])``.

  On any other layer ``"auto"`` uses the model's own score, as ``"model"``: a CNN feature map has no tokens, and a
  block's *own* tokens read out through the head give a gradient that does not depend on where the token is (a
  class-token read-out depends on the class token only -- zero at every patch; a mean pooled before the final norm
  gives the same gradient at every token), so the map would be empty or constant.
* a module or callable ``tokens (N, T, D) -> class scores (N, classes)``: the read-out, applied to the tokens after
  each layer's block as the block gives them (``(T, N, D)`` after sequence-first blocks) (a layer that is itself a
  block, or outside any stack, is read out from its own output). The authors' code (and torch-cam) pools by the mean
  of *all* tokens, class token included, before the final norm, also for models whose head reads the class token:
  ``readout=lambda z: model.head(model.norm(z.mean(1)))``.
* ``"model"``: the model's own final score for every layer (ndcam's behaviour before the read-out existed). The
  gradient at an intermediate layer then also flows through the later blocks; both agree for the last block.

Targets given as classes pick the class from the read-out's scores; a callable target receives the read-out's class
scores ``(N, classes)`` (a tensor, whatever the model's output structure) and must give as many scores per sample as
on the model's output.

How ndcam reaches the attention probabilities (always with ``grid=``/``prefix=``): pass as ``layers``

* ``torch.nn.MultiheadAttention`` layers themselves -- torchvision's ViT
  ``encoder.layers.encoder_layer_<i>.self_attention``, ``nn.TransformerEncoder``'s ``layers.<i>.self_attn``, a
  user's own -- also when the blocks call them with ``need_weights=False`` or torch would take a fused fast path.
  During the explained forward only, ndcam makes each one run torch's own unfused forward with
  ``need_weights=True, average_attn_weights=False`` and differentiates the softmax output that forward multiplies
  with the values (the per-head weights it returns are a view of it): the probabilities the model's output is
  computed from, not a recomputation. The model's outputs are those of torch's unfused computation (equal to the
  fused ones up to rounding), every caller of the layer receives what it asked for (``None``, the head-averaged or
  the per-head weights), and the hooks, the grad mode and the thread-local ``TorchFunctionMode`` that keeps the fast
  paths aside are undone when the forward ends, also on error (:mod:`ndcam.core.methods._mha`). ``batch_first``
  True or False, ``kdim``/``vdim``, ``key_padding_mask`` and ``attn_mask``, attention dropout (off in eval) are
  supported. Refused with a :class:`~ndcam.LayerError` before the forward: a subclass with its own ``forward`` or a
  forward replaced on the instance, ``add_bias_kv``/``add_zero_attn`` (keys that are no tokens), an attention layer
  that is itself a block of the stack, a ``reshape=`` other than the attention grid; during it: unbatched or nested
  inputs, and a torch whose returned weights are not a view of the tensor its output is computed from;
* or the modules whose output *is* the attention probabilities -- e.g. an ``nn.Softmax`` (or dropout) module inside
  each attention block of a timm-style model.

:class:`AttentionGrid` turns ``(N, heads, queries, keys)`` (or ``(N, queries, keys)``) into ``(N, heads*queries,
*grid)``, so "channels" are (head, query) pairs and the map is the channel mean of the positive gradient
(:func:`legrad_map`). Alternatively, capture the blocks' token outputs with ``reshape=ndcam.TokenGrid(grid,
prefix=...)``: the same formula then averages the positive gradient of the model's score with respect to the
block's tokens over the embedding channels (not the paper's per-layer read-out, see above).

LeGrad reads gradients only. On a CNN's last feature map before global average pooling the gradient of a class score
is the same at every position, so the map is constant (all-zero once normalized): use it on attention or token layers.
"""

from __future__ import annotations

import contextlib
import copy
import math
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ..errors import InputError, InputTypeError, LayerError, NdcamError
from ..layers import TokenGrid
from ._legrad_readout import Readout, _close, _discover, _Plan, _plan, _Recorder
from ._mha import MHAProbabilities, check_attention_module, is_mha
from .base import BaseCAM, CallContext, range_and_normalize, register

__all__ = ["AttentionGrid", "legrad_map", "LeGrad"]

_STATE = "legrad.recorder"
_MHA = "legrad.attention"


def _check_attention_layers(layers: Sequence[tuple[str, nn.Module]], reshape: Any) -> None:
    """``nn.MultiheadAttention`` target layers: LeGrad takes their per-head probabilities, laid out by ``grid=``."""
    for name, module in layers:
        if not is_mha(module):
            continue
        if not isinstance(reshape, AttentionGrid):
            raise LayerError(
                f"LeGrad: {name!r} is an nn.MultiheadAttention; ndcam takes its attention probabilities (N, heads, "
                f"queries, keys), which need grid= (and prefix=) to lay the keys out on the patch grid"
                + (f", not reshape={reshape!r}" if reshape is not None else "")
            )
        check_attention_module(name, module)  # type: ignore[arg-type]


class AttentionGrid:
    """``reshape=`` adapter for attention probabilities: ``(N, heads, Q, K)`` or ``(N, Q, K)`` ->
    ``(N, heads*Q, *grid)``, keys after the ``prefix`` laid out on ``grid`` (any rank).

    Example:
        >>> AttentionGrid((2, 3), prefix=1)(torch.rand(4, 2, 7, 7)).shape
        torch.Size([4, 14, 2, 3])
    """

    def __init__(self, grid: Sequence[int], prefix: int = 0) -> None:
        if isinstance(grid, int) or not all(isinstance(g, int) and g > 0 for g in grid) or len(grid) < 1:
            raise InputError(f"grid must be a sequence of positive ints (the patch grid), got {grid!r}")
        if isinstance(prefix, bool) or not isinstance(prefix, int) or prefix < 0:
            raise InputError(f"prefix must be an int >= 0 (leading non-patch tokens), got {prefix!r}")
        self.grid, self.prefix = tuple(grid), prefix

    def __repr__(self) -> str:
        return f"AttentionGrid(grid={self.grid}, prefix={self.prefix})"

    def __call__(self, t: torch.Tensor) -> torch.Tensor:
        if not isinstance(t, torch.Tensor) or t.ndim not in (3, 4):
            got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise LayerError(f"AttentionGrid expects attention probabilities (N, heads, Q, K) or (N, Q, K), got {got}")
        if t.ndim == 3:
            t = t[:, None]
        keys = t[..., self.prefix :]
        if keys.shape[-1] != math.prod(self.grid):
            raise LayerError(
                f"AttentionGrid: {keys.shape[-1]} keys (after dropping {self.prefix} prefix keys of {t.shape[-1]}) do "
                f"not fill the grid {self.grid}; set grid= and prefix= to the model's layout"
            )
        n, h, q = keys.shape[:3]
        return keys.reshape(n, h * q, *self.grid)


def legrad_map(gradients: torch.Tensor) -> torch.Tensor:
    r"""LeGrad map of one layer: :math:`\frac{1}{C}\sum_c \mathrm{ReLU}(G_{c,s})` ``(N, *S)`` (``C`` = heads x
    queries for attention maps laid out by :class:`AttentionGrid`).
    """
    return torch.relu(gradients).mean(dim=1)


# -- the method ---------------------------------------------------------------------------------------------------
@register("legrad")
class LeGrad(BaseCAM):
    """LeGrad (see the module docstring for the formula and the read-out).

    Args:
        model: a token model.
        layers: attention layers, one per block (with ``grid=``): ``nn.MultiheadAttention`` modules or modules whose
            output is the attention probabilities; or blocks with token outputs (with
            ``reshape=ndcam.TokenGrid(...)``); several layers are averaged.
        grid: patch grid of the keys; builds ``reshape=AttentionGrid(grid, prefix)`` (omit it when passing
            ``reshape=`` yourself).
        prefix: leading non-patch keys (class token, registers) dropped with ``grid``.
        readout: how each block's tokens become class scores: ``"auto"`` (for attention layers given with
            ``grid=``: the model's own final norm, pooling and head, found and checked, refused with a
            :class:`~ndcam.LayerError` when they cannot be identified; for other layers: the model's own score), a
            module or callable ``tokens (N, T, D) -> scores (N, classes)``, or ``"model"`` (the model's own final
            score for every layer).

    Raises:
        InputError / InputTypeError: ``readout`` is none of these (at construction).
        LayerError: an ``nn.MultiheadAttention`` layer whose probabilities cannot be taken (at construction, see
            the module docstring).

    Example:
        >>> import torch, ndcam
        >>> from torch import nn
        >>> class Block(nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.qk, self.softmax, self.mlp = nn.Linear(8, 16), nn.Softmax(-1), nn.Linear(8, 8)
        ...     def forward(self, t):
        ...         q, k = self.qk(t).chunk(2, -1)
        ...         t = t + self.softmax(q @ k.transpose(1, 2)) @ t
        ...         return t + self.mlp(t)
        >>> class ViT(nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.embed, self.cls = nn.Conv1d(1, 8, 4, stride=4), nn.Parameter(torch.zeros(1, 1, 8))
        ...         self.blocks = nn.Sequential(Block(), Block())
        ...         self.norm, self.head = nn.LayerNorm(8), nn.Linear(8, 3)
        ...     def forward(self, x):
        ...         t = self.embed(x).transpose(1, 2)
        ...         t = self.blocks(torch.cat([self.cls.expand(len(t), -1, -1), t], 1))
        ...         return self.head(self.norm(t)[:, 0])
        >>> cam = ndcam.LeGrad(ViT(), ["blocks.0.softmax", "blocks.1.softmax"], grid=(16,), prefix=1)
        >>> cam(torch.randn(2, 1, 64)).shape
        torch.Size([2, 64])
        >>> cam.readout_for(torch.randn(2, 1, 64))
        'head(norm(tokens)[:, 0])'

    Bousselham et al., "LeGrad", 2024, https://arxiv.org/abs/2404.03214.
    """

    def __init__(self, model: nn.Module, layers=None, *, grid: Sequence[int] | None = None, prefix: int = 0,
                 readout: Readout = "auto", **options) -> None:
        if isinstance(readout, str):
            if readout not in ("auto", "model"):
                raise InputError(
                    f"LeGrad: readout must be 'auto', 'model' or a callable tokens (N, T, D) -> class scores "
                    f"(N, classes), got {readout!r}"
                )
        elif not callable(readout):
            raise InputTypeError(
                f"LeGrad: readout must be 'auto', 'model' or a module/callable tokens (N, T, D) -> class scores "
                f"(N, classes), got {type(readout).__name__}"
            )
        if grid is not None:
            if options.get("reshape") is not None:
                raise InputError("LeGrad: pass either grid= (attention probabilities) or reshape=, not both")
            options["reshape"] = AttentionGrid(grid, prefix)
        super().__init__(model, layers, **options)
        self.readout = readout
        if self._layers is not None:
            _check_attention_layers(self._layers, self.reshape)  # refused at construction, before any forward

    def __repr__(self) -> str:
        base = super().__repr__()[:-1]
        return f"{base}, readout={self.readout if isinstance(self.readout, str) else repr(self.readout)})"

    def layer_map(self, activations, gradients, classes):
        return legrad_map(gradients)

    def channel_maps(self, activations, gradients, classes):
        return torch.relu(gradients) / gradients.shape[1]

    def _fuse(self, maps, x, upsample, normalize):
        """Layers averaged on one raw scale, then normalized (the paper's order)."""
        mean, _, _ = super()._fuse(maps, x, upsample, False)
        return range_and_normalize(mean, 2, normalize)

    # -- per-layer read-out -------------------------------------------------------------------------------------
    def _layerwise(self, ctx: CallContext) -> bool:
        """Whether this call reads a score out of every block (else: the model's own score, ``"model"``)."""
        if isinstance(self.readout, str):
            return self.readout == "auto" and isinstance(ctx.reshape, AttentionGrid)
        return True

    def _layers_for(self, ctx: CallContext) -> tuple[list[tuple[str, nn.Module]], Callable | None]:
        """The call's layers, each ``nn.MultiheadAttention`` replaced by the probe that receives its per-head
        probabilities (:class:`~ndcam.core.methods._mha.MHAProbabilities`, kept in ``ctx.state`` for the forward).
        """
        layers, reshape = super()._layers_for(ctx)
        ctx.state.pop(_MHA, None)
        if any(is_mha(m) for _, m in layers):
            _check_attention_layers(layers, reshape)
            probs = MHAProbabilities(layers)
            ctx.state[_MHA] = probs
            layers = probs.layers
        return layers, reshape

    def _forward_context(self, ctx: CallContext) -> contextlib.AbstractContextManager:
        probs = ctx.state.get(_MHA)
        plan = None
        if self._layerwise(ctx):
            plan = _plan(self.model, ctx.layers, isinstance(ctx.reshape, AttentionGrid))  # refused before the forward
            if probs is not None:
                own = [n for n, _ in probs.modules if plan.block_of.get(n) == n]
                if own:
                    raise LayerError(f"LeGrad: the nn.MultiheadAttention {own[0]!r} is itself a block of the stack "
                                     f"{plan.stack!r}; its output is no tokens to read out: pass attention layers "
                                     f"inside blocks, or readout='model'")
                if not any(m.batch_first for _, m in probs.modules):
                    plan.token_axis = 0  # sequence-first attention: the blocks' tokens are (T, N, D)
        if plan is None and probs is None:
            return contextlib.nullcontext()
        return self._recording(ctx, plan, probs)

    @contextlib.contextmanager
    def _recording(self, ctx: CallContext, plan: _Plan | None, probs: MHAProbabilities | None) -> Iterator[None]:
        rec = None if plan is None else _Recorder(plan)
        try:
            if probs is not None:
                probs.__enter__()
            if rec is not None:
                rec.attach()
                ctx.state[_STATE] = rec
            yield
        finally:
            if rec is not None:
                rec.detach()
                ctx.state.pop(_STATE, None)
            if probs is not None:
                probs.finish()
            ctx.state.pop(_MHA, None)

    def _readout(self, ctx: CallContext, rec: _Recorder) -> Callable[[torch.Tensor], torch.Tensor]:
        if callable(self.readout):
            return self.readout
        prefix = ctx.reshape.prefix if isinstance(ctx.reshape, (AttentionGrid, TokenGrid)) else 0
        readout = _discover(rec, ctx.output, prefix, ctx.n)
        assert rec.last is not None and ctx.scores is not None
        again = self._scores_of(ctx, readout, rec.last.detach(), rec.last_block)
        if not _close(again, ctx.scores.detach()):
            raise InputError(
                "LeGrad: the target callable gives other scores on the read-out's class scores (N, classes) than on "
                "the model's output, although they are the same values; with a per-layer read-out a callable target "
                "receives the class-score tensor: write it for that tensor (or pass class indices)"
            )
        return readout

    def _scores_of(self, ctx: CallContext, readout: Callable, z: torch.Tensor, block: str) -> torch.Tensor:
        """``(N, K)`` target scores of the read-out of one block's tokens."""
        try:
            out = readout(z)
        except NdcamError:
            raise
        except Exception as err:  # the read-out is the user's code or the model's modules on other tokens
            raise InputError(f"LeGrad: the read-out failed on the tokens of {block!r} {tuple(z.shape)}: "
                             f"{type(err).__name__}: {err}") from err
        n = ctx.n
        if not isinstance(out, torch.Tensor) or not out.is_floating_point() or out.ndim not in (1, 2) or \
                out.shape[0] != n:
            got = f"shape {tuple(out.shape)} {out.dtype}" if isinstance(out, torch.Tensor) else type(out).__name__
            raise InputError(f"LeGrad: the read-out must map tokens (N, T, D) to floating class scores (N, classes) "
                             f"with N={n}; on the tokens of {block!r} it gave {got}")
        try:
            s = ctx.score_fn(out)
        except NdcamError:
            raise
        except Exception as err:
            raise InputError(f"LeGrad: the target callable failed on the read-out's class scores {tuple(out.shape)} "
                             f"(a per-layer read-out hands it that tensor, not the model's output): "
                             f"{type(err).__name__}: {err}") from err
        s = self._check_scores(s, n)
        s = s if s.ndim == 2 else s[:, None]
        assert ctx.scores is not None
        if s.shape[1] != ctx.scores.shape[1]:
            raise InputError(f"LeGrad: the targets give {s.shape[1]} score(s) per sample on the read-out of "
                             f"{block!r} but {ctx.scores.shape[1]} on the model's output; they must give the same K")
        return s

    def _layer_maps(self, ctx: CallContext) -> list[torch.Tensor]:
        rec, probs = ctx.state.get(_STATE), ctx.state.get(_MHA)
        if rec is None and probs is None:
            return super()._layer_maps(ctx)
        # the forward is over: re-applying the read-out must not record, torch's fast paths are back
        if probs is not None:
            probs.finish()
        if rec is not None:
            rec.detach()
        cap, sc = ctx.cap, ctx.scores
        assert cap is not None and sc is not None
        # what the gradient is taken with respect to: the recorded output, or for nn.MultiheadAttention the
        # softmax output its per-head weights view (the tensor on the path to the model's output)
        on_path = probs.on_path if probs is not None else (lambda t: t)
        with torch.enable_grad():
            if rec is None:
                return self._model_score_maps(ctx, on_path)
            return self._readout_maps(ctx, rec, on_path)

    def _gradient_map(self, ctx: CallContext, g: torch.Tensor, raw: torch.Tensor, a: torch.Tensor,
                      k: int) -> torch.Tensor:
        g = g.view(raw.shape)  # the softmax output (N*heads, Q, K) as the per-head weights (N, heads, Q, K)
        if ctx.reshape is not None:
            g = ctx.reshape(g)
        class_idx = ctx.class_idx
        cls_k = None if class_idx is None else (class_idx[:, k] if class_idx.ndim == 2 else class_idx)
        return self._one(a, g, cls_k)

    def _model_score_maps(self, ctx: CallContext, on_path: Callable[[torch.Tensor], torch.Tensor]) -> list[torch.Tensor]:
        """``readout="model"`` (or a call without a per-layer read-out) on attention probabilities taken from
        ``nn.MultiheadAttention``: the model's own scores at every layer, one backward per target.
        """
        cap, sc = ctx.cap, ctx.scores
        assert cap is not None and sc is not None
        raws, acts = cap.outputs_with_graph, cap.activations
        targets = [on_path(r) for r in raws]
        per_layer: list[list[torch.Tensor]] = [[] for _ in raws]
        for k in range(sc.shape[1]):
            grads = torch.autograd.grad(sc[:, k].sum(), targets, retain_graph=True, allow_unused=True)
            for maps, name, raw, a, g in zip(per_layer, cap.names, raws, acts, grads):
                if g is None:
                    raise LayerError(f"LeGrad: the target scores do not depend on layer {name!r} (no gradient path "
                                     f"from the scores back to the layer)")
                maps.append(self._gradient_map(ctx, g, raw, a, k))
            del grads
        return [torch.stack(m, dim=1) for m in per_layer]

    def _readout_maps(self, ctx: CallContext, rec: _Recorder,
                      on_path: Callable[[torch.Tensor], torch.Tensor]) -> list[torch.Tensor]:
        """Per block: the read-out's scores of the block's tokens, differentiated w.r.t. the block's layer."""
        cap = ctx.cap
        assert cap is not None
        readout = self._readout(ctx, rec)
        if "readout" in ctx.saved:
            ctx.saved["readout"].append(repr(readout))
        acts, raws = cap.activations, cap.outputs_with_graph
        seen: dict[str, int] = {}
        per_layer = []
        for name, raw, a in zip(cap.names, raws, acts):
            j = seen[name] = seen.get(name, -1) + 1
            block = rec.plan.block_of[name]
            calls = rec.block_out.get(block, [])
            if block == name:
                z = raw
            elif j < len(calls):
                z = calls[j]
            else:
                raise LayerError(f"LeGrad: layer {name!r} ran {j + 1} time(s) but its block {block!r} "
                                 f"{len(calls)}; a layer and its block must run together")
            s = self._scores_of(ctx, readout, z, block)
            if not s.requires_grad:
                raise LayerError(f"LeGrad: the read-out of block {block!r} does not depend on layer {name!r} "
                                 f"(no gradient path from the block's tokens to the layer)")
            target = on_path(raw)
            maps = []
            for k in range(s.shape[1]):
                (g,) = torch.autograd.grad(s[:, k].sum(), target, retain_graph=True, allow_unused=True)
                if g is None:
                    raise LayerError(f"LeGrad: the read-out of block {block!r} does not depend on layer "
                                     f"{name!r} (no gradient path from the block's tokens to the layer)")
                maps.append(self._gradient_map(ctx, g, raw, a, k))
                del g
            per_layer.append(torch.stack(maps, dim=1))
        return per_layer

    # -- inspection -----------------------------------------------------------------------------------------------
    def readout_for(self, x: torch.Tensor, *, forward_args: tuple = (),
                    forward_kwargs: Mapping[str, Any] | None = None) -> str:
        """The read-out this instance applies to each block's tokens for ``x``, as text: with ``"auto"`` the
        modules found, e.g. ``'head(norm(tokens)[:, 0])'`` or ``'head(fc_norm(tokens[:, 1:].mean(1)))'``;
        ``'model output'`` where the model's own score is used; the callable's ``repr`` otherwise.

        Runs one explanation of ``x`` (top-1 classes); raises what that call raises (e.g. the
        :class:`~ndcam.LayerError` of a read-out that cannot be identified).
        """
        probe = copy.copy(self)
        probe.per_sample, probe.aug_smooth, probe.eigen_smooth = False, False, False
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _, saved = probe._explain(x, None, upsample=False, normalize=False, forward_args=forward_args,
                                      forward_kwargs=forward_kwargs, save=("readout",))
        return saved["readout"][0] if saved["readout"] else "model output"
