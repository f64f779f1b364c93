"""Reading radiographs: DICOM (pydicom), MHA/MHD/NIfTI (SimpleITK), PNG/JPEG/TIFF (Pillow),
JSRT raw ``.IMG``. All return a :class:`Radiograph`: 2-D pixels at their natural bit depth,
MONOCHROME2 (high attenuation = bright), and the pixel spacing when the file records one.
Writing: :func:`atomic_write` (whole files or none, for resumable jobs), :func:`png_bytes`,
and for resumable output folders :func:`check_or_write_manifest` and :func:`image_seed`.
"""

from cxr_nodule_aug.io.readers import (
    Radiograph,
    read_dicom,
    read_image,
    read_jsrt_raw,
    read_png,
    read_sitk,
)
from cxr_nodule_aug.io.writers import OutputConflict, atomic_write, check_or_write_manifest, image_seed, png_bytes, remove_temp_files

__all__ = ["Radiograph", "read_image", "read_dicom", "read_png", "read_sitk", "read_jsrt_raw", "atomic_write", "png_bytes", "remove_temp_files",
           "check_or_write_manifest", "image_seed", "OutputConflict"]
