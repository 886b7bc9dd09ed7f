# ndcam.channels for type checkers: at run time it is the module ndcam/analysis/channels (see ndcam/_layout.py).
# Written by scripts/make_public_stubs.py.
from .analysis.channels import *  # noqa: F403
from .analysis.channels import __all__ as __all__
