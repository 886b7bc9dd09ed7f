"""The engine: everything a CAM needs, on any spatial rank, and nothing that draws or reads files.

``ranks`` (the Conv/BatchNorm/pooling tables by rank), ``ops`` (interpolation, normalization and the CAM algebra over
"the spatial axes"), ``capture`` (hooks, the lock on a model's modules, model state), ``progress`` (the rule for
progress bars), ``layers`` (layer specs and the automatic choice), ``targets`` (what is explained, resolved once per
call), ``detection`` (box targets), ``explanation`` (the result), ``smoothing`` (augmentation and eigen smoothing),
``methods/`` (one family of methods per module on the protocol in ``methods/base.py``) and ``explain`` (the one-call
pipeline).

Modules here import only each other, torch, numpy, scipy and einops at module level; the layer rule is checked by
``tests/test_layout.py``.
"""
