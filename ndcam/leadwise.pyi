# ndcam.leadwise for type checkers: at run time it is the module ndcam/analysis/leadwise (see ndcam/_layout.py).
# Written by scripts/make_public_stubs.py.
from .analysis.leadwise import *  # noqa: F403
from .analysis.leadwise import __all__ as __all__
