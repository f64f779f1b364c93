"""torchvision-v2 transforms that add nodules to detection samples."""

from cxr_nodule_aug.transforms.insert_nodules import InsertNodules
from cxr_nodule_aug.transforms.nodule_inpaint import NoduleInpaint

__all__ = ["InsertNodules", "NoduleInpaint"]
