# ndcam.detection for type checkers: at run time it is the module ndcam/core/detection (see ndcam/_layout.py).
# Written by scripts/make_public_stubs.py.
from .core.detection import *  # noqa: F403
from .core.detection import __all__ as __all__
