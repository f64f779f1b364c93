"""Shared pieces of the dataset classes: sample building, CSV reading, file checks."""

from __future__ import annotations

import csv
import gzip
import io
import math
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Callable, Iterable, Sequence

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


# DICOM stores Rows and Columns as 16-bit numbers: no radiograph is larger than this.
MAX_COORDINATE = 65535.0


def check_box(box: Sequence[float], where: str) -> list[float]:
    """``box`` (x0, y0, x1, y1) checked: finite, positive width and height, every coordinate
    within +-:data:`MAX_COORDINATE` px; a ``ValueError`` starting with ``where`` (file and row)."""
    x0, y0, x1, y1 = (float(v) for v in box)
    if not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
        raise ValueError(f"{where}: box {[x0, y0, x1, y1]} has a NaN or infinite coordinate")
    if not all(abs(v) <= MAX_COORDINATE for v in (x0, y0, x1, y1)):
        raise ValueError(f"{where}: box {[x0, y0, x1, y1]} lies beyond {MAX_COORDINATE:g} px, larger than any radiograph")
    if not (x1 > x0 and y1 > y0):
        raise ValueError(f"{where}: box {[x0, y0, x1, y1]} has no area (width {x1 - x0:g}, height {y1 - y0:g} px)")
    return [x0, y0, x1, y1]


def check_relative_name(name: str, where: str, column: str) -> str:
    """An image name from an annotation file, checked to stay inside the dataset: not absolute,
    no drive, no ``..`` component; a ``ValueError`` starting with ``where`` (file and row)."""
    pure = PureWindowsPath(name)
    if not name or pure.is_absolute() or pure.drive or pure.root or PurePosixPath(name).is_absolute():
        raise ValueError(f"{where}: {column} {name!r} must be a file name relative to the dataset's image folder, not an absolute path")
    if ".." in PurePosixPath(name.replace("\\", "/")).parts:
        raise ValueError(f"{where}: {column} {name!r} points outside the dataset's image folder ('..' is refused)")
    return name


def resolve_inside(folder: Path, name: str, where: str) -> Path:
    """``folder / name``, refused when it resolves (symbolic links followed) outside ``folder``."""
    path = folder / name
    base = folder.resolve()
    if not path.resolve().is_relative_to(base):
        raise ValueError(f"{where}: {name!r} resolves to {path.resolve()}, outside the image folder {base}")
    return path


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


def mask_file_names(dataset) -> list[str]:
    """The mask file name (:func:`lung_mask_filename`) of every image of ``dataset`` (an
    :class:`AnnotatedImages`), checked to be distinct: the names ``cxr-nodule-aug lungs`` and
    ``cxr-nodule-aug masks`` write and the datasets read."""
    if not isinstance(dataset, AnnotatedImages):
        raise TypeError(f"dataset must be a NODE21/VinDr/JSRT/ChestX-ray14 dataset (AnnotatedImages), got {type(dataset).__name__}")
    first: dict[str, Path] = {}
    for _, path, _ in dataset.items:
        name = lung_mask_filename(path)
        if name in first:
            raise ValueError(f"the images {str(first[name])!r} and {str(path)!r} both get the mask name {name!r} "
                             "(the file name up to its first dot): a mask folder cannot tell them apart")
        first[name] = Path(path)
    return list(first)


def nodule_mask_folder(path: str | Path) -> Path:
    """The folder of labelled nodule masks ``path`` names: ``path/masks`` when ``path`` is a
    ``cxr-nodule-aug masks`` output folder, else ``path`` itself. A ``FileNotFoundError`` when
    neither holds a PNG."""
    path = Path(path)
    for folder in (path / "masks", path):
        if folder.is_dir() and any(folder.glob("*.png")):
            return folder
    raise FileNotFoundError(f"masks={str(path)!r}: neither it nor its masks/ subfolder holds PNG nodule masks "
                            "(make them from the boxes with: cxr-nodule-aug masks --data DIR --dataset KIND --out OUT)")


def read_nodule_masks(path: Path, count: int, size: tuple[int, int], where: str) -> np.ndarray:
    """(count, H, W) bool instance masks from a labelled PNG (0 background, k + 1 = the k-th box),
    refused unless it is ``size`` and holds exactly the labels 1..count (a box without its mask
    would be a label without a nodule)."""
    from PIL import Image

    if not path.is_file():
        raise FileNotFoundError(f"{where}: nodule mask {path} not found (make it with: cxr-nodule-aug masks)")
    with Image.open(path) as im:
        arr = np.array(im)
    if arr.ndim == 3:
        arr = arr[..., 0]
    if arr.shape != tuple(size):
        raise ValueError(f"{where}: nodule mask {path} is {arr.shape[1]}x{arr.shape[0]}, the image {size[1]}x{size[0]}")
    labels = sorted(int(v) for v in np.unique(arr) if v != 0)
    if labels != list(range(1, count + 1)):
        raise ValueError(f"{where}: nodule mask {path} holds labels {labels[:10]}, expected 1..{count}, one per box "
                         "(made for other boxes? rerun cxr-nodule-aug masks into a new folder)")
    return np.stack([arr == k for k in range(1, count + 1)])


class AnnotatedImages(torch.utils.data.Dataset):
    """Base: a list of (image_id, path, boxes_xyxy) read with :func:`cxr_nodule_aug.io.read_image`.

    ``lung_mask_dir``: optional folder of 8-bit masks named by :func:`lung_mask_filename` (nonzero =
    lung; ``cxr-nodule-aug lungs`` writes them); without it the target has no ``"lung_mask"``
    (real datasets ship none).

    :meth:`use_nodule_masks` attaches box-derived instance masks (``cxr-nodule-aug masks``):
    the target then has ``"masks"`` (N, H, W), one per box, in box order.
    """

    def __init__(self, items, transforms: Callable | None = None, lung_mask_dir: str | Path | None = None,
                 reader: Callable | None = None):
        self.items = items  # list of (image_id, Path, np.ndarray (N,4) xyxy)
        self.transforms = transforms
        self.lung_mask_dir = Path(lung_mask_dir) if lung_mask_dir is not None else None
        self._reader = reader
        self.nodule_mask_dir: Path | None = None

    def use_nodule_masks(self, folder: str | Path) -> AnnotatedImages:
        """Attach the labelled nodule masks in ``folder`` (a ``cxr-nodule-aug masks`` output, or
        its ``masks/``): ``<name>.png`` per image with boxes, ``<name>`` as for lung masks, label
        k + 1 = the image's k-th box. Returns ``self``."""
        self.nodule_mask_dir = nodule_mask_folder(folder)
        return self

    def __len__(self) -> int:
        return len(self.items)

    def image_name(self, idx: int) -> str:
        """Image ``idx``'s file name as the annotation file names it (what prediction files and
        ``cxr-nodule-aug eval`` pair images by)."""
        return self.items[idx][1].name

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
        image = rad.to_tensor()
        masks = None
        if self.nodule_mask_dir is not None:
            n, size = len(boxes), tuple(image.shape[-2:])
            masks = (np.zeros((0, *size), bool) if n == 0 else
                     read_nodule_masks(self.nodule_mask_dir / lung_mask_filename(path), n, size, f"image {image_id!r}"))
        sample = make_sample(image, boxes, image_id, rad.pixel_spacing_mm, lung_mask=lung, masks=masks)
        return self.transforms(*sample) if self.transforms is not None else sample
