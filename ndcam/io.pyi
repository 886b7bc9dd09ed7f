# ndcam.io for type checkers: at run time it is the module ndcam/app/io (see ndcam/_layout.py).
# Written by scripts/make_public_stubs.py.
from .app.io import *  # noqa: F403
from .app.io import __all__ as __all__
