"""The ``"additive"`` composition mode (issue 13): a nodule *adds* to the radiograph.

A radiograph is a projection, so after the log transform a nodule adds its attenuation to
what lies behind it (``/work/shared/PHYSICS.md``). A
:class:`~cxr_nodule_aug.models.layer.LayerGenerator` predicts the nodule's layer (>= 0, soft
edge) from the cut patch with the anatomy under the nodule intact, the hole and each record's
``density``; the change the engine pastes is the layer itself, so ribs and vessels behind the
nodule stay visible. The ``"replace"`` mode (the paper's inpainting) is
:func:`cxr_nodule_aug.functional.insertion.replace_composition`: there the change is
``inpainted - region`` and the anatomy under the nodule is erased.

Both follow :data:`cxr_nodule_aug.functional.insertion.Composition`; the engine's table
(:data:`cxr_nodule_aug.synthesizer.COMPOSITIONS`) names them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from cxr_nodule_aug.models.layer import DEFAULT_DENSITY, LayerGenerator


def run_layer(layer_model: torch.nn.Module, patches: torch.Tensor, holes: torch.Tensor, densities: Sequence[str]) -> torch.Tensor:
    """One layer-model call: (N, 1, P, P) patches and holes, one density class per patch ->
    (N, 1, P, P) float32 layers (>= 0, zero outside the hole)."""
    if len(patches) == 0:
        return patches.float()
    if len(densities) != len(patches):
        raise ValueError(f"one density per nodule is needed ({len(patches)}), got {len(densities)}")
    with torch.inference_mode():
        dtype = next(layer_model.parameters()).dtype
        return layer_model(patches.to(dtype), holes.to(dtype), list(densities)).fine.float()


def additive_composition(layer_model: torch.nn.Module, cuts: list, records: list) -> list[list[torch.Tensor]]:
    """The engine's ``"additive"`` mode: one layer-model call for every nodule of every image;
    per image and nodule the (R, R) change = the layer resampled to the canvas (the engine
    keeps it inside the footprint and scales it by ``contrast``).

    ``cuts``: per image, the engine's :class:`~cxr_nodule_aug.functional.insertion.NoduleCut`
    (``patches`` (N, 1, P, P), ``holes``, ``regions`` (R, R) each); ``records``: per image, the
    nodules' records, whose ``density`` is the condition (:data:`DEFAULT_DENSITY` where ``None``).
    """
    base = getattr(layer_model, "_orig_mod", layer_model)  # torch.compile's wrapper
    if not isinstance(base, LayerGenerator):
        raise TypeError(
            f"composition='additive' needs a LayerGenerator (a weights source's 'layer/' model), got {type(base).__name__}; "
            "an inpainter such as TextureGenerator goes with composition='replace'"
        )
    if len(cuts) != len(records):
        raise ValueError(f"cuts and records must pair up per image, got {len(cuts)} and {len(records)}")
    n = sum(len(c.regions) for c in cuts)
    if n == 0:
        return [[] for _ in cuts]
    densities = [DEFAULT_DENSITY if r.density is None else r.density for recs in records for r in recs]
    if len(densities) != n:
        raise ValueError(f"one record per cut nodule is needed, got {len(densities)} records for {n} nodules")
    layers = run_layer(layer_model, torch.cat([c.patches for c in cuts]), torch.cat([c.holes for c in cuts]), densities)
    out, start = [], 0
    for c in cuts:
        changes = []
        for i, region in enumerate(c.regions):
            layer = layers[start + i : start + i + 1]
            R = region.shape[-1]
            if R != layer.shape[-1]:
                layer = F.interpolate(layer, size=(R, R), mode="bilinear", align_corners=False)
            changes.append(layer[0, 0])  # bilinear weights are >= 0: still a non-negative layer
        out.append(changes)
        start += len(c.regions)
    return out
