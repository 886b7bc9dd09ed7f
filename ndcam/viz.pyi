# ndcam.viz for type checkers: at run time it is the module ndcam/app/viz (see ndcam/_layout.py).
# Written by scripts/make_public_stubs.py.
from .app.viz import *  # noqa: F403
from .app.viz import __all__ as __all__
