# ndcam.layers for type checkers: at run time it is the module ndcam/core/layers (see ndcam/_layout.py).
# Written by scripts/make_public_stubs.py.
from .core.layers import *  # noqa: F403
from .core.layers import __all__ as __all__
