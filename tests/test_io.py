"""Radiograph readers: DICOM (real pydicom-data radiograph + synthetic), PNG, MHA, JSRT raw."""

from __future__ import annotations

import importlib.resources

import numpy as np
import pytest
import torch

pydicom = pytest.importorskip("pydicom")

from cxr_nodule_aug.io import read_dicom, read_image, read_jsrt_raw  # noqa: E402


def write_dicom(path, pixels: np.ndarray, photometric="MONOCHROME2", bits=12, spacing=None, imager_spacing=None):
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits, bits - 1, 0
    if spacing:
        ds.PixelSpacing = list(spacing)
    if imager_spacing:
        ds.ImagerPixelSpacing = list(imager_spacing)
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.save_as(str(path), enforce_file_format=True)
    return path


def test_real_radiograph_monochrome1():
    try:
        path = importlib.resources.files("data_store") / "data" / "RG1_UNCR.dcm"
    except ModuleNotFoundError:
        pytest.skip("pydicom-data not installed")
    if not path.is_file():
        pytest.skip("RG1_UNCR.dcm not in pydicom-data")
    raw = pydicom.dcmread(str(path))
    rad = read_image(str(path))
    assert raw.PhotometricInterpretation == "MONOCHROME1"
    assert rad.pixels.dtype == np.uint16 and rad.pixels.shape == (1955, 1841) and rad.bits_stored == 15
    np.testing.assert_array_equal(rad.pixels, (2**15 - 1) - raw.pixel_array)
    assert rad.pixel_spacing_mm is None  # recorded as 0\0: treated as unknown
    # MONOCHROME2 after inversion: the lung fields (left/right thirds, mid-height) are darker
    # than the mediastinum (centre column).
    h, w = rad.pixels.shape
    band = rad.pixels[h // 3 : h // 2].astype(float)
    assert band[:, w // 2 - 50 : w // 2 + 50].mean() > band[:, w // 5 : w // 3].mean()
    t = rad.to_tensor()
    assert t.dtype == torch.uint16 and t.shape == (1, h, w)


def test_synthetic_dicom(tmp_path):
    px = (np.arange(64 * 48).reshape(64, 48) % 4096).astype(np.uint16)
    a = read_dicom(write_dicom(tmp_path / "a.dcm", px, spacing=(0.2, 0.25)))
    np.testing.assert_array_equal(a.pixels, px)
    assert a.pixel_spacing_mm == (0.2, 0.25) and a.spacing_source == "PixelSpacing"
    b = read_dicom(write_dicom(tmp_path / "b.dcm", px, photometric="MONOCHROME1", imager_spacing=(0.14, 0.14)))
    np.testing.assert_array_equal(b.pixels, 4095 - px)
    assert b.pixel_spacing_mm == (0.14, 0.14) and b.spacing_source == "ImagerPixelSpacing"


def test_unreadable_files(tmp_path):
    bad = tmp_path / "broken.dcm"
    bad.write_bytes(b"not a dicom at all")
    with pytest.raises(ValueError, match="broken.dcm"):
        read_image(bad)
    with pytest.raises(FileNotFoundError, match="nope.png"):
        read_image(tmp_path / "nope.png")
    png = tmp_path / "bad.png"
    png.write_bytes(b"\x89PNG garbage")
    with pytest.raises(ValueError, match="bad.png"):
        read_image(png)


def test_png16_and_mha(tmp_path):
    from PIL import Image

    px = (np.random.default_rng(0).integers(0, 65535, (32, 40))).astype(np.uint16)
    Image.fromarray(px).save(tmp_path / "a.png")
    r = read_image(tmp_path / "a.png")
    np.testing.assert_array_equal(r.pixels, px)
    sitk = pytest.importorskip("SimpleITK")
    img = sitk.GetImageFromArray(px)
    img.SetSpacing((0.3, 0.2))
    sitk.WriteImage(img, str(tmp_path / "a.mha"))
    m = read_image(tmp_path / "a.mha")
    np.testing.assert_array_equal(m.pixels, px)
    assert m.pixel_spacing_mm == pytest.approx((0.2, 0.3))


def test_jsrt_raw(tmp_path):
    px = np.full((2048, 2048), 1000, dtype=">u2")
    (tmp_path / "JPCLN001.IMG").write_bytes(px.tobytes())
    r = read_jsrt_raw(tmp_path / "JPCLN001.IMG")
    assert r.pixels.dtype == np.uint16 and int(r.pixels[0, 0]) == 4095 - 1000
    assert r.pixel_spacing_mm == (0.175, 0.175)
    (tmp_path / "short.IMG").write_bytes(b"\0" * 10)
    with pytest.raises(ValueError, match="short.IMG"):
        read_jsrt_raw(tmp_path / "short.IMG")
