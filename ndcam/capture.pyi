# ndcam.capture for type checkers: at run time it is the module ndcam/core/capture (see ndcam/_layout.py).
# Written by scripts/make_public_stubs.py.
from .core.capture import *  # noqa: F403
from .core.capture import __all__ as __all__
