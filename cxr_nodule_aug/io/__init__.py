"""Reading radiographs: DICOM (pydicom), MHA/MHD/NIfTI (SimpleITK), PNG/JPEG/TIFF (Pillow),
JSRT raw ``.IMG``. All return a :class:`Radiograph`: 2-D pixels at their natural bit depth,
MONOCHROME2 (high attenuation = bright), and the pixel spacing when the file records one.
Writing: :func:`atomic_write` (whole files or none, for resumable jobs) and :func:`png_bytes`.
"""

from cxr_nodule_aug.io.readers import (
    Radiograph,
    read_dicom,
    read_image,
    read_jsrt_raw,
    read_png,
    read_sitk,
)
from cxr_nodule_aug.io.writers import atomic_write, png_bytes, remove_temp_files

__all__ = ["Radiograph", "read_image", "read_dicom", "read_png", "read_sitk", "read_jsrt_raw", "atomic_write", "png_bytes", "remove_temp_files"]
