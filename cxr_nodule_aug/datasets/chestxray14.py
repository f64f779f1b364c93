"""ChestX-ray14 (NIH): ``BBox_List_2017.csv`` boxes (x, y, w, h in 1024 px) on 8-bit PNGs."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from cxr_nodule_aug.datasets._common import AnnotatedImages, check_box, check_files, check_relative_name, read_csv, resolve_inside


def parse_bbox_list(csv_path: str | Path, findings: Sequence[str] = ("Nodule",)) -> dict[str, np.ndarray]:
    """image -> (N, 4) XYXY boxes of the given findings (``BBox_List_2017.csv``, also ``.gz``)."""
    header, rows = read_csv(csv_path)
    if not header or header[0].strip() != "Image Index" or len(header) < 3:
        raise ValueError(f"{csv_path}: not a BBox_List_2017.csv (header {header})")
    out: dict[str, list] = {}
    for line, row in enumerate(rows, start=2):
        if len(row) < 6:
            raise ValueError(f"{csv_path}:{line}: expected 6 fields, got {row}")
        if row[1] not in findings:
            continue
        check_relative_name(row[0], f"{csv_path}:{line}", "Image Index")
        try:
            x, y, w, h = (float(v) for v in row[2:6])
        except ValueError as err:
            raise ValueError(f"{csv_path}:{line}: bad box {row[2:6]}") from err
        out.setdefault(row[0], []).append(check_box([x, y, x + w, y + h], f"{csv_path}:{line}"))
    return {k: np.asarray(v, np.float32) for k, v in out.items()}


class ChestXray14Dataset(AnnotatedImages):
    """Images with ``findings`` boxes from ``bbox_csv``; ``negatives``: extra image names without boxes."""

    def __init__(self, image_dir: str | Path, bbox_csv: str | Path, transforms: Callable | None = None,
                 findings: Sequence[str] = ("Nodule",), negatives: Sequence[str] = (),
                 lung_mask_dir: str | Path | None = None):
        image_dir = Path(image_dir)
        ann = parse_bbox_list(bbox_csv, findings)
        for name in negatives:
            ann.setdefault(check_relative_name(name, "negatives", "image name"), np.zeros((0, 4), np.float32))
        paths = {k: resolve_inside(image_dir, k, str(bbox_csv)) for k in ann}
        check_files(paths, bbox_csv)
        super().__init__([(Path(k).stem, paths[k], v) for k, v in sorted(ann.items())], transforms, lung_mask_dir)
