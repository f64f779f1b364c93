"""The dataset kinds the command line and the trainers know by name: one table, one opener.

``open_dataset("node21", root)`` is what ``--dataset node21`` and ``dataset=node21`` mean
everywhere (``synthesize``, ``lungs``, ``hem``, ``train detector``). To add a kind, add one
:class:`DatasetKind` to :data:`DATASET_KINDS`: a name, a one-line description of what the root
holds, whether the dataset takes a folder of precomputed lung masks, and an ``open`` function
``open(root, transforms=..., lung_mask_dir=..., **options) -> Dataset``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset


@dataclasses.dataclass(frozen=True)
class DatasetKind:
    """One entry of :data:`DATASET_KINDS`.

    Attributes:
        name: the name users type (``--dataset NAME``, ``dataset=NAME``).
        layout: what the dataset root holds, one line (shown in errors and ``--help``).
        lung_mask_folder: whether ``lung_mask_dir=`` (``cxr-nodule-aug lungs`` output) applies;
            False for kinds that ship their own lung masks.
        open: ``open(root, transforms=None, lung_mask_dir=None, **options) -> Dataset``; it is
            called with ``lung_mask_dir`` only when ``lung_mask_folder`` is True.
    """

    name: str
    layout: str
    lung_mask_folder: bool
    open: Callable[..., Dataset]


def _simcxr(root: Path, transforms: Callable | None = None, **options: Any) -> Dataset:
    from cxr_nodule_aug.datasets.simcxr import SimCXRDataset

    return SimCXRDataset(root, transforms=transforms, **options)


def _node21(root: Path, transforms: Callable | None = None, lung_mask_dir: str | Path | None = None, **options: Any) -> Dataset:
    from cxr_nodule_aug.datasets.node21 import Node21Dataset

    return Node21Dataset(root, transforms=transforms, lung_mask_dir=lung_mask_dir, **options)


def _vindr(root: Path, transforms: Callable | None = None, lung_mask_dir: str | Path | None = None, **options: Any) -> Dataset:
    from cxr_nodule_aug.datasets.vindr import VinDrCXRDataset

    return VinDrCXRDataset(root, transforms=transforms, lung_mask_dir=lung_mask_dir, **options)


def _find(root: Path, names: tuple[str, ...], what: str) -> Path | None:
    """The first of ``names`` in ``root``, matched without regard to case."""
    by_lower = {p.name.lower(): p for p in root.iterdir() if p.is_file()}
    for name in names:
        if name.lower() in by_lower:
            return by_lower[name.lower()]
    return None


def _jsrt(root: Path, transforms: Callable | None = None, lung_mask_dir: str | Path | None = None, **options: Any) -> Dataset:
    """JSRT as distributed: the nodule list and the non-nodule list next to the images, raw
    2048 px ``.IMG`` (0.175 mm) or PNG copies of any size (spacing scaled to their width)."""
    from PIL import Image

    from cxr_nodule_aug.datasets.jsrt import JSRTDataset, parse_jsrt_list, parse_jsrt_non_nodule

    nodule_list = _find(root, ("CLNDAT_EN.txt",), "nodule list")
    if nodule_list is None:
        raise FileNotFoundError(f"{root} holds no JSRT nodule list CLNDAT_EN.txt ({DATASET_KINDS['jsrt'].layout})")
    non_nodule = _find(root, ("CNNDAT_EN.TXT",), "non-nodule list")
    names = [n.image for n in parse_jsrt_list(nodule_list)] + (parse_jsrt_non_nodule(non_nodule) if non_nodule else [])
    if not names:
        raise ValueError(f"{nodule_list} lists no image")
    stem = Path(names[0]).stem
    if "image_ext" not in options:
        if (root / f"{stem}.IMG").is_file():
            options["image_ext"] = ".IMG"
        elif (root / f"{stem}.png").is_file():
            options["image_ext"] = ".png"
        else:
            raise FileNotFoundError(f"{root}: neither {stem}.IMG nor {stem}.png is there ({DATASET_KINDS['jsrt'].layout})")
    if options["image_ext"].lower() != ".img" and "image_size" not in options:
        with Image.open(root / f"{stem}{options['image_ext']}") as im:
            options["image_size"] = im.size[0]
    return JSRTDataset(root, nodule_list, non_nodule, transforms=transforms, lung_mask_dir=lung_mask_dir, **options)


def _chestxray14(root: Path, transforms: Callable | None = None, lung_mask_dir: str | Path | None = None, **options: Any) -> Dataset:
    from cxr_nodule_aug.datasets.chestxray14 import ChestXray14Dataset

    csv = _find(root, ("BBox_List_2017.csv", "BBox_List_2017.csv.gz"), "box list")
    if csv is None:
        raise FileNotFoundError(f"{root} holds no BBox_List_2017.csv ({DATASET_KINDS['chestxray14'].layout})")
    return ChestXray14Dataset(root / "images", csv, transforms=transforms, lung_mask_dir=lung_mask_dir, **options)


DATASET_KINDS: dict[str, DatasetKind] = {
    kind.name: kind
    for kind in (
        DatasetKind("simcxr", "a 'cxr-nodule-aug sim' export (manifest.json, images/, masks/, records/)", False, _simcxr),
        DatasetKind("node21", "NODE21: metadata.csv (img_name,x,y,width,height,label) and images/", True, _node21),
        DatasetKind("vindr", "VinDr-CXR: train.csv (image_id,class_name,rad_id,x_min,...) and train/<image_id>.dicom; "
                    "the readers' boxes of one lesion fused into one", True, _vindr),
        DatasetKind("jsrt", "JSRT: CLNDAT_EN.txt (and CNNDAT_EN.TXT) next to the images, 2048 px .IMG (0.175 mm) or "
                    "PNG copies (spacing 0.175 mm x 2048 / width)", True, _jsrt),
        DatasetKind("chestxray14", "ChestX-ray14: BBox_List_2017.csv and images/<Image Index>.png, the images with a "
                    "Nodule box; the 1024 px PNGs carry no pixel spacing (sizes in px)", True, _chestxray14),
    )
}


def dataset_kind(kind: str) -> DatasetKind:
    """The table entry of ``kind``; a ``ValueError`` listing the known kinds otherwise."""
    if kind not in DATASET_KINDS:
        known = ", ".join(DATASET_KINDS)
        raise ValueError(f"dataset={kind!r} is not a dataset kind this package reads; expected one of {known} "
                         "(any other Dataset: build it in Python)")
    return DATASET_KINDS[kind]


def open_dataset(kind: str, root: str | Path, transforms: Callable | None = None, lung_mask_dir: str | Path | None = None,
                 nodule_masks: str | Path | None = None, **options: Any) -> Dataset:
    """The dataset of kind ``kind`` (a key of :data:`DATASET_KINDS`) rooted at ``root``.

    Args:
        kind: ``simcxr``, ``node21``, ``vindr``, ``jsrt``, ``chestxray14`` (see :data:`DATASET_KINDS`).
        root: the dataset's root directory.
        transforms: ``transforms(image, target)`` applied to every sample.
        lung_mask_dir: a folder of lung masks (``cxr-nodule-aug lungs``) for kinds that take one.
        nodule_masks: box-derived nodule masks (``cxr-nodule-aug masks`` output) for the
            box-only kinds (those that take a lung mask folder): targets get instance ``masks``.
        **options: passed to the dataset class (e.g. ``return_pair=True`` for SimCXR).

    Raises:
        ValueError: an unknown kind, or a lung mask folder for a kind that ships its own masks.
        FileNotFoundError: ``root`` or ``lung_mask_dir`` is not a directory.
    """
    entry = dataset_kind(kind)
    if not Path(root).is_dir():
        raise FileNotFoundError(f"{kind} data directory {str(root)!r} does not exist")
    if lung_mask_dir is not None:
        check_lung_mask_folder(kind, lung_mask_dir)
        options["lung_mask_dir"] = lung_mask_dir
    if nodule_masks is not None and not entry.lung_mask_folder:
        raise ValueError(f"a {kind} dataset ships its own nodule masks and takes no masks= folder")
    dataset = entry.open(Path(root), transforms=transforms, **options)
    if nodule_masks is not None:
        dataset.use_nodule_masks(nodule_masks)
    return dataset


def check_lung_mask_folder(kind: str, lung_mask_dir: str | Path) -> None:
    """``lung_mask_dir`` checked for a dataset of ``kind``: the kind takes one, and it exists."""
    if not dataset_kind(kind).lung_mask_folder:
        raise ValueError(f"a {kind} dataset ships its own lung masks and takes no lung mask folder")
    if not Path(lung_mask_dir).is_dir():
        raise FileNotFoundError(f"lung mask folder {str(lung_mask_dir)!r} does not exist (make it with cxr-nodule-aug lungs)")
