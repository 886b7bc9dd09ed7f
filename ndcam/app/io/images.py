"""Photos and other raster images through Pillow.

What the model receives (``(1, C, H, W)`` float32):

* EXIF orientation is applied first (``ImageOps.exif_transpose``): the array is upright as a viewer shows it;
* palette images (``P``, ``PA``) are converted through their palette (never palette indices) to RGB;
* grey (``1``, ``L``, ``I;16``, ``I``, ``F``) gives 1 channel, colour (``RGB``, ``CMYK``, ``YCbCr``, ...) 3 channels;
* alpha (``LA``, ``RGBA``, ``PA``, palette transparency) is **dropped**: the stored colour values are kept as they are,
  as ``Image.convert("RGB")`` does (no compositing on a background);
* scaling: 8-bit by 1/255, 16-bit (``I;16``) by 1/65535, 32-bit integer ``I`` by 1/65535 when its values fit in 16
  bits (Pillow's mode for 16-bit PNGs) else 1/(2^31-1), float ``F`` as stored.
  Pillow holds 16-bit colour PNGs as 8-bit RGB; their precision is what Pillow gives.
* ``channels=1`` on colour uses ITU-R 601-2 luma (Pillow's ``L`` weights) in float; ``channels=3`` on grey repeats it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ...core.errors import InputError

__all__ = ["read_image"]

GREY = {"1", "L", "I;16", "I;16L", "I;16B", "I;16N", "I", "F", "LA", "La"}


def read_image(path: str, channels: int | None = None) -> tuple[np.ndarray, dict]:
    """Read an image into ``(C, H, W)`` float32 (see the module doc); returns ``(array, facts)``."""
    try:
        from PIL import Image, ImageOps
    except ImportError as err:  # pragma: no cover - optional dependency
        raise InputError("reading images needs the optional package pillow (pip install 'ndcam[formats]')") from err
    with Image.open(path) as opened:
        im: Any = opened
        mode0 = im.mode
        im = ImageOps.exif_transpose(im)
        mode = im.mode
        had_alpha = "A" in mode or "a" in mode or (mode in ("P", "L", "RGB") and "transparency" in im.info)
        if mode in ("P", "PA"):
            im = im.convert("RGBA" if had_alpha else "RGB")
            mode = im.mode
        if mode in ("LA", "La"):
            im = im.getchannel("L")
        elif mode in ("RGBA", "RGBa"):
            im = im.convert("RGB")
        elif mode not in GREY and mode != "RGB":
            im = im.convert("RGB")
        arr = np.asarray(im)
        mode = im.mode
    if mode == "1":
        x = arr.astype(np.float32)
        scale = 1.0
    elif arr.dtype == np.uint8:
        x, scale = arr.astype(np.float32) / 255.0, 255.0
    elif arr.dtype.kind in "ui":
        big = arr.dtype.itemsize > 2 and int(arr.max(initial=0)) > 65535
        scale = float(2**31 - 1) if big else 65535.0
        x = (arr.astype(np.float64) / scale).astype(np.float32)
    else:
        x, scale = arr.astype(np.float32), 1.0
    x = x[None] if x.ndim == 2 else np.moveaxis(x, -1, 0)
    if channels is not None:
        if channels not in (1, 3):
            raise InputError(f"--channels must be 1 or 3 for images, got {channels}")
        if channels == 1 and x.shape[0] == 3:
            x = (0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2])[None].astype(np.float32)
        elif channels == 3 and x.shape[0] == 1:
            x = np.repeat(x, 3, axis=0)
    facts = {"mode": mode0, "scale": f"1/{scale:g}" if scale != 1 else "1", "alpha": "dropped" if had_alpha else None}
    return np.ascontiguousarray(x), facts
