"""Tensor ops behind the transforms: size modulation, placement, insertion, intensity.

Functional core, thin classes: the transforms hold configuration and randomness only.
"""

from cxr_nodule_aug.functional.insertion import (
    Composition,
    InsertionResult,
    NoduleCut,
    PatchCut,
    Working,
    cut_nodules,
    cut_patch,
    insert_nodules,
    insert_nodules_batch,
    nodule_footprints,
    paste_nodules,
    place_nodules,
    region_side,
    replace_composition,
    run_texture,
    shape_footprints,
)
from cxr_nodule_aug.functional.intensity import check_image, from_working, to_working, value_limits
from cxr_nodule_aug.functional.placement import InsertionError, PlacementError, box_fits, check_diameters_fit, sample_centre, valid_centres
from cxr_nodule_aug.functional.size import ellipse_axes, equivalent_diameter, modulate_size

__all__ = [
    "Composition",
    "InsertionError",
    "InsertionResult",
    "NoduleCut",
    "PatchCut",
    "PlacementError",
    "Working",
    "box_fits",
    "check_diameters_fit",
    "check_image",
    "cut_nodules",
    "cut_patch",
    "ellipse_axes",
    "equivalent_diameter",
    "from_working",
    "insert_nodules",
    "insert_nodules_batch",
    "modulate_size",
    "nodule_footprints",
    "paste_nodules",
    "place_nodules",
    "region_side",
    "replace_composition",
    "run_texture",
    "sample_centre",
    "shape_footprints",
    "to_working",
    "valid_centres",
    "value_limits",
]
