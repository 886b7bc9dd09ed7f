"""Images through the command line: the model receives what the file holds (scaled to [0, 1]) -- what Pillow decodes,
and 16-bit colour PNGs at full precision through pypng (written here byte by byte, as Pillow cannot write them)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ndcam.app import cli
from tests import cli_models

PIL = pytest.importorskip("PIL")
from PIL import Image, ImageOps  # noqa: E402


@pytest.fixture()
def work(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli_models.SEEN.clear()
    return tmp_path


def explain(path, *extra, model="tests.cli_models:rec2d") -> torch.Tensor:
    cli_models.SEEN.clear()
    assert cli.main(["explain", "--model", model, "--input", str(path), "--out", "out", *extra]) == 0
    return cli_models.first_input()


def rgb(h=20, w=24, seed=0):
    return (np.random.default_rng(seed).random((h, w, 3)) * 255).astype("uint8")


def test_palette_image_goes_through_its_palette_not_indices(work):
    im = Image.fromarray(rgb()).quantize(colors=16)
    assert im.mode == "P"
    im.save("p.png")
    got = explain("p.png")
    want = np.asarray(Image.open("p.png").convert("RGB"), dtype=np.float32) / 255
    assert got.shape == (1, 3, 20, 24)
    np.testing.assert_allclose(got[0].permute(1, 2, 0).numpy(), want, atol=1e-6)
    assert got.max() <= 1 and len(np.unique(np.asarray(Image.open("p.png")))) <= 16


def test_grey_and_grey_alpha_give_one_channel_alpha_dropped(work, capsys):
    grey = rgb()[..., 0]
    alpha = np.full_like(grey, 7)
    Image.fromarray(grey, "L").save("l.png")
    Image.fromarray(np.stack([grey, alpha], -1), "LA").save("la.png")
    for f in ("l.png", "la.png"):
        got = explain(f)
        assert got.shape == (1, 1, 20, 24), f
        np.testing.assert_allclose(got[0, 0].numpy(), grey / 255.0, atol=1e-6)
    assert "alpha channel dropped" in capsys.readouterr().err


def test_rgb_and_rgba_give_three_channels(work):
    a = rgb()
    Image.fromarray(a).save("c.png")
    Image.fromarray(np.concatenate([a, np.full(a.shape[:2] + (1,), 3, "uint8")], -1), "RGBA").save("ca.png")
    for f in ("c.png", "ca.png"):
        got = explain(f)
        np.testing.assert_allclose(got[0].permute(1, 2, 0).numpy(), a / 255.0, atol=1e-6)


def test_sixteen_bit_png_scaled_by_65535(work):
    a = (np.random.default_rng(1).random((12, 10)) * 65535).astype("uint16")
    a[0, 0] = 65535
    Image.fromarray(a).save("g16.png")
    stored = np.asarray(Image.open("g16.png"))
    assert stored.max() == 65535
    got = explain("g16.png")
    np.testing.assert_allclose(got[0, 0].numpy(), stored / 65535.0, rtol=1e-6)
    assert float(got.max()) == 1.0


def test_exif_orientation_is_applied(work):
    a = np.zeros((16, 40, 3), "uint8")
    a[:4, :8] = 255  # a bright block in the stored top-left corner
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    Image.fromarray(a).save("r.jpg", exif=exif.tobytes(), quality=100)
    upright = np.asarray(ImageOps.exif_transpose(Image.open("r.jpg")).convert("RGB"), dtype=np.float32) / 255
    got = explain("r.jpg")
    assert got.shape == (1, 3, 40, 16)  # width and height swapped as a viewer shows it
    np.testing.assert_allclose(got[0].permute(1, 2, 0).numpy(), upright, atol=1e-6)
    assert got[0, :, :8, -4:].mean() > 0.8  # the block is now top-right


def test_channels_resize_mean_std_and_preprocess(work):
    a = rgb()
    Image.fromarray(a).save("c.png")
    luma = explain("c.png", "--channels", "1")
    assert luma.shape == (1, 1, 20, 24)
    pil_l = np.asarray(Image.open("c.png").convert("L"), dtype=np.float32) / 255
    assert np.abs(luma[0, 0].numpy() - pil_l).max() <= 1 / 255 + 1e-6  # Pillow's weights, without its rounding
    Image.fromarray(a[..., 0], "L").save("l.png")
    three = explain("l.png", "--channels", "3")
    assert three.shape == (1, 3, 20, 24) and torch.equal(three[0, 0], three[0, 2])
    small = explain("c.png", "--resize", "10,12")
    assert small.shape == (1, 3, 10, 12)
    norm = explain("c.png", "--mean", "0.5,0.4,0.3", "--std", "0.2,0.25,0.5")
    want = (a / 255.0 - np.array([0.5, 0.4, 0.3])) / np.array([0.2, 0.25, 0.5])
    np.testing.assert_allclose(norm[0].permute(1, 2, 0).numpy(), want, atol=1e-5)
    doubled = explain("c.png", "--preprocess", "tests.cli_models:double")
    np.testing.assert_allclose(doubled[0].permute(1, 2, 0).numpy(), 2 * (a / 255.0), atol=1e-5)


@pytest.mark.parametrize("args, message", [(["--mean", "0.5,0.5"], "--mean gives 2 values for 3 channels"),
                                           (["--resize", "0,3"], "--resize"),
                                           (["--channels", "2"], "--channels must be 1 or 3")])
def test_bad_preprocessing_flags(work, capsys, args, message):
    Image.fromarray(rgb()).save("c.png")
    assert cli.main(["explain", "--model", "tests.cli_models:rec2d", "--input", "c.png", "--out", "o", *args]) == 2
    assert message in capsys.readouterr().err


def test_real_photo_from_scikit_image(work):
    data = pytest.importorskip("skimage.data")
    try:
        photo = data.astronaut()[::8, ::8]
    except Exception:  # pragma: no cover - data files not shipped
        pytest.skip("skimage sample photos unavailable")
    Image.fromarray(photo).save("astro.png")
    got = explain("astro.png")
    np.testing.assert_allclose(got[0].permute(1, 2, 0).numpy(), photo / 255.0, atol=1e-6)
    assert (work / "out" / "sample0.png").stat().st_size > 1000


# --- PNGs written byte by byte (Pillow cannot write 16-bit colour): every colour type, filter and interlacing --------

PNG_SIG = b"\x89PNG\r\n\x1a\n"
ADAM7 = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)]  # x, y, dx, dy
PLANES = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}


def _chunk(kind: bytes, data: bytes) -> bytes:
    import struct
    import zlib

    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _filtered(rows: np.ndarray, bpp: int) -> bytes:
    """Scanlines with filter type row % 5 (None, Sub, Up, Average, Paeth) so decoders undo every filter."""
    out = []
    prev = np.zeros(rows.shape[1], np.int32)
    for r, cur in enumerate(rows.astype(np.int32)):
        left = np.concatenate([np.zeros(bpp, np.int32), cur[:-bpp]])
        upleft = np.concatenate([np.zeros(bpp, np.int32), prev[:-bpp]])
        p = left + prev - upleft
        pa, pb, pc = np.abs(p - left), np.abs(p - prev), np.abs(p - upleft)
        paeth = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, prev, upleft))
        ftype = r % 5
        pred = [0, left, prev, (left + prev) // 2, paeth][ftype]
        out.append(bytes([ftype]) + ((cur - pred) % 256).astype(np.uint8).tobytes())
        prev = cur
    return b"".join(out)


def write_png(path, a, depth, colour_type, *, palette=None, interlace=False, exif=None):
    """Write ``a`` ((H, W, planes) values, or (H, W) palette indices) as a PNG of ``depth`` bits."""
    import struct
    import zlib

    a = np.asarray(a)
    a = a[..., None] if a.ndim == 2 else a
    h, w, planes = a.shape
    assert planes == PLANES[colour_type]
    bpp = max(1, planes * depth // 8)
    body = b""
    for x0, y0, dx, dy in (ADAM7 if interlace else [(0, 0, 1, 1)]):
        sub = a[y0::dy, x0::dx]
        if sub.size == 0:
            continue
        raw = np.frombuffer(sub.astype(">u2" if depth == 16 else "u1").tobytes(), np.uint8).reshape(sub.shape[0], -1)
        body += _filtered(raw, bpp)
    data = PNG_SIG + _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, colour_type, 0, 0, int(interlace)))
    if exif is not None:
        data += _chunk(b"eXIf", exif.tobytes()[6:])  # the TIFF block without Pillow's "Exif\0\0" prefix
    if palette is not None:
        data += _chunk(b"PLTE", np.asarray(palette, np.uint8).tobytes())
    data += _chunk(b"IDAT", zlib.compress(body)) + _chunk(b"IEND", b"")
    Path(path).write_bytes(data)
    return path


def values(shape, depth, seed=0):
    g = np.random.default_rng(seed)
    top = 65535 if depth == 16 else 255
    a = g.integers(0, top + 1, size=shape)
    a.flat[0], a.flat[-1] = top, 0
    if depth == 16:  # values whose low byte matters: 8-bit precision cannot give these back
        a = (a & ~0xFF) | g.integers(1, 255, size=shape)
    return a


@pytest.fixture()
def pypng():
    png = pytest.importorskip("png", reason="pypng (optional) decodes 16-bit colour PNGs")
    assert hasattr(png, "Reader")
    return png


@pytest.mark.parametrize("colour_type, keep, channels", [(2, slice(0, 3), 3), (6, slice(0, 3), 3), (4, slice(0, 1), 1)],
                         ids=["RGB16", "RGBA16", "LA16"])
@pytest.mark.parametrize("interlace", [False, True], ids=["plain", "adam7"])
def test_sixteen_bit_colour_png_at_full_precision(work, capsys, pypng, colour_type, keep, channels, interlace):
    a = values((13, 11, PLANES[colour_type]), 16, seed=colour_type)
    write_png("c16.png", a, 16, colour_type, interlace=interlace)
    assert Image.open("c16.png").mode in ("RGB", "RGBA")  # what Pillow holds: 8 bits a sample
    got = explain("c16.png")
    want = a[..., keep].astype(np.float64) / 65535.0
    assert got.shape == (1, channels, 13, 11)
    np.testing.assert_allclose(got[0].permute(1, 2, 0).numpy(), want, rtol=0, atol=1e-7)
    assert np.abs(got[0].permute(1, 2, 0).numpy() - np.round(want * 255) / 255).max() > 1e-4  # not 8-bit values
    err = capsys.readouterr().err
    assert ("alpha channel dropped" in err) == (colour_type != 2)


def test_sixteen_bit_colour_png_exif_orientation(work, pypng):
    a = values((6, 10, 3), 16, seed=3)
    exif = Image.Exif()
    for orientation in range(1, 9):
        exif[0x0112] = orientation
        write_png(f"o{orientation}.png", a, 16, 2, exif=exif)
        got = explain(f"o{orientation}.png")[0].permute(1, 2, 0).numpy()
        # the 8-bit image Pillow makes upright, and the full-precision values moved the same way
        upright8 = np.asarray(ImageOps.exif_transpose(Image.open(f"o{orientation}.png")).convert("RGB"), np.float64)
        assert got.shape == upright8.shape, orientation
        np.testing.assert_array_equal(np.floor(got * 65535.0 + 0.5).astype(np.int64) >> 8, upright8, str(orientation))
    np.testing.assert_allclose(explain("o6.png")[0].permute(1, 2, 0).numpy(), np.rot90(a, -1) / 65535.0, atol=1e-7)


def test_sixteen_bit_colour_png_without_pypng_warns_and_keeps_the_high_byte(work, capsys, monkeypatch):
    import sys

    from ndcam.app.io import load_input
    from ndcam.core.errors import PrecisionWarning

    monkeypatch.setitem(sys.modules, "png", None)  # import png -> ImportError
    rgb16 = values((7, 9, 3), 16, seed=1)
    la16 = values((7, 9, 2), 16, seed=2)
    write_png("rgb16.png", rgb16, 16, 2)
    write_png("la16.png", la16, 16, 4)
    with pytest.warns(PrecisionWarning, match="pypng"):
        x, info = load_input("rgb16.png")
    np.testing.assert_allclose(x[0].permute(1, 2, 0).numpy(), (rgb16 >> 8) / 255.0, atol=1e-7)
    assert any("8-bit" in n and "pypng" in n for n in info.notes)
    with pytest.warns(PrecisionWarning):
        x, info = load_input("la16.png")
    assert x.shape == (1, 1, 7, 9)  # grey + alpha is one channel, not Pillow's RGBA with the grey repeated
    np.testing.assert_allclose(x[0, 0].numpy(), (la16[..., 0] >> 8) / 255.0, atol=1e-7)
    with pytest.warns(PrecisionWarning):
        assert cli.main(["explain", "--model", "tests.cli_models:rec2d", "--input", "rgb16.png", "--out", "o"]) == 0
    assert "read at 8-bit (pypng is not installed)" in capsys.readouterr().err  # the note


@pytest.mark.parametrize("depth, colour_type, interlace", [(8, 0, False), (8, 2, False), (8, 6, True), (8, 4, False),
                                                           (8, 3, False), (8, 3, True), (16, 0, False), (16, 0, True)],
                         ids=["L8", "RGB8", "RGBA8-adam7", "LA8", "P8", "P8-adam7", "L16", "L16-adam7"])
def test_other_png_variants_written_byte_by_byte(work, depth, colour_type, interlace):
    h, w = 9, 14
    if colour_type == 3:
        palette = values((16, 3), 8, seed=5)
        idx = values((h, w), 8, seed=6) % 16
        write_png("v.png", idx, 8, 3, palette=palette, interlace=interlace)
        want = palette[idx] / 255.0
    else:
        a = values((h, w, PLANES[colour_type]), depth, seed=7)
        write_png("v.png", a, depth, colour_type, interlace=interlace)
        want = a[..., :1 if colour_type in (0, 4) else 3] / (65535.0 if depth == 16 else 255.0)
    got = explain("v.png")
    np.testing.assert_allclose(got[0].permute(1, 2, 0).numpy(), want, atol=1e-7)
