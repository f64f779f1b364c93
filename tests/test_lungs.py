"""``cxr-nodule-aug lungs`` and the detector keys that use it (``lung_masks``, ``worker_niceness``),
and the shipped lung model on the real radiograph.

A tiny NODE21-layout set (16-bit PNGs cut from a 128 px SimCXR export, shipped weights): the
written masks are the ones ``NoduleInpaint`` computes online, the dataset reads them back, and
augmenting with them gives the same output as without.

The thorax region of RG1_UNCR (``benchmarks/lung_check.py``'s ``RG1_ANATOMY``) was read off the
image by eye: the apex row 120 px (the patient's right apex is at ~135 px, the left at ~128 px),
the rib cage's outer edge (~105 px and ~1720 px at mid height), and the diaphragm domes (right
dome top ~1400 px at x ~450, left ~1445 px at x ~1450; costophrenic angles ~1570 and ~1585 px).
``docs/lung_check_rg1.png`` draws it in yellow.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_sim_export
import torch
from PIL import Image

from cxr_nodule_aug import NoduleInpaint
from cxr_nodule_aug.datasets import LowPriorityWorkers, Node21Dataset, SimCXRDataset
from cxr_nodule_aug.datasets import lung_mask_filename
from cxr_nodule_aug.models import LungSegmenter
from cxr_nodule_aug.io import png_bytes
import cxr_nodule_aug.train
from cxr_nodule_aug.cli import lungs, main
from cxr_nodule_aug.train.common import resolve_config
from cxr_nodule_aug.train.detector import DetectorConfig, build_loader, build_sets

CONFIGS = Path(cxr_nodule_aug.train.__file__).resolve().parent / "configs"
ROOT = Path(__file__).resolve().parents[1]
# A dotted name: its mask is "c.png", the rule the dataset reads with.
NAMES = ("a.png", "b.png", "c.v2.png")


def _write_node21(root: Path, images: list[tuple[str, np.ndarray, list[list[float]]]]) -> Path:
    (root / "images").mkdir(parents=True)
    rows = ["img_name,x,y,width,height,label"]
    for name, pixels, boxes in images:
        (root / "images" / name).write_bytes(png_bytes(pixels))
        rows += [f"{name},{x0},{y0},{x1 - x0},{y1 - y0},1" for x0, y0, x1, y1 in boxes] or [f"{name},0,0,0,0,0"]
    (root / "metadata.csv").write_text("\n".join(rows) + "\n")
    return root


@pytest.fixture(scope="module")
def sim_export(tmp_path_factory) -> Path:
    return tiny_sim_export(tmp_path_factory, normal=2, nodule=1)


@pytest.fixture(scope="module")
def node21(sim_export, tmp_path_factory) -> Path:
    """NODE21 layout, no lung masks: 3 renders as 16-bit PNGs with their boxes."""
    sim = SimCXRDataset(sim_export)
    images = []
    for name, (image, target) in zip(NAMES, (sim[i] for i in range(len(sim)))):
        pixels = image.as_subclass(torch.Tensor)[0].to(torch.int32).numpy().astype(np.uint16)
        images.append((name, pixels, target["boxes"].as_subclass(torch.Tensor).round().tolist()))
    return _write_node21(tmp_path_factory.mktemp("node21") / "root", images)


@pytest.fixture(scope="module")
def inpaint() -> NoduleInpaint:
    """The transform train detector's augmentation builds: shipped weights."""
    return NoduleInpaint(diameters=(4.0, 8.0), unit="px", num_nodules=(1, 2), p=1.0, generator=torch.Generator())


