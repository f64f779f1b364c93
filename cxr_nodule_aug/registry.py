"""Which class loads each saved ``model_type``: one explicit table, resolved lazily.

``config.json`` names its class in ``model_type``. :func:`model_class` imports the module the
table gives on first use, so any saved model loads in a fresh interpreter, whatever the caller
imported before (no registration by import side effects). This module imports nothing from the
package, so ``hub`` can use it without an import cycle.
"""

from __future__ import annotations

import importlib
from typing import Any

# model_type -> "module:Class". Every PretrainedMixin subclass of the package is listed
# (tests/test_hub.py checks the table against the classes).
MODEL_TYPES: dict[str, str] = {
    "ShapeGenerator": "cxr_nodule_aug.models.shape:ShapeGenerator",
    "ShapeDiscriminator": "cxr_nodule_aug.models.shape:ShapeDiscriminator",
    "TextureGenerator": "cxr_nodule_aug.models.texture:TextureGenerator",
    "PatchDiscriminator": "cxr_nodule_aug.models.texture:PatchDiscriminator",
    "LayerGenerator": "cxr_nodule_aug.models.layer:LayerGenerator",
    "LungSegmenter": "cxr_nodule_aug.models.lung:LungSegmenter",
    "PartialConvUNet": "cxr_nodule_aug.baselines.partial_conv:PartialConvUNet",
    "NoduleDetector": "cxr_nodule_aug.detection.models:NoduleDetector",
}


def model_class(model_type: str) -> Any:
    """The class saved as ``model_type``; ``KeyError`` naming the known types if there is none."""
    if model_type not in MODEL_TYPES:
        raise KeyError(f"unknown model_type {model_type!r}; known: {sorted(MODEL_TYPES)}")
    module, _, name = MODEL_TYPES[model_type].partition(":")
    return getattr(importlib.import_module(module), name)
