"""How a synthesised nodule is composed into the radiograph: ``replace`` or ``additive``.

Both work on one nodule's R x R canvas in the working (log-intensity) grey level
(:func:`~cxr_nodule_aug.functional.intensity.to_working`) and return the *change* to add to the
image there; :func:`~cxr_nodule_aug.functional.intensity.from_working` maps it back.

* ``"replace"`` (the paper): an inpainter fills the hole; the change is
  ``contrast * (generated - region)`` inside the footprint, so whatever lay under the nodule
  (ribs, vessels) is erased.
* ``"additive"`` (issue 13): a radiograph is a projection, so after the log transform a nodule
  *adds* its attenuation (``/work/shared/PHYSICS.md``). A
  :class:`~cxr_nodule_aug.models.layer.LayerGenerator` predicts the layer (>= 0, soft edge)
  from the intact context; the change is ``contrast * layer`` inside the footprint and the
  anatomy behind the nodule stays visible.

The model says which composition it is made for (``model.composition``, ``"replace"`` when
the attribute is absent, as for every inpainter).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

COMPOSITIONS = ("replace", "additive")


def check_composition(composition: str) -> str:
    if composition not in COMPOSITIONS:
        raise ValueError(f"composition must be one of {COMPOSITIONS}, got {composition!r}")
    return composition


def composition_of(model: torch.nn.Module) -> str:
    """The composition ``model`` is made for: its ``composition`` attribute, else ``"replace"``."""
    return check_composition(getattr(model, "composition", "replace"))


def nodule_change(composition: str, generated: torch.Tensor, region: torch.Tensor, footprint: torch.Tensor, contrast: float = 1.0) -> torch.Tensor:
    """The working-space change (R, R) one nodule makes on its canvas.

    Args:
        composition: ``"replace"`` or ``"additive"``.
        generated: (R, R) the model's output resampled to the canvas: the inpainted grey level
            (replace) or the layer (additive).
        region: (R, R) the working image under the canvas (replace only reads it).
        footprint: (R, R) bool, the nodule's mask: the change is zero outside it.
        contrast: scale of the change (1 = as synthesised).
    """
    check_composition(composition)
    if generated.shape != footprint.shape or region.shape != footprint.shape:
        raise ValueError(f"generated, region and footprint must share one (R, R) shape, got {tuple(generated.shape)}, {tuple(region.shape)}, {tuple(footprint.shape)}")
    if composition == "additive":
        return contrast * generated * footprint
    return contrast * (generated - region) * footprint


def run_model(model: torch.nn.Module, patches: torch.Tensor, holes: torch.Tensor, densities: Sequence[str] | None = None) -> torch.Tensor:
    """One model call on (N, 1, P, P) patches and holes -> (N, 1, P, P) float32: the inpainted
    patch (replace) or the layer (additive; ``densities``: one class name per patch)."""
    if len(patches) == 0:
        return patches.float()
    composition = composition_of(model)
    with torch.inference_mode():
        dtype = next(model.parameters()).dtype
        if composition == "additive":
            if densities is None or len(densities) != len(patches):
                raise ValueError(f"an additive model needs one density per nodule ({len(patches)}), got {None if densities is None else len(densities)}")
            return model(patches.to(dtype), holes.to(dtype), list(densities)).fine.float()
        return model(patches.to(dtype), holes.to(dtype)).fine.float()