@pytest.fixture(scope="module")
def masks(node21, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("lungs") / "masks"
    assert _lungs(node21, out) == 0
    return out


def _lungs(data: Path, out: Path, *extra: str) -> int:
    return main(["lungs", "--data", str(data), "--dataset", "node21", "--out", str(out), "--no-progress", *extra])


def _read(path: Path) -> torch.Tensor:
    return torch.from_numpy(np.array(Image.open(path)))


def test_masks_are_the_online_ones_and_the_dataset_reads_them(node21, masks, inpaint):
    plain = Node21Dataset(node21)
    assert sorted(p.name for p in masks.iterdir()) == ["a.png", "b.png", "c.png"]  # no failed.txt
    with_masks = Node21Dataset(node21, lung_mask_dir=masks)
    for i, (image_id, path, _) in enumerate(plain.items):
        image, target = plain[i]
        assert "lung_mask" not in target
        online = inpaint.lung_mask(image, target)  # the lung model, as during training (this process's threads)
        written = _read(masks / lung_mask_filename(path))
        assert written.dtype == torch.uint8 and written.shape == image.shape[-2:] == (128, 128)
        assert set(written.unique().tolist()) == {0, 255}
        assert torch.equal(written > 0, online)
        read_back = with_masks[i][1]["lung_mask"]
        assert read_back.dtype == torch.bool and torch.equal(read_back.as_subclass(torch.Tensor), online)
    assert plain.items[2][0] == "c.v2" and lung_mask_filename(plain.items[2][1]) == "c.png"


def test_a_precomputed_mask_changes_nothing_but_speed(node21, masks, inpaint):
    for i in range(3):
        image, target = Node21Dataset(node21)[i]
        _, given = Node21Dataset(node21, lung_mask_dir=masks)[i]
        inpaint.generator.manual_seed(100 + i)
        out_online, t_online = inpaint(image, target)
        inpaint.generator.manual_seed(100 + i)
        out_given, t_given = inpaint(image, given)
        assert len(t_online["nodules"]) >= 1
        assert torch.equal(out_online.as_subclass(torch.Tensor), out_given.as_subclass(torch.Tensor))
        assert torch.equal(t_online["boxes"].as_subclass(torch.Tensor), t_given["boxes"].as_subclass(torch.Tensor))
        assert [r.to_dict() for r in t_online["nodules"]] == [r.to_dict() for r in t_given["nodules"]]


def test_rerun_skips_existing_masks(node21, masks, tmp_path, capsys):
    out = tmp_path / "m"
    shutil.copytree(masks, out)
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.iterdir()}
    assert _lungs(node21, out) == 0
    assert "wrote 0 lung masks, kept 3" in capsys.readouterr().out
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.iterdir()} == before
    (out / "b.png").unlink()
    assert _lungs(node21, out) == 0
    assert "wrote 1 lung masks, kept 2" in capsys.readouterr().out
    assert (out / "b.png").read_bytes() == before["b.png"][0]
    assert not list(out.glob(".*"))  # no temporary files left behind


class FindsNoLungIn(LungSegmenter):
    """The shipped segmenter's answer, except an empty mask for one given model input (1, 1, H, W)."""

    def __init__(self, real: LungSegmenter, blind_to: torch.Tensor) -> None:
        super().__init__(**real.config)
        self.load_state_dict(real.state_dict())
        self.blind_to = blind_to

    def predict_mask(self, image, **kw):
        mask = super().predict_mask(image, **kw)
        return torch.zeros_like(mask) if torch.equal(image, self.blind_to) else mask


def test_images_without_a_lung_get_no_file_and_are_listed(node21, masks, inpaint, tmp_path):
    ds = Node21Dataset(node21)
    image, target = ds[1]
    gray = inpaint.lung_mask_and_working(image, target)[1][0]  # what the lung model is given
    blind = FindsNoLungIn(inpaint.lung_model, gray.clamp(0, 1)[None, None]).eval()
    stub = NoduleInpaint(lung_model=blind, shape_model=inpaint.shape_model, texture_model=inpaint.texture_model)
    out = tmp_path / "m"
    summary = lungs.write_lung_masks(ds, out, stub)
    assert summary.written == ["a.png", "c.png"] and summary.skipped == []
    assert [p for p, _ in summary.failed] == [str(ds.items[1][1])] and "no lung" in summary.failed[0][1]
    assert not (out / "b.png").exists()  # never an empty mask
    assert (out / "failed.txt").read_text().startswith(f"{ds.items[1][1]}\t")
    # train detector refuses the folder up front, pointing at failed.txt.
    cfg = DetectorConfig(data=str(node21), dataset="node21", augment_p=0.5, lung_masks=str(out), holdout_fraction=0.0)
    with pytest.raises(FileNotFoundError, match=r"lung_masks=.*no lung mask for 1 of 3 images.*failed\.txt"):
        build_sets(cfg)
    # A later run that finds every lung fills the gap and drops the stale failed.txt.
    summary = lungs.write_lung_masks(ds, out, inpaint)
    assert summary.written == ["b.png"] and summary.skipped == ["a.png", "c.png"] and not summary.failed
    assert not (out / "failed.txt").exists() and (out / "b.png").read_bytes() == (masks / "b.png").read_bytes()


