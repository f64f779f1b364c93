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
    ann = parse_vindr_csv(_xrv_csv("vinbigdata-train.csv.gz"), fuse_iou=None)  # every reader's box
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
    _check_sample((img, t), 1, (50, 60))  # two readers' boxes of one lesion (IoU 0.71): one box
    torch.testing.assert_close(t["boxes"][0], torch.tensor([10.5, 11.5, 20.5, 24.5]))
    assert int(img.to(torch.int32).max()) == 4095 - 500 and t["pixel_spacing_mm"] == (0.15, 0.15)
    _check_sample(ds[1], 0, (50, 60))
    assert "pixel_spacing_mm" not in ds[1][1]  # unknown spacing: no key (torch's default collate refuses None)
    assert len(VinDrCXRDataset(tmp_path, fuse_iou=None)[0][1]["boxes"]) == 2
    assert len(VinDrCXRDataset(tmp_path, radiologists=["R9"])[0][1]["boxes"]) == 1


def test_vindr_readers_fused_per_lesion(tmp_path):
    from cxr_nodule_aug.datasets.vindr import fuse_reader_boxes

    csv = tmp_path / "train.csv"
    csv.write_text("image_id,class_name,class_id,rad_id,x_min,y_min,x_max,y_max\n"
                   # one lesion, three readers
                   "a,Nodule/Mass,8,R8,100,100,140,140\na,Nodule/Mass,8,R9,104,102,144,138\na,Nodule/Mass,8,R10,98,100,136,142\n"
                   # another lesion far away, one reader; a box of another class on the first lesion
                   "a,Nodule/Mass,8,R9,300,300,320,320\na,Mass,9,R8,100,100,140,140\n")
    fused = parse_vindr_csv(csv, classes=("Nodule/Mass", "Mass"))["a"]
    np.testing.assert_allclose(fused, [[302 / 3, 302 / 3, 420 / 3, 420 / 3], [300, 300, 320, 320], [100, 100, 140, 140]], rtol=1e-6)
    assert len(parse_vindr_csv(csv, fuse_iou=None)["a"]) == 4
    # single linkage: A~B and B~C put A and C together even if A and C alone would not be
    chain = np.array([[0, 0, 10, 10], [3, 0, 13, 10], [6, 0, 16, 10]], np.float32)
    assert fuse_reader_boxes(chain, 0.5).tolist() == [[3.0, 0.0, 13.0, 10.0]]
    assert len(fuse_reader_boxes(chain, 0.9)) == 3
    with pytest.raises(ValueError, match="fuse_iou"):
        fuse_reader_boxes(chain, 0.0)


def test_vindr_real_rows_fused():
    path = _xrv_csv("vinbigdata-train.csv.gz")
    fused = parse_vindr_csv(path)
    separate = parse_vindr_csv(path, fuse_iou=None)
    n_fused, n_separate = sum(len(v) for v in fused.values()), sum(len(v) for v in separate.values())
    with_boxes = sum(1 for v in separate.values() if len(v))
    # measured on these rows: 2580 reader boxes on 826 images -> 1862 lesions
    assert with_boxes <= n_fused < 0.8 * n_separate


@pytest.mark.parametrize("name", ["../../x.png", "/etc/x.png", "..\\x.png", "C:\\x.png"])
def test_node21_image_paths_stay_inside_the_root(tmp_path, name):
    (tmp_path / "images").mkdir()
    (tmp_path / "metadata.csv").write_text(f"img_name,x,y,width,height,label\nb.png,0,0,0,0,0\n{name},1,1,2,2,1\n")
    with pytest.raises(ValueError, match=r"metadata.csv:3: img_name"):
        Node21Dataset(tmp_path)


def test_symlink_out_of_the_image_folder_is_refused(tmp_path):
    from PIL import Image

    (tmp_path / "images").mkdir()
    Image.fromarray(np.full((8, 8), 9, np.uint8)).save(tmp_path / "outside.png")
    (tmp_path / "images" / "a.png").symlink_to(tmp_path / "outside.png")
    (tmp_path / "metadata.csv").write_text("img_name,x,y,width,height,label\na.png,0,0,0,0,0\n")
    with pytest.raises(ValueError, match="outside the image folder"):
        Node21Dataset(tmp_path)


@pytest.mark.parametrize("box, why", [("nan,1,2,2", "NaN"), ("1,inf,2,2", "NaN or infinite"), ("1e9,1,2,2", "beyond"),
                                      ("1,1,0,2", "no area"), ("1,1,2,-3", "no area")])
def test_bad_boxes_are_refused_naming_the_row(tmp_path, box, why):
    (tmp_path / "metadata.csv").write_text(f"img_name,x,y,width,height,label\na.png,1,1,2,2,1\na.png,{box},1\n")
    with pytest.raises(ValueError, match=rf"metadata.csv:3: box .* {why}"):
        parse_node21_metadata(tmp_path / "metadata.csv")
    x, y, w, h = box.split(",")
    (tmp_path / "bbox.csv").write_text(f"Image Index,Finding Label,Bbox [x,y,w,h],,,\na.png,Nodule,{x},{y},{w},{h}\n")
    with pytest.raises(ValueError, match=rf"bbox.csv:2: box .* {why}"):
        parse_bbox_list(tmp_path / "bbox.csv")
    x1, y1 = float(x) + float(w), float(y) + float(h)
    (tmp_path / "train.csv").write_text(f"image_id,class_name,rad_id,x_min,y_min,x_max,y_max\na,Nodule/Mass,R1,{x},{y},{x1},{y1}\n")
    with pytest.raises(ValueError, match=rf"train.csv:2: box .* {why}"):
        parse_vindr_csv(tmp_path / "train.csv")


def test_other_readers_refuse_names_outside_the_root(tmp_path):
    (tmp_path / "bbox.csv").write_text("Image Index,Finding Label,Bbox [x,y,w,h],,,\n../a.png,Nodule,1,1,2,2\n")
    with pytest.raises(ValueError, match=r"bbox.csv:2: Image Index '../a.png'"):
        parse_bbox_list(tmp_path / "bbox.csv")
    (tmp_path / "train.csv").write_text("image_id,class_name,rad_id,x_min,y_min,x_max,y_max\n/abs/a,No finding,R1,,,,\n")
    with pytest.raises(ValueError, match=r"train.csv:2: image_id '/abs/a'"):
        parse_vindr_csv(tmp_path / "train.csv")
    (tmp_path / "CLNDAT_EN.txt").write_text("../JPCLN001.IMG\t3\t15\t53\tmale\t1634\t692\tmalignant\n")
    with pytest.raises(ValueError, match=r"CLNDAT_EN.txt:1: file name"):
        parse_jsrt_list(tmp_path / "CLNDAT_EN.txt")
