"""JSRT: the nodule list (``CLNDAT_EN.txt``: file, subtlety, size mm, age, sex, x, y, ...) and the
non-nodule list (``CNNDAT_EN.TXT``); images are 2048x2048 12-bit ``.IMG`` (0.175 mm) or PNGs."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from cxr_nodule_aug.datasets._common import AnnotatedImages, check_box, check_files, check_relative_name, open_text, resolve_inside

JSRT_PIXEL_MM = 0.175


@dataclass
class JSRTNodule:
    image: str
    subtlety: int
    size_mm: float
    x_px: float
    y_px: float
    diagnosis: str

    def box_xyxy(self, pixel_mm: float = JSRT_PIXEL_MM, scale: float = 1.0) -> list[float]:
        """Square box of side ``size_mm`` centred on the nodule (pixels of an image ``scale`` x 2048)."""
        half = 0.5 * self.size_mm / pixel_mm * scale
        cx, cy = self.x_px * scale, self.y_px * scale
        return [cx - half, cy - half, cx + half, cy + half]


def parse_jsrt_list(path: str | Path) -> list[JSRTNodule]:
    """Parse ``CLNDAT_EN.txt`` (tab or space separated; lines not starting with a file name are skipped)."""
    out = []
    with open_text(path) as fh:
        for line_no, line in enumerate(fh, start=1):
            sep = r"\t+" if "\t" in line else r"\s+"
            parts = [p.strip() for p in re.split(sep, line.strip()) if p.strip()]
            if not parts or not parts[0].upper().endswith(".IMG"):
                continue
            try:
                subtlety, size = int(parts[1]), float(parts[2])
                # Fixed columns: file, subtlety, size, age (may be '?'), sex, x, y, diagnosis...
                sex_idx = 4
                x, y = float(parts[5]), float(parts[6])
            except (ValueError, IndexError) as err:
                raise ValueError(f"{path}:{line_no}: bad JSRT nodule row {line.strip()!r}") from err
            check_relative_name(parts[0], f"{path}:{line_no}", "file name")
            nodule = JSRTNodule(parts[0], subtlety, size, x, y, " ".join(parts[sex_idx + 3 :]))
            check_box(nodule.box_xyxy(), f"{path}:{line_no}")
            out.append(nodule)
    return out


def parse_jsrt_non_nodule(path: str | Path) -> list[str]:
    with open_text(path) as fh:
        names = [(n, ln.split()[0]) for n, ln in enumerate(fh, start=1) if ln.strip() and ln.split()[0].upper().endswith(".IMG")]
    return [check_relative_name(name, f"{path}:{n}", "file name") for n, name in names]


class JSRTDataset(AnnotatedImages):
    """JSRT images with square nodule boxes of the listed size.

    ``image_ext``: ".IMG" (raw) or e.g. ".png" for converted copies (then ``image_size`` gives
    their width, boxes are scaled from 2048 and spacing is scaled accordingly).
    """

    def __init__(self, root: str | Path, nodule_list: str | Path, non_nodule_list: str | Path | None = None,
                 transforms: Callable | None = None, image_ext: str = ".IMG", image_size: int = 2048,
                 lung_mask_dir: str | Path | None = None):
        root = Path(root)
        scale = image_size / 2048
        boxes: dict[str, list] = {}
        for n in parse_jsrt_list(nodule_list):
            boxes.setdefault(Path(n.image).stem, []).append(n.box_xyxy(scale=scale))
        if non_nodule_list is not None:
            for name in parse_jsrt_non_nodule(non_nodule_list):
                boxes.setdefault(Path(name).stem, [])
        paths = {k: resolve_inside(root, f"{k}{image_ext}", str(nodule_list)) for k in boxes}
        check_files(paths, nodule_list)
        self.spacing_mm = JSRT_PIXEL_MM / scale
        super().__init__([(k, paths[k], np.asarray(v, np.float32).reshape(-1, 4)) for k, v in sorted(boxes.items())],
                         transforms, lung_mask_dir)

    def read(self, path: Path):
        rad = super().read(path)
        if rad.pixel_spacing_mm is None:
            rad.pixel_spacing_mm = (self.spacing_mm, self.spacing_mm)
        return rad
