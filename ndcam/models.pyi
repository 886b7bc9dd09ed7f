# ndcam.models for type checkers: at run time it is the module ndcam/synthetic/models (see ndcam/_layout.py).
# Written by scripts/make_public_stubs.py.
from .synthetic.models import *  # noqa: F403
from .synthetic.models import __all__ as __all__
