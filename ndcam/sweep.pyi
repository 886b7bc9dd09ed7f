# ndcam.sweep for type checkers: at run time it is the module ndcam/analysis/sweep (see ndcam/_layout.py).
# Written by scripts/make_public_stubs.py.
from .analysis.sweep import *  # noqa: F403
from .analysis.sweep import __all__ as __all__
