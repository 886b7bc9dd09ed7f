"""One rule for ndcam's progress bars: :mod:`tqdm` on stderr, shown for long runs only unless asked for.

``progress`` is ``None``, ``True`` or ``False`` everywhere it is an option (the perturbation methods' forwards,
:class:`ndcam.SlidingWindow`'s patches):

* ``None`` -- a bar only when stderr is a terminal and once the run has taken 2 seconds (tqdm's ``delay``), removed
  when done: short runs, logs and pipes stay quiet;
* ``True`` -- always; when stderr is not a terminal it is redrawn every 30 s at most, so logs get no
  carriage-return spam;
* ``False`` -- never.
"""

from __future__ import annotations

import sys

from tqdm import tqdm  # type: ignore[import-untyped]

from .errors import InputTypeError

__all__ = ["check_progress", "progress_bar"]


def check_progress(progress: object, what: str = "only long runs") -> bool | None:
    """``progress`` itself when it is ``None``, ``True`` or ``False``; an :class:`~ndcam.InputTypeError` otherwise."""
    if progress is not None and not isinstance(progress, bool):
        raise InputTypeError(f"progress must be None ({what}), True or False, got {progress!r}")
    return progress


def progress_bar(total: int, label: str, progress: bool | None, *, unit: str) -> tqdm:
    """A tqdm bar over ``total`` items of ``unit`` following the rule of the module docstring (a disabled bar, which
    prints nothing, for ``False``).
    """
    tty = hasattr(sys.stderr, "isatty") and sys.stderr.isatty()
    if progress is False:
        return tqdm(total=total, disable=True)
    if progress is None:
        return tqdm(total=total, desc=label, unit=unit, disable=not tty, delay=2.0, leave=False, file=sys.stderr)
    return tqdm(total=total, desc=label, unit=unit, file=sys.stderr, mininterval=0.1 if tty else 30.0,
                dynamic_ncols=tty)
