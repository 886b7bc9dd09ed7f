# ndcam.report for type checkers: at run time it is the module ndcam/app/report (see ndcam/_layout.py).
# Written by scripts/make_public_stubs.py.
from .app.report import *  # noqa: F403
from .app.report import __all__ as __all__
