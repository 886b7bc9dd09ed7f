# ndcam.smoothing for type checkers: at run time it is the module ndcam/core/smoothing (see ndcam/_layout.py).
# Written by scripts/make_public_stubs.py.
from .core.smoothing import *  # noqa: F403
from .core.smoothing import __all__ as __all__
