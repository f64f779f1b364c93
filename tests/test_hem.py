"""HEMSampler: the paper's uniform draw over missed nodules, mining, smoothing, persistence."""

from __future__ import annotations

import pytest
import torch
from torchvision import tv_tensors

from cxr_nodule_aug import HEMSampler
from cxr_nodule_aug.samplers import Choice, Constant, IntUniform, Uniform, as_sampler


def test_uniform_over_missed_diameters():
    s = HEMSampler.from_missed([4.0, 8.0, 8.0, 20.0])
    draws = s(4000, generator=torch.Generator().manual_seed(0))
    assert set(draws.tolist()) == {4.0, 8.0, 20.0}
    # each missed nodule equally likely: 8 mm is twice as frequent as 4 mm
    assert (draws == 8.0).float().mean() == pytest.approx(0.5, abs=0.03)
    assert s.unit == "mm" and len(s) == 4


def test_seeded_and_joint_rows():
    s = HEMSampler({"diameter_px": [10, 20, 30], "contrast": [0.1, 0.2, 0.3]})
    a = s.sample(50, generator=torch.Generator().manual_seed(1))
    b = s.sample(50, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a["diameter_px"], b["diameter_px"])
    assert torch.allclose(a["contrast"] * 100, a["diameter_px"])  # rows drawn whole
    assert s.unit == "px"


def test_smoothing_stays_positive_and_near():
    s = HEMSampler.from_missed([5.0], bandwidth=2.0)
    d = s(2000, generator=torch.Generator().manual_seed(0))
    assert (d > 0).all() and abs(float(d.mean()) - 5.0) < 0.3 and float(d.std()) > 1.0


def _det(boxes, scores):
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), "scores": torch.tensor(scores, dtype=torch.float32)}


def test_from_detections_finds_the_missed_nodules():
    targets = [
        {"boxes": tv_tensors.BoundingBoxes([[10, 10, 20, 20], [50, 50, 80, 80]], format="XYXY", canvas_size=(100, 100))},
        {"boxes": tv_tensors.BoundingBoxes([[0, 0, 10, 30]], format="XYWH", canvas_size=(100, 100))},  # XYXY [0,0,10,30]
        {"boxes": torch.zeros(0, 4)},
    ]
    predictions = [
        _det([[10, 10, 20, 20], [50, 50, 80, 80]], [0.9, 0.3]),  # 2nd hit but below threshold -> missed
        _det([[0, 0, 10, 30]], [0.95]),  # detected
        _det([[5, 5, 9, 9]], [0.99]),
    ]
    missed = HEMSampler.find_missed(predictions, targets, score_threshold=0.5, pixel_spacing_mm=0.5)
    assert missed["image_index"].tolist() == [0.0]
    assert missed["diameter_px"].tolist() == [30.0] and missed["diameter_mm"].tolist() == [15.0]
    s = HEMSampler.from_detections(predictions, targets, score_threshold=0.5, pixel_spacing_mm=0.5)
    assert s.attribute == "diameter_mm" and s(3).tolist() == [15.0] * 3


def test_iou_threshold_is_strict():
    # Prediction [0,0,10,10] vs GT [0,0,10,50]: IoU = 100/500 = 0.2 exactly -> not a detection.
    missed = HEMSampler.find_missed([_det([[0, 0, 10, 10]], [1.0])], [{"boxes": torch.tensor([[0.0, 0, 10, 50]])}], iou_threshold=0.2)
    assert len(missed["diameter_px"]) == 1


def test_nothing_missed_is_an_error():
    with pytest.raises(ValueError, match="missed no nodule"):
        HEMSampler.from_detections([_det([[0, 0, 10, 10]], [1.0])], [{"boxes": torch.tensor([[0.0, 0, 10, 10]])}])


def test_bad_inputs():
    with pytest.raises(ValueError, match="at least one missed nodule"):
        HEMSampler.from_missed([])
    with pytest.raises(ValueError, match="positive"):
        HEMSampler.from_missed([3.0, -1.0])
    with pytest.raises(ValueError, match="equal lengths"):
        HEMSampler({"diameter_px": [1, 2], "contrast": [1]})
    with pytest.raises(ValueError, match="one entry per image"):
        HEMSampler.find_missed([], [{"boxes": torch.zeros(0, 4)}])
    with pytest.raises(ValueError, match="scores"):
        HEMSampler.find_missed([{"boxes": torch.zeros(2, 4), "scores": torch.zeros(1)}], [{"boxes": torch.ones(1, 4)}])


def test_state_dict_and_json_round_trip(tmp_path):
    s = HEMSampler({"diameter_mm": [6.0, 7.5], "center_x_px": [1.0, 2.0]}, bandwidth=0.5)
    path = s.save(tmp_path / "hem.json")
    t = HEMSampler.load(path)
    g1, g2 = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    assert torch.equal(s(10, generator=g1), t(10, generator=g2))
    assert HEMSampler.from_state_dict(s.state_dict()).bandwidth == 0.5
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match="not a readable HEMSampler"):
        HEMSampler.load(tmp_path / "bad.json")


def test_basic_samplers():
    g = torch.Generator().manual_seed(0)
    assert Constant(3.0)(2).tolist() == [3.0, 3.0]
    u = Uniform(2.0, 4.0)(100, generator=g)
    assert float(u.min()) >= 2 and float(u.max()) <= 4
    assert set(Choice([1.0, 2.0])(50, generator=g).tolist()) == {1.0, 2.0}
    assert set(IntUniform(0, 2)(100, generator=g).tolist()) == {0, 1, 2}
    assert isinstance(as_sampler((1, 2), "d"), Uniform) and isinstance(as_sampler([1, 2, 3], "d"), Choice)
    with pytest.raises(TypeError, match="d must be"):
        as_sampler("big", "d")
