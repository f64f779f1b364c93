"""Radiograph readers (see the package docstring)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class Radiograph:
    """A 2-D radiograph.

    Attributes:
        pixels: (H, W) uint16 (or uint8 for 8-bit files; float32 for float files), MONOCHROME2.
        pixel_spacing_mm: (row, col) mm, or None when the file does not record it.
        spacing_source: which attribute gave the spacing ("PixelSpacing", "ImagerPixelSpacing", ...).
        bits_stored: significant bits of the stored data (e.g. 12, 15, 16).
        path: the file it came from.
    """

    pixels: np.ndarray
    pixel_spacing_mm: tuple[float, float] | None
    path: str
    bits_stored: int | None = None
    spacing_source: str | None = None
    meta: dict = field(default_factory=dict)

    def to_tensor(self):
        """``tv_tensors.Image`` (1, H, W): uint16 for 16-bit data (natural range), uint8 for 8-bit,
        float32 otherwise."""
        import torch
        from torchvision import tv_tensors

        arr = self.pixels
        if arr.dtype == np.uint16:
            # torch has uint16 tensors (>= 2.3), kept natural: no rescaling.
            t = torch.from_numpy(arr.astype(np.int32)).to(torch.uint16)
        else:
            t = torch.from_numpy(np.ascontiguousarray(arr))
        return tv_tensors.Image(t[None])


def read_image(path: str | Path) -> Radiograph:
    """Read any supported radiograph by its extension (DICOM also without extension)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    suffix = "".join(path.suffixes[-2:]).lower() if path.name.lower().endswith(".nii.gz") else path.suffix.lower()
    if suffix in (".dcm", ".dicom", ""):
        return read_dicom(path)
    if suffix in (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"):
        return read_png(path)
    if suffix in (".mha", ".mhd", ".nii", ".nii.gz", ".nrrd"):
        return read_sitk(path)
    if suffix == ".img":
        return read_jsrt_raw(path)
    raise ValueError(f"{path}: unsupported image type {suffix!r}")


def read_dicom(path: str | Path) -> Radiograph:
    """Read a DICOM radiograph keeping its bit depth; MONOCHROME1 is inverted to MONOCHROME2.

    Pixel spacing: ``PixelSpacing`` when present, else ``ImagerPixelSpacing`` (detector plane),
    else None. Modality/rescale LUTs are not applied: radiographs store detector values.
    """
    import pydicom

    path = Path(path)
    try:
        ds = pydicom.dcmread(str(path))
        arr = ds.pixel_array
    except Exception as err:  # pydicom raises many types for corrupt or non-DICOM files
        raise ValueError(f"cannot read {path} as a DICOM image: {err}") from err
    if arr.ndim == 3 and getattr(ds, "SamplesPerPixel", 1) == 1:
        arr = arr[0]  # multi-frame: first frame
    if arr.ndim != 2:
        raise ValueError(f"{path}: expected a single-channel 2-D image, got shape {arr.shape}")
    bits = int(getattr(ds, "BitsStored", arr.dtype.itemsize * 8))
    if getattr(ds, "PixelRepresentation", 0) == 1:  # signed: shift to unsigned, same range width
        arr = arr.astype(np.int32) - int(arr.min())
    arr = arr.astype(np.uint16 if bits > 8 else np.uint8)
    photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2")).strip()
    if photometric == "MONOCHROME1":
        arr = (np.uint32((1 << bits) - 1) - arr.astype(np.uint32)).clip(0, (1 << bits) - 1).astype(arr.dtype)
    spacing, source = None, None
    for key in ("PixelSpacing", "ImagerPixelSpacing"):
        value = getattr(ds, key, None)
        if value is not None and len(value) == 2 and float(value[0]) > 0 and float(value[1]) > 0:
            spacing, source = (float(value[0]), float(value[1])), key  # zeros mean "not recorded"
            break
    return Radiograph(arr, spacing, str(path), bits, source, {"photometric": photometric})


def read_png(path: str | Path) -> Radiograph:
    """8- or 16-bit grayscale PNG (or other Pillow formats), MONOCHROME2 assumed."""
    from PIL import Image

    path = Path(path)
    try:
        with Image.open(path) as im:
            if im.mode in ("RGB", "RGBA", "P", "LA"):
                im = im.convert("L")
            arr = np.array(im)
    except Exception as err:
        raise ValueError(f"cannot read {path} as an image: {err}") from err
    if arr.dtype == np.int32:  # Pillow's 'I' mode for 16-bit PNGs on some versions
        arr = arr.astype(np.uint16)
    if arr.ndim != 2:
        raise ValueError(f"{path}: expected a grayscale image, got shape {arr.shape}")
    bits = 16 if arr.dtype == np.uint16 else 8 if arr.dtype == np.uint8 else None
    return Radiograph(arr, None, str(path), bits)


def read_sitk(path: str | Path) -> Radiograph:
    """MHA/MHD/NIfTI/NRRD through SimpleITK (NODE21 ships ``.mha``); spacing from the header."""
    import SimpleITK as sitk

    path = Path(path)
    try:
        img = sitk.ReadImage(str(path))
    except Exception as err:
        raise ValueError(f"cannot read {path} with SimpleITK: {err}") from err
    arr = sitk.GetArrayFromImage(img)
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 2:
        raise ValueError(f"{path}: expected a 2-D image, got shape {arr.shape}")
    sp = img.GetSpacing()  # (x, y) = (col, row)
    spacing = (float(sp[1]), float(sp[0])) if sp and not np.allclose(sp[:2], 1.0) else None
    if arr.dtype in (np.int16, np.int32, np.uint32, np.int64):
        lo = int(arr.min())
        arr = (arr.astype(np.int64) - min(lo, 0)).clip(0, 65535).astype(np.uint16)
    return Radiograph(arr, spacing, str(path), 16 if arr.dtype == np.uint16 else None,
                      "header" if spacing else None)


def read_jsrt_raw(path: str | Path, size: int = 2048, spacing_mm: float = 0.175) -> Radiograph:
    """JSRT ``.IMG``: headerless 2048x2048 big-endian 12-bit; stored inverted, so it is
    flipped to MONOCHROME2 (4095 - value)."""
    path = Path(path)
    data = path.read_bytes()
    if len(data) != size * size * 2:
        raise ValueError(f"{path}: {len(data)} bytes, expected {size * size * 2} for a {size}x{size} JSRT image")
    arr = np.frombuffer(data, dtype=">u2").reshape(size, size).astype(np.uint16)
    arr = (4095 - np.minimum(arr, 4095)).astype(np.uint16)
    return Radiograph(arr, (spacing_mm, spacing_mm), str(path), 12, "JSRT")
