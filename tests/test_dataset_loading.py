"""Every dataset class through a user's own multi-worker DataLoader (num_workers=2), with torch's
default collate (batch_size=1, the README's LowPriorityWorkers example), the torchvision
references' ``lambda b: tuple(zip(*b))``, and the exported :func:`cxr_nodule_aug.collate_samples`.

Tiny datasets (a few 24-32 px images) are written in the test; uint16 images (12-bit
radiographs) are the case that used to fail crossing the worker boundary."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader
from torchvision import tv_tensors

from cxr_nodule_aug import collate_samples
from cxr_nodule_aug.datasets import (
    ChestXray14Dataset, JSRTDataset, LowPriorityWorkers, Node21Dataset, SimCXRDataset, VinDrCXRDataset,
)


def _png(path: Path, value: int, size: int = 32, dtype=np.uint16) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size), value, dtype)).save(path)


def _node21(root: Path):
    for name in ("a.png", "b.png"):
        _png(root / "images" / name, 3000)
    (root / "metadata.csv").write_text("img_name,x,y,width,height,label\na.png,5,6,10,12,1\nb.png,0,0,0,0,0\n")
    return Node21Dataset(root)


def _jsrt(root: Path):
    root.mkdir(parents=True)
    (root / "CLNDAT_EN.txt").write_text("JPCLN001.IMG\t3\t15\t53\tmale\t1024\t1024\tmalignant\tx\ty\n")
    (root / "CNNDAT_EN.TXT").write_text("JPCNN001.IMG\t41\tmale\tnon-nodule\n")
    for name in ("JPCLN001", "JPCNN001"):
        _png(root / f"{name}.png", 2000)
    return JSRTDataset(root, root / "CLNDAT_EN.txt", root / "CNNDAT_EN.TXT", image_ext=".png", image_size=32)


def _chestxray14(root: Path):
    for name in ("00000001_000.png", "00000002_000.png"):
        _png(root / name, 100, dtype=np.uint8)
    (root / "BBox_List_2017.csv").write_text("Image Index,Finding Label,Bbox [x,y,w,h],,,\n00000001_000.png,Nodule,10.5,20,8,6\n")
    return ChestXray14Dataset(root, root / "BBox_List_2017.csv", negatives=["00000002_000.png"])


def _vindr(root: Path):
    from tests.test_io import write_dicom

    (root / "train").mkdir(parents=True)
    write_dicom(root / "train" / "abc.dicom", np.full((32, 32), 500, np.uint16), imager_spacing=(0.15, 0.15))
    write_dicom(root / "train" / "def.dicom", np.full((32, 32), 500, np.uint16))
    (root / "train.csv").write_text("image_id,class_name,class_id,rad_id,x_min,y_min,x_max,y_max\n"
                                    "abc,Nodule/Mass,8,R9,10,11,20,25\ndef,No finding,14,R9,,,,\n")
    return VinDrCXRDataset(root)


def _simcxr(root: Path):
    """The files of a two-image 'cxr-nodule-aug sim' export (one nodule image, one normal)."""
    from PIL import Image

    for sub in ("images", "masks", "records", "pairs"):
        (root / sub).mkdir(parents=True)
    (root / "manifest.json").write_text(json.dumps({"complete": True, "format": "simcxr-export/1"}))
    size = 24
    for i, n in enumerate((1, 0)):
        stem = f"simcxr_{i:06d}"
        _png(root / "images" / f"{stem}.png", 1500, size)
        inst = np.zeros((size, size), np.uint8)
        inst[8:12, 8:12] = n
        Image.fromarray(inst).save(root / "masks" / f"{stem}_nodules.png")
        Image.fromarray(np.full((size, size), 255, np.uint8)).save(root / "masks" / f"{stem}_lung.png")
        Image.fromarray(np.zeros((size, size), np.uint8)).save(root / "masks" / f"{stem}_heart.png")
        nodules = [{"box_xyxy": [8.0, 8.0, 12.0, 12.0], "diameter_px": 4.5, "params": {"center_mm": None, "density": "solid"}}] * n
        (root / "records" / f"{stem}.json").write_text(json.dumps({"img_name": f"{stem}.png", "nodules": nodules,
                                                                   "pixel_spacing_mm": [0.5, 0.5]}))
    return SimCXRDataset(root)


DATASETS = {"node21": _node21, "jsrt": _jsrt, "chestxray14": _chestxray14, "vindr": _vindr, "simcxr": _simcxr}


def _zip(batch):
    return tuple(zip(*batch))


@pytest.mark.parametrize("kind", sorted(DATASETS))
def test_every_dataset_crosses_two_workers_with_every_collate(tmp_path, kind):
    ds = DATASETS[kind](tmp_path / kind)
    direct = [ds[i] for i in range(len(ds))]
    assert len(direct) == 2
    # 12-bit radiographs are uint16, the dtype that could not leave a worker as a tv_tensor.
    assert direct[0][0].dtype == (torch.uint8 if kind == "chestxray14" else torch.uint16)

    # 1. torch's default collate, batch_size=1: the README's LowPriorityWorkers example.
    loader = DataLoader(ds, num_workers=2, worker_init_fn=LowPriorityWorkers())
    got = list(loader)
    assert len(got) == 2
    for (image, target), (ref_image, ref_target) in zip(got, direct):
        assert torch.equal(image[0], ref_image.as_subclass(torch.Tensor))
        assert torch.equal(target["boxes"][0], ref_target["boxes"].as_subclass(torch.Tensor))
        assert target["image_id"] == [ref_target["image_id"]]

    # 2. the torchvision references' zip collate and 3. the exported collate: the tv_tensors
    # arrive with their class, dtype (uint16 included), values and box metadata.
    for collate in (_zip, collate_samples):
        batches = list(DataLoader(ds, batch_size=2, num_workers=2, collate_fn=collate))
        assert len(batches) == 1
        images, targets = batches[0]
        assert len(images) == len(targets) == 2
        for image, target, (ref_image, ref_target) in zip(images, targets, direct):
            assert type(image) is tv_tensors.Image and image.dtype == ref_image.dtype
            assert torch.equal(image, ref_image)
            boxes = target["boxes"]
            assert type(boxes) is tv_tensors.BoundingBoxes
            assert boxes.format == ref_target["boxes"].format and boxes.canvas_size == ref_target["boxes"].canvas_size
            assert torch.equal(boxes, ref_target["boxes"])
            assert target.get("pixel_spacing_mm") == ref_target.get("pixel_spacing_mm")
            for key, value in ref_target.items():
                if isinstance(value, tv_tensors.Mask):
                    assert type(target[key]) is tv_tensors.Mask and torch.equal(target[key], value)


def test_collate_samples_rejects_non_samples():
    with pytest.raises(ValueError, match="non-empty"):
        collate_samples([])
    with pytest.raises(TypeError, match="tuples"):
        collate_samples([torch.zeros(1)])
    with pytest.raises(ValueError, match=r"batch\[1\]"):
        collate_samples([(1, 2), (1, 2, 3)])
