# ndcam.data for type checkers: at run time it is the module ndcam/synthetic/data (see ndcam/_layout.py).
# Written by scripts/make_public_stubs.py.
from .synthetic.data import *  # noqa: F403
from .synthetic.data import __all__ as __all__
