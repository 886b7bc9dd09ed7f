"""LeGrad's per-layer read-out: where each layer's tokens come from, what the explained forward records, and the
read-out ``readout="auto"`` finds after the block stack (the model's final norm, pooling and head), checked against
the model's own output. Used by :class:`ndcam.LeGrad` (``legrad.py``); see its docstring for the formula.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Union

import torch
from torch import nn

from ..capture import this_thread
from ..errors import InputTypeError, LayerError
from ..targets import logits_of

#: what ``readout=`` accepts
Readout = Union[str, Callable[[torch.Tensor], torch.Tensor]]


# -- where each layer's tokens come from (static: names only, before any forward) ----------------------------------
@dataclass
class _Plan:
    """The block stack around the target layers: ``block_of[layer] = block`` (a layer outside any stack is its own
    block), the modules whose calls after the last block may form the read-out (``tail``), the blocks to hook.
    """

    stack: str | None
    block_of: dict[str, str]
    blocks: list[tuple[str, nn.Module]]
    tail: list[tuple[str, nn.Module]]
    layers: set[str]
    token_axis: int = 1  # 0 when the attention layers are sequence-first (batch_first=False): tokens (T, N, D)


def _ancestors(name: str) -> list[str]:
    """Proper ancestors of a dotted module name, outermost first (``""`` is the model)."""
    parts = name.split(".") if name else []
    return [".".join(parts[:i]) for i in range(len(parts))]


def _is_stack(module: nn.Module) -> bool:
    kinds = {type(c) for c in module.children()}
    return isinstance(module, (nn.ModuleList, nn.Sequential)) and len(kinds) == 1


def _plan(model: nn.Module, layers: list[tuple[str, nn.Module]], attention: bool) -> _Plan:
    names = list(dict.fromkeys(n for n, _ in layers))
    stacks = {}
    for name in names:
        stack = next((a for a in _ancestors(name) if _is_stack(model.get_submodule(a))), None)
        if stack is None and attention:
            raise LayerError(
                f"LeGrad: the attention layer {name!r} is not inside a stack of blocks (an nn.ModuleList or "
                f"nn.Sequential whose children are all of one class), so the block whose tokens are read out for it "
                f"cannot be found; pass the attention modules of the model's blocks, or readout='model' to "
                f"differentiate the model's own score at every layer"
            )
        stacks[name] = stack
    found = set(stacks.values())
    if len(found) > 1:
        where = ", ".join(f"{n!r} in {'no stack' if s is None else repr(s or '<model>')}" for n, s in stacks.items())
        raise LayerError(
            f"LeGrad(readout='auto'): the target layers are not in one stack of blocks ({where}); LeGrad reads each "
            f"block's tokens out through the model's head, so pass layers of one stack (one per block), or "
            f"readout='model' to differentiate the model's own score at every layer"
        )
    (stack,) = found
    if stack is None:
        block_of = {n: n for n in names}
    else:
        depth = len(stack.split(".")) if stack else 0
        block_of = {n: ".".join(n.split(".")[: depth + 1]) for n in names}
    shared: dict[str, list[str]] = {}
    for n, b in block_of.items():
        shared.setdefault(b, []).append(n)
    doubled = {b: ns for b, ns in shared.items() if len(ns) > 1}
    if doubled:
        b, ns = next(iter(doubled.items()))
        raise LayerError(
            f"LeGrad: layers {ns} are in one block {b!r}; LeGrad reads one score per block, from the block's tokens, "
            f"so give one layer per block (e.g. the attention probabilities of each block)"
        )
    if stack is None:
        blocks = [(n, model.get_submodule(n)) for n in names]
    else:
        container = model.get_submodule(stack)
        blocks = [(f"{stack}.{c}" if stack else c, m) for c, m in container.named_children()]
    roots = [b for b, _ in blocks] if stack is None else [stack]
    inside = tuple(r + "." for r in roots if r)
    above = {a for r in roots for a in _ancestors(r)} | set(roots)
    tail = [(n, m) for n, m in model.named_modules()
            if n not in above and not (inside and n.startswith(inside)) and not any(n == r for r in roots)]
    return _Plan(stack, block_of, blocks, tail, set(names))


# -- what the explained forward records (per call, in ctx.state) -----------------------------------------------------
@dataclass
class _Call:
    """One outermost call of a module after the last block: its single tensor input and tensor output (copies), or
    why it cannot be re-applied.
    """

    name: str
    module: nn.Module
    inp: torch.Tensor | None
    out: torch.Tensor | None
    problem: str = ""


def _first_tensor(value: Any) -> torch.Tensor | None:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)) and value and isinstance(value[0], torch.Tensor):
        return value[0]
    return None


@dataclass
class _Recorder:
    plan: _Plan
    recording: bool = True
    depth: int = 0
    last: torch.Tensor | None = None
    last_block: str = ""
    tail: list[_Call] = field(default_factory=list)
    block_out: dict[str, list[torch.Tensor]] = field(default_factory=dict)
    handles: list = field(default_factory=list)

    def attach(self) -> None:
        for name, module in self.plan.blocks:
            self.handles.append(module.register_forward_hook(this_thread(self._block_hook(name))))
        for name, module in self.plan.tail:
            self.handles.append(module.register_forward_pre_hook(this_thread(self._enter), with_kwargs=True))
            self.handles.append(module.register_forward_hook(this_thread(self._exit_hook(name)), with_kwargs=True))

    def detach(self) -> None:
        self.recording = False
        for h in self.handles:
            h.remove()
        self.handles.clear()

    def _block_hook(self, name: str):
        wanted = name in set(self.plan.block_of.values()) and name not in self.plan.layers

        def hook(module: nn.Module, args: Any, output: Any) -> Any:
            if not self.recording:
                return None
            t = _first_tensor(output)
            self.tail.clear()  # only what runs after the *last* block can be the read-out
            self.last, self.last_block = t, name
            if wanted and t is not None:
                self.block_out.setdefault(name, []).append(t)
            if name not in self.plan.layers and isinstance(output, torch.Tensor):
                return output.clone()  # later in-place operations touch the copy, never the recorded tokens
            return None  # a target layer: Capture hands a copy on

        return hook

    def _enter(self, module: nn.Module, args: Any, kwargs: Any) -> None:
        if self.recording:
            self.depth += 1

    def _exit_hook(self, name: str):
        def hook(module: nn.Module, args: Any, kwargs: Any, output: Any) -> None:
            if not self.recording:
                return
            self.depth -= 1
            if self.depth or self.last is None:
                return
            tensors = [a for a in args if isinstance(a, torch.Tensor)] + [v for v in kwargs.values()
                                                                         if isinstance(v, torch.Tensor)]
            problem = ""
            if len(args) != 1 or not isinstance(args[0], torch.Tensor) or len(tensors) != 1:
                problem = "it does not take one tensor"
            elif not isinstance(output, torch.Tensor):
                problem = f"it returns {type(output).__name__}, not a tensor"
            copy_ = lambda t: t.detach().clone() if isinstance(t, torch.Tensor) else None  # noqa: E731
            self.tail.append(_Call(name, module, copy_(args[0]) if args else None, copy_(output), problem))

        return hook


# -- the read-out found by readout="auto" ------------------------------------------------------------------------
def _tolerance(dtype: torch.dtype) -> float:
    return {torch.float64: 1e-9, torch.float32: 1e-5}.get(dtype, 1e-2)


def _close(a: torch.Tensor | None, b: torch.Tensor | None) -> bool:
    if a is None or b is None or a.shape != b.shape:
        return False
    if a is b or torch.equal(a, b):
        return True
    a, b = a.detach().double(), b.detach().double()
    tol = _tolerance(a.dtype if a.dtype == b.dtype else torch.float32)
    return bool(torch.allclose(a, b, rtol=tol, atol=tol * float(b.abs().max())))


@dataclass(frozen=True)
class _Pool:
    """A step on the tokens between two modules of the read-out, done without a module: a pooling of the token axis
    (class token, mean of all tokens, mean after the prefix) or dropping the prefix tokens (timm's attention-pooling
    head). ``axis`` is the token axis: 1 for ``(N, T, D)``, 0 for sequence-first ``(T, N, D)`` tokens
    (``batch_first=False``).
    """

    kind: str  # "class token" | "mean" | "mean after prefix" | "drop prefix"
    prefix: int = 0
    axis: int = 1

    def __call__(self, t: torch.Tensor) -> torch.Tensor:
        if self.kind == "class token":
            return t.select(self.axis, 0)
        kept = t.narrow(self.axis, self.prefix, t.shape[self.axis] - self.prefix)
        return kept if self.kind == "drop prefix" else kept.mean(dim=self.axis)

    def text(self, inner: str) -> str:
        lead = ":, " * self.axis
        if self.kind == "class token":
            return f"{inner}[{lead}0]"
        if self.kind == "drop prefix":
            return f"{inner}[{lead}{self.prefix}:]"
        return f"{inner}[{lead}{self.prefix}:].mean({self.axis})" if self.prefix else f"{inner}.mean({self.axis})"


def _pools(prefix: int, tokens: int, ndim: int, axis: int) -> list[_Pool]:
    """The candidate steps from tokens to a tensor of ``ndim`` axes."""
    with_prefix = 0 < prefix < tokens
    if ndim == 3:
        return [_Pool("drop prefix", prefix, axis)] if with_prefix else []
    return [_Pool("class token", 0, axis), _Pool("mean", 0, axis)] + (
        [_Pool("mean after prefix", prefix, axis)] if with_prefix else [])


class _ModelReadout:
    """``tokens -> class scores`` by the model's own modules after its blocks (found and checked by ``"auto"``)."""

    def __init__(self, steps: list[tuple[str, nn.Module]], pool: _Pool | None, pool_at: int) -> None:
        self.steps, self.pool, self.pool_at = steps, pool, pool_at

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        for i, (_, m) in enumerate(self.steps):
            if i == self.pool_at and self.pool is not None:
                z = self.pool(z)
            z = m(z)
        if self.pool_at == len(self.steps) and self.pool is not None:
            z = self.pool(z)
        return z

    def __repr__(self) -> str:
        text = "tokens"
        for i, (name, _) in enumerate(self.steps):
            if i == self.pool_at and self.pool is not None:
                text = self.pool.text(text)
            text = f"{name}({text})"
        if self.pool_at == len(self.steps) and self.pool is not None:
            text = self.pool.text(text)
        return text


