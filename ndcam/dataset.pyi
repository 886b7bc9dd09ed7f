# ndcam.dataset for type checkers: at run time it is the module ndcam/analysis/dataset (see ndcam/_layout.py).
# Written by scripts/make_public_stubs.py.
from .analysis.dataset import *  # noqa: F403
from .analysis.dataset import __all__ as __all__
