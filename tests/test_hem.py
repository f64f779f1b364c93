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


# ------------------------------------------- mining on resized inputs, one definition of detected
def _node21_copy(root, size=256):
    """A NODE21-layout copy without pixel spacing: two nodule images, one without, and lung masks."""
    import numpy as np
    from PIL import Image

    from conftest import lung_mask, make_image

    (root / "images").mkdir(parents=True)
    (root / "lungs").mkdir()
    for k, name in enumerate(("a", "b", "c")):
        Image.fromarray(make_image(torch.uint16, size=size, seed=k)[0].numpy()).save(root / "images" / f"{name}.png")
        Image.fromarray(lung_mask(size).numpy().astype(np.uint8) * 255).save(root / "lungs" / f"{name}.png")
    # a: one nodule 40 x 36 px (d 38); b: one 24 x 24 (d 24) and one 16 x 20 (d 18, detected); c: none
    (root / "metadata.csv").write_text("img_name,x,y,width,height,label\n"
                                       "a.png,40,60,40,36,1\nb.png,170,90,24,24,1\nb.png,30,150,16,20,1\nc.png,0,0,0,0,0\n")
    return root


def test_mined_diameters_are_in_the_original_frame_and_inserted_at_that_size(tmp_path, shape_model, texture_model):
    from cxr_nodule_aug import NoduleInpaint
    from cxr_nodule_aug.datasets import Node21Dataset
    from cxr_nodule_aug.detection import ToDetectorInput

    root = _node21_copy(tmp_path / "node21")
    ds = Node21Dataset(root, transforms=ToDetectorInput(64))  # the detector runs at 64 px: 4x smaller
    samples = [ds[i] for i in range(len(ds))]
    # The detector finds b's second nodule (its box in the 64 px frame), nothing else.
    predictions = [_det([], []), _det([[30 / 4, 150 / 4, 46 / 4, 170 / 4]], [0.9]), _det([], [])]
    sampler = HEMSampler.from_detections(predictions, [t for _, t in samples], score_threshold=0.5)
    assert sampler.unit == "px"
    assert sorted(sampler.table["diameter_px"].tolist()) == pytest.approx([24.0, 38.0])  # the 256 px images' sizes, not / 4
    assert sorted(sampler.table["center_x_px"].tolist()) == pytest.approx([60.0, 182.0])
    assert [t["original_size"] for _, t in samples] == [(256, 256)] * 3 and "pixel_spacing_mm" not in samples[0][1]

    # Inserting with that sampler into the dataset's own images draws the mined sizes.
    raw = Node21Dataset(root, lung_mask_dir=root / "lungs")
    image, target = raw[2]  # c: no nodule yet
    tf = NoduleInpaint(diameters=sampler, num_nodules=1, p=1.0, shape_model=shape_model, texture_model=texture_model,
                       generator=torch.Generator().manual_seed(0))
    inserted = []
    for _ in range(6):
        _, out = tf(image, target)
        (record,) = out["nodules"]
        inserted.append((record.diameter_px, record.measured_diameter_px))
    assert {round(d) for d, _ in inserted} <= {24, 38} and len({round(d) for d, _ in inserted}) == 2
    for asked, measured in inserted:
        assert abs(measured - asked) <= 0.1 * asked


def test_per_target_spacing_in_the_original_frame():
    from cxr_nodule_aug.detection import ToDetectorInput

    def sample(size, box, spacing):
        image = tv_tensors.Image(torch.rand(1, size, size))
        target = {"boxes": tv_tensors.BoundingBoxes([box], format="XYXY", canvas_size=(size, size)), "pixel_spacing_mm": spacing}
        return ToDetectorInput(32)(image, target)

    samples = [sample(128, [10.0, 10.0, 30.0, 30.0], (0.5, 0.5)), sample(64, [0.0, 0.0, 10.0, 30.0], (0.2, 0.1))]
    targets = [t for _, t in samples]
    missed = HEMSampler.find_missed([_det([], []), _det([], [])], targets)
    assert missed["diameter_px"].tolist() == pytest.approx([20.0, 20.0])
    # each target's own spacing: 20 px x 0.5 mm; (10 px x 0.1 mm + 30 px x 0.2 mm) / 2
    assert missed["diameter_mm"].tolist() == pytest.approx([10.0, 3.5])
    assert HEMSampler.from_detections([_det([], []), _det([], [])], targets).unit == "mm"
    with pytest.raises(ValueError, match="disagrees"):
        HEMSampler.find_missed([_det([], []), _det([], [])], targets, pixel_spacing_mm=0.7)
    # a spacing given for targets that have none is used as the original images' spacing
    plain = [{"boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0]])}]
    assert HEMSampler.find_missed([_det([], [])], plain, pixel_spacing_mm=0.7)["diameter_mm"].tolist() == pytest.approx([7.0])


def test_detected_is_eval_one_to_one_matching():
    from cxr_nodule_aug.detection import operating_threshold
    from cxr_nodule_aug.eval import evaluate_detections

    # One box over two adjacent nodules: IoU 0.5 with each, but it can detect only one of them.
    targets = [{"boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0], [10.0, 0.0, 20.0, 10.0]])}, {"boxes": torch.zeros(0, 4)}]
    predictions = [_det([[0, 0, 20, 10]], [0.9]), _det([[50, 50, 60, 60]], [0.4])]
    outcomes = HEMSampler.nodule_outcomes(predictions, targets, score_threshold=0.5)
    assert outcomes["detected"].tolist() == [1.0, 0.0]
    # the same count eval's FROC gives at the operating threshold HEM uses
    threshold = operating_threshold(predictions, targets, fp_per_image=0.5)
    detected = HEMSampler.nodule_outcomes(predictions, targets, score_threshold=threshold)["detected"]
    metrics = evaluate_detections(predictions, targets, mode="all-thresholds", fp_per_image=0.5)
    assert float(detected.sum()) / 2 == pytest.approx(metrics.sensitivity_at_target_fp)