def _refuse_auto(why: str) -> LayerError:
    return LayerError(
        f"LeGrad(readout='auto') could not identify the model's read-out: {why}. Pass readout= (a module or callable "
        f"mapping a block's tokens (N, T, D) to class scores (N, classes), e.g. lambda z: model.head(model.norm(z)"
        f"[:, 0])), or readout='model' to differentiate the model's own score at every layer"
    )


def _match_pool(tokens: torch.Tensor, pooled: torch.Tensor, prefix: int, axis: int, where: str, prev: str) -> _Pool:
    fits = [p for p in _pools(prefix, tokens.shape[axis], pooled.ndim, axis) if _close(p(tokens), pooled)]
    if not fits:
        raise _refuse_auto(
            f"{where} receives {tuple(pooled.shape)} values that are neither {prev} {tuple(tokens.shape)} nor their "
            f"class token, their mean or the tokens after the prefix ({prefix}): the modules after the blocks do not "
            f"form one chain from the tokens to the class scores"
        )
    if len(fits) > 1:
        raise _refuse_auto(
            f"{where} receives values that several poolings of the tokens give on this input "
            f"({', '.join(p.text('tokens') for p in fits)}: e.g. all tokens equal, a constant input), so which one the "
            f"model uses is ambiguous"
        )
    return fits[0]


