"""Nodule detectors (torchvision Faster R-CNN / RetinaNet), their inputs, and hard-example mining.

Imports nothing from :mod:`cxr_nodule_aug.train`.
"""

from cxr_nodule_aug.detection.data import ToDetectorInput, detection_collate, predict_dataset, predictions_in_original_frame, to_original_frame
from cxr_nodule_aug.detection.mining import find_missed, local_contrast, mine_nodules, missed_sampler, nodule_outcomes, operating_threshold, plot_missed_histogram
from cxr_nodule_aug.detection.models import ARCHITECTURES, BACKBONES, NoduleDetector

__all__ = [
    "ARCHITECTURES", "BACKBONES", "NoduleDetector",
    "ToDetectorInput", "detection_collate", "predict_dataset", "predictions_in_original_frame", "to_original_frame",
    "find_missed", "local_contrast", "mine_nodules", "missed_sampler", "nodule_outcomes", "operating_threshold", "plot_missed_histogram",
]
