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


def additive_composition(layer_model: torch.nn.Module, cuts: list, records: list) -> list[list[torch.Tensor]]:
    """The engine's ``"additive"`` composition mode: one layer-model call for every nodule of
    every image; per image and nodule the (R, R) change = the layer resampled to the canvas
    (the engine keeps it inside the footprint and scales it by ``contrast``).

    ``cuts``: per image, the engine's cut (``patches`` (N, 1, P, P), ``holes``, ``regions``
    (R, R) each); ``records``: per image, the nodules' records, whose ``density`` is the
    condition (``DEFAULT_DENSITY`` where it is ``None``).
    """
    import torch.nn.functional as F

    from cxr_nodule_aug.models.layer import DEFAULT_DENSITY

    if len(cuts) != len(records):
        raise ValueError(f"cuts and records must pair up per image, got {len(cuts)} and {len(records)}")
    n = sum(len(c.regions) for c in cuts)
    if n == 0:
        return [[] for _ in cuts]
    densities = [DEFAULT_DENSITY if r.density is None else r.density for recs in records for r in recs]
    if len(densities) != n:
        raise ValueError(f"one record per cut nodule is needed, got {len(densities)} records for {n} nodules")
    layers = run_model(layer_model, torch.cat([c.patches for c in cuts]), torch.cat([c.holes for c in cuts]), densities)
    out, start = [], 0
    for c in cuts:
        changes = []
        for i, region in enumerate(c.regions):
            layer = layers[start + i : start + i + 1]
            R = region.shape[-1]
            if R != layer.shape[-1]:
                layer = F.interpolate(layer, size=(R, R), mode="bilinear", align_corners=False)
            changes.append(layer[0, 0].clamp_min(0))  # bilinear resampling keeps it >= 0; explicit
        out.append(changes)
        start += len(c.regions)
    return out
