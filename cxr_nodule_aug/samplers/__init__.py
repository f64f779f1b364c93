"""Samplers for nodule attributes: ``sampler(n, generator=None) -> Tensor[n]``."""

from cxr_nodule_aug.samplers.base import Choice, Constant, IntUniform, Sampler, Uniform, as_sampler, draw_with_attributes
from cxr_nodule_aug.samplers.density import DensityChoice, as_density_sampler
from cxr_nodule_aug.samplers.hem import HEMSampler
from cxr_nodule_aug.samplers.lidc import NAMED_DIAMETERS, LIDCDiameters, resolve_sampler

__all__ = ["NAMED_DIAMETERS", "Choice", "Constant", "DensityChoice", "HEMSampler", "IntUniform", "LIDCDiameters", "Sampler", "Uniform",
           "as_density_sampler", "as_sampler", "draw_with_attributes", "resolve_sampler"]
