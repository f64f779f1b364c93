"""VinDr-CXR: ``train.csv`` (image_id,class_name,class_id,rad_id,x_min,y_min,x_max,y_max) + DICOM."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from cxr_nodule_aug.datasets._common import AnnotatedImages, check_files, column_index, read_csv

NODULE_CLASS = "Nodule/Mass"


def parse_vindr_csv(csv_path: str | Path, classes: Sequence[str] = (NODULE_CLASS,),
                    radiologists: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """image_id -> (N, 4) XYXY boxes of ``classes``; every image in the file is listed (negatives
    get no boxes). Boxes of all radiologists are kept unless ``radiologists`` selects some."""
    header, rows = read_csv(csv_path)
    cols = column_index(header, ["image_id", "class_name", "x_min", "y_min", "x_max", "y_max"], csv_path, "VinDr")
    out: dict[str, list] = {}
    for line, row in enumerate(rows, start=2):
        boxes = out.setdefault(row[cols["image_id"]], [])
        if row[cols["class_name"]] not in classes:
            continue
        if radiologists is not None and "rad_id" in cols and row[cols["rad_id"]] not in radiologists:
            continue
        try:
            boxes.append([float(row[cols[k]]) for k in ("x_min", "y_min", "x_max", "y_max")])
        except ValueError as err:
            raise ValueError(f"{csv_path}:{line}: bad box in {row}") from err
    return {k: np.asarray(v, np.float32).reshape(-1, 4) for k, v in out.items()}


class VinDrCXRDataset(AnnotatedImages):
    """VinDr-CXR: ``root/<csv_name>`` and ``root/<image_dir>/<image_id><ext>`` DICOMs."""

    def __init__(self, root: str | Path, transforms: Callable | None = None, csv_name: str = "train.csv",
                 image_dir: str = "train", ext: str = ".dicom", classes: Sequence[str] = (NODULE_CLASS,),
                 radiologists: Sequence[str] | None = None, lung_mask_dir: str | Path | None = None):
        root = Path(root)
        ann = parse_vindr_csv(root / csv_name, classes, radiologists)
        paths = {k: root / image_dir / f"{k}{ext}" for k in ann}
        check_files(paths, root / csv_name)
        super().__init__([(k, paths[k], v) for k, v in sorted(ann.items())], transforms, lung_mask_dir)
