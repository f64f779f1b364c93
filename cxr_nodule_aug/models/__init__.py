"""The networks: shape GAN, texture inpainter, additive layer model, lung segmenter. Widths and sizes configurable."""

from cxr_nodule_aug.models.layer import DENSITY_CLASSES, LayerGenerator, LayerOutput
from cxr_nodule_aug.models.lung import LungSegmenter
from cxr_nodule_aug.models.shape import ShapeDiscriminator, ShapeGenerator
from cxr_nodule_aug.models.texture import GatedConv2d, PatchDiscriminator, TextureGenerator, TextureOutput

__all__ = [
    "DENSITY_CLASSES",
    "LayerGenerator",
    "LayerOutput",
    "GatedConv2d",
    "LungSegmenter",
    "PatchDiscriminator",
    "ShapeDiscriminator",
    "ShapeGenerator",
    "TextureGenerator",
    "TextureOutput",
]
