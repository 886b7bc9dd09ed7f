"""Class targets turned into a method-specific score (ShapleyCAM's ReST, Finer-CAM's comparison with similar classes).

A method that explains a transformed class score accepts the usual class targets (None, int, sequence, ``(N, K)``
tensor); :class:`ClassScore` resolves them once -- the top-1 class and anything else the score needs (Finer-CAM's
similar classes) on the first, unperturbed output it sees -- and :class:`ClassScoreMixin` reports the resolved class
indices in :attr:`Explanation.targets`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..targets import _check_range, _logits, as_score_fn

__all__ = ["ClassScore", "ClassScoreMixin"]


class ClassScore:
    """Callable target ``output -> scores`` computing ``fn(logits (N, M), classes (N, K), state) -> (N, K)``.

    ``prepare(logits, classes) -> state`` runs once, on the first output (detached), for anything the score freezes.
    """

    def __init__(self, targets, n: int, device: torch.device, fn: Callable, what: str,
                 prepare: Callable | None = None) -> None:
        _, idx, multi = as_score_fn(targets, n, device)
        self.multi = multi
        self.idx = None if idx is None else (idx if multi else idx[:, None])
        self.fn, self.what, self.prepare, self.state = fn, what, prepare, None

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        logits = _logits(output, self.what)
        if self.idx is None:  # top-1 of the first (unperturbed) output, kept from then on
            top = (logits[:, 0] > 0).long() if logits.shape[1] == 1 else logits.detach().argmax(1)
            self.idx = top[:, None]
        _check_range(self.idx, max(2, logits.shape[1]) if logits.shape[1] == 1 else logits.shape[1], self.what)
        if self.prepare is not None and self.state is None:
            self.state = self.prepare(logits.detach(), self.idx)
        s = self.fn(logits, self.idx, self.state)
        return s if self.multi else s[:, 0]

    def resolved(self) -> torch.Tensor | None:
        if self.idx is None:
            return None
        return self.idx if self.multi else self.idx[:, 0]


class ClassScoreMixin:
    """For a :class:`BaseCAM` subclass: class targets are explained through :meth:`class_score` (a
    :class:`ClassScore`); callables are passed on as they are.

    The score is made per captured run (:meth:`_run`) from the run's own resolved classes, so it is per-call state
    (threads sharing an instance are safe), each sample of ``per_sample=True`` resolves its own top-1 class, and the
    augmented runs of ``aug_smooth`` explain the classes of the unaugmented one.
    """

    def class_score(self, targets, n: int, device: torch.device) -> ClassScore:  # pragma: no cover - abstract
        raise NotImplementedError

    def _run(self, ctx):  # noqa: D102
        from dataclasses import replace

        from ..targets import Targets

        spec = ctx.targets.spec
        if spec is not None and callable(spec) and not isinstance(spec, torch.Tensor):
            return super()._run(ctx)  # type: ignore[misc]
        score = self.class_score(ctx.targets.classes, ctx.n, ctx.x.device)
        exp = super()._run(replace(ctx, targets=Targets(score, score, None, score.multi)))  # type: ignore[misc]
        exp.targets = score.resolved()
        return exp
