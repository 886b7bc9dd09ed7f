"""Reproducible randomness for the stochastic methods (RandomCAM, SS-CAM, Smooth Grad-CAM++, DFF's initialization).

A stochastic method takes ``seed=`` (an int, default 0) or ``generator=`` (a :class:`torch.Generator`). Every random
draw of one call derives from one *call seed* -- the seed itself, or one number drawn from the generator at the start
of the call -- and from *keys* that say what the draw is for (the layer, the noise sample, the channel), never from
the position of a sample in the batch. So with a fixed seed:

* a batch gives each sample the map it gets alone (the same noise is used for every sample of a batch);
* K targets at once give the K maps of K calls (the noise is drawn once per call, shared by the targets);
* a Conv1d net and its Conv2d ``(1, k)`` twin see the same noise (draws depend on the number of values, not the shape).

With ``generator=`` successive calls differ (the generator advances once per call), as users of a generator expect.
"""

from __future__ import annotations

import torch

from ..errors import InputTypeError

__all__ = ["check_seed", "call_seed", "draw"]

_MASK = (1 << 63) - 1


def check_seed(seed: int, generator: torch.Generator | None) -> None:
    """Validate the ``seed=`` / ``generator=`` options of a stochastic method."""
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise InputTypeError(f"seed must be an int, got {type(seed).__name__}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise InputTypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")


def call_seed(seed: int, generator: torch.Generator | None) -> int:
    """The seed of one call: ``seed``, or one number drawn from ``generator`` (which then advances)."""
    if generator is None:
        return int(seed) & _MASK
    return int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device).item())


def _mix(base: int, keys: tuple[int, ...]) -> int:
    # splitmix64-style mixing of the call seed and the keys: deterministic across processes (no hash randomization)
    h = (base ^ 0x9E3779B97F4A7C15) & ((1 << 64) - 1)
    for k in keys:
        h = (h ^ (int(k) & ((1 << 64) - 1))) * 0xBF58476D1CE4E5B9 & ((1 << 64) - 1)
        h ^= h >> 31
        h = h * 0x94D049BB133111EB & ((1 << 64) - 1)
        h ^= h >> 29
    return h & _MASK


def draw(kind: str, shape: tuple[int, ...], base: int, *keys: int, dtype: torch.dtype = torch.float64,
         device: torch.device | str = "cpu") -> torch.Tensor:
    """``shape`` values from a CPU generator seeded by ``(base, *keys)``: ``"normal"`` N(0, 1) or ``"uniform"``
    U[0, 1), in float64 then cast to ``dtype`` on ``device`` (the same values on every device and dtype).
    """
    g = torch.Generator(device="cpu").manual_seed(_mix(base, keys))
    if kind == "normal":
        t = torch.randn(shape, generator=g, dtype=torch.float64)
    elif kind == "uniform":
        t = torch.rand(shape, generator=g, dtype=torch.float64)
    else:  # pragma: no cover - internal
        raise ValueError(kind)
    return t.to(device=device, dtype=dtype)
