# ndcam.explanation for type checkers: at run time it is the module ndcam/core/explanation (see ndcam/_layout.py).
# Written by scripts/make_public_stubs.py.
from .core.explanation import *  # noqa: F403
from .core.explanation import __all__ as __all__
