"""VinDr-CXR: ``train.csv`` (image_id,class_name,class_id,rad_id,x_min,y_min,x_max,y_max) + DICOM.

Each training image was read by three radiologists, each drawing their own box around a lesion,
so one nodule appears as up to three boxes. By default they are fused, one box per lesion:

**Fusion rule.** Within an image, boxes of the same class are clustered by single linkage at
IoU >= ``fuse_iou`` (0.5): two boxes are in one cluster when they overlap that much, directly or
through a chain of such boxes, whichever readers drew them. Each cluster becomes one box, the
coordinate-wise mean of its boxes. ``fuse_iou=None`` keeps every reader's box.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from cxr_nodule_aug.datasets._common import (
    AnnotatedImages, check_box, check_files, check_relative_name, column_index, read_csv, resolve_inside,
)

NODULE_CLASS = "Nodule/Mass"
FUSE_IOU = 0.5


def fuse_reader_boxes(boxes: np.ndarray, iou_threshold: float = FUSE_IOU) -> np.ndarray:
    """(N, 4) XYXY boxes of one class on one image -> one mean box per cluster (the module's
    fusion rule), clusters in the order of their first box."""
    import torch
    from torchvision.ops import box_iou

    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    if not 0 < iou_threshold <= 1:
        raise ValueError(f"fuse_iou must be in (0, 1], got {iou_threshold}")
    n = len(boxes)
    if n < 2:
        return boxes
    linked = (box_iou(torch.from_numpy(boxes).double(), torch.from_numpy(boxes).double()) >= iou_threshold).numpy()
    cluster = list(range(n))  # union-find over the IoU graph

    def find(i: int) -> int:
        while cluster[i] != i:
            cluster[i] = cluster[cluster[i]]
            i = cluster[i]
        return i

    for i in range(n):
        for j in range(i + 1, n):
            if linked[i, j]:
                cluster[find(j)] = find(i)
    roots: dict[int, list[int]] = {}
    for i in range(n):
        roots.setdefault(find(i), []).append(i)
    return np.stack([boxes[members].mean(0) for members in roots.values()]).astype(np.float32)


def parse_vindr_csv(csv_path: str | Path, classes: Sequence[str] = (NODULE_CLASS,),
                    radiologists: Sequence[str] | None = None, fuse_iou: float | None = FUSE_IOU) -> dict[str, np.ndarray]:
    """image_id -> (N, 4) XYXY boxes of ``classes``; every image in the file is listed (negatives
    get no boxes). ``radiologists`` keeps only those readers' boxes; the readers' boxes of one
    lesion are fused (see the module doc) unless ``fuse_iou`` is None. A bad image_id or box is
    refused, naming the row."""
    header, rows = read_csv(csv_path)
    cols = column_index(header, ["image_id", "class_name", "x_min", "y_min", "x_max", "y_max"], csv_path, "VinDr")
    out: dict[str, dict[str, list]] = {}
    for line, row in enumerate(rows, start=2):
        image_id = check_relative_name(row[cols["image_id"]], f"{csv_path}:{line}", "image_id")
        per_class = out.setdefault(image_id, {})
        if row[cols["class_name"]] not in classes:
            continue
        if radiologists is not None and "rad_id" in cols and row[cols["rad_id"]] not in radiologists:
            continue
        try:
            box = [float(row[cols[k]]) for k in ("x_min", "y_min", "x_max", "y_max")]
        except ValueError as err:
            raise ValueError(f"{csv_path}:{line}: bad box in {row}") from err
        per_class.setdefault(row[cols["class_name"]], []).append(check_box(box, f"{csv_path}:{line}"))
    result = {}
    for image_id, per_class in out.items():
        parts = [np.asarray(b, np.float32).reshape(-1, 4) for b in per_class.values()]
        if fuse_iou is not None:
            parts = [fuse_reader_boxes(b, fuse_iou) for b in parts]
        result[image_id] = np.concatenate(parts) if parts else np.zeros((0, 4), np.float32)
    return result


class VinDrCXRDataset(AnnotatedImages):
    """VinDr-CXR: ``root/<csv_name>`` and ``root/<image_dir>/<image_id><ext>`` DICOMs.

    ``fuse_iou``: the readers' boxes of one lesion become one box (IoU >= 0.5 clusters, mean box;
    see the module doc); None keeps each reader's box (up to three per lesion).
    """

    def __init__(self, root: str | Path, transforms: Callable | None = None, csv_name: str = "train.csv",
                 image_dir: str = "train", ext: str = ".dicom", classes: Sequence[str] = (NODULE_CLASS,),
                 radiologists: Sequence[str] | None = None, lung_mask_dir: str | Path | None = None,
                 fuse_iou: float | None = FUSE_IOU):
        root = Path(root)
        ann = parse_vindr_csv(root / csv_name, classes, radiologists, fuse_iou)
        paths = {k: resolve_inside(root / image_dir, f"{k}{ext}", str(root / csv_name)) for k in ann}
        check_files(paths, root / csv_name)
        super().__init__([(k, paths[k], v) for k, v in sorted(ann.items())], transforms, lung_mask_dir)
