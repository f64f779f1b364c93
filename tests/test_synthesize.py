"""``cxr-nodule-aug synthesize``: a pre-synthesized NODE21-layout set from a tiny SimCXR export,
read back, replayed from its records, resumed, and trained on. Images are 128 px, shipped weights."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_sim_export
import torch
from PIL import Image

from cxr_nodule_aug import InsertNodules, NoduleRecord
from cxr_nodule_aug.datasets import Node21Dataset, SimCXRDataset

REPO = Path(__file__).resolve().parent.parent
COUNT = 7  # > the 6 sources: cycles
# 2.6 mm/px at 128 px: 6-16 mm is 2-6 px, the scale of the export's own nodules.
ARGS = ["--count", str(COUNT), "--diameters", "6,16", "--num-nodules", "1,2", "--seed", "1"]


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cxr_nodule_aug.cli", *args], capture_output=True, text=True, cwd=REPO, timeout=600)


def _synth(data: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return _cli("synthesize", "--data", str(data), "--out", str(out), "--no-progress", *extra)


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory) -> Path:
    return tiny_sim_export(tmp_path_factory, normal=2, nodule=4)


@pytest.fixture(scope="module")
def synthesized(tiny_export, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "out"
    r = _synth(tiny_export, out, *ARGS)
    assert r.returncode == 0, r.stderr[-3000:]
    return out


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]


def test_reads_back_as_node21_with_consistent_boxes_and_records(tiny_export, synthesized):
    sources = SimCXRDataset(tiny_export)
    by_id = {Path(r["img_name"]).stem: len(r["nodules"]) for r in sources.records}
    lines = _records(synthesized)
    ds = Node21Dataset(synthesized)
    assert len(ds) == COUNT
    manifest = json.loads((synthesized / "manifest.json").read_text())
    assert manifest["complete"] and manifest["count"] == COUNT and manifest["arguments"]["seed"] == 1
    assert not (synthesized / ".parts").exists()
    spacing = (synthesized / "pixel_spacing.csv").read_text().splitlines()
    assert spacing[0] == "img_name,row_mm,col_mm" and len(spacing) == COUNT + 1
    for image, target in (ds[i] for i in range(len(ds))):
        name = f"{target['image_id']}.png"
        mine = [line for line in lines if line["img_name"] == name]
        assert 1 <= len(mine) <= 2
        source = mine[0]["source_id"]
        assert all(line["source_id"] == source and line["source_image"] == "image" for line in mine)
        assert name.endswith(f"_{source}.png")
        # The source's own boxes first, then one per inserted nodule.
        assert len(target["boxes"]) == by_id[source] + len(mine)
        assert image.dtype == torch.uint16 and image.shape == (1, 128, 128)
        boxes = target["boxes"].as_subclass(torch.Tensor)
        assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= 128).all() and (boxes[:, 3] <= 128).all()
        assert (boxes[:, 2:] > boxes[:, :2]).all()
        new = boxes[by_id[source]:]
        assert torch.equal(new, torch.tensor([line["record"]["box_xyxy"] for line in mine], dtype=torch.float32))
        assert (synthesized / "lung_masks" / name).is_file()
    # Cycling: 7 outputs over the 6 sources use every source.
    assert {line["source_id"] for line in lines} == set(by_id)
    assert len({line["img_name"] for line in lines}) == COUNT


def test_records_replay_to_the_written_pixels(tiny_export, synthesized):
    sources = SimCXRDataset(tiny_export)
    index = {Path(r["img_name"]).stem: i for i, r in enumerate(sources.records)}
    lines = _records(synthesized)
    name = lines[0]["img_name"]
    mine = [line for line in lines if line["img_name"] == name]
    image, target = sources[index[mine[0]["source_id"]]]
    records = [NoduleRecord.from_dict(line["record"]) for line in mine]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the command runs
    try:
        replayed, out_target = InsertNodules(records)(image, {"boxes": target["boxes"], "labels": target["labels"]})
    finally:
        torch.set_num_threads(threads)
    written = torch.from_numpy(np.array(Image.open(synthesized / "images" / name)).astype(np.int32))
    diff = (replayed.as_subclass(torch.Tensor)[0].to(torch.int32) - written).abs()
    assert diff.max() <= 1  # the PNG holds the uint16 output as it is
    assert [r.box_xyxy for r in out_target["nodules"]] == [r.box_xyxy for r in records]


def test_resume_after_an_interruption_gives_identical_bytes(tiny_export, synthesized, tmp_path, monkeypatch):
    from cxr_nodule_aug import cli
    from cxr_nodule_aug.cli import synthesize

    real, calls = synthesize.synthesize_one, []

    def interrupted_after_3(*args, **kwargs):
        if len(calls) == 3:
            raise KeyboardInterrupt
        calls.append(args[3])
        return real(*args, **kwargs)

    monkeypatch.setattr(synthesize, "synthesize_one", interrupted_after_3)
    out = tmp_path / "resumed"
    argv = ["synthesize", "--data", str(tiny_export), "--out", str(out), "--no-progress", *ARGS]
    assert cli.main(argv) == 130  # Ctrl-C: one line, exit 130
    assert len(list((out / ".parts").iterdir())) == 3 and not (out / "metadata.csv").exists()
    assert not json.loads((out / "manifest.json").read_text())["complete"]

    def counted(*args, **kwargs):
        calls.append(args[3])
        return real(*args, **kwargs)

    monkeypatch.setattr(synthesize, "synthesize_one", counted)
    assert cli.main(argv) == 0
    assert calls == list(range(COUNT))  # the resumed run did only the missing images
    files = lambda root: {p.relative_to(root): p.read_bytes() for p in root.rglob("*") if p.is_file()}  # noqa: E731
    before, after = files(synthesized), files(out)
    assert after.keys() == before.keys()
    assert [str(k) for k in before if after[k] != before[k]] == []


def test_rerun_is_a_no_op_and_another_command_is_refused(tiny_export, synthesized):
    before = {p: p.read_bytes() for p in synthesized.rglob("*") if p.is_file()}
    r = _synth(tiny_export, synthesized, *ARGS)
    assert r.returncode == 0 and "already complete" in r.stdout, r.stderr[-2000:]
    assert {p: p.read_bytes() for p in synthesized.rglob("*") if p.is_file()} == before
    r = _synth(tiny_export, synthesized, "--count", str(COUNT + 1), *ARGS[2:])
    assert r.returncode != 0 and "different command" in r.stderr and "count" in r.stderr, r.stderr[-2000:]


def test_nodule_free_only_uses_the_twins(tiny_export, tmp_path):
    out = tmp_path / "free"
    r = _synth(tiny_export, out, "--count", "3", "--diameters", "3,6", "--unit", "px", "--num-nodules", "1", "--nodule-free-only")
    assert r.returncode == 0, r.stderr[-3000:]
    lines = _records(out)
    ds = Node21Dataset(out)
    assert len(lines) == len(ds) == 3
    for i in range(3):
        _, target = ds[i]
        assert len(target["boxes"]) == 1  # the twin's source boxes are dropped: only the new nodule
    sources = SimCXRDataset(tiny_export)
    with_nodules = {Path(r["img_name"]).stem for r in sources.records if r["nodules"]}
    assert all((line["source_image"] == "image_nodule_free") == (line["source_id"] in with_nodules) for line in lines)


@pytest.mark.parametrize(("extra", "needle"), [
    (["--count", "0"], "--count"),
    (["--count", "2", "--diameters", "big"], "--diameters"),
    (["--count", "2", "--diameters", "9,3"], "--diameters"),
    (["--count", "2", "--diameters", "missing.json"], "--diameters"),
    (["--count", "2", "--num-nodules", "0"], "--num-nodules"),
    (["--count", "2", "--dataset", "jsrt"], "--dataset"),
    (["--count", "2", "--unit", "px", "--diameters", "5000"], "--diameters 5000 --unit px: a 5000 px nodule cannot fit in the lung field"),
    (["--count", "2", "--diameters", "4,400"], "--diameters 4,400 --unit mm: a 400 mm nodule cannot fit in the lung field"),
])
def test_bad_arguments_name_the_argument(tiny_export, tmp_path, extra, needle):
    r = _synth(tiny_export, tmp_path / "o", *extra)
    assert r.returncode != 0 and needle in r.stderr, r.stderr[-2000:]
    assert not (tmp_path / "o").exists()


def test_missing_data_and_foreign_out_are_refused(tiny_export, tmp_path):
    r = _synth(tmp_path / "nope", tmp_path / "o", "--count", "1")
    assert r.returncode != 0 and "--data" in r.stderr and "no such directory" in r.stderr
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    r = _synth(tiny_export, tmp_path / "busy", "--count", "1")
    assert r.returncode != 0 and "not empty" in r.stderr


def test_train_detector_on_the_synthesized_set(tiny_export, synthesized, tmp_path):
    r = _cli("train", "detector", f"data={tiny_export}", f"synth=node21:{synthesized}", f"out={tmp_path / 'det'}", "steps=1",
             "image_size=64", "fpn_channels=16", "box_head_width=32", "batch_size=2", "eval_every=1000", "checkpoint_every=1000")
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / "det" / "model" / "config.json").exists()
