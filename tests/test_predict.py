"""``cxr-nodule-aug predict`` -> ``cxr-nodule-aug eval`` on a tiny NODE21-layout copy and a tiny
detector built here: boxes in the original images' pixels, names that eval pairs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from cxr_nodule_aug.cli import main
from cxr_nodule_aug.detection import NoduleDetector


def _limit(path) -> int:
    return NoduleDetector.from_pretrained(path).model.roi_heads.detections_per_img


@pytest.fixture()
def setup(tmp_path):
    torch.manual_seed(0)
    model = NoduleDetector(backbone="resnet18", image_size=64, fpn_channels=16, box_head_width=32, detections_per_img=7)
    model.save_pretrained(tmp_path / "det")
    root = tmp_path / "node21"
    (root / "images").mkdir(parents=True)
    g = np.random.default_rng(0)
    for name in ("a.png", "b.png", "c.png"):  # 128 rows x 256 columns: x scales by 4, y by 2 from 64 px
        Image.fromarray(g.integers(500, 3000, (128, 256)).astype(np.uint16)).save(root / "images" / name)
    (root / "metadata.csv").write_text("img_name,x,y,width,height,label\n"
                                       "a.png,32,16,32,16,1\nb.png,100,40,20,20,1\nc.png,0,0,0,0,0\n")
    return tmp_path, root


def test_predict_writes_original_pixels_that_eval_scores(setup, monkeypatch, capsys):
    tmp_path, root = setup
    seen = []

    def fake_predict(self, images, batch_size=8):
        seen.extend(tuple(im.shape) for im in images)
        # one box at (8, 8)-(16, 16) of the 64 px input, score 0.9, on every image
        return [{"boxes": torch.tensor([[8.0, 8.0, 16.0, 16.0]]), "scores": torch.tensor([0.9]), "labels": torch.tensor([1])} for _ in images]

    monkeypatch.setattr(NoduleDetector, "predict", fake_predict)
    out = tmp_path / "predictions.json"
    assert main(["predict", "--detector", str(tmp_path / "det"), "--data", str(root), "--dataset", "node21", "--out", str(out)]) == 0
    assert seen == [(1, 64, 64)] * 3  # the detector ran at its own size
    data = json.loads(out.read_text())
    assert data["type"] == "Multiple 2D bounding boxes" and data["image_names"] == ["a.png", "b.png", "c.png"]
    for s, box in enumerate(data["boxes"]):
        xs, ys = [c[0] for c in box["corners"]], [c[1] for c in box["corners"]]
        assert (min(xs), min(ys), max(xs), max(ys)) == (32.0, 16.0, 64.0, 32.0)  # x * 256/64, y * 128/64
        assert {c[2] for c in box["corners"]} == {s}
    # the loaded model's own limit (7 once loading honours the saved detections_per_img)
    assert f"at most {_limit(tmp_path / 'det')} per image" in capsys.readouterr().out

    # eval pairs the names and scores it: a's nodule is hit (IoU 1), b's is missed.
    assert main(["eval", "--predictions", str(out), "--ground-truth", str(root / "metadata.csv"), "--mode", "all-thresholds",
                 "--out", str(tmp_path / "eval")]) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["sensitivity_at_target_fp"] == pytest.approx(0.0)  # 2 FP / 3 images at 0.9 > 0.25
    assert main(["eval", "--predictions", str(out), "--ground-truth", str(root / "metadata.csv"), "--mode", "all-thresholds",
                 "--fp-per-image", "1", "--out", str(tmp_path / "eval1")]) == 0
    metrics = json.loads((tmp_path / "eval1" / "metrics.json").read_text())
    assert metrics["sensitivity_at_target_fp"] == pytest.approx(0.5)


def test_predict_with_the_real_detector_and_a_low_min_score(setup):
    tmp_path, root = setup
    out = tmp_path / "p.json"
    assert main(["predict", "--detector", str(tmp_path / "det"), "--data", str(root), "--dataset", "node21", "--out", str(out),
                 "--min-score", "0.0"]) == 0
    data = json.loads(out.read_text())
    assert data["image_names"] == ["a.png", "b.png", "c.png"]
    per_slice = np.bincount([b["corners"][0][2] for b in data["boxes"]], minlength=3)
    assert per_slice.max() <= _limit(tmp_path / "det")  # the loaded model's detections_per_img
    for b in data["boxes"]:
        xs, ys = [c[0] for c in b["corners"]], [c[1] for c in b["corners"]]
        assert 0 <= min(xs) <= max(xs) <= 256 and 0 <= min(ys) <= max(ys) <= 128


def test_predict_usage_errors(setup, capsys):
    tmp_path, root = setup
    assert main(["predict", "--detector", str(tmp_path / "det"), "--data", str(tmp_path / "none"), "--dataset", "node21"]) == 2
    assert "no such directory" in capsys.readouterr().err
    assert main(["predict", "--detector", str(tmp_path / "det"), "--data", str(root), "--dataset", "node21", "--min-score", "2"]) == 2
    assert "--min-score" in capsys.readouterr().err


def test_eval_explains_renamed_images(tmp_path, capsys):
    (tmp_path / "metadata.csv").write_text("img_name,x,y,width,height,label\na.mha,1,1,4,4,1\nb.mha,0,0,0,0,0\n")
    (tmp_path / "p.json").write_text(json.dumps({"type": "Multiple 2D bounding boxes", "image_names": ["a.png", "b.png"],
                                                 "boxes": [{"corners": [[5, 5, 0], [1, 1, 0]], "probability": 0.5}]}))
    assert main(["eval", "--predictions", str(tmp_path / "p.json"), "--ground-truth", str(tmp_path / "metadata.csv"),
                 "--out", str(tmp_path / "e")]) != 0
    err = capsys.readouterr().err
    assert "'a.png' in the predictions and 'a.mha' in the ground truth" in err and "empty prediction" not in err