def test_the_exit_status_says_some_images_failed(node21, tmp_path, capsys):
    """A constant image: nothing to segment (NoduleInpaint fails on it online too)."""
    real = np.array(Image.open(node21 / "images" / "a.png"))
    root = _write_node21(tmp_path / "root", [("ok.png", real, []), ("flat.png", np.full_like(real, 1000), [])])
    out = tmp_path / "m"
    assert _lungs(root, out) == lungs.EXIT_SOME_FAILED == 3
    text = capsys.readouterr().out
    assert "wrote 1 lung masks, kept 0" in text and "1 without a lung" in text and "failed.txt" in text
    assert sorted(p.name for p in out.iterdir()) == ["failed.txt", "ok.png"]
    assert (out / "failed.txt").read_text() == f"{root / 'images' / 'flat.png'}\timage is constant: there is no anatomy to insert a nodule into\n"


def _dup_root(node21: Path, tmp_path: Path) -> Path:
    real = np.array(Image.open(node21 / "images" / "a.png"))
    return _write_node21(tmp_path / "dup", [("x.1.png", real, []), ("x.2.png", real, [])])


@pytest.mark.parametrize(("args", "needle"), [
    (["--data", "{tmp}/nowhere"], "--data"),
    (["--dataset", "simcxr"], "--dataset 'simcxr'.*ship their lung masks"),
    (["--dataset", "chestxray"], "--dataset 'chestxray'"),
    (["--out", "{tmp}/file"], "--out .* is a file"),
    (["--out", "{data}/images"], "--out .* holds the dataset.s images"),
    (["--device", "gpu0"], "--device 'gpu0'"),
    (["--lung-model", "{tmp}/no_model"], "--lung-model .*no_model"),
    (["--data", "{dup}"], "--data .*dup.: the images .*x.1.png.*x.2.png.*both get the mask name .x.png."),
])
def test_bad_arguments_name_the_argument(node21, tmp_path, capsys, args, needle):
    (tmp_path / "file").write_text("")
    fill = {"tmp": str(tmp_path), "data": str(node21), "dup": str(_dup_root(node21, tmp_path)) if "{dup}" in args else ""}
    argv = {"--data": str(node21), "--dataset": "node21", "--out": str(tmp_path / "out")}
    for key, value in zip(args[::2], args[1::2]):
        argv[key] = value.format(**fill)
    assert main(["lungs", "--no-progress", *(x for kv in argv.items() for x in kv)]) == 2
    assert re.search(f"^cxr-nodule-aug lungs: error: {needle}", capsys.readouterr().err)
    assert sorted(p.name for p in (node21 / "images").iterdir()) == sorted(NAMES)  # no image was replaced


# -- train detector: lung_masks, worker_niceness -------------------------------------------------
def test_bundled_configs_carry_both_keys():
    cpu = resolve_config(DetectorConfig, CONFIGS / "detector-cpu.yaml")
    paper = resolve_config(DetectorConfig, CONFIGS / "detector-paper.yaml")
    assert (cpu.lung_masks, cpu.worker_niceness) == ("", 19)
    assert (paper.lung_masks, paper.worker_niceness) == ("", 0)
    assert DetectorConfig().lung_masks == "" and DetectorConfig().worker_niceness == 0
    over = resolve_config(DetectorConfig, CONFIGS / "detector-cpu.yaml", ["lung_masks=DIR", "worker_niceness=5"])
    assert (over.lung_masks, over.worker_niceness) == ("DIR", 5)


