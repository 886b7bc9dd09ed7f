"""Explain a whole dataset into a store on disk: streaming, resumable, on one or many processes (torch.distributed).

>>> from ndcam.dataset import explain_dataset, open_explanations, summarize
"""

from .read import Explanations, open_explanations, summarize
from .run import explain_dataset
from .store import SettingsMismatchError, StoreLockedError

__all__ = ["explain_dataset", "open_explanations", "summarize", "Explanations", "SettingsMismatchError",
           "StoreLockedError"]
