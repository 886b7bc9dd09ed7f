"""Volumes through the command line: NIfTI as stored (file dtype, scaling), size limit before allocation, maps written
with the input's whole header, 4D choices, DICOM series."""

from __future__ import annotations

import gzip
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch

from ndcam.app import cli
from ndcam.io import load_input
from tests import cli_models

nib = pytest.importorskip("nibabel")


@pytest.fixture()
def work(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def explain(path, *extra, model="tests.cli_models:rec3d", out="out", pictures=0):
    cli_models.SEEN.clear()
    assert cli.main(["explain", "--model", model, "--input", str(path), "--out", out, "--max-pictures", str(pictures),
                     *extra]) == 0
    return cli_models.first_input()


def anatomy(shape=(10, 12, 8), seed=0):
    """A smooth blob off-centre plus noise: easy to tell orientations apart."""
    g = np.random.default_rng(seed)
    ii = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"))
    centre = np.array([s * f for s, f in zip(shape, (0.3, 0.6, 0.7))])[:, None, None, None]
    return (100 * np.exp(-((ii - centre) ** 2).sum(0) / 6.0) + g.random(shape) * 5).astype(np.float32)


def ras_image(data=None, dtype=np.int16):
    data = anatomy() if data is None else data
    affine = np.array([[1.5, 0, 0, -7.0], [0, 1.2, 0, -6.0], [0, 0, 2.0, 3.0], [0, 0, 0, 1]])
    img = nib.Nifti1Image(data, affine)
    img.header.set_data_dtype(dtype)  # stored as scaled integers (nibabel picks scl_slope/scl_inter)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=2)
    img.header.set_xyzt_units("mm", "sec")
    return img


def reoriented(img, codes=("P", "S", "L")):
    """The same anatomy stored with flipped and permuted axes (voxel order changes, world stays)."""
    ornt = nib.orientations.ornt_transform(nib.io_orientation(img.affine), nib.orientations.axcodes2ornt(codes))
    out = img.as_reoriented(ornt)
    out.set_qform(out.affine, code=1)
    out.set_sform(out.affine, code=2)
    out.header.set_xyzt_units("mm", "sec")
    return out


def check_header(written, source):
    h, s = written.header, source.header
    assert written.shape == source.shape[:3]
    assert np.allclose(written.affine, source.affine)
    assert int(h["qform_code"]) == int(s["qform_code"]) and int(h["sform_code"]) == int(s["sform_code"])
    assert np.allclose(h.get_qform(), s.get_qform()) and np.allclose(h.get_sform(), s.get_sform())
    assert h.get_xyzt_units() == s.get_xyzt_units()
    assert np.allclose(h.get_zooms()[:3], s.get_zooms()[:3])
    assert h.get_data_dtype().kind == "f" and h.get_data_dtype().itemsize == 4  # float32 (byte order of the input)


@pytest.mark.parametrize("orient", ["RAS", "PSL"])
def test_model_gets_the_array_as_stored_and_maps_carry_the_header(work, monkeypatch, orient):
    img = ras_image()
    if orient != "RAS":
        img = reoriented(img)
    assert "".join(nib.aff2axcodes(img.affine)) == orient
    nib.save(img, "v.nii.gz")
    back = nib.load("v.nii.gz")
    assert back.header.get_data_dtype() == np.int16 and back.dataobj.slope != 1
    monkeypatch.setattr(nib.Nifti1Image, "get_fdata", lambda *a, **k: pytest.fail("get_fdata reads float64"))
    got = explain("v.nii.gz")
    held = np.asarray(back.dataobj)  # what nibabel says the file holds (scaled)
    assert got.shape == (1, 1) + back.shape and got.dtype == torch.float32
    np.testing.assert_allclose(got[0, 0].numpy(), held, rtol=1e-6, atol=1e-4)
    maps = nib.load(work / "out" / "maps.nii.gz")
    check_header(maps, back)
    np.testing.assert_allclose(np.asarray(maps.dataobj), np.load(work / "out" / "maps.npy")[0], atol=1e-7)


def test_two_orientations_give_the_same_maps_in_world_space(work):
    ras = ras_image(dtype=np.float32)
    nib.save(ras, "ras.nii.gz")
    nib.save(reoriented(ras), "psl.nii.gz")
    explain("ras.nii.gz", model="tests.cli_models:pointwise3d", out="o_ras")
    explain("psl.nii.gz", model="tests.cli_models:pointwise3d", out="o_psl")
    m_ras = nib.load(work / "o_ras" / "maps.nii.gz")
    m_psl = nib.load(work / "o_psl" / "maps.nii.gz")
    back = nib.as_closest_canonical(m_psl)  # voxel order back to RAS using the written affine
    assert np.allclose(back.affine, m_ras.affine)
    np.testing.assert_allclose(np.asarray(back.dataobj), np.asarray(m_ras.dataobj), atol=1e-5)


def test_two_orientations_give_the_same_picture(work):
    from PIL import Image

    ras = ras_image(dtype=np.float32)
    nib.save(ras, "ras.nii.gz")
    nib.save(reoriented(ras), "psl.nii.gz")
    explain("ras.nii.gz", model="tests.cli_models:pointwise3d", out="o_ras", pictures=1)
    explain("psl.nii.gz", model="tests.cli_models:pointwise3d", out="o_psl", pictures=1)
    a = np.asarray(Image.open(work / "o_ras" / "sample0.png"), dtype=np.float32)
    b = np.asarray(Image.open(work / "o_psl" / "sample0.png"), dtype=np.float32)
    assert a.shape == b.shape
    assert np.abs(a - b).mean() < 1.0


def huge_header_file(path, shape=(1024, 1024, 1024)):
    """A small .nii.gz whose header promises ``shape`` uint8 voxels (only a few bytes of data follow)."""
    hdr = nib.Nifti1Header()
    hdr.set_data_shape(shape)
    hdr.set_data_dtype(np.uint8)
    hdr["vox_offset"] = 352
    with gzip.open(path, "wb") as f:
        f.write(hdr.binaryblock + b"\x00" * 4 + b"\x00" * 4096)


def test_oversize_volume_is_refused_fast_without_allocating(work, capsys):
    huge_header_file("huge.nii.gz")
    assert (work / "huge.nii.gz").stat().st_size < 100_000
    tracemalloc.start()
    t0 = time.perf_counter()
    code = cli.main(["explain", "--model", "tests.cli_models:rec3d", "--input", "huge.nii.gz", "--out", "o"])
    seconds = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    err = capsys.readouterr().err
    assert code == 2 and "1024x1024x1024" in err and "--max-bytes" in err and "4.0 GiB" in err
    assert seconds < 5 and peak < 64 * 1024**2, (seconds, peak)
    assert not (work / "o").exists()


def test_max_bytes_flag(work, capsys):
    nib.save(ras_image(dtype=np.float32), "v.nii")
    assert cli.main(["explain", "--model", "tests.cli_models:rec3d", "--input", "v.nii", "--out", "o",
                     "--max-bytes", "1000"]) == 2
    assert "more than the limit" in capsys.readouterr().err
    explain("v.nii", "--max-bytes", "4000")


def test_4d_nifti_channels_index_and_batch(work):
    data = np.stack([anatomy(seed=s) for s in range(3)], -1)
    img = nib.Nifti1Image(data, np.diag([2.0, 2.0, 2.0, 1.0]))
    img.header.set_xyzt_units("mm", "sec")
    img.header.set_zooms((2.0, 2.0, 2.0, 0.8))
    nib.save(img, "f.nii.gz")
    got = explain("f.nii.gz")
    assert got.shape == (1, 3, 10, 12, 8)
    np.testing.assert_allclose(got[0].numpy(), np.moveaxis(data, -1, 0), atol=1e-5)
    assert nib.load(work / "out" / "maps.nii.gz").shape == (10, 12, 8)
    one = explain("f.nii.gz", "--volume-index", "1")
    np.testing.assert_allclose(one[0, 0].numpy(), data[..., 1], atol=1e-5)
    batch = explain("f.nii.gz", "--volumes-as", "batch")
    assert batch.shape == (3, 1, 10, 12, 8)
    maps = nib.load(work / "out" / "maps.nii.gz")
    assert maps.shape == (10, 12, 8, 3) and np.allclose(maps.header.get_zooms(), (2, 2, 2, 0.8))
    assert maps.header.get_xyzt_units() == ("mm", "sec")


def test_nibabel_test_scan(work):
    from nibabel.testing import data_path

    path = f"{data_path}/anatomical.nii"
    try:
        src = nib.load(path)
    except FileNotFoundError:  # pragma: no cover
        pytest.skip("nibabel test data not installed")
    got = explain(path)
    np.testing.assert_allclose(got[0, 0].numpy(), np.asarray(src.dataobj, dtype=np.float32), rtol=1e-6)
    check_header(nib.load(work / "out" / "maps.nii.gz"), src)


def write_dicom_series(folder, vol, spacing=(0.7, 0.8), thickness=2.5, origin=(-50.0, 30.0, 12.0),
                       iop=(1, 0, 0, 0, 1, 0), slope=2.0, intercept=-1024.0):
    pydicom = pytest.importorskip("pydicom")
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir()
    row, col = np.asarray(iop[:3], float), np.asarray(iop[3:], float)
    normal = np.cross(row, col)
    series = generate_uid()
    order = np.random.default_rng(0).permutation(len(vol))  # files named in shuffled order
    for name_idx, k in enumerate(order):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID, ds.SeriesInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID, series
        ds.Modality = "CT"
        ds.Rows, ds.Columns = vol.shape[1:]
        ds.PixelSpacing = [spacing[0], spacing[1]]
        ds.SliceThickness = thickness
        ds.ImageOrientationPatient = list(map(float, iop))
        ds.ImagePositionPatient = list(np.asarray(origin) + normal * thickness * k)
        ds.InstanceNumber = int(name_idx + 1)  # deliberately not the spatial order
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.PixelData = vol[k].astype(np.uint16).tobytes()
        ds.save_as(str(folder / f"IM{name_idx:03d}.dcm"), enforce_file_format=True)
    return pydicom


def test_dicom_series_sorted_rescaled_with_affine(work):
    raw = (anatomy((6, 9, 11)) * 10).astype(np.uint16)
    spacing, thickness, origin = (0.7, 0.8), 2.5, np.array([-50.0, 30.0, 12.0])
    iop = (0, 1, 0, 0, 0, -1)  # sagittal slices: rows along +y (A in LPS is -y), columns down
    write_dicom_series(work / "series", raw, spacing, thickness, origin, iop)
    got = explain(str(work / "series"))
    np.testing.assert_allclose(got[0, 0].numpy(), raw * 2.0 - 1024.0)
    x, info = load_input(str(work / "series"))
    row, col = np.array(iop[:3], float), np.array(iop[3:], float)
    normal = np.cross(row, col)
    for k, r, c in [(0, 0, 0), (5, 8, 10), (3, 2, 7)]:
        lps = origin + normal * thickness * k + row * spacing[1] * c + col * spacing[0] * r
        ras = lps * np.array([-1, -1, 1])
        np.testing.assert_allclose((info.affine @ [k, r, c, 1])[:3], ras, atol=1e-9)
    maps = nib.load(work / "out" / "maps.nii.gz")
    assert maps.shape == raw.shape and np.allclose(maps.affine, info.affine)
    assert int(maps.header["sform_code"]) == 1 and maps.header.get_xyzt_units()[0] == "mm"


def test_nibabel_4d_test_scan_volume_index(work):
    from nibabel.testing import data_path

    path = f"{data_path}/example4d.nii.gz"
    try:
        src = nib.load(path)
    except FileNotFoundError:  # pragma: no cover
        pytest.skip("nibabel test data not installed")
    assert len(src.shape) == 4
    got = explain(path, "--volume-index", "1")
    np.testing.assert_allclose(got[0, 0].numpy(), np.asarray(src.dataobj[..., 1], dtype=np.float32), rtol=1e-6)
    maps = nib.load(work / "out" / "maps.nii.gz")
    assert maps.shape == src.shape[:3] and np.allclose(maps.affine, src.affine)
    assert int(maps.header["qform_code"]) == int(src.header["qform_code"])
    assert int(maps.header["sform_code"]) == int(src.header["sform_code"])
    assert maps.header.get_xyzt_units() == src.header.get_xyzt_units()


def test_pydicom_test_slice_as_a_one_slice_series(work):
    pydicom = pytest.importorskip("pydicom")
    from pydicom.data import get_testdata_file

    src = get_testdata_file("CT_small.dcm")
    if src is None:  # pragma: no cover
        pytest.skip("pydicom test files not installed")
    (work / "one").mkdir()
    (work / "one" / "CT_small.dcm").write_bytes(Path(src).read_bytes())
    (work / "one" / "notes.txt").write_text("not a DICOM file")  # skipped
    ds = pydicom.dcmread(src)
    got = explain(str(work / "one"))
    np.testing.assert_allclose(got[0, 0, 0].numpy(), ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept))
    _, info = load_input(str(work / "one"))
    ipp = np.asarray(ds.ImagePositionPatient, float)
    np.testing.assert_allclose((info.affine @ [0, 0, 0, 1])[:3], ipp * [-1, -1, 1], atol=1e-6)
    np.testing.assert_allclose(info.zooms[1:], [float(v) for v in ds.PixelSpacing])