def test_build_sets_passes_lung_masks_to_the_training_set(node21, masks, sim_export, tmp_path, caplog):
    cfg = DetectorConfig(data=str(node21), dataset="node21", augment_p=0.5, augment_unit="px", lung_masks=str(masks), holdout_fraction=0.0)
    train_set, val_set = build_sets(cfg)
    assert train_set.lung_mask_dir == masks and val_set is None
    held = dataclasses.replace(cfg, holdout_fraction=0.34)
    train_set, val_set = build_sets(held)
    assert train_set.dataset.lung_mask_dir == masks and val_set.dataset.lung_mask_dir is None  # validation is not augmented
    # Without online augmentation nothing reads them: said, not silently decoded for nothing.
    with caplog.at_level(logging.WARNING, logger="cxr_nodule_aug.train.detector"):
        train_set, _ = build_sets(dataclasses.replace(cfg, augment_p=0.0))
    assert train_set.lung_mask_dir is None and "lung_masks" in caplog.text and "augment_p=0" in caplog.text
    with pytest.raises(ValueError, match=r"lung_masks=.*simcxr dataset ships its own lung masks"):
        build_sets(dataclasses.replace(cfg, data=str(sim_export), dataset="simcxr"))
    with pytest.raises(FileNotFoundError, match=r"lung_masks=.*nowhere.*does not exist"):
        build_sets(dataclasses.replace(cfg, lung_masks=str(tmp_path / "nowhere")))


class _NiceOfWorker(torch.utils.data.Dataset):
    """Each sample's image holds the nice value of the process that loaded it."""

    def __len__(self) -> int:
        return 2

    def __getitem__(self, i):
        from torchvision import tv_tensors

        boxes = tv_tensors.BoundingBoxes(torch.zeros(0, 4), format="XYXY", canvas_size=(2, 2))
        return torch.full((1, 2, 2), float(os.nice(0))), {"boxes": boxes, "labels": torch.zeros(0, dtype=torch.int64)}


def test_worker_niceness_reaches_the_dataloader_workers():
    cfg = DetectorConfig(workers=1, batch_size=2, worker_niceness=7)
    loader = build_loader(cfg, _NiceOfWorker())
    assert isinstance(loader.worker_init_fn, LowPriorityWorkers) and loader.worker_init_fn.niceness == 7
    images, _ = next(iter(loader))
    assert float(images[0][0, 0, 0]) == min(os.nice(0) + 7, 19)  # the worker ran niced, this process did not
    assert build_loader(dataclasses.replace(cfg, worker_niceness=0), _NiceOfWorker()).worker_init_fn is None
    for bad in (20, -1, 2.5, True):
        with pytest.raises(ValueError, match="worker_niceness="):
            build_loader(dataclasses.replace(cfg, worker_niceness=bad), _NiceOfWorker())


# -- the README Quickstart on the real radiograph -----------------------------------------------
def _lung_check():
    spec = importlib.util.spec_from_file_location("lung_check", ROOT / "benchmarks" / "lung_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_quickstart_nodule_lies_in_the_thorax():
    pytest.importorskip("pydicom")
    from torchvision import tv_tensors
    from torchvision.transforms import v2

    from cxr_nodule_aug import InsertNodules, NoduleInpaint

    check = _lung_check()
    image = check.rg1_image()
    H, W = image.shape[-2:]
    thorax = torch.from_numpy(check.thorax_region((H, W)))
    # The README's Quickstart, verbatim but for the prints.
    target = {
        "boxes": tv_tensors.BoundingBoxes(torch.zeros(0, 4), format="XYXY", canvas_size=(H, W)),
        "labels": torch.zeros(0, dtype=torch.int64),
    }
    tf = NoduleInpaint(diameters=(30.0, 90.0), num_nodules=(1, 3), p=1.0, generator=torch.Generator().manual_seed(0))
    out_image, out_target = v2.Compose([tf, v2.SanitizeBoundingBoxes()])(tv_tensors.Image(image), target)
    records = out_target["nodules"]
    assert 1 <= len(records) <= 3
    for record in records:
        x0, y0, x1, y1 = (int(v) for v in record.box_xyxy)
        alone, _ = InsertNodules([record])(image, target)  # this nodule's footprint: the pixels it changed
        footprint = (alone != image)[0]
        assert footprint.any()
        rows, cols = footprint.nonzero(as_tuple=True)
        assert rows.min() >= 120, f"nodule at {record.center_xy} reaches row {int(rows.min())}, above the lung apices (row 120)"
        outside = footprint & ~thorax
        assert not outside.any(), f"nodule at {record.center_xy} (box {[x0, y0, x1, y1]}) has {int(outside.sum())} px outside the thorax"
    replayed, _ = InsertNodules(records)(image, target)
    assert torch.equal(replayed, out_image.as_subclass(torch.Tensor))
