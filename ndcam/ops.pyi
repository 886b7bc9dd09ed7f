# ndcam.ops for type checkers: at run time it is the module ndcam/core/ops (see ndcam/_layout.py).
# Written by scripts/make_public_stubs.py.
from .core.ops import *  # noqa: F403
from .core.ops import __all__ as __all__
