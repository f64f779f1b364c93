"""Detectors, detector inputs, hard-example mining, `train detector`, `hem` and the detection
benchmark's --quick preset. Images are tiny (64-128 px) to stay fast on 2 cores."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torchvision import tv_tensors

from cxr_nodule_aug import HEMSampler, load_model
from cxr_nodule_aug.detection import (
    NoduleDetector,
    ToDetectorInput,
    detection_collate,
    local_contrast,
    mine_nodules,
    missed_sampler,
    operating_threshold,
    plot_missed_histogram,
    predict_dataset,
)

REPO = Path(__file__).resolve().parent.parent


def _targets(n: int, size: int) -> list[dict[str, torch.Tensor]]:
    return [{"boxes": torch.tensor([[size * 0.3, size * 0.3, size * 0.5, size * 0.5]]), "labels": torch.tensor([1])} for _ in range(n)]


@pytest.mark.parametrize("arch", ["fasterrcnn", "retinanet"])
@pytest.mark.parametrize("backbone", ["lite0", "resnet18"])
def test_detector_trains_predicts_and_round_trips(tmp_path, arch, backbone):
    torch.manual_seed(0)
    model = NoduleDetector(arch, backbone, image_size=64, fpn_channels=16, box_head_width=32, imagenet=backbone == "lite0")
    model.train()
    images = torch.rand(2, 1, 64, 64)
    losses = model(images, _targets(2, 64))
    assert losses and all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    preds = model.predict(images)
    assert len(preds) == 2 and set(preds[0]) >= {"boxes", "scores", "labels"}
    assert model.training  # predict restores the mode
    model.save_pretrained(tmp_path / "det")
    again = load_model(tmp_path / "det")
    assert isinstance(again, NoduleDetector) and again.config == model.config
    model.eval()
    for a, b in zip(model.predict(images), again.predict(images)):
        torch.testing.assert_close(a["scores"], b["scores"])
        torch.testing.assert_close(a["boxes"], b["boxes"])


def test_detector_bad_arguments():
    with pytest.raises(ValueError, match="arch"):
        NoduleDetector("yolo")
    with pytest.raises(ValueError, match="backbone"):
        NoduleDetector("fasterrcnn", "vgg")
    with pytest.raises(ValueError, match="image_size"):
        NoduleDetector(image_size=32)
    with pytest.raises(ValueError, match="score_thresh"):
        NoduleDetector(score_thresh=1.5)
    model = NoduleDetector(backbone="resnet18", image_size=64, fpn_channels=16, box_head_width=32)
    with pytest.raises(ValueError, match=r"images\[0\] must be \(1, H, W\) or \(3, H, W\)"):
        model.predict([torch.rand(2, 64, 64)])
    with pytest.raises(ValueError, match="floating point"):
        model.predict([torch.zeros(1, 64, 64, dtype=torch.uint8)])


def test_resnet_imagenet_without_local_weights_says_so(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(FileNotFoundError, match="no download is attempted"):
        NoduleDetector(backbone="resnet50", imagenet=True)


def test_to_detector_input_windows_resizes_and_keeps_input():
    image = tv_tensors.Image(torch.randint(1000, 3000, (1, 100, 200), dtype=torch.int16))
    boxes = tv_tensors.BoundingBoxes(torch.tensor([[20.0, 10.0, 60.0, 50.0]]), format="XYXY", canvas_size=(100, 200))
    target = {"boxes": boxes, "labels": torch.tensor([1]), "pixel_spacing_mm": (0.5, 0.25)}
    before = image.clone()
    out, tgt = ToDetectorInput(64)(image, target)
    assert torch.equal(image, before) and target["pixel_spacing_mm"] == (0.5, 0.25)
    assert out.shape == (1, 64, 64) and out.dtype == torch.float32 and 0 <= out.min() and out.max() <= 1
    torch.testing.assert_close(tgt["boxes"].as_subclass(torch.Tensor), torch.tensor([[6.4, 6.4, 19.2, 32.0]]))
    assert tgt["pixel_spacing_mm"] == pytest.approx((0.5 * 100 / 64, 0.25 * 200 / 64))
    with pytest.raises(ValueError, match="size"):
        ToDetectorInput(4)


def test_collate_converts_boxes_to_xyxy():
    boxes = tv_tensors.BoundingBoxes(torch.tensor([[30.0, 30.0, 10.0, 20.0]]), format="CXCYWH", canvas_size=(64, 64))
    images, targets = detection_collate([(tv_tensors.Image(torch.rand(1, 64, 64)), {"boxes": boxes, "labels": torch.tensor([1])})])
    assert type(images[0]) is torch.Tensor
    torch.testing.assert_close(targets[0]["boxes"], torch.tensor([[25.0, 20.0, 35.0, 40.0]]))
    with pytest.raises(ValueError, match="1 boxes but 2 labels"):
        detection_collate([(torch.rand(1, 8, 8), {"boxes": torch.zeros(1, 4), "labels": torch.tensor([1, 1])})])


def test_operating_threshold_hand_computed():
    # 4 images, one nodule in image 0. FP scores 0.9 (img 1), 0.6 (img 2), 0.3 (img 3); TP at 0.5.
    gt = [{"boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0]])}] + [{"boxes": torch.zeros(0, 4)}] * 3
    far = torch.tensor([[50.0, 50.0, 60.0, 60.0]])
    preds = [
        {"boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0]]), "scores": torch.tensor([0.5])},
        {"boxes": far, "scores": torch.tensor([0.9])},
        {"boxes": far, "scores": torch.tensor([0.6])},
        {"boxes": far, "scores": torch.tensor([0.3])},
    ]
    assert operating_threshold(preds, gt, 0.25) == pytest.approx(0.9)  # 1 FP / 4 images
    assert operating_threshold(preds, gt, 0.5) == pytest.approx(0.5)  # 2 FP / 4 images, TP included
    assert operating_threshold(preds, gt, 0.1) == float("inf")  # nothing allowed
    with pytest.raises(ValueError, match="fp_per_image"):
        operating_threshold(preds, gt, 0)


def test_local_contrast_sign_and_units():
    img = torch.zeros(64, 64)
    yy, xx = torch.meshgrid(torch.arange(64) + 0.5, torch.arange(64) + 0.5, indexing="ij")
    img[((xx - 20) ** 2 + (yy - 20) ** 2) <= 36] = 0.3  # bright disc r=6 at (20, 20)
    c = local_contrast(img, torch.tensor([[14.0, 14.0, 26.0, 26.0], [40.0, 40.0, 52.0, 52.0]]))
    assert c[0] > 0.25 and abs(float(c[1])) < 1e-6


def test_mining_table_sampler_and_histogram(tmp_path):
    def sample(boxes):
        s = 64
        return (tv_tensors.Image(torch.rand(1, s, s)), {"boxes": tv_tensors.BoundingBoxes(torch.tensor(boxes).reshape(-1, 4), format="XYXY", canvas_size=(s, s)), "pixel_spacing_mm": (0.5, 0.5)})

    samples = [sample([[0.0, 0.0, 10.0, 10.0], [30.0, 30.0, 50.0, 50.0]]), sample([])]
    preds = [{"boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0]]), "scores": torch.tensor([0.8])}, {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0)}]
    table = mine_nodules(preds, samples, score_threshold=0.5)
    assert table["detected"].tolist() == [1.0, 0.0]
    assert table["diameter_mm"].tolist() == [5.0, 10.0]
    assert torch.isfinite(table["contrast"]).all()
    sampler = missed_sampler(table)
    assert len(sampler) == 1 and sampler.unit == "mm" and sampler(3).tolist() == [10.0, 10.0, 10.0]
    plot_missed_histogram(table, tmp_path / "h.png")
    assert (tmp_path / "h.png").stat().st_size > 1000
    none_missed = mine_nodules(preds[:1], samples[:1], score_threshold=0.5)
    none_missed["detected"][:] = 1
    with pytest.raises(ValueError, match="missed no nodule"):
        missed_sampler(none_missed)


def test_predict_dataset_aligns_predictions_and_targets():
    model = NoduleDetector(backbone="resnet18", image_size=64, fpn_channels=16, box_head_width=32)
    samples = [(torch.rand(1, 64, 64), {"boxes": torch.zeros(0, 4), "image_id": str(i)}) for i in range(5)]
    preds, targets = predict_dataset(model, samples, batch_size=2)
    assert len(preds) == 5 and [t["image_id"] for t in targets] == [str(i) for i in range(5)]


# ------------------------------------------------------------------ CLI on a tiny SimCXR export
@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory):
    from cxr_nodule_aug.sim.export import export

    root = tmp_path_factory.mktemp("sim") / "export"
    export(root, normal=2, nodule=6, seed=3, size=128, progress=False, config_overrides={"nodule_diameter_mm": [6.0, 20.0]})
    return root


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cxr_nodule_aug.cli", *args], capture_output=True, text=True, cwd=REPO, timeout=600)


def test_train_detector_resume_and_hem_cli(tiny_export, tmp_path):
    out = tmp_path / "det"
    common = ["train", "detector", f"data={tiny_export}", f"out={out}", "image_size=64", "fpn_channels=16", "box_head_width=32",
              "batch_size=2", "holdout_fraction=0.25", "eval_every=2", "checkpoint_every=2", "log_every=1"]
    r = _cli(*common, "steps=2")
    assert r.returncode == 0, r.stderr[-2000:]
    assert (out / "model" / "config.json").exists() and (out / "checkpoint.pt").exists()
    r = _cli(*common, "steps=3")  # resumes at step 2
    assert r.returncode == 0, r.stderr[-2000:]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [1, 2, 3]
    assert json.loads((out / "model" / "config.json").read_text())["metadata"]["trained_steps"] == 3

    hem = tmp_path / "hem"
    r = _cli("hem", "--detector", str(out / "model"), "--data", str(tiny_export), "--score-threshold", "1.0", "--out", str(hem))
    assert r.returncode == 0, r.stderr[-2000:]
    sampler = HEMSampler.load(hem / "hem_sampler.json")
    summary = json.loads((hem / "summary.json").read_text())
    n_nodules = sum(1 for line in (tiny_export / "nodules.csv").read_text().splitlines()[1:])
    assert summary["nodules"] == n_nodules and summary["missed"] == n_nodules == len(sampler)  # score >= 1.0: all missed
    assert sampler.unit == "mm" and set(sampler.table) >= {"diameter_mm", "diameter_px", "contrast", "center_x_px"}
    assert (hem / "missed_histogram.png").exists() and len((hem / "nodules.csv").read_text().splitlines()) == n_nodules + 1

    # Online augmentation with HEM diameters from that file, through the shipped weights.
    r = _cli(*common, f"out={tmp_path / 'aug'}", "steps=1", "augment_p=1.0", f"augment_diameters={hem / 'hem_sampler.json'}")
    assert r.returncode == 0, r.stderr[-2000:]


def test_cli_errors_name_the_problem(tmp_path):
    r = _cli("train", "detector", f"data={tmp_path / 'nope'}", f"out={tmp_path / 'o'}", "steps=1")
    assert r.returncode != 0 and "does not exist" in r.stderr
    r = _cli("train", "detector", f"data={tmp_path}", "dataset=nih", f"out={tmp_path / 'o'}")
    assert r.returncode != 0 and "dataset='nih'" in r.stderr


def test_detection_benchmark_quick(tmp_path):
    r = subprocess.run([sys.executable, str(REPO / "benchmarks" / "detection.py"), "--quick", "--work", str(tmp_path / "work")],
                       capture_output=True, text=True, cwd=REPO, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    work = tmp_path / "work"
    summary = json.loads((work / "detection.json").read_text())["summary"]
    assert set(summary["table3"]) == {"0", "25", "50", "75", "100"}
    assert set(summary["table4"]) == {"none", "random", "hem", "ct", "paste"}
    assert all(v["seeds"] == 2 for v in summary["table4"].values())
    assert (work / "detection_froc.png").exists() and (work / "detection.md").exists()
    assert "HEM - none NODE21 score" in r.stdout
