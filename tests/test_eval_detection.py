"""NODE21 detection metrics on small cases computed by hand (cxr_nodule_aug.eval.detection)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("sklearn")
pytest.importorskip("monai")

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from cxr_nodule_aug.eval import (  # noqa: E402
    evaluate_detections,
    froc_curve_all_thresholds,
    froc_curve_monai,
    match_image,
)


def P(boxes, scores):
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "scores": torch.tensor(scores, dtype=torch.float32),
            "labels": torch.ones(len(scores), dtype=torch.int64)}


def T(boxes):
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.ones(len(boxes), dtype=torch.int64)}


def far(i):
    """A box that overlaps no ground truth used here."""
    return [200 + 20 * i, 200, 210 + 20 * i, 210]


# Scores are chosen exactly representable in float32 (k/8, k/16) so thresholds compare exactly.
G0, G1, G2 = [0, 0, 10, 10], [20, 20, 30, 30], [50, 50, 60, 60]


def case_a():
    """4 images, 3 nodules.

    img0: nodule G0; pred on G0 at 0.875 (TP) and a shifted copy at 0.5625 (IoU 81/119 = 0.68 with
          G0, but G0 is taken -> FP).
    img1: nodules G1, G2; pred on G1 at 0.5 (TP), G2 missed, far pred at 0.625 (FP).
    img2: no nodule; far pred at 0.75 (FP).       img3: no nodule, no pred.
    TP scores {0.875, 0.5}; FP scores {0.75, 0.625, 0.5625}; 4 images; 3 nodules.
    Step curve (threshold: FP/img, sens): inf (0, 0); .875 (0, 1/3); .75 (.25, 1/3);
      .625 (.5, 1/3); .5625 (.75, 1/3); .5 (.75, 2/3).  -> sens@0.25 = 1/3 in both modes (the
      point (0.25, 1/3) is on the curve; MONAI skips only the 0 of the missed nodule).
    AUC: image scores pos {0.875, 0.625}, neg {0.75, 0}; pairs won 0.875>0.75, 0.875>0,
      0.625<0.75, 0.625>0 -> 3/4.   NODE21 = 0.75 * 0.75 + 0.25 / 3 = 0.6458333...
    """
    preds = [
        P([G0, [1, 1, 11, 11]], [0.875, 0.5625]),
        P([G1, far(0)], [0.5, 0.625]),
        P([far(1)], [0.75]),
        P([], []),
    ]
    targets = [T([G0]), T([G1, G2]), T([]), T([])]
    return preds, targets


@pytest.mark.parametrize("mode", ["monai", "all-thresholds"])
def test_case_a_hand_computed(mode):
    preds, targets = case_a()
    m = evaluate_detections(preds, targets, mode=mode)
    assert m.auc == pytest.approx(0.75)
    assert m.sensitivity_at_target_fp == pytest.approx(1 / 3)
    assert m.node21_score == pytest.approx(0.75 * 0.75 + 0.25 / 3)
    assert (m.num_images, m.num_positive_images, m.num_targets, m.num_predictions, m.num_true_positives) == (4, 2, 3, 5, 2)
    assert m.froc_fps_per_image == pytest.approx([0, 0, 0.25, 0.5, 0.75, 0.75])
    assert m.froc_sensitivity == pytest.approx([0, 1 / 3, 1 / 3, 1 / 3, 1 / 3, 2 / 3])
    assert m.froc_thresholds == pytest.approx([np.inf, 0.875, 0.75, 0.625, 0.5625, 0.5])
    convention = m.conventions["froc_and_sensitivity_at_target_fp"]
    assert m.mode == mode
    assert ("compute_froc_score" in convention) == (mode == "monai")
    json.dumps(m.to_dict())  # JSON-ready


def test_ties_between_tp_and_fp_interpolation_differs():
    """img0: nodule G0 hit at 0.875. img1: nodules G1 (hit at 0.75) and G2 (missed) plus two far
    FPs also at 0.75. img2, img3: negatives, no preds. 4 images, 3 nodules.
    Operating points: .875 -> (0, 1/3); .75 -> (0.5, 2/3) (the tie enters all at once).
    all-thresholds: best point with FP/img <= 0.25 is (0, 1/3) -> 1/3.
    MONAI: numpy.interp between (0, 1/3) and (0.5, 2/3) at 0.25 -> 0.5.
    AUC: positives 0.875, 0.75 over negatives 0, 0 -> 1.0.
    """
    preds = [P([G0], [0.875]), P([G1, far(0), far(1)], [0.75, 0.75, 0.75]), P([], []), P([], [])]
    targets = [T([G0]), T([G1, G2]), T([]), T([])]
    step = evaluate_detections(preds, targets, mode="all-thresholds")
    monai = evaluate_detections(preds, targets, mode="monai")
    assert step.auc == monai.auc == pytest.approx(1.0)
    assert step.sensitivity_at_target_fp == pytest.approx(1 / 3)
    assert monai.sensitivity_at_target_fp == pytest.approx(0.5)
    assert step.node21_score == pytest.approx(0.75 + 0.25 / 3)
    assert monai.node21_score == pytest.approx(0.75 + 0.125)
    for m in (step, monai):
        assert m.froc_fps_per_image == pytest.approx([0, 0, 0.5])
        assert m.froc_sensitivity == pytest.approx([0, 1 / 3, 2 / 3])


def test_monai_skips_lowest_score_when_every_nodule_is_hit():
    """Inherited MONAI behaviour, documented: img0 nodule hit at 0.875, img1 nodule hit at 0.25,
    img2 negative with an FP at 0.5, img3 negative without preds. 4 images, 2 nodules.
    Step curve: .875 (0, .5); .5 (.25, .5); .25 (.25, 1.0) -> all-thresholds sens@0.25 = 1.0.
    MONAI: tp_probs = [.875, .25] has no 0 (nothing missed), so its thresholds sorted(set)[1:]
    skip 0.25: points (.25, .5), (0, .5), (0, 0) -> 0.5.
    """
    preds = [P([G0], [0.875]), P([G1], [0.25]), P([far(0)], [0.5]), P([], [])]
    targets = [T([G0]), T([G1]), T([]), T([])]
    assert evaluate_detections(preds, targets, mode="all-thresholds").sensitivity_at_target_fp == pytest.approx(1.0)
    monai = evaluate_detections(preds, targets, mode="monai")
    assert monai.sensitivity_at_target_fp == pytest.approx(0.5)
    assert monai.froc_thresholds == pytest.approx([np.inf, 0.875, 0.5])


def test_monai_mode_is_monai_function():
    from monai.metrics.froc import compute_froc_curve_data

    fp = np.array([0.75, 0.625, 0.5625])
    tp = np.array([0.875, 0.5])
    fps, sens, _ = froc_curve_monai(fp, tp, 3, 4)
    ref_fps, ref_sens = compute_froc_curve_data(fp, np.array([0.875, 0.5, 0.0]), 3, 4)
    np.testing.assert_allclose(fps, ref_fps[::-1])
    np.testing.assert_allclose(sens, ref_sens[::-1])


def test_iou_exactly_02_does_not_count():
    gt = torch.tensor([G0], dtype=torch.float64)
    # [0,0,10,2] inside G0: intersection 20, union 100 -> IoU exactly 0.2 -> not a TP.
    is_tp, matched = match_image(torch.tensor([[0, 0, 10, 2.0]]), torch.tensor([0.5]), gt)
    assert not is_tp.any() and matched.tolist() == [-1]
    # [0,0,10,2.5]: IoU 25/100 = 0.25 > 0.2 -> TP.
    is_tp, matched = match_image(torch.tensor([[0, 0, 10, 2.5]]), torch.tensor([0.5]), gt)
    assert is_tp.tolist() == [True] and matched.tolist() == [0]
    # The same through evaluate_detections (float32 inputs): the 0.2 box is an FP.
    preds = [P([[0, 0, 10, 2]], [0.5]), P([], [])]
    m = evaluate_detections(preds, [T([G0]), T([])], mode="all-thresholds")
    assert m.num_true_positives == 0 and m.sensitivity_at_target_fp == 0.0


def test_several_predictions_on_one_nodule_and_score_ties():
    gt = torch.tensor([G0], dtype=torch.float64)
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 11, 11], [0, 0, 9, 9]], dtype=torch.float64)
    # Highest score counts, whatever its IoU; the rest are FPs.
    is_tp, _ = match_image(boxes, torch.tensor([0.25, 0.5, 0.375]), gt)
    assert is_tp.tolist() == [False, True, False]
    # Equal scores: the first in input order counts (stable sort).
    is_tp, _ = match_image(boxes, torch.tensor([0.5, 0.5, 0.5]), gt)
    assert is_tp.tolist() == [True, False, False]


def test_one_prediction_over_two_nodules_takes_best_unmatched():
    gts = torch.tensor([[0, 0, 10, 10], [5, 0, 15, 10]], dtype=torch.float64)
    # p0 (0.75) on gt1 exactly; p1 (0.5) overlaps gt1 more (IoU 0.67) than gt0 (0.33), but gt1 is
    # taken, so it takes gt0: both TPs.
    boxes = torch.tensor([[5, 0, 15, 10], [3, 0, 13, 10]], dtype=torch.float64)
    is_tp, matched = match_image(boxes, torch.tensor([0.75, 0.5]), gts)
    assert is_tp.tolist() == [True, True] and matched.tolist() == [1, 0]


@pytest.mark.parametrize("mode", ["monai", "all-thresholds"])
def test_empty_predictions(mode):
    """No boxes anywhere: every image scores 0 -> AUC 0.5 (all tied); sensitivity 0; score 0.375."""
    m = evaluate_detections([P([], []), P([], [])], [T([G0]), T([])], mode=mode)
    assert m.auc == pytest.approx(0.5)
    assert m.sensitivity_at_target_fp == 0.0
    assert m.node21_score == pytest.approx(0.375)
    assert m.num_predictions == 0


def test_mapping_inputs_and_missing_image():
    preds, targets = case_a()
    names = ["a", "b", "c", "d"]
    by_name = evaluate_detections(dict(zip(names, preds)), dict(zip(names, targets)), mode="all-thresholds")
    assert by_name.node21_score == pytest.approx(evaluate_detections(preds, targets, mode="all-thresholds").node21_score)
    with pytest.raises(ValueError, match=r"predictions has no entry for image.*'d'"):
        evaluate_detections(dict(zip(names[:3], preds[:3])), dict(zip(names, targets)))
    with pytest.raises(ValueError, match="both be sequences"):
        evaluate_detections(preds, dict(zip(names, targets)))


def test_nodule_label_filter():
    preds = [{**P([G0, far(0)], [0.875, 0.75]), "labels": torch.tensor([1, 2])}, P([], [])]
    m = evaluate_detections(preds, [T([G0]), T([])], mode="all-thresholds", nodule_label=1)
    assert m.num_predictions == 1 and m.froc_fps_per_image[-1] == 0.0


@pytest.mark.parametrize(
    ("preds", "targets", "message"),
    [
        ([P([], [])], [T([]), T([])], r"predictions has 1 images but targets has 2"),
        ([{"boxes": torch.zeros(2, 3), "scores": torch.zeros(2)}], [T([G0])], r"predictions\['0'\]\['boxes'\] must have shape \(N, 4\)"),
        ([P([G0], [0.5])], [{"boxes": torch.zeros(1, 5)}], r"targets\['0'\]\['boxes'\] must have shape"),
        ([P([G0], [1.5])], [T([G0])], r"predictions\['0'\]\['scores'\] must be probabilities in \[0, 1\]"),
        ([P([G0], [-0.1])], [T([G0])], r"predictions\['0'\]\['scores'\]"),
        ([{"boxes": torch.zeros(2, 4), "scores": torch.zeros(3)}], [T([G0])], r"predictions\['0'\]\['scores'\] has 3 entries"),
        ([{"boxes": torch.tensor([[5.0, 0, 0, 5]]), "scores": torch.ones(1)}], [T([G0])], r"x2 >= x1"),
        ([{"scores": torch.ones(1)}], [T([G0])], r"predictions\['0'\] must be a dict with 'boxes'"),
        ([P([G0], [0.5])], [T([G0])], r"at least one image with a nodule and one image without"),
    ],
)
def test_bad_input_errors_name_the_argument(preds, targets, message):
    with pytest.raises(ValueError, match=message):
        evaluate_detections(preds, targets)


def test_bad_options():
    preds, targets = case_a()
    with pytest.raises(ValueError, match="mode must be one of"):
        evaluate_detections(preds, targets, mode="froc")
    with pytest.raises(ValueError, match="bootstrap must be >= 0"):
        evaluate_detections(preds, targets, bootstrap=-1)


@pytest.mark.parametrize("mode", ["monai", "all-thresholds"])
def test_bootstrap_reproducible_with_seed(mode):
    preds, targets = case_a()
    preds, targets = preds * 3, targets * 3  # 12 images: most replicates have both classes
    a = evaluate_detections(preds, targets, mode=mode, bootstrap=60, seed=7)
    b = evaluate_detections(preds, targets, mode=mode, bootstrap=60, seed=7)
    c = evaluate_detections(preds, targets, mode=mode, bootstrap=60, seed=8)
    assert a.confidence_intervals == b.confidence_intervals
    assert a.confidence_intervals != c.confidence_intervals
    assert set(a.confidence_intervals) == {"auc", "sensitivity_at_target_fp", "node21_score"}
    assert 0 < a.bootstrap_valid_replicates <= 60 and a.bootstrap_seed == 7
    for lo, hi in a.confidence_intervals.values():
        assert 0.0 <= lo <= hi <= 1.0
    # The point estimate does not depend on the bootstrap.
    assert a.node21_score == evaluate_detections(preds, targets, mode=mode).node21_score
    assert json.loads(json.dumps(a.to_dict()))["confidence_intervals"]["auc"] == list(a.confidence_intervals["auc"])


def _brute_force_curve(fp, tp, num_targets, num_images):
    points = [(np.inf, 0.0, 0.0)]
    for t in sorted(set(fp) | set(tp), reverse=True):
        points.append((t, sum(s >= t for s in fp) / num_images, sum(s >= t for s in tp) / num_targets))
    return points


scores = st.integers(min_value=0, max_value=16).map(lambda k: k / 16)


@settings(max_examples=60, deadline=None)
@given(fp=st.lists(scores, max_size=12), tp=st.lists(scores, max_size=6), missed=st.integers(0, 4),
       num_images=st.integers(1, 8), fp_rate=st.sampled_from([0.125, 0.25, 0.5, 1.0]))
def test_all_thresholds_curve_matches_brute_force(fp, tp, missed, num_images, fp_rate):
    num_targets = len(tp) + missed
    if num_targets == 0:
        return
    fps, sens, thr = froc_curve_all_thresholds(np.array(fp), np.array(tp), num_targets, num_images)
    expected = _brute_force_curve(fp, tp, num_targets, num_images)
    np.testing.assert_allclose(thr, [p[0] for p in expected])
    np.testing.assert_allclose(fps, [p[1] for p in expected])
    np.testing.assert_allclose(sens, [p[2] for p in expected])
    from cxr_nodule_aug.eval import sensitivity_at_fp_all_thresholds, sensitivity_at_fp_monai

    step = sensitivity_at_fp_all_thresholds(fps, sens, fp_rate)
    assert step == max(p[2] for p in expected if p[1] <= fp_rate)
    # Where a missed nodule puts a 0 in MONAI's tp_probs and no score is 0, MONAI's curve is the
    # same operating points, so MONAI's interpolated value is never below the step value.
    if missed and 0.0 not in fp and 0.0 not in tp:
        m_fps, m_sens, _ = froc_curve_monai(np.array(fp), np.array(tp), num_targets, num_images)
        np.testing.assert_allclose(m_fps, fps)
        np.testing.assert_allclose(m_sens, sens)
        assert sensitivity_at_fp_monai(m_fps, m_sens, fp_rate) >= step - 1e-12


def test_eval_package_does_not_import_train():
    code = ("import sys, cxr_nodule_aug.eval; "
            "bad = [m for m in sys.modules if m.startswith('cxr_nodule_aug.train')]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
