"""DICOM files through the command line: enhanced multi-frame images (functional groups), RT Dose grids and single
slices give the same (slices, rows, columns) volume and RAS affine as a classic series of the same anatomy; several
volumes in one file are refused unless --volume-index picks one; the size limit is checked from the header."""

from __future__ import annotations

import time
import tracemalloc
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from ndcam.app import cli
from ndcam.app.io import load_input
from ndcam.core.errors import InputError
from tests import cli_models
from tests.test_io_volumes import anatomy, write_dicom_series

pydicom = pytest.importorskip("pydicom")
nib = pytest.importorskip("nibabel")
from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.sequence import Sequence  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian, generate_uid  # noqa: E402

ENHANCED_MR = "1.2.840.10008.5.1.4.1.1.4.1"
FRAME_CONTENT = 0x00209111
STACK_ID, IN_STACK, TEMPORAL = 0x00209056, 0x00209057, 0x00209128


@pytest.fixture()
def work(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def explain(path, *extra, out="out"):
    cli_models.SEEN.clear()
    assert cli.main(["explain", "--model", "tests.cli_models:rec3d", "--input", str(path), "--out", out,
                     "--max-pictures", "0", *extra]) == 0
    return cli_models.first_input()


def refused(path, *extra, capsys):
    assert cli.main(["explain", "--model", "tests.cli_models:rec3d", "--input", str(path), "--out", "refused",
                     *extra]) == 2
    return capsys.readouterr().err


def oblique(a=0.3, b=-0.2, c=0.5):
    """A rotation: its first two columns are the row and column directions of an oblique plane."""
    ca, sa, cb, sb, cc, sc = np.cos(a), np.sin(a), np.cos(b), np.sin(b), np.cos(c), np.sin(c)
    rx = np.array([[1, 0, 0], [0, ca, -sa], [0, sa, ca]])
    ry = np.array([[cb, 0, sb], [0, 1, 0], [-sb, 0, cb]])
    rz = np.array([[cc, -sc, 0], [sc, cc, 0], [0, 0, 1]])
    r = rz @ ry @ rx
    return tuple(np.round(np.concatenate([r[:, 0], r[:, 1]]), 12))


def seq(**attrs):
    item = Dataset()
    for k, v in attrs.items():
        setattr(item, k, v)
    return Sequence([item])


def write_enhanced(path, vol, *, spacing=(0.7, 0.8), step=2.5, origin=(-50.0, 30.0, 12.0), iop=(1, 0, 0, 0, 1, 0),
                   slopes=(2.0,), intercepts=(-1024.0,), shared=True, stored=None, times=1, frame_iops=None,
                   dimensions=True, signed=False):
    """Write an Enhanced MR file holding ``vol`` (T*S, R, C) raw values: ``times`` time points of S slices each.

    Stored frame j holds slice ``stored[j]`` (slice k = time k // S, position k % S at origin + normal * step * pos).
    ``slopes``/``intercepts``: one value (shared group) or one per slice k (per-frame groups). ``shared``: pixel
    measures and orientation in the shared group (else repeated per frame). ``frame_iops``: an orientation per slice k.
    """
    n, rows, cols = vol.shape
    s = n // times
    stored = np.arange(n) if stored is None else np.asarray(stored)
    iop = np.asarray(iop, float)
    normal = np.cross(iop[:3], iop[3:])
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ENHANCED_MR
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = ENHANCED_MR, meta.MediaStorageSOPInstanceUID
    ds.SeriesInstanceUID, ds.Modality = generate_uid(), "MR"
    ds.NumberOfFrames, ds.Rows, ds.Columns = n, rows, cols
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, int(signed)
    measures = seq(PixelSpacing=list(spacing), SliceThickness=step, SpacingBetweenSlices=step)
    orient = seq(ImageOrientationPatient=[float(v) for v in iop])
    shared_item = Dataset()
    if shared:
        shared_item.PixelMeasuresSequence = measures
        if frame_iops is None:
            shared_item.PlaneOrientationSequence = orient
    if len(slopes) == 1:
        shared_item.PixelValueTransformationSequence = seq(RescaleSlope=slopes[0], RescaleIntercept=intercepts[0],
                                                           RescaleType="US")
    ds.SharedFunctionalGroupsSequence = Sequence([shared_item])
    if dimensions:
        dims = []
        for pointer in (STACK_ID, IN_STACK) + ((TEMPORAL,) if times > 1 else ()):
            d = Dataset()
            d.DimensionIndexPointer, d.FunctionalGroupPointer = pointer, FRAME_CONTENT
            dims.append(d)
        ds.DimensionIndexSequence = Sequence(dims)
    per = []
    for j in range(n):
        k = int(stored[j])
        t, pos = divmod(k, s)
        item = Dataset()
        content = dict(StackID="1", InStackPositionNumber=pos + 1)
        if dimensions:
            content["DimensionIndexValues"] = [1, pos + 1] + ([t + 1] if times > 1 else [])
        if times > 1:
            content["TemporalPositionIndex"] = t + 1
        item.FrameContentSequence = seq(**content)
        frame_iop = np.asarray(frame_iops[k], float) if frame_iops is not None else iop
        frame_normal = np.cross(frame_iop[:3], frame_iop[3:]) if frame_iops is not None else normal
        item.PlanePositionSequence = seq(ImagePositionPatient=[float(v) for v in np.asarray(origin) +
                                                               frame_normal * step * pos])
        if not shared:
            item.PixelMeasuresSequence = measures
        if frame_iops is not None or not shared:
            item.PlaneOrientationSequence = seq(ImageOrientationPatient=[float(v) for v in frame_iop])
        if len(slopes) > 1:
            item.PixelValueTransformationSequence = seq(RescaleSlope=slopes[k], RescaleIntercept=intercepts[k],
                                                        RescaleType="US")
        per.append(item)
    ds.PerFrameFunctionalGroupsSequence = Sequence(per)
    ds.PixelData = vol[stored].astype(np.int16 if signed else np.uint16).tobytes()
    ds.save_as(str(path), enforce_file_format=True)
    return path


def expected_ras(origin, iop, spacing, step, k, r, c):
    iop = np.asarray(iop, float)
    row, col = iop[:3], iop[3:]
    lps = np.asarray(origin) + np.cross(row, col) * step * k + row * spacing[1] * c + col * spacing[0] * r
    return lps * np.array([-1, -1, 1])


def check_affine(affine, origin, iop, spacing, step, shape):
    s, r, c = shape
    for k, i, j in [(0, 0, 0), (s - 1, r - 1, c - 1), (s // 2, 1, c - 2), (1 % s, r // 2, 0)]:
        np.testing.assert_allclose((affine @ [k, i, j, 1])[:3], expected_ras(origin, iop, spacing, step, k, i, j),
                                   atol=1e-9)


def raw_volume(shape=(6, 9, 11)):
    return (anatomy(shape) * 10).astype(np.uint16)


@pytest.mark.parametrize("shared", [True, False], ids=["shared-groups", "per-frame-groups"])
@pytest.mark.parametrize("iop", [(1, 0, 0, 0, 1, 0), oblique()], ids=["axial", "oblique"])
def test_enhanced_file_out_of_order_gives_sorted_volume_and_affine(work, shared, iop):
    raw = raw_volume()
    stored = np.random.default_rng(1).permutation(len(raw))  # frames stored out of spatial order
    assert not (stored == np.arange(len(raw))).all()
    origin, spacing, step = (-50.0, 30.0, 12.0), (0.7, 0.8), 2.5
    write_enhanced(work / "e.dcm", raw, iop=iop, shared=shared, stored=stored, origin=origin)
    got = explain("e.dcm")
    assert got.shape == (1, 1) + raw.shape and got.dtype == torch.float32
    np.testing.assert_array_equal(got[0, 0].numpy(), raw.astype(np.float32) * 2 - 1024)
    _, info = load_input("e.dcm")
    check_affine(info.affine, origin, iop, spacing, step, raw.shape)
    assert info.source == "dicom" and info.kind == "volume"
    np.testing.assert_allclose(info.zooms, (step, *spacing))
    maps = nib.load(work / "out" / "maps.nii.gz")
    assert maps.shape == raw.shape and np.allclose(maps.affine, info.affine)


def test_rescale_per_frame_follows_its_frame(work):
    raw = raw_volume((5, 7, 8))
    slopes = (1.0, 0.5, 2.0, 3.0, 0.25)
    intercepts = (0.0, -10.0, 5.5, -1000.0, 7.0)
    stored = np.array([3, 0, 4, 1, 2])
    write_enhanced(work / "r.dcm", raw, slopes=slopes, intercepts=intercepts, stored=stored)
    got = explain("r.dcm")
    want = np.stack([raw[k].astype(np.float64) * slopes[k] + intercepts[k] for k in range(len(raw))])
    np.testing.assert_allclose(got[0, 0].numpy(), want, rtol=1e-6, atol=1e-4)


def test_signed_pixels(work):
    raw = (anatomy((4, 6, 5)) * 10).astype(np.int16) - 500
    write_enhanced(work / "s.dcm", raw, signed=True, slopes=(1.0,), intercepts=(0.0,))
    got = explain("s.dcm")
    assert got.min() < 0
    np.testing.assert_array_equal(got[0, 0].numpy(), raw.astype(np.float32))


def test_one_frame_enhanced_file(work):
    raw = raw_volume((1, 9, 11))
    iop = oblique(0.1, 0.2, 0.3)
    write_enhanced(work / "one.dcm", raw, iop=iop, step=3.0)
    got = explain("one.dcm")
    assert got.shape == (1, 1, 1, 9, 11)
    np.testing.assert_array_equal(got[0, 0].numpy(), raw * 2.0 - 1024)
    _, info = load_input("one.dcm")
    check_affine(info.affine, (-50.0, 30.0, 12.0), iop, (0.7, 0.8), 3.0, raw.shape)  # slice step = thickness


@pytest.mark.parametrize("iop", [(0, 1, 0, 0, 0, -1), oblique()], ids=["sagittal", "oblique"])
def test_classic_series_and_enhanced_file_give_the_same_volume_and_affine(work, iop):
    raw = raw_volume()
    write_dicom_series(work / "series", raw, (0.7, 0.8), 2.5, (-50.0, 30.0, 12.0), iop)
    write_enhanced(work / "e.dcm", raw, iop=iop, stored=np.random.default_rng(3).permutation(len(raw)))
    x_series, i_series = load_input(str(work / "series"))
    x_file, i_file = load_input("e.dcm")
    assert torch.equal(x_series, x_file)
    np.testing.assert_allclose(i_file.affine, i_series.affine, atol=1e-9)
    np.testing.assert_allclose(i_file.zooms, i_series.zooms)
    series_maps, file_maps = explain(str(work / "series"), out="o_series"), explain("e.dcm", out="o_file")
    assert torch.equal(series_maps, file_maps)
    a, b = nib.load(work / "o_series" / "maps.nii.gz"), nib.load(work / "o_file" / "maps.nii.gz")
    assert np.allclose(a.affine, b.affine) and np.array_equal(np.asarray(a.dataobj), np.asarray(b.dataobj))


def test_folder_holding_one_enhanced_file_reads_it(work):
    raw = raw_volume((4, 6, 7))
    (work / "f").mkdir()
    write_enhanced(work / "f" / "IMG0001", raw)  # no suffix: found by its DICM preamble
    (work / "f" / "notes.txt").write_text("not DICOM")
    got = explain(str(work / "f"))
    np.testing.assert_array_equal(got[0, 0].numpy(), raw * 2.0 - 1024)
    got_file = explain(str(work / "f" / "IMG0001"))
    assert torch.equal(got, got_file)


def test_two_time_points_refused_unless_one_is_picked(work, capsys):
    raw = np.concatenate([raw_volume((4, 6, 7)), raw_volume((4, 6, 7)) + 3])
    write_enhanced(work / "t.dcm", raw, times=2, stored=np.random.default_rng(5).permutation(8))
    err = refused("t.dcm", capsys=capsys)
    assert "2 volumes" in err and "TemporalPositionIndex" in err and "--volume-index" in err
    second = explain("t.dcm", "--volume-index", "1")
    np.testing.assert_array_equal(second[0, 0].numpy(), raw[4:] * 2.0 - 1024)
    first = explain("t.dcm", "--volume-index", "0")
    np.testing.assert_array_equal(first[0, 0].numpy(), raw[:4] * 2.0 - 1024)
    assert "out of range" in refused("t.dcm", "--volume-index", "2", capsys=capsys)


def test_time_points_without_dimension_index_are_told_apart_by_frame_content(work, capsys):
    raw = np.concatenate([raw_volume((3, 5, 6)), raw_volume((3, 5, 6)) + 1])
    write_enhanced(work / "t.dcm", raw, times=2, dimensions=False)
    assert "TemporalPositionIndex" in refused("t.dcm", capsys=capsys)
    np.testing.assert_array_equal(explain("t.dcm", "--volume-index", "1")[0, 0].numpy(), raw[3:] * 2.0 - 1024)


def test_two_orientations_refused_unless_one_is_picked(work, capsys):
    raw = raw_volume((6, 5, 5))
    axial, coronal = (1, 0, 0, 0, 1, 0), (1, 0, 0, 0, 0, -1)
    write_enhanced(work / "o.dcm", raw, frame_iops=[axial] * 3 + [coronal] * 3, dimensions=False)
    # positions 0..5 along each frame's own normal: slices 0-2 axial, 3-5 coronal
    err = refused("o.dcm", capsys=capsys)
    assert "2 volumes" in err and "orientation" in err and "--volume-index" in err
    got = explain("o.dcm", "--volume-index", "1")
    np.testing.assert_array_equal(got[0, 0].numpy(), raw[3:] * 2.0 - 1024)
    _, info = load_input("o.dcm", volume_index=1)
    start = np.array([-50.0, 30.0, 12.0]) + np.array([0, 1, 0]) * 2.5 * 3  # coronal normal = (0, 1, 0)
    check_affine(info.affine, start, coronal, (0.7, 0.8), 2.5, (3, 5, 5))
    assert any("2 volumes" in n and "orientation" in n for n in info.notes)


def test_frames_at_one_position_refused(work, capsys):
    raw = raw_volume((4, 5, 6))
    write_enhanced(work / "d.dcm", raw, step=0.0, dimensions=False)
    assert "same position" in refused("d.dcm", capsys=capsys)


def test_uneven_slices_refused(work, capsys):
    raw = raw_volume((4, 5, 6))
    path = write_enhanced(work / "u.dcm", raw)
    ds = pydicom.dcmread(path)
    ds.PerFrameFunctionalGroupsSequence[3].PlanePositionSequence[0].ImagePositionPatient = [-50.0, 30.0, 12.0 + 2.5 * 5]
    ds.save_as(path)
    assert "not evenly spaced" in refused("u.dcm", capsys=capsys)


def test_multiframe_without_positions_refused(work, capsys):
    raw = raw_volume((3, 5, 6))
    path = write_enhanced(work / "c.dcm", raw)
    ds = pydicom.dcmread(path)
    del ds.PerFrameFunctionalGroupsSequence
    del ds.SharedFunctionalGroupsSequence
    del ds.DimensionIndexSequence
    ds.FrameTime, ds.FrameIncrementPointer = 40.0, 0x00181063
    ds.save_as(path)
    err = refused("c.dcm", capsys=capsys)
    assert "3 frames without a patient position" in err and "FrameTime" in err


def test_size_limit_checked_from_the_header_before_decoding(work, capsys, monkeypatch):
    import pydicom.pixels

    raw = raw_volume((600, 1, 1))
    path = write_enhanced(work / "big.dcm", raw, dimensions=False)
    ds = pydicom.dcmread(path)
    ds.Rows = ds.Columns = 1024  # the header promises 600 x 1024 x 1024 16-bit pixels (2.3 GiB as float32)
    ds.save_as(path)
    assert path.stat().st_size < 2_000_000
    with monkeypatch.context() as m:
        m.setattr(pydicom.pixels, "iter_pixels", lambda *a, **k: pytest.fail("pixels decoded"))
        tracemalloc.start()
        t0 = time.perf_counter()
        err = refused("big.dcm", capsys=capsys)
        seconds = time.perf_counter() - t0
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert "600x1024x1024" in err and "2.3 GiB" in err and "more than the limit" in err and "--max-bytes" in err
    assert seconds < 10 and peak < 64 * 1024**2, (seconds, peak)
    small = write_enhanced(work / "small.dcm", raw_volume((4, 6, 7)))
    assert "more than the limit" in refused(small, "--max-bytes", "600", capsys=capsys)  # 4*6*7*4 = 672 bytes
    explain(small, "--max-bytes", "672")


def test_classic_series_with_a_missing_slice_refused(work, capsys):
    write_dicom_series(work / "series", raw_volume((5, 4, 5)))
    files = sorted((work / "series").iterdir())
    ds = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    middle = next(f for f, d in zip(files, ds) if abs(float(d.ImagePositionPatient[2]) - (12.0 + 2.5 * 2)) < 1e-6)
    middle.unlink()
    assert "not evenly spaced" in refused(work / "series", capsys=capsys)


def test_volume_index_refused_for_a_classic_series(work, capsys):
    write_dicom_series(work / "series", raw_volume((3, 4, 5)))
    assert "does not apply" in refused(work / "series", "--volume-index", "0", capsys=capsys)


def bundled(name):
    from pydicom.data import get_testdata_file

    with warnings.catch_warnings():  # files fetched from the internet warn (and are None) offline
        warnings.simplefilter("ignore")
        try:
            return get_testdata_file(name)
        except Exception:  # noqa: BLE001 - a download that failed
            return None


def test_pydicom_rt_dose_grid_file(work):
    src = bundled("rtdose.dcm")
    if src is None:  # pragma: no cover
        pytest.skip("pydicom test files not installed")
    ds = pydicom.dcmread(src)
    got = explain(src)
    assert got.shape == (1, 1, 15, 10, 10)
    np.testing.assert_allclose(got[0, 0].numpy(), ds.pixel_array * float(ds.DoseGridScaling), rtol=1e-6)
    _, info = load_input(src)
    ipp, offsets = np.asarray(ds.ImagePositionPatient, float), np.asarray(ds.GridFrameOffsetVector, float)
    for k in (0, 7, 14):
        np.testing.assert_allclose((info.affine @ [k, 2, 3, 1])[:3],
                                   (ipp + [30.0, 20.0, offsets[k]]) * [-1, -1, 1], atol=1e-9)
    for other in ("rtdose_expb.dcm", "rtdose_rle.dcm"):  # big endian, RLE: the same volume
        path = bundled(other)
        if path is not None:
            assert torch.equal(load_input(path)[0], got), other


def test_pydicom_single_slice_file_equals_the_one_slice_folder(work):
    src = bundled("CT_small.dcm")
    if src is None:  # pragma: no cover
        pytest.skip("pydicom test files not installed")
    (work / "one").mkdir()
    (work / "one" / "CT_small.dcm").write_bytes(Path(src).read_bytes())
    x_file, i_file = load_input(src)
    x_dir, i_dir = load_input(str(work / "one"))
    assert x_file.shape == (1, 1, 1, 128, 128) and torch.equal(x_file, x_dir)
    np.testing.assert_allclose(i_file.affine, i_dir.affine)


@pytest.mark.parametrize("name, message", [("examples_ybr_color.dcm", "colour pixels"),
                                           ("liver_1frame.dcm", "PerFrameFunctionalGroupsSequence has 3 items"),
                                           ("JPEG-lossy.dcm", "no ImagePositionPatient/ImageOrientationPatient")])
def test_pydicom_files_ndcam_cannot_place_are_refused(work, name, message):
    src = bundled(name)
    if src is None:  # pragma: no cover
        pytest.skip(f"pydicom test file {name} not installed")
    with pytest.raises(InputError, match=message):
        load_input(src)


def test_pydicom_enhanced_mr_test_file(work):
    src = bundled("emri_small.dcm")  # fetched from the internet by pydicom: absent offline
    if src is None:
        pytest.skip("emri_small.dcm is not shipped with pydicom (downloaded on demand)")
    ds = pydicom.dcmread(src)
    per = ds.get("PerFrameFunctionalGroupsSequence") or []
    placed = bool(per) and all("PlanePositionSequence" in f for f in per)
    if not placed:
        with pytest.raises(InputError, match="position"):
            load_input(src)
        return
    x, info = load_input(src)
    assert x.shape[2:] == (int(ds.NumberOfFrames), ds.Rows, ds.Columns)
    shared = (ds.get("SharedFunctionalGroupsSequence") or [Dataset()])[0]
    frames = []
    for item, arr in zip(per, ds.pixel_array.astype(np.float64)):
        pvt = item.get("PixelValueTransformationSequence") or shared.get("PixelValueTransformationSequence")
        slope = float(pvt[0].RescaleSlope) if pvt else float(ds.get("RescaleSlope", 1.0))
        inter = float(pvt[0].RescaleIntercept) if pvt else float(ds.get("RescaleIntercept", 0.0))
        frames.append(arr * slope + inter)
    for k, got in enumerate(x[0, 0].numpy().astype(np.float64)):  # every slice is one of the file's frames
        assert any(np.allclose(got, f, rtol=1e-6) for f in frames), k
