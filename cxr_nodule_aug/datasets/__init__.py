"""Torch datasets returning ``(tv_tensors.Image (1,H,W), target)`` with ``boxes`` (XYXY),
``labels`` (int64, 1 = nodule), ``pixel_spacing_mm``, ``image_id`` and, where known, masks."""

from cxr_nodule_aug.datasets._common import AnnotatedImages, lung_mask_filename, mask_file_names, nodule_mask_folder
from cxr_nodule_aug.datasets.chestxray14 import ChestXray14Dataset, parse_bbox_list
from cxr_nodule_aug.datasets.loader import LowPriorityWorkers, collate_samples, share_tv_tensors_between_workers
from cxr_nodule_aug.datasets.kinds import DATASET_KINDS, DatasetKind, open_dataset
from cxr_nodule_aug.datasets.jsrt import JSRTDataset, parse_jsrt_list, parse_jsrt_non_nodule
from cxr_nodule_aug.datasets.node21 import Node21Dataset, parse_node21_metadata
from cxr_nodule_aug.datasets.simcxr import SimCXRDataset
from cxr_nodule_aug.datasets.vindr import VinDrCXRDataset, parse_vindr_csv

__all__ = [
    "SimCXRDataset", "Node21Dataset", "JSRTDataset", "ChestXray14Dataset", "VinDrCXRDataset",
    "AnnotatedImages", "LowPriorityWorkers", "collate_samples", "share_tv_tensors_between_workers", "lung_mask_filename", "mask_file_names", "nodule_mask_folder",
    "DATASET_KINDS", "DatasetKind", "open_dataset",
    "parse_node21_metadata", "parse_jsrt_list", "parse_jsrt_non_nodule", "parse_bbox_list", "parse_vindr_csv",
]
