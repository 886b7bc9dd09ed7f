# ndcam.targets for type checkers: at run time it is the module ndcam/core/targets (see ndcam/_layout.py).
# Written by scripts/make_public_stubs.py.
from .core.targets import *  # noqa: F403
from .core.targets import __all__ as __all__
