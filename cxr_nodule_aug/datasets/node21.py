"""NODE21: ``metadata.csv`` (img_name,x,y,width,height,label) + ``.mha`` images."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from cxr_nodule_aug.datasets._common import AnnotatedImages, check_box, check_files, check_relative_name, column_index, read_csv, resolve_inside


def parse_node21_metadata(csv_path: str | Path) -> dict[str, np.ndarray]:
    """img_name -> (N, 4) float32 XYXY boxes (label 1 rows; label 0 rows give no box).

    Refused, naming the row: an ``img_name`` that is absolute or climbs out with ``..``; a box
    (label 1) with a NaN, infinite or huge coordinate or without area.
    """
    header, rows = read_csv(csv_path)
    cols = column_index(header, ["img_name", "x", "y", "width", "height", "label"], csv_path, "NODE21")
    out: dict[str, list] = {}
    for line, row in enumerate(rows, start=2):
        try:
            name = row[cols["img_name"]]
            x, y, w, h = (float(row[cols[k]]) for k in ("x", "y", "width", "height"))
            label = int(float(row[cols["label"]]))
        except (ValueError, IndexError) as err:
            raise ValueError(f"{csv_path}:{line}: bad NODE21 row {row}: {err}") from err
        if not name:
            raise ValueError(f"{csv_path}:{line}: empty img_name")
        check_relative_name(name, f"{csv_path}:{line}", "img_name")
        if label not in (0, 1):
            raise ValueError(f"{csv_path}:{line}: label must be 0 (no nodule) or 1, got {row[cols['label']]!r}")
        boxes = out.setdefault(name, [])
        if label == 1:
            boxes.append(check_box([x, y, x + w, y + h], f"{csv_path}:{line}"))
    return {k: np.asarray(v, np.float32).reshape(-1, 4) for k, v in out.items()}


class Node21Dataset(AnnotatedImages):
    """NODE21 (``cxr_images/proccessed_data``): ``root/metadata.csv`` and ``root/images/*.mha``."""

    def __init__(self, root: str | Path, transforms: Callable | None = None, csv_name: str = "metadata.csv",
                 image_dir: str = "images", lung_mask_dir: str | Path | None = None):
        root = Path(root)
        ann = parse_node21_metadata(root / csv_name)
        paths = {k: resolve_inside(root / image_dir, k, str(root / csv_name)) for k in ann}
        check_files(paths, root / csv_name)
        self.names = sorted(ann)
        super().__init__([(Path(k).stem, paths[k], ann[k]) for k in self.names], transforms, lung_mask_dir)

    def image_name(self, idx: int) -> str:
        """Image ``idx``'s ``img_name`` in ``metadata.csv``."""
        return self.names[idx]
