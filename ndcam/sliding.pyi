# ndcam.sliding for type checkers: at run time it is the module ndcam/analysis/sliding (see ndcam/_layout.py).
# Written by scripts/make_public_stubs.py.
from .analysis.sliding import *  # noqa: F403
from .analysis.sliding import __all__ as __all__
