"""Images through the command line: the model receives what Pillow says the file holds (scaled to [0, 1])."""

from __future__ import annotations

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
