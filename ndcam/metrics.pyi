# ndcam.metrics for type checkers: at run time it is the module ndcam/analysis/metrics (see ndcam/_layout.py).
# Written by scripts/make_public_stubs.py.
from .analysis.metrics import *  # noqa: F403
from .analysis.metrics import __all__ as __all__