def _token_axis(z: torch.Tensor, n: int, hint: int, block: str) -> int:
    """The token axis of a block's output: 1 for ``(N, T, D)``, 0 for ``(T, N, D)``; ``hint`` (the attention layers'
    ``batch_first``) decides when ``T == N``.
    """
    batch_first, seq_first = z.shape[0] == n, z.shape[1] == n
    if batch_first and seq_first:
        return hint
    if batch_first or seq_first:
        return 1 if batch_first else 0
    raise _refuse_auto(f"the last block {block!r} gives {tuple(z.shape)}: no axis of the batch size {n} before the "
                       f"embedding, so these are not tokens (N, T, D) or (T, N, D)")


def _discover(rec: _Recorder, output: Any, prefix: int, n: int) -> _ModelReadout:
    """The chain of modules after the last block, checked against the recorded values and the model's output."""
    z = rec.last
    stack = rec.plan.stack
    after = f"after the last block {rec.last_block!r}" + ("" if stack is None else f" of the stack {stack or '<model>'!r}")
    if z is None or z.ndim != 3:
        got = "no tensor" if z is None else f"shape {tuple(z.shape)}"
        raise _refuse_auto(f"the last block {rec.last_block!r} gives {got}, not tokens (N, T, D) or (T, N, D)")
    try:
        logits = logits_of(output)
    except InputTypeError as err:
        raise _refuse_auto(f"the model's class scores cannot be read from its output ({err})") from None
    if logits.ndim == 1:
        logits = logits[:, None]
    axis = _token_axis(z, n, rec.plan.token_axis, rec.last_block)
    cur: torch.Tensor = z.detach()
    steps: list[tuple[str, nn.Module]] = []
    pool: _Pool | None = None
    pool_at = -1
    for i, call in enumerate(rec.tail):
        if call.problem:
            raise _refuse_auto(f"{call.name!r} runs {after} but {call.problem}")
        assert call.inp is not None and call.out is not None
        prev = f"the output of {steps[-1][0]!r}" if steps else "the last block's tokens"
        if not _close(call.inp, cur):
            if pool is None and cur.ndim == 3 and call.inp.ndim in (2, 3):
                pool, pool_at = _match_pool(cur, call.inp, prefix, axis, f"{call.name!r} (run {after})", prev), i
            else:
                raise _refuse_auto(
                    f"{call.name!r} runs {after} but its input {tuple(call.inp.shape)} is not {prev} (nor a pooling "
                    f"of them): the modules after the blocks do not form one chain from the tokens to the class scores"
                )
        steps.append((call.name, call.module))
        cur = call.out
    if not _close(cur, logits):
        if pool is None and cur.ndim == 3 and logits.ndim == 2 and cur.shape[-1] == logits.shape[-1]:
            last = f"the output of {steps[-1][0]!r}" if steps else "the last block's tokens"
            pool, pool_at = _match_pool(cur, logits, prefix, axis, "the model's output", last), len(steps)
        else:
            last = f"the output of {steps[-1][0]!r}" if steps else f"the tokens of {rec.last_block!r}"
            raise _refuse_auto(
                f"the model's class scores {tuple(logits.shape)} are not {last} {tuple(cur.shape)} (an operation "
                f"without a module, e.g. a scaling or a second head, comes after it)"
            )
    readout = _ModelReadout(steps, pool, pool_at)
    with torch.no_grad():
        again = readout(z.detach())
    if not _close(again, logits):
        raise _refuse_auto(f"re-applying {readout!r} to the last block's tokens does not give the model's output")
    return readout
