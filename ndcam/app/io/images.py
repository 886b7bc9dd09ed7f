"""Photos and other raster images through Pillow; 16-bit colour PNGs through pypng.

What the model receives (``(1, C, H, W)`` float32):

* EXIF orientation is applied first (``ImageOps.exif_transpose``): the array is upright as a viewer shows it;
* palette images (``P``, ``PA``) are converted through their palette (never palette indices) to RGB;
* grey (``1``, ``L``, ``I;16``, ``I``, ``F``) gives 1 channel, colour (``RGB``, ``CMYK``, ``YCbCr``, ...) 3 channels;
* alpha (``LA``, ``RGBA``, ``PA``, palette transparency) is **dropped**: the stored colour values are kept as they are,
  as ``Image.convert("RGB")`` does (no compositing on a background);
* scaling: 8-bit by 1/255, 16-bit (``I;16``) by 1/65535, 32-bit integer ``I`` by 1/65535 when its values fit in 16
  bits (Pillow's mode for 16-bit PNGs) else 1/(2^31-1), float ``F`` as stored.
* 16-bit colour PNGs (RGB, RGBA and grey+alpha, interlaced or not), which Pillow holds at 8 bits, are decoded at full
  precision by the optional pure-Python package pypng (``pip install "ndcam[formats]"``) and scaled by 1/65535 like
  16-bit grey, with the same EXIF orientation and alpha rules. Without pypng they are read through Pillow at 8 bits
  (the high byte of each value) with a :class:`~ndcam.core.errors.PrecisionWarning`. pypng is pure Python: about
  1-2 s per million pixels.
* ``channels=1`` on colour uses ITU-R 601-2 luma (Pillow's ``L`` weights) in float; ``channels=3`` on grey repeats it.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from ...core.errors import InputError, PrecisionWarning

__all__ = ["read_image"]

GREY = {"1", "L", "I;16", "I;16L", "I;16B", "I;16N", "I", "F", "LA", "La"}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG16_MODES = {2: "RGB;16", 4: "LA;16", 6: "RGBA;16"}  # colour type -> what the file holds


def _png_colour_type_16(path: str) -> int | None:
    """The PNG colour type (2 RGB, 4 grey+alpha, 6 RGBA) of a 16-bit colour PNG, from its IHDR chunk; else None."""
    with open(path, "rb") as f:
        head = f.read(33)
    if len(head) < 33 or head[:8] != PNG_SIGNATURE or head[12:16] != b"IHDR":
        return None
    depth, colour_type = head[24], head[25]
    return colour_type if depth == 16 and colour_type in PNG16_MODES else None


def _orient(arr: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation (1-8) to ``(H, W[, C])`` as ``ImageOps.exif_transpose`` does."""
    if orientation == 2:  # FLIP_LEFT_RIGHT
        return arr[:, ::-1]
    if orientation == 3:  # ROTATE_180
        return arr[::-1, ::-1]
    if orientation == 4:  # FLIP_TOP_BOTTOM
        return arr[::-1]
    if orientation == 5:  # TRANSPOSE
        return arr.swapaxes(0, 1)
    if orientation == 6:  # ROTATE_270 (counter-clockwise) = 90 degrees clockwise
        return np.rot90(arr, -1)
    if orientation == 7:  # TRANSVERSE
        return arr[::-1, ::-1].swapaxes(0, 1)
    if orientation == 8:  # ROTATE_90 (counter-clockwise)
        return np.rot90(arr, 1)
    return arr


def _read_png16(path: str, im: Any, colour_type: int) -> np.ndarray | None:
    """A 16-bit colour PNG at full precision through pypng, upright, alpha dropped: ``(H, W, C)`` uint16 (C = 1 or
    3). None when pypng is not installed.
    """
    try:
        import png
    except ImportError:
        return None
    if not hasattr(png, "Reader"):  # another module called png
        return None
    width, height, pixels, info = png.Reader(filename=path).read_flat()
    planes = int(info["planes"])
    if int(info["bitdepth"]) != 16 or planes != {2: 3, 4: 2, 6: 4}[colour_type]:
        raise InputError(f"{path!r}: pypng reads {planes} planes of {info['bitdepth']} bits, the header says a 16-bit "
                         f"{PNG16_MODES[colour_type]} image")
    arr = np.frombuffer(pixels, dtype=np.uint16).reshape(height, width, planes)
    arr = arr[..., :1] if colour_type == 4 else arr[..., :3]
    return _orient(arr, int(im.getexif().get(0x0112, 1)))


def read_image(path: str, channels: int | None = None) -> tuple[np.ndarray, dict]:
    """Read an image into ``(C, H, W)`` float32 (see the module doc); returns ``(array, facts)``."""
    try:
        from PIL import Image, ImageOps
    except ImportError as err:  # pragma: no cover - optional dependency
        raise InputError("reading images needs the optional package pillow (pip install 'ndcam[formats]')") from err
    precision = None
    with Image.open(path) as opened:
        im: Any = opened
        mode0 = im.mode
        colour16 = _png_colour_type_16(path) if im.format == "PNG" else None
        full = _read_png16(path, im, colour16) if colour16 is not None else None
        if colour16 is not None:
            mode0 = PNG16_MODES[colour16]
            had_alpha = colour16 in (4, 6) or "transparency" in im.info
        if full is not None:
            arr, mode = full, "I;16"
        else:
            if colour16 is not None:
                precision = "8-bit (pypng is not installed)"
                warnings.warn(f"{path!r} is a 16-bit colour PNG ({mode0}); Pillow reads it at 8 bits (the high byte of each "
                              f"value) because the optional package pypng is not installed (pip install pypng)",
                              PrecisionWarning, stacklevel=2)
            im = ImageOps.exif_transpose(im)
            mode = im.mode
            if colour16 is None:
                had_alpha = "A" in mode or "a" in mode or (mode in ("P", "L", "RGB") and "transparency" in im.info)
            if mode in ("P", "PA"):
                im = im.convert("RGBA" if had_alpha else "RGB")
                mode = im.mode
            if colour16 == 4:  # Pillow holds 16-bit grey+alpha as RGBA with the grey repeated
                im = im.getchannel("R")
            elif mode in ("LA", "La"):
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
    facts = {"mode": mode0, "scale": f"1/{scale:g}" if scale != 1 else "1", "alpha": "dropped" if had_alpha else None,
             "precision": precision}
    return np.ascontiguousarray(x), facts
