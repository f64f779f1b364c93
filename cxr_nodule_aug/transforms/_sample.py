"""Find the image and the detection target in a torchvision-v2-style sample, and rebuild it.

Samples may be ``(image, target)``, ``{"image": ..., "boxes": ..., "labels": ...}``,
``{"image": ..., "target": {...}}`` or any nesting of dicts, lists and tuples (as torchvision
v2 accepts). The target is the one dict that directly holds a ``tv_tensors.BoundingBoxes``.
Inputs are never modified: containers on the path to a changed leaf are copied.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import PIL.Image
import torch
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as TF


def _walk(obj: Any):
    yield obj
    if isinstance(obj, Mapping):
        for v in obj.values():
            yield from _walk(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _walk(v)


def flatten(sample: Any) -> list[Any]:
    """All leaves (non-container objects) in order."""
    return [x for x in _walk(sample) if not isinstance(x, (Mapping, list, tuple))]


@dataclass
class ParsedSample:
    image: torch.Tensor
    """(C, H, W) plain tensor view of the image."""
    image_leaf: Any
    """The image object as found (tv_tensors.Image, plain tensor or PIL image)."""
    target: dict[str, Any]
    boxes_key: str

    @property
    def boxes(self) -> tv_tensors.BoundingBoxes:
        return self.target[self.boxes_key]


def parse_sample(sample: Any) -> ParsedSample:
    leaves = flatten(sample)
    images = [x for x in leaves if isinstance(x, tv_tensors.Image)]
    if not images:
        images = [x for x in leaves if isinstance(x, PIL.Image.Image)]
    if not images:
        images = [x for x in leaves if type(x) is torch.Tensor]  # the first pure tensor, as v2 does
    if not images:
        raise TypeError("the sample holds no image: expected a tv_tensors.Image, a PIL image or a (C, H, W) tensor")
    if len([x for x in leaves if isinstance(x, tv_tensors.Image)]) > 1:
        raise ValueError("the sample holds more than one tv_tensors.Image; nodule insertion needs exactly one")
    image_leaf = images[0]
    if isinstance(image_leaf, PIL.Image.Image):
        image = TF.pil_to_tensor(image_leaf)
    else:
        image = image_leaf.as_subclass(torch.Tensor)

    targets = [x for x in _walk(sample) if isinstance(x, Mapping) and any(isinstance(v, tv_tensors.BoundingBoxes) for v in x.values())]
    n_boxes = sum(isinstance(x, tv_tensors.BoundingBoxes) for x in leaves)
    if n_boxes == 0 or not targets:
        raise ValueError(
            "the sample holds no tv_tensors.BoundingBoxes in a dict: nodule insertion must label what it "
            "inserts, so pass a target such as {'boxes': BoundingBoxes(...), 'labels': tensor([...])} "
            "(an image without nodules has BoundingBoxes of shape (0, 4))"
        )
    if n_boxes > 1 or len(targets) > 1:
        raise ValueError(f"the sample holds {n_boxes} tv_tensors.BoundingBoxes; nodule insertion needs exactly one")
    target = targets[0]
    if not isinstance(target, dict):
        target = dict(target)
    boxes_key = next(k for k, v in target.items() if isinstance(v, tv_tensors.BoundingBoxes))
    return ParsedSample(image=image, image_leaf=image_leaf, target=targets[0], boxes_key=boxes_key)


def rebuild(sample: Any, replace: dict[int, Any]) -> Any:
    """Copy of ``sample`` where every object whose ``id`` is a key of ``replace`` is swapped."""
    if id(sample) in replace:
        return replace[id(sample)]
    if isinstance(sample, Mapping):
        return type(sample)((k, rebuild(v, replace)) for k, v in sample.items()) if type(sample) is not dict else {k: rebuild(v, replace) for k, v in sample.items()}
    if isinstance(sample, tuple):
        items = [rebuild(v, replace) for v in sample]
        return type(sample)(*items) if hasattr(sample, "_fields") else type(sample)(items)
    if isinstance(sample, list):
        return [rebuild(v, replace) for v in sample]
    return sample


def wrap_image(new: torch.Tensor, like: Any) -> Any:
    """Return ``new`` as the same kind of object as ``like`` (tv_tensor, PIL or plain tensor)."""
    if isinstance(like, PIL.Image.Image):
        return TF.to_pil_image(new, mode=like.mode)
    if isinstance(like, tv_tensors.TVTensor):
        return tv_tensors.wrap(new, like=like)
    return new
