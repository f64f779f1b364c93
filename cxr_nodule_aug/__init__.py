"""cxr-nodule-aug: realistic, controllable lung nodule insertion for chest X-rays.

    >>> from torchvision.transforms import v2
    >>> from cxr_nodule_aug import NoduleInpaint, HEMSampler
    >>> sampler = HEMSampler.from_missed([6.0, 9.5, 14.0])            # mm
    >>> tf = v2.Compose([NoduleInpaint(diameters=sampler, p=0.5), v2.SanitizeBoundingBoxes()])

The engine behind the transforms, for direct use (lung masks, footprints, cuts, batched
insertion of given records): ``NoduleSynthesizer.from_pretrained()``.
"""

__version__ = "0.1.0"

from cxr_nodule_aug.datasets.loader import collate_samples
from cxr_nodule_aug.functional.placement import InsertionError, PlacementError
from cxr_nodule_aug.hub import WeightsError, load_model
from cxr_nodule_aug.models import LungSegmenter, PatchDiscriminator, ShapeDiscriminator, ShapeGenerator, TextureGenerator
from cxr_nodule_aug.records import NoduleRecord
from cxr_nodule_aug.samplers import HEMSampler
from cxr_nodule_aug.synthesizer import NoduleSynthesizer
from cxr_nodule_aug.transforms import InsertNodules, NoduleInpaint

__all__ = [
    "HEMSampler",
    "InsertNodules",
    "InsertionError",
    "LungSegmenter",
    "NoduleInpaint",
    "NoduleRecord",
    "NoduleSynthesizer",
    "PatchDiscriminator",
    "PlacementError",
    "ShapeDiscriminator",
    "ShapeGenerator",
    "TextureGenerator",
    "WeightsError",
    "__version__",
    "collate_samples",
    "load_model",
]
