# ndcam.ranks for type checkers: at run time it is the module ndcam/core/ranks (see ndcam/_layout.py).
# Written by scripts/make_public_stubs.py.
from .core.ranks import *  # noqa: F403
from .core.ranks import __all__ as __all__
