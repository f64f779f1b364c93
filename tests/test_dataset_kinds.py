"""``cxr_nodule_aug.datasets.open_dataset``: the one table of dataset kinds the CLI and trainers use."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from cxr_nodule_aug.datasets import DATASET_KINDS, DatasetKind, Node21Dataset, VinDrCXRDataset, open_dataset


def _node21(root, names=("a.png", "b.png")):
    (root / "images").mkdir(parents=True)
    for name in names:
        Image.fromarray(np.full((24, 20), 900, np.uint16)).save(root / "images" / name)
    (root / "metadata.csv").write_text("img_name,x,y,width,height,label\na.png,2,3,5,6,1\nb.png,0,0,0,0,0\n")
    return root


def test_table_entries_are_complete():
    assert {"simcxr", "node21", "vindr"} <= set(DATASET_KINDS)
    for name, kind in DATASET_KINDS.items():
        assert isinstance(kind, DatasetKind) and kind.name == name and kind.layout and callable(kind.open)


def test_open_node21(tmp_path):
    ds = open_dataset("node21", _node21(tmp_path / "d"))
    assert isinstance(ds, Node21Dataset) and len(ds) == 2
    image, target = ds[0]
    assert target["boxes"].tolist() == [[2.0, 3.0, 7.0, 9.0]]


def test_open_passes_transforms_and_lung_masks(tmp_path):
    root = _node21(tmp_path / "d")
    masks = tmp_path / "lungs"
    masks.mkdir()
    for stem in ("a", "b"):
        Image.fromarray(np.full((24, 20), 255, np.uint8)).save(masks / f"{stem}.png")
    ds = open_dataset("node21", root, transforms=lambda image, target: (image, {**target, "seen": True}), lung_mask_dir=masks)
    _, target = ds[1]
    assert target["seen"] and bool(target["lung_mask"].all())


def test_unknown_kind_lists_the_known_ones(tmp_path):
    with pytest.raises(ValueError, match=r"dataset='nih' is not a dataset kind this package reads; expected one of simcxr, node21, vindr"):
        open_dataset("nih", tmp_path)


def test_missing_root(tmp_path):
    with pytest.raises(FileNotFoundError, match="node21 data directory .*nowhere.* does not exist"):
        open_dataset("node21", tmp_path / "nowhere")


def test_lung_mask_folder_checked(tmp_path):
    with pytest.raises(ValueError, match="simcxr dataset ships its own lung masks"):
        open_dataset("simcxr", tmp_path, lung_mask_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="lung mask folder .*none.* does not exist"):
        open_dataset("node21", _node21(tmp_path / "d"), lung_mask_dir=tmp_path / "none")


def test_options_reach_the_dataset_class(tmp_path):
    root = tmp_path / "v"
    (root / "imgs").mkdir(parents=True)
    Image.fromarray(np.full((16, 16), 7, np.uint8)).save(root / "imgs" / "x1.png")
    (root / "labels.csv").write_text("image_id,class_name,class_id,rad_id,x_min,y_min,x_max,y_max\n"
                                     "x1,Nodule/Mass,8,R1,1,2,5,6\n")
    ds = open_dataset("vindr", root, csv_name="labels.csv", image_dir="imgs", ext=".png")
    assert isinstance(ds, VinDrCXRDataset) and ds[0][1]["boxes"].tolist() == [[1.0, 2.0, 5.0, 6.0]]
