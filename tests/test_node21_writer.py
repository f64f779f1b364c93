"""One NODE21 writer, one per-item seed, one output manifest for ``sim`` and ``synthesize`` (#11).

Before: the SimCXR exporter wrote ``int(x0)`` (a fractional box lost up to a pixel) while
``synthesize`` wrote exact values, and both modules defined ``image_seed`` and
``check_or_write_manifest`` with different bodies (and different exit codes for a busy --out).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cxr_nodule_aug import io as cio
from cxr_nodule_aug.cli import synthesize
from cxr_nodule_aug.eval import read_node21_metadata, write_node21_metadata
from cxr_nodule_aug.sim import export as sim_export

# Fractional pixel boxes (XYXY), float32 values as the transforms produce them, and a whole one.
BOXES = torch.tensor([[10.25, 20.5, 31.75, 40.125], [12.3, 7.7, 19.9, 15.1], [3.0, 4.0, 9.0, 12.0]], dtype=torch.float32)


def _sim_record(name: str, boxes: torch.Tensor) -> dict:
    nodule = {"index": 0, "diameter_px": 1.0, "diameter_detector_mm": 1.0, "diameter_projected_mm": 1.0, "contrast": 0.1,
              "center_px": [1.0, 1.0], "magnification": 1.1, "area_px": 1.0,
              "params": {"diameter_mm": 5.0, "shape": "sphere", "density": "solid"}}
    return {"img_name": name, "index": 0, "seed": 0, "height": 64, "width": 64, "pixel_spacing_mm": [0.5, 0.5], "params": {},
            "nodules": [{**nodule, "index": k, "box_xyxy": [float(v) for v in b]} for k, b in enumerate(boxes)]}


def test_sim_export_writes_fractional_boxes_exactly(tmp_path):
    (tmp_path / "records").mkdir()
    records = [_sim_record(sim_export.image_name(0) + ".png", BOXES), _sim_record(sim_export.image_name(1) + ".png", BOXES[:0])]
    for i, r in enumerate(records):
        (tmp_path / "records" / f"{sim_export.image_name(i)}.json").write_text(json.dumps(r))
    sim_export.write_dataset_files(tmp_path, 2)
    read = read_node21_metadata(tmp_path / "metadata.csv")
    assert list(read) == ["simcxr_000000.png", "simcxr_000001.png"]
    assert torch.equal(read["simcxr_000000.png"]["boxes"], BOXES)
    assert read["simcxr_000001.png"]["boxes"].shape == (0, 4)


def test_synthesize_writes_fractional_boxes_exactly(tmp_path):
    parts = [{"img_name": "a.png", "source_id": "s", "source_index": 0, "source_image": "image", "pixel_spacing_mm": None, "records": [],
              "boxes_xyxy": [[float(v) for v in b] for b in BOXES]},
             {"img_name": "b.png", "source_id": "t", "source_index": 1, "source_image": "image", "pixel_spacing_mm": [0.2, 0.2], "records": [],
              "boxes_xyxy": []}]
    synthesize._write_dataset_files(tmp_path, parts)
    read = read_node21_metadata(tmp_path / "metadata.csv")
    assert torch.equal(read["a.png"]["boxes"], BOXES) and read["b.png"]["boxes"].shape == (0, 4)


def test_node21_writer_values_and_errors(tmp_path):
    write_node21_metadata(tmp_path / "m.csv", {"x.png": BOXES[2:], "y.png": np.zeros((0, 4)), "z.png": [[1.5, 2.0, 4.0, 6.25]]})
    assert (tmp_path / "m.csv").read_text() == "img_name,x,y,width,height,label\nx.png,3,4,6,8,1\ny.png,0,0,0,0,0\nz.png,1.5,2,2.5,4.25,1\n"
    with pytest.raises(ValueError, match=r"boxes\['x.png'\] must have shape \(N, 4\)"):
        write_node21_metadata(tmp_path / "m.csv", {"x.png": [1.0, 2.0, 3.0]})
    with pytest.raises(ValueError, match="x1 >= x0"):
        write_node21_metadata(tmp_path / "m.csv", {"x.png": [[5.0, 2.0, 3.0, 4.0]]})


def test_one_image_seed_and_one_manifest_check():
    assert sim_export.image_seed is synthesize.image_seed is cio.image_seed
    assert sim_export.check_or_write_manifest is synthesize.check_or_write_manifest is cio.check_or_write_manifest
    # SimCXR exports keep their bytes: image i's seed is the one it always was.
    assert cio.image_seed(1, 7) == int(np.random.SeedSequence([1, 7]).generate_state(1)[0])
    assert cio.image_seed(1, 7, 5) != cio.image_seed(1, 7)


def test_manifest_resume_mismatch_and_foreign_folder(tmp_path):
    out = tmp_path / "o"
    assert cio.check_or_write_manifest(out, {"seed": 1, "arguments": {"size": (3, 4)}}, "a test output") is False
    assert cio.check_or_write_manifest(out, {"seed": 1, "arguments": {"size": [3, 4]}}, "a test output") is False  # tuples == lists
    with pytest.raises(cio.OutputConflict, match=r"already holds a test output made by a different command \(different arguments: arguments.size\)"):
        cio.check_or_write_manifest(out, {"seed": 1, "arguments": {"size": [3, 5]}}, "a test output")
    (out / "manifest.json").write_text(json.dumps({"seed": 1, "arguments": {"size": [3, 4]}, "complete": True}))
    assert cio.check_or_write_manifest(out, {"seed": 1, "arguments": {"size": [3, 4]}}, "a test output") is True
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    with pytest.raises(cio.OutputConflict, match="--out .* is not empty and has no manifest.json"):
        cio.check_or_write_manifest(busy, {}, "a test output")
    (tmp_path / "f").write_text("x")
    with pytest.raises(cio.OutputConflict, match="is a file, not a directory"):
        cio.check_or_write_manifest(Path(tmp_path / "f"), {}, "a test output")


@pytest.mark.parametrize("command", [["sim", "--nodule", "1", "--size", "16", "--no-progress"],
                                     ["synthesize", "--dataset", "simcxr", "--count", "1", "--diameters", "1", "--unit", "px", "--no-progress"]])
def test_a_busy_out_is_the_same_usage_error_for_sim_and_synthesize(tmp_path, capsys, command):
    from cxr_nodule_aug.cli import main

    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    data = []
    if command[0] == "synthesize":
        from conftest import make_image, make_target

        data = ["--data", str(tmp_path / "src")]
        _tiny_node21(tmp_path / "src", make_image, make_target)
        command = [c if c != "simcxr" else "node21" for c in command]
    rc = main([*command, *data, "--out", str(busy)])
    err = capsys.readouterr().err
    assert rc == 2 and "is not empty and has no manifest.json" in err, err
    assert sorted(p.name for p in busy.iterdir()) == ["notes.txt"]


def _tiny_node21(root: Path, make_image, make_target) -> None:
    (root / "images").mkdir(parents=True)
    image = make_image(torch.uint16, size=64)[0].numpy()
    from PIL import Image

    Image.fromarray(image).save(root / "images" / "a.png")
    (root / "metadata.csv").write_text("img_name,x,y,width,height,label\na.png,0,0,0,0,0\n")
