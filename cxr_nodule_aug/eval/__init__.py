"""Evaluation: NODE21 detection metrics (AUC, FROC, sensitivity at 0.25 FP/image, score) and
NODE21 / grand-challenge file I/O.

Needs the ``eval`` extra (scikit-learn, MONAI, matplotlib), imported only when a function uses it.
Imports nothing from :mod:`cxr_nodule_aug.train`.
"""

from cxr_nodule_aug.eval.detection import (
    MODES,
    DetectionMetrics,
    ImageMatches,
    evaluate_detections,
    froc_curve_all_thresholds,
    froc_curve_monai,
    image_level_auc,
    match_detections,
    match_image,
    sensitivity_at_fp_all_thresholds,
    sensitivity_at_fp_monai,
)
from cxr_nodule_aug.eval.node21_io import (
    node21_json_from_predictions,
    predictions_from_node21_json,
    read_node21_metadata,
    read_node21_predictions,
    write_node21_metadata,
    write_node21_predictions,
)
from cxr_nodule_aug.eval.plot import plot_froc

__all__ = [
    "MODES",
    "DetectionMetrics",
    "ImageMatches",
    "evaluate_detections",
    "froc_curve_all_thresholds",
    "froc_curve_monai",
    "image_level_auc",
    "match_detections",
    "match_image",
    "sensitivity_at_fp_all_thresholds",
    "sensitivity_at_fp_monai",
    "node21_json_from_predictions",
    "predictions_from_node21_json",
    "read_node21_metadata",
    "read_node21_predictions",
    "write_node21_predictions",
    "write_node21_metadata",
    "plot_froc",
]
