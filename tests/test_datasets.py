"""Dataset classes on small fixtures written here, and annotation parsers on the real CSV rows
shipped in the torchxrayvision wheel."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from cxr_nodule_aug.datasets import (
    ChestXray14Dataset, JSRTDataset, Node21Dataset, VinDrCXRDataset, parse_bbox_list, parse_jsrt_list,
    parse_node21_metadata, parse_vindr_csv,
)


def _xrv_csv(name: str) -> Path:
    spec = importlib.util.find_spec("torchxrayvision")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("torchxrayvision (installed --no-deps for its CSVs) is not available")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / name
    if not path.is_file():
        pytest.skip(f"{name} not in torchxrayvision")
    return path


def _check_sample(sample, n_boxes, shape):
    img, t = sample
    assert isinstance(img, tv_tensors.Image) and img.shape == (1, *shape)
    assert isinstance(t["boxes"], tv_tensors.BoundingBoxes) and t["boxes"].canvas_size == shape
    assert t["boxes"].shape == (n_boxes, 4) and t["labels"].dtype == torch.int64 and len(t["labels"]) == n_boxes


def test_chestxray14_real_rows():
    ann = parse_bbox_list(_xrv_csv("BBox_List_2017.csv.gz"))
    assert sum(len(v) for v in ann.values()) == 79
    boxes = np.concatenate(list(ann.values()))
    assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
    assert boxes.min() >= 0 and boxes.max() <= 1024
    both = parse_bbox_list(_xrv_csv("BBox_List_2017.csv.gz"), findings=("Nodule", "Mass"))
    assert sum(len(v) for v in both.values()) > 79


def test_vindr_real_rows():
    ann = parse_vindr_csv(_xrv_csv("vinbigdata-train.csv.gz"))
    n_boxes = sum(len(v) for v in ann.values())
    assert n_boxes > 2000 and len(ann) > 10000  # negatives are listed too
    boxes = np.concatenate([v for v in ann.values() if len(v)])
    assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
    one = parse_vindr_csv(_xrv_csv("vinbigdata-train.csv.gz"), radiologists=["R8"])
    assert 0 < sum(len(v) for v in one.values()) < n_boxes


def test_chestxray14_dataset(tmp_path):
    from PIL import Image

    Image.fromarray(np.full((64, 64), 100, np.uint8)).save(tmp_path / "00000001_000.png")
    Image.fromarray(np.full((64, 64), 90, np.uint8)).save(tmp_path / "00000002_000.png")
    csv = tmp_path / "BBox_List_2017.csv"
    csv.write_text("Image Index,Finding Label,Bbox [x,y,w,h],,,\n"
                   "00000001_000.png,Nodule,10.5,20,8,6\n00000001_000.png,Atelectasis,1,1,5,5\n")
    ds = ChestXray14Dataset(tmp_path, csv, negatives=["00000002_000.png"],
                            transforms=v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Resize(32)]))
    assert len(ds) == 2
    img, t = ds[0]
    assert img.dtype == torch.float32 and img.shape == (1, 32, 32)
    torch.testing.assert_close(t["boxes"], torch.tensor([[5.25, 10.0, 9.25, 13.0]]))
    _check_sample(ds[1], 0, (32, 32))
    csv.write_text(csv.read_text() + "00000009_000.png,Nodule,1,1,5,5\n")
    with pytest.raises(FileNotFoundError, match="00000009_000.png"):
        ChestXray14Dataset(tmp_path, csv)


def test_node21_dataset(tmp_path):
    sitk = pytest.importorskip("SimpleITK")
    (tmp_path / "images").mkdir()
    for name in ("n1.mha", "n2.mha"):
        sitk.WriteImage(sitk.GetImageFromArray(np.full((48, 40), 3000, np.uint16)), str(tmp_path / "images" / name))
    (tmp_path / "metadata.csv").write_text("img_name,x,y,width,height,label\n"
                                           "n1.mha,5,6,10,12,1\nn1.mha,20,20,5,5,1\nn2.mha,0,0,0,0,0\n")
    assert {k: len(v) for k, v in parse_node21_metadata(tmp_path / "metadata.csv").items()} == {"n1.mha": 2, "n2.mha": 0}
    ds = Node21Dataset(tmp_path)
    _check_sample(ds[0], 2, (48, 40))
    _check_sample(ds[1], 0, (48, 40))
    img, t = ds[0]
    assert img.dtype == torch.uint16 and t["image_id"] == "n1"
    torch.testing.assert_close(t["boxes"][0], torch.tensor([5.0, 6.0, 15.0, 18.0]))
    (tmp_path / "metadata.csv").write_text("img_name,x,y,width,height,label\nmissing.mha,1,1,2,2,1\n")
    with pytest.raises(FileNotFoundError, match="missing.mha"):
        Node21Dataset(tmp_path)
    (tmp_path / "metadata.csv").write_text("img_name,x,y\nn1.mha,1,1\n")
    with pytest.raises(ValueError, match="missing NODE21 columns"):
        Node21Dataset(tmp_path)


def test_jsrt_dataset(tmp_path):
    from PIL import Image

    lst = tmp_path / "CLNDAT_EN.txt"
    lst.write_text("JPCLN001.IMG\t3\t15\t53\tmale\t1634\t692\tmalignant\tl.upper lobe\tlung cancer\n"
                   "JPCLN002.IMG\t5\t30\t?\tfemale\t1024\t1024\tbenign\tr.lower lobe\thamartoma\n")
    nn = tmp_path / "CNNDAT_EN.TXT"
    nn.write_text("JPCNN001.IMG\t41\tmale\tnon-nodule\n")
    nods = parse_jsrt_list(lst)
    assert [(n.size_mm, n.x_px, n.y_px) for n in nods] == [(15.0, 1634.0, 692.0), (30.0, 1024.0, 1024.0)]
    for name in ("JPCLN001", "JPCLN002", "JPCNN001"):
        Image.fromarray(np.full((256, 256), 2000, np.uint16)).save(tmp_path / f"{name}.png")
    ds = JSRTDataset(tmp_path, lst, nn, image_ext=".png", image_size=256)
    assert len(ds) == 3
    img, t = ds[0]
    half = 0.5 * 15 / 0.175 / 8
    torch.testing.assert_close(t["boxes"][0], torch.tensor([1634 / 8 - half, 692 / 8 - half, 1634 / 8 + half, 692 / 8 + half]))
    assert t["pixel_spacing_mm"] == (0.175 * 8, 0.175 * 8)
    _check_sample(ds[2], 0, (256, 256))


def test_vindr_dataset(tmp_path):
    from tests.test_io import write_dicom

    (tmp_path / "train").mkdir()
    write_dicom(tmp_path / "train" / "abc.dicom", np.full((50, 60), 500, np.uint16), photometric="MONOCHROME1",
                imager_spacing=(0.15, 0.15))
    write_dicom(tmp_path / "train" / "def.dicom", np.full((50, 60), 500, np.uint16))
    (tmp_path / "train.csv").write_text(
        "image_id,class_name,class_id,rad_id,x_min,y_min,x_max,y_max\n"
        "abc,Nodule/Mass,8,R9,10,11,20,25\nabc,Nodule/Mass,8,R10,11,12,21,24\nabc,Aortic enlargement,0,R9,1,1,5,5\n"
        "def,No finding,14,R9,,,,\n")
    ds = VinDrCXRDataset(tmp_path)
    img, t = ds[0]
    _check_sample((img, t), 2, (50, 60))
    assert int(img.to(torch.int32).max()) == 4095 - 500 and t["pixel_spacing_mm"] == (0.15, 0.15)
    _check_sample(ds[1], 0, (50, 60))
    assert len(VinDrCXRDataset(tmp_path, radiologists=["R9"])[0][1]["boxes"]) == 1
