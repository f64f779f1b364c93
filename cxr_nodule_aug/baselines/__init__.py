"""Baselines for the paper's comparisons: a partial-convolution U-Net inpainter (Table I's
PartialConv / Syn&Select generator) and a classical paste-and-blend inserter (the NODE21
generation baseline's approach: a CT-to-CXR nodule, contrast matched, Poisson blended)."""

from cxr_nodule_aug.baselines.partial_conv import PartialConv2d, PartialConvUNet
from cxr_nodule_aug.baselines.paste_blend import PasteBlendInpainter, contrast_ratio, paste_and_blend, poisson_blend

__all__ = ["PartialConv2d", "PartialConvUNet", "PasteBlendInpainter", "contrast_ratio", "paste_and_blend", "poisson_blend"]
