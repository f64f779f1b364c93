"""Shared pieces of the dataset classes: sample building, CSV reading, file checks."""

from __future__ import annotations

import csv
import gzip
import io
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch


def open_text(path: str | Path) -> io.TextIOBase:
    """Open a CSV/TXT, transparently gunzipping ``.gz``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"annotation file not found: {path}")
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return open(path, newline="", encoding="utf-8")


def read_csv(path: str | Path) -> tuple[list[str], list[list[str]]]:
    with open_text(path) as fh:
        rows = list(csv.reader(fh))
    if not rows:
        raise ValueError(f"{path}: empty CSV")
    return rows[0], rows[1:]


def column_index(header: list[str], need: list[str], path: str | Path, layout: str) -> dict[str, int]:
    """Column name -> index; a clear error naming the file when a needed column is absent."""
    cols = {h.strip(): i for i, h in enumerate(header)}
    missing = [c for c in need if c not in cols]
    if missing:
        raise ValueError(f"{path} lacks column(s) {missing}: missing {layout} columns (have {list(cols)})")
    return cols


def make_sample(
    image,
    boxes_xyxy: np.ndarray | Iterable,
    image_id: str,
    pixel_spacing_mm: tuple[float, float] | None,
    labels: Iterable[int] | None = None,
    lung_mask: np.ndarray | torch.Tensor | None = None,
    masks: np.ndarray | torch.Tensor | None = None,
    extra: dict | None = None,
):
    """``(tv_tensors.Image, target)`` in the library's convention (boxes XYXY, labels int64).

    ``pixel_spacing_mm`` is in the target only when it is known (``target.get(...)`` is None
    otherwise), so that every value of a sample can pass torch's default collate.
    """
    from torchvision import tv_tensors

    h, w = image.shape[-2:]
    boxes = torch.as_tensor(np.asarray(list(boxes_xyxy), dtype=np.float32).reshape(-1, 4))
    n = len(boxes)
    target = {
        "boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(h, w)),
        "labels": torch.as_tensor(list(labels) if labels is not None else [1] * n, dtype=torch.int64),
        "image_id": image_id,
    }
    # An unknown spacing is an absent key, not None: torch's default collate refuses None.
    if pixel_spacing_mm is not None:
        target["pixel_spacing_mm"] = tuple(float(s) for s in pixel_spacing_mm)
    if masks is not None:
        target["masks"] = tv_tensors.Mask(torch.as_tensor(np.asarray(masks)).bool().reshape(-1, h, w))
    if lung_mask is not None:
        target["lung_mask"] = tv_tensors.Mask(torch.as_tensor(np.asarray(lung_mask)).bool())
    if extra:
        target.update(extra)
    return image, target


def check_files(paths: dict[str, Path], csv_path: str | Path) -> None:
    """Raise a clear error for the first annotation row whose image does not exist."""
    for key, path in paths.items():
        if not path.is_file():
            raise FileNotFoundError(f"{csv_path}: the row for {key!r} points at a missing image: {path}")


def lung_mask_filename(image_path: str | Path) -> str:
    """The lung mask file name of an image: ``<file name up to its first dot>.png``.

    ``scan.mha`` -> ``scan.png``, ``1.2.840.dicom`` -> ``1.png``, ``a.nii.gz`` -> ``a.png``. The one
    rule: :class:`AnnotatedImages` reads ``lung_mask_dir`` with it and ``cxr-nodule-aug lungs``
    writes with it.
    """
    return f"{Path(image_path).name.split('.')[0]}.png"


class AnnotatedImages(torch.utils.data.Dataset):
    """Base: a list of (image_id, path, boxes_xyxy) read with :func:`cxr_nodule_aug.io.read_image`.

    ``lung_mask_dir``: optional folder of 8-bit masks named by :func:`lung_mask_filename` (nonzero =
    lung; ``cxr-nodule-aug lungs`` writes them); without it the target has no ``"lung_mask"``
    (real datasets ship none).
    """

    def __init__(self, items, transforms: Callable | None = None, lung_mask_dir: str | Path | None = None,
                 reader: Callable | None = None):
        self.items = items  # list of (image_id, Path, np.ndarray (N,4) xyxy)
        self.transforms = transforms
        self.lung_mask_dir = Path(lung_mask_dir) if lung_mask_dir is not None else None
        self._reader = reader

    def __len__(self) -> int:
        return len(self.items)

    def read(self, path: Path):
        from cxr_nodule_aug.io import read_image

        return (self._reader or read_image)(path)

    def __getitem__(self, idx: int):
        image_id, path, boxes = self.items[idx]
        rad = self.read(path)
        lung = None
        if self.lung_mask_dir is not None:
            from PIL import Image

            mpath = self.lung_mask_dir / lung_mask_filename(path)
            if not mpath.is_file():
                raise FileNotFoundError(f"lung mask for {image_id!r} not found: {mpath}")
            lung = np.array(Image.open(mpath)) > 0
        sample = make_sample(rad.to_tensor(), boxes, image_id, rad.pixel_spacing_mm, lung_mask=lung)
        return self.transforms(*sample) if self.transforms is not None else sample
