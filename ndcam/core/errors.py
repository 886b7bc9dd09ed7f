"""Error types raised by ndcam.

Every error is a subclass of a built-in (``ValueError``, ``TypeError`` or ``LookupError``) so callers that catch the
built-ins keep working, and of :class:`NdcamError` so callers can catch everything ndcam raises on purpose.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


class NdcamError(Exception):
    """Base class of every error that ndcam raises on purpose."""


class InputError(NdcamError, ValueError):
    """The input tensor, a target or an option has a wrong value (rank, NaN/inf, range, length)."""


class InputTypeError(NdcamError, TypeError):
    """An argument has the wrong type (e.g. an integer input tensor, a non-callable target)."""


class LayerError(NdcamError, LookupError):
    """A target layer does not exist, is never reached by the forward pass, or gives a non-spatial output."""


class ForwardError(InputError):
    """The model's own forward pass failed on the input (usually a wrong rank, channel count or size)."""


class DeadlockError(NdcamError, RuntimeError):
    """Two threads each hold a model (:func:`ndcam.capture.model_lock`) while waiting for the other's: a call on a
    model was nested inside a call or lock on another model, in opposite orders in the two threads.
    """


def forward_failed(model: object, x: object, err: BaseException) -> ForwardError:
    """Wrap an exception raised by the model's forward into a :class:`ForwardError` that names the input."""
    shape = tuple(getattr(x, "shape", ()))
    rank = len(shape) - 2
    return ForwardError(
        f"the model's forward pass failed on x of shape {shape} (spatial rank {rank}): {type(err).__name__}: "
        f"{str(err).splitlines()[0] if str(err) else ''} -- is x (N, C, *spatial) with the channels, rank and size "
        f"{type(model).__name__} expects?"
    )


@contextlib.contextmanager
def model_forward(model: object, x: object) -> Iterator[None]:
    """Run the model's own forward inside: whatever it raises becomes a :class:`ForwardError` naming the input (the
    original chained as its cause). Passed through unchanged: ndcam's own errors (raised by its hooks), running out
    of memory (``torch.OutOfMemoryError``, ``MemoryError``: lower ``batch_size`` or the input size) and warnings
    turned into errors.
    """
    try:
        yield
    except (NdcamError, MemoryError, Warning):  # ndcam's own; out of memory; a warning turned into an error
        raise
    except Exception as err:  # noqa: BLE001 -- whatever the model raises, with context
        if type(err).__name__ == "OutOfMemoryError":  # torch.OutOfMemoryError (a RuntimeError): catchable as itself
            raise
        raise forward_failed(model, x, err) from err


class NdcamWarning(UserWarning):
    """Base class of every warning that ndcam emits on purpose."""


class ConstantMapWarning(NdcamWarning):
    """A map came out constant (usually all-zero): nothing in it can be read.

    Typical causes: every channel weight is negative so the ReLU removes the whole map (try ``normalize=False``,
    another target, a layer nearer the input, or a method without ReLU such as HiResCAM); the target score does not
    depend on the layer; the input is constant.
    """


class BatchDependenceWarning(NdcamWarning):
    """The model normalizes with batch statistics, so one sample's map depends on the other samples of the batch."""


class PrecisionWarning(NdcamWarning):
    """An input file was decoded with less precision than it holds (a 16-bit colour PNG read at 8 bits because the
    optional decoder pypng is not installed: ``pip install pypng`` or ``pip install "ndcam[formats]"``).
    """
