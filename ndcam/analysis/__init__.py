"""Built on the engine: evaluation and ways of looking at many maps at once.

``metrics`` (faithfulness, localization, sanity checks), ``sweep`` (one method at successive layers), ``channels``
(a layer's most important feature maps), ``leadwise`` (maps per input channel), ``sliding`` (patch-wise explanation
of large inputs) and ``dataset/`` (whole datasets into a resumable store, across processes).

Modules here import :mod:`ndcam.core` at module level and never the application; their ``plot``/``report``
conveniences reach :mod:`ndcam.app.viz` and :mod:`ndcam.app.report` only when called.
"""
