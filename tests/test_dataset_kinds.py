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
    assert {"simcxr", "node21", "vindr", "jsrt", "chestxray14"} <= set(DATASET_KINDS)
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
    with pytest.raises(ValueError, match=r"dataset='nih' is not a dataset kind this package reads; expected one of simcxr, node21, vindr, jsrt, chestxray14"):
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


def _jsrt(root, ext=".png", size=256):
    root.mkdir(parents=True)
    (root / "CLNDAT_EN.txt").write_text("JPCLN001.IMG\t3\t15\t53\tmale\t1024\t1024\tmalignant\tx\n")
    (root / "CNNDAT_EN.TXT").write_text("JPCNN001.IMG\t41\tmale\tnon-nodule\n")
    for name in ("JPCLN001", "JPCNN001"):
        if ext == ".png":
            Image.fromarray(np.full((size, size), 2000, np.uint16)).save(root / f"{name}.png")
        else:
            (root / f"{name}.IMG").write_bytes(np.full((2048, 2048), 2000, ">u2").tobytes())
    return root


def test_open_jsrt_png_copies_and_raw(tmp_path):
    ds = open_dataset("jsrt", _jsrt(tmp_path / "png"))
    assert len(ds) == 2
    _, target = ds[0]
    assert target["pixel_spacing_mm"] == (0.175 * 8, 0.175 * 8)  # 256 px copies of 2048 px, 0.175 mm
    half = 0.5 * 15 / (0.175 * 8)
    assert target["boxes"].tolist()[0] == pytest.approx([128 - half, 128 - half, 128 + half, 128 + half], rel=1e-6)
    raw = open_dataset("jsrt", _jsrt(tmp_path / "raw", ext=".IMG"))
    image, target = raw[1]
    assert image.shape == (1, 2048, 2048) and target["pixel_spacing_mm"] == (0.175, 0.175)
    with pytest.raises(FileNotFoundError, match="CLNDAT_EN.txt"):
        open_dataset("jsrt", tmp_path)


def test_open_chestxray14_has_no_spacing(tmp_path):
    root = tmp_path / "nih"
    (root / "images").mkdir(parents=True)
    Image.fromarray(np.full((64, 64), 100, np.uint8)).save(root / "images" / "00000001_000.png")
    (root / "BBox_List_2017.csv").write_text("Image Index,Finding Label,Bbox [x,y,w,h],,,\n00000001_000.png,Nodule,10,20,8,6\n")
    ds = open_dataset("chestxray14", root)
    _, target = ds[0]
    assert target["boxes"].tolist() == [[10.0, 20.0, 18.0, 26.0]] and "pixel_spacing_mm" not in target
    assert "no pixel spacing" in DATASET_KINDS["chestxray14"].layout
    with pytest.raises(FileNotFoundError, match="BBox_List_2017.csv"):
        open_dataset("chestxray14", tmp_path)


def test_cli_takes_jsrt_and_chestxray14_and_gives_cli_fixes(tmp_path, capsys):
    from cxr_nodule_aug.cli import main

    root = tmp_path / "nih"
    (root / "images").mkdir(parents=True)
    Image.fromarray(np.full((64, 64), 100, np.uint8)).save(root / "images" / "00000001_000.png")
    (root / "BBox_List_2017.csv").write_text("Image Index,Finding Label,Bbox [x,y,w,h],,,\n00000001_000.png,Nodule,10,20,8,6\n")
    code = main(["synthesize", "--data", str(root), "--dataset", "chestxray14", "--count", "1", "--diameters", "5,10",
                 "--out", str(tmp_path / "out")])
    message = capsys.readouterr().err
    assert code == 2 and "--unit px" in message and "spacing" in message and "pixel_spacing_mm=" not in message
    # train detector's online augmentation in mm on the same data: the config key that fixes it
    code = None
    try:
        code = main(["train", "detector", f"data={root}", "dataset=chestxray14", "augment_p=0.5", "image_size=64",
                     "backbone=resnet18", "imagenet=false", f"out={tmp_path / 'det'}", "steps=1"])
    except SystemExit as exit_:
        code = exit_.code
    err = capsys.readouterr().err + (code if isinstance(code, str) else "")
    assert code not in (0, None) and "augment_unit=px" in err and "record no pixel spacing" in err
