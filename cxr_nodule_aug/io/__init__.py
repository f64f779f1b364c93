"""Reading radiographs: DICOM (pydicom), MHA/MHD/NIfTI (SimpleITK), PNG/JPEG/TIFF (Pillow),
JSRT raw ``.IMG``. All return a :class:`Radiograph`: 2-D pixels at their natural bit depth,
MONOCHROME2 (high attenuation = bright), and the pixel spacing when the file records one.
"""

from cxr_nodule_aug.io.readers import (
    Radiograph,
    read_dicom,
    read_image,
    read_jsrt_raw,
    read_png,
    read_sitk,
)

__all__ = ["Radiograph", "read_image", "read_dicom", "read_png", "read_sitk", "read_jsrt_raw"]
