"""Box-only data (issue #14): nodule extraction from a box, ``cxr-nodule-aug masks``, datasets
that attach the pseudo masks, and a NODE21-layout dataset with boxes only going through masks,
train shape, train texture, train detector, hem, synthesize, predict and eval."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import tv_tensors

from cxr_nodule_aug.cli import main
from cxr_nodule_aug.datasets import Node21Dataset, SimCXRDataset, open_dataset
from cxr_nodule_aug.functional.extraction import extract_nodules, inscribed_ellipse, labelled_mask
from cxr_nodule_aug.transforms import NoduleInpaint
from tests.conftest import tiny_sim_export

ROOT = Path(__file__).resolve().parents[1]


def _blob_image(size=96, centre=(40, 50), radius=9.0, amplitude=3000.0, seed=0):
    """A uint16 radiograph-like image: a sloped background with a rib-like band and noise, plus a
    disc-shaped nodule whose profile is its chord (a sphere's projection). Returns (image, true mask)."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32), indexing="ij")
    background = 20000 + 60 * xx + 30 * yy + 4000 * torch.exp(-((yy - 0.4 * xx - 20) ** 2) / 30)
    rho2 = ((yy - centre[1]) ** 2 + (xx - centre[0]) ** 2) / radius**2
    nodule = amplitude * torch.sqrt((1 - rho2).clamp(min=0))
    image = background + nodule + 150 * torch.randn(size, size, generator=g)
    return image.round().clamp(0, 65535).to(torch.int32).to(torch.uint16)[None], rho2 <= 1


def _dice(a, b):
    return 2 * float((a & b).sum()) / float(a.sum() + b.sum())


def test_extraction_finds_the_nodule_in_its_box_and_leaves_the_input_alone():
    image, truth = _blob_image()
    before = image.clone()
    box = [31.0, 41.0, 50.0, 60.0]  # tight around the r = 9 disc at (40, 50)
    (e,) = extract_nodules(image, [box], prior=0.0)
    assert torch.equal(image, before)
    assert not e.fallback and e.reason == ""
    assert e.window_xyxy == (31, 41, 50, 60) and e.mask.shape == e.residual.shape == e.background.shape == (19, 19)
    full = e.full_mask(96, 96)
    assert _dice(full, truth) > 0.8
    assert not full[:41].any() and not full[:, :31].any() and not full[60:].any() and not full[:, 50:].any()  # never leaves its box
    # The residual is the nodule: positive inside, well above the noise.
    assert e.contrast > 0 and e.snr > 3


def test_a_box_without_a_nodule_falls_back_to_the_inscribed_ellipse_flagged():
    image, _ = _blob_image(amplitude=0.0)
    (e,) = extract_nodules(image, [[10.0, 10.0, 22.0, 30.0]], min_snr=10.0)  # noise only: its peak is a few x the noise
    assert e.fallback and "noise" in e.reason
    assert torch.equal(e.mask, inscribed_ellipse(20, 12))
    dark, _ = _blob_image(amplitude=-3000.0)  # a dark disc is no nodule
    (e,) = extract_nodules(dark, [[31.0, 41.0, 50.0, 60.0]], prior=0.0)
    assert e.fallback and e.reason


def test_extraction_bad_inputs_are_named():
    image, _ = _blob_image()
    with pytest.raises(ValueError, match="outside"):
        extract_nodules(image, [[200.0, 200.0, 210.0, 210.0]])
    with pytest.raises(ValueError, match="x1 > x0"):
        extract_nodules(image, [[20.0, 20.0, 10.0, 30.0]])
    with pytest.raises(ValueError, match="prior"):
        extract_nodules(image, [[10.0, 10.0, 20.0, 20.0]], prior=2.0)
    assert extract_nodules(image, torch.zeros(0, 4)) == []


def test_labelled_mask_gives_each_box_its_label():
    image, _ = _blob_image()
    es = extract_nodules(image, [[31.0, 41.0, 50.0, 60.0], [5.0, 5.0, 15.0, 15.0]])
    lab = labelled_mask(es, 96, 96)
    assert lab.dtype == np.uint8 and set(np.unique(lab)) == {0, 1, 2}


def test_box_layer_pairs_are_the_clipped_residual_on_the_estimated_background():
    """Box-only layer pairs: context = the image with the box's background under the mask, layer =
    the residual clipped at 0 inside the mask, 0 outside; density solid unless recorded."""
    from cxr_nodule_aug.functional.intensity import to_working
    from cxr_nodule_aug.models.layer import DENSITY_CLASSES
    from cxr_nodule_aug.train.layer import box_only_layers, extract_box_layer_pairs

    image, truth = _blob_image()
    before = image.clone()
    boxes = torch.tensor([[31.0, 41.0, 50.0, 60.0]])
    (e,) = extract_nodules(image, boxes)
    masks = e.full_mask(96, 96)[None]
    gray, lo, hi = to_working(image)
    free, nodule = box_only_layers(image, boxes, masks)
    assert torch.equal(image, before)
    m = masks[0]
    assert torch.equal(free[~m], gray[~m]) and torch.equal(nodule[~m], gray[~m])
    x0, y0, x1, y1 = e.window_xyxy
    assert torch.allclose(free[y0:y1, x0:x1][e.mask], e.background[e.mask])
    assert torch.allclose((nodule - free)[y0:y1, x0:x1][e.mask], e.residual.clamp(min=0)[e.mask])
    # The estimated layer is close to the true one: the disc's chord profile, 3000 grey levels high.
    true_peak = 3000.0 / float(hi - lo)
    assert abs(float((nodule - free).max()) - true_peak) < 0.25 * true_peak

    pairs = extract_box_layer_pairs([(image, {"boxes": boxes, "masks": masks})], 32, 0.5)
    assert pairs["context"].shape == pairs["layer"].shape == pairs["mask"].shape == (1, 1, 32, 32)
    assert (pairs["layer"] >= 0).all() and (pairs["layer"] > 0).any()
    assert (pairs["layer"][pairs["mask"] == 0] == 0).all()
    assert torch.allclose(pairs["nodule"] - pairs["context"], pairs["layer"], atol=1e-5)  # cut unresampled here
    assert DENSITY_CLASSES[int(pairs["density"][0])] == "solid"
    recorded = extract_box_layer_pairs([(image, {"boxes": boxes, "masks": masks, "density": ["ground_glass"]})], 32, 0.5)
    assert DENSITY_CLASSES[int(recorded["density"][0])] == "ground_glass"
    with pytest.raises(ValueError, match="density"):
        extract_box_layer_pairs([(image, {"boxes": boxes, "masks": masks, "density": ["glassy"]})], 32, 0.5)
    with pytest.raises(ValueError, match="nodule_masks="):
        extract_box_layer_pairs([(image, {"boxes": boxes})], 32, 0.5)
    outside = torch.zeros_like(masks)
    outside[0, 5:10, 5:10] = True
    with pytest.raises(ValueError, match="outside its box"):
        box_only_layers(image, boxes, outside)


# ---- a NODE21-layout copy of a tiny SimCXR export: boxes only ----------------------------------


def _png16(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def sim(tmp_path_factory) -> Path:
    return tiny_sim_export(tmp_path_factory, normal=2, nodule=4, seed=5, size=128)


@pytest.fixture(scope="module")
def node21(sim, tmp_path_factory) -> Path:
    """``images/*.png`` (16-bit) and ``metadata.csv``: no masks, no spacing, no lung masks."""
    root = tmp_path_factory.mktemp("boxonly") / "node21"
    (root / "images").mkdir(parents=True)
    ds = SimCXRDataset(sim)
    rows = ["img_name,x,y,width,height,label"]
    for i in range(len(ds)):
        image, target = ds[i]
        name = f"{target['image_id']}.png"
        (root / "images" / name).write_bytes(_png16(image.as_subclass(torch.Tensor)[0].to(torch.int32).numpy().astype(np.uint16)))
        boxes = target["boxes"].as_subclass(torch.Tensor).tolist()
        rows += [f"{name},{x0},{y0},{x1 - x0},{y1 - y0},1" for x0, y0, x1, y1 in boxes] or [f"{name},0,0,0,0,0"]
    (root / "metadata.csv").write_text("\n".join(rows) + "\n")
    return root


@pytest.fixture(scope="module")
def masks(node21, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("boxonly") / "masks"
    assert main(["masks", "--data", str(node21), "--out", str(out), "--no-progress"]) == 0
    return out


def test_masks_command_writes_labelled_masks_quality_and_sheet(node21, masks, sim):
    n_boxes = len((node21 / "metadata.csv").read_text().splitlines()) - 1 - 2  # two label-0 rows
    rows = list(csv.DictReader(open(masks / "nodules.csv")))
    assert len(rows) == n_boxes
    assert {"contrast", "snr", "fallback", "reason", "diameter_px"} <= set(rows[0])
    assert (masks / "contact_sheet.png").is_file()
    assert len(list((masks / "masks").glob("*.png"))) == 4  # the two normal images get none
    # The dataset attaches them as instance masks, one per box, inside its box; close to the truth.
    ds = open_dataset("node21", node21, nodule_masks=masks)
    truth = SimCXRDataset(sim)
    dice = []
    for i in range(len(ds)):
        _, target = ds[i]
        _, true_target = truth[[t["img_name"] for t in truth.records].index(ds.image_name(i))]
        m = target["masks"].as_subclass(torch.Tensor)
        assert m.shape[0] == len(target["boxes"]) and m.dtype == torch.bool
        for k in range(len(m)):
            assert m[k].any()
            dice.append(_dice(m[k], true_target["masks"][k].as_subclass(torch.Tensor).bool()))
    assert np.median(dice) > 0.6, dice


def test_masks_command_resumes_and_names_failed_images(node21, masks, tmp_path, capsys):
    out = tmp_path / "again"
    shutil.copytree(masks, out)
    first = sorted((out / "masks").glob("*.png"))[0]
    first.unlink()
    assert main(["masks", "--data", str(node21), "--out", str(out), "--no-progress"]) == 0
    assert "wrote masks for 1, kept 3" in capsys.readouterr().out
    # An unreadable image: exit 3, named on stderr and in failed.txt; the others are kept.
    bad = tmp_path / "bad"
    shutil.copytree(node21, bad)
    victim = sorted((bad / "images").glob("*.png"))[0]
    victim.write_bytes(b"not a png")
    out2 = tmp_path / "out2"
    assert main(["masks", "--data", str(bad), "--out", str(out2), "--no-progress"]) == 3
    captured = capsys.readouterr()
    assert victim.name in captured.err and victim.name in (out2 / "failed.txt").read_text()


def test_datasets_refuse_masks_made_for_other_boxes(node21, masks, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(node21, other)
    lines = (other / "metadata.csv").read_text().splitlines()
    first_box = next(ln for ln in lines[1:] if ln.endswith(",1"))
    (other / "metadata.csv").write_text("\n".join([*lines, first_box]) + "\n")  # one more box on that image
    ds = Node21Dataset(other).use_nodule_masks(masks)
    name = first_box.split(",")[0]
    with pytest.raises(ValueError, match="expected 1.."):
        ds[ds.names.index(name)]
    with pytest.raises(ValueError, match="ships its own nodule masks"):
        open_dataset("simcxr", node21, nodule_masks=masks)
    with pytest.raises(FileNotFoundError, match="cxr-nodule-aug masks"):
        Node21Dataset(node21).use_nodule_masks(tmp_path)


def test_train_shape_refuses_a_folder_of_radiographs(node21, tmp_path, capsys):
    code = main(["train", "shape", f"data={node21 / 'images'}", f"out={tmp_path / 'shape'}", "steps=1"])
    assert code == 1
    err = capsys.readouterr().err
    assert "distinct values" in err and "radiographs" in err
    assert not (tmp_path / "shape").exists()


def test_texture_training_on_box_only_data_asks_for_masks(node21, tmp_path, capsys):
    assert main(["train", "texture", f"data={node21}", "dataset=node21", f"out={tmp_path / 't'}", "steps=1"]) == 1
    assert "cxr-nodule-aug masks" in capsys.readouterr().err


def test_layer_training_on_box_only_data_asks_for_masks(node21, tmp_path, capsys):
    assert main(["train", "layer", f"data={node21}", "dataset=node21", f"out={tmp_path / 'l'}", "steps=1"]) == 1
    assert "cxr-nodule-aug masks" in capsys.readouterr().err


def test_box_only_end_to_end(node21, masks, tmp_path):
    """masks -> train shape -> train texture -> train layer (loaded by NoduleInpaint, additive) -> export -> train detector -> hem -> synthesize (with the
    box-only models) -> predict -> eval, every command through the CLI, tiny models."""
    runs = tmp_path / "runs"
    assert main(["train", "shape", "--config", "shape-cpu", f"masks={masks}", f"out={runs / 'shape'}", "steps=2", "base_width=16", "d_width=16",
                 "image_size=32", "batch_size=2", "sample_every=2", "checkpoint_every=2"]) == 0
    assert main(["train", "texture", f"data={node21}", "dataset=node21", f"masks={masks}", f"out={runs / 'texture'}", "steps=2",
                 "base_width=4", "d_width=8", "patch_size=32", "batch_size=2", "w_perceptual=0", "holdout_fraction=0",
                 "sample_every=2", "checkpoint_every=2"]) == 0
    split = json.loads((runs / "texture" / "split.json").read_text())
    n_boxes = len(list(csv.DictReader(open(masks / "nodules.csv"))))
    assert split["train_pairs"] == n_boxes
    # the additive layer model from the same boxes and masks; it loads and inserts a nodule
    assert main(["train", "layer", "--config", "layer-cpu", f"data={node21}", "dataset=node21", f"masks={masks}", f"out={runs / 'layer'}",
                 "steps=2", "base_width=4", "patch_size=32", "batch_size=2", "holdout_fraction=0", "sample_every=2", "checkpoint_every=2"]) == 0
    layer_split = json.loads((runs / "layer" / "split.json").read_text())
    assert layer_split["train_pairs"] == n_boxes and layer_split["train_density_counts"]["solid"] == n_boxes
    tf = NoduleInpaint((10.0, 20.0), p=1.0, shape_model=runs / "shape" / "model", texture_model=runs / "layer" / "model", lung_model=False,
                       composition="additive", generator=torch.Generator().manual_seed(0))
    image, target = open_dataset("node21", node21)[0]
    target["lung_mask"] = tv_tensors.Mask(torch.ones(image.shape[-2:], dtype=torch.bool))
    out, out_target = tf(image, target)
    # (the density is drawn at LIDC-IDRI's frequencies by default)
    assert len(out_target["boxes"]) > len(target["boxes"]) and out_target["nodules"][0].density in ("ground_glass", "part_solid", "solid", "calcified")
    diff = out.as_subclass(torch.Tensor).int() - image.as_subclass(torch.Tensor).int()
    assert (diff >= 0).all() and (diff > 0).any()
    weights = tmp_path / "my-weights"
    assert main(["export", str(runs / "shape"), "--name", "shape", "--weights-dir", str(weights)]) == 0
    assert main(["export", str(runs / "texture"), "--name", "texture", "--weights-dir", str(weights)]) == 0
    # synthesize's default composition is additive: it needs the layer model in the folder
    assert main(["export", str(runs / "layer"), "--name", "layer", "--weights-dir", str(weights)]) == 0
    shutil.copytree(ROOT / "weights" / "lung", weights / "lung")
    det = ["train", "detector", f"data={node21}", "dataset=node21", f"out={runs / 'det'}", "steps=2", "image_size=64",
           "fpn_channels=16", "box_head_width=32", "batch_size=2", "holdout_fraction=0.25", "eval_every=2", "checkpoint_every=2"]
    assert main(det) == 0
    assert main(["hem", "--detector", str(runs / "det" / "model"), "--data", str(node21), "--dataset", "node21",
                 "--score-threshold", "1.0", "--out", str(runs / "hem")]) == 0
    assert main(["synthesize", "--data", str(node21), "--dataset", "node21", "--count", "2", "--diameters",
                 str(runs / "hem" / "hem_sampler.json"), "--weights", str(weights), "--out", str(runs / "synth"), "--no-progress"]) == 0
    assert len(list((runs / "synth" / "images").iterdir())) == 2
    assert main(["predict", "--detector", str(runs / "det" / "model"), "--data", str(node21), "--dataset", "node21",
                 "--out", str(runs / "predictions.json")]) == 0
    assert main(["eval", "--predictions", str(runs / "predictions.json"), "--ground-truth", str(node21 / "metadata.csv"),
                 "--out", str(runs / "eval")]) == 0
    assert "node21_score" in json.loads((runs / "eval" / "metrics.json").read_text())
