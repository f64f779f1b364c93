"""Find the image and the detection target in a torchvision-v2-style sample, and rebuild it.

Samples may be ``(image, target)``, ``{"image": ..., "boxes": ..., "labels": ...}``,
``{"image": ..., "target": {...}}`` or any nesting of dicts, lists and tuples (as torchvision
v2 accepts). One rule finds the parts in every layout:

- the **target** is the one mapping that directly holds the sample's one
  ``tv_tensors.BoundingBoxes``;
- the **image** is the one ``tv_tensors.Image``; else the one PIL image; else the one plain
  ``torch.Tensor`` shaped ``(C, H, W)`` with C in {1, 3} that is not one of the target's own
  entries (labels, masks, lung mask, ...), preferring the one whose (H, W) is the boxes'
  ``canvas_size`` when there are several. Anything else is an error naming what was found.

Both are located by their path (keys and indices) from the sample's root, so a flat dict, in
which the target *is* the sample and also holds the image, is rebuilt with both the new image
and the new target. Inputs are never modified: containers on the path to a changed leaf are
copied.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import PIL.Image
import torch
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as TF

Path = tuple[Any, ...]

# PIL modes that round-trip through a (C, H, W) tensor without loss.
PIL_MODES = {"L": "uint8", "RGB": "uint8 x 3", "I;16": "uint16", "I": "int32", "F": "float32"}


def _walk(obj: Any, path: Path = ()):
    yield path, obj
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            yield from _walk(v, path + (k,))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _walk(v, path + (i,))


def _is_container(obj: Any) -> bool:
    return isinstance(obj, (Mapping, list, tuple))


def flatten(sample: Any) -> list[Any]:
    """All leaves (non-container objects) in order."""
    return [x for _, x in _walk(sample) if not _is_container(x)]


def describe_path(path: Path) -> str:
    return "sample" + "".join(f"[{k!r}]" for k in path)


@dataclass
class ParsedSample:
    image: torch.Tensor
    """(C, H, W) plain tensor view of the image."""
    image_leaf: Any
    """The image object as found (tv_tensors.Image, plain tensor or PIL image)."""
    image_path: Path
    target: Mapping[str, Any]
    """The target mapping as found (never modified)."""
    target_path: Path
    boxes_key: str

    @property
    def boxes(self) -> tv_tensors.BoundingBoxes:
        return self.target[self.boxes_key]

    def name(self, id_keys: Collection[str] = ("image_id", "img_name", "file_name", "filename", "id", "path")) -> str:
        """How errors and logs name this image: an identifier from the target when it has one,
        else its shape and dtype."""
        for key in id_keys:
            value = self.target.get(key)
            if isinstance(value, torch.Tensor) and value.numel() == 1:
                value = value.item()
            if isinstance(value, (str, int)) or (value is not None and hasattr(value, "__fspath__")):
                return f"image {key}={str(value)!r}"
        return f"image of shape {tuple(self.image.shape)} {str(self.image.dtype).removeprefix('torch.')}"


def _pil_to_tensor(img: PIL.Image.Image, path: Path) -> torch.Tensor:
    if img.mode not in PIL_MODES:
        raise TypeError(
            f"{describe_path(path)} is a PIL image of mode {img.mode!r}; supported modes are "
            f"{', '.join(f'{m} ({d})' for m, d in PIL_MODES.items())}: convert it first, e.g. image.convert('L')"
        )
    return TF.pil_to_tensor(img)


def parse_sample(sample: Any, target_keys: Collection[str] = ()) -> ParsedSample:
    """Locate the image and the target of ``sample`` (see the module docstring).

    ``target_keys``: the target's own entries (labels, masks, lung mask, ...) that are never
    taken for a plain-tensor image.
    """
    nodes = list(_walk(sample))
    boxes_at = [p for p, x in nodes if isinstance(x, tv_tensors.BoundingBoxes)]
    if not boxes_at:
        raise ValueError(
            "the sample holds no tv_tensors.BoundingBoxes: nodule insertion must label what it inserts, so pass a target "
            "such as {'boxes': BoundingBoxes(...), 'labels': tensor([...])} (an image without nodules has BoundingBoxes of shape (0, 4))"
        )
    if len(boxes_at) > 1:
        raise ValueError(
            f"the sample holds {len(boxes_at)} tv_tensors.BoundingBoxes (at {', '.join(map(describe_path, boxes_at))}); nodule insertion needs exactly one"
        )
    (bpath,) = boxes_at
    at = dict(nodes)
    if not bpath or not isinstance(at[bpath[:-1]], Mapping):
        raise ValueError(
            f"the BoundingBoxes at {describe_path(bpath)} are not an entry of a dict: the target must be a dict "
            "such as {'boxes': BoundingBoxes(...), 'labels': tensor([...])}"
        )
    target_path, boxes_key = bpath[:-1], bpath[-1]
    target = at[target_path]
    canvas = tuple(target[boxes_key].canvas_size)

    def found(kind: type) -> list[tuple[Path, Any]]:
        return [(p, x) for p, x in nodes if isinstance(x, kind)]

    candidates = found(tv_tensors.Image)
    kind = "tv_tensors.Image"
    if not candidates:
        candidates, kind = found(PIL.Image.Image), "PIL image"
    if not candidates:
        kind = "plain (C, H, W) tensor"
        own = {target_path + (k,) for k in target_keys}
        plain = [(p, x) for p, x in nodes if type(x) is torch.Tensor and p not in own]
        candidates = [(p, x) for p, x in plain if x.ndim == 3 and x.shape[0] in (1, 3)]
        if not candidates and len(plain) == 1:
            candidates = plain  # the one plain tensor: the image check names what is wrong with it
        if len(candidates) > 1:
            matching = [(p, x) for p, x in candidates if tuple(x.shape[-2:]) == canvas]
            candidates = matching or candidates
    if not candidates:
        raise TypeError(
            "the sample holds no image: expected one tv_tensors.Image, one PIL image, or one plain tensor of shape (C, H, W) "
            f"with C = 1 or 3 (the boxes' canvas_size is (H, W) = {canvas}); the layouts handled are (image, target), a flat dict, "
            "and nested dicts, lists and tuples"
        )
    if len(candidates) > 1:
        raise ValueError(
            f"the sample holds {len(candidates)} candidates for the image ({kind} at {', '.join(describe_path(p) for p, _ in candidates)}); "
            "nodule insertion needs exactly one: wrap the image in tv_tensors.Image"
        )
    (image_path, image_leaf), = candidates
    if isinstance(image_leaf, PIL.Image.Image):
        image = _pil_to_tensor(image_leaf, image_path)
    else:
        image = image_leaf.as_subclass(torch.Tensor)
    return ParsedSample(image=image, image_leaf=image_leaf, image_path=image_path, target=target, target_path=target_path, boxes_key=boxes_key)


def rebuild(sample: Any, replace: Mapping[Path, Any], path: Path = ()) -> Any:
    """Copy of ``sample`` with the object at each path of ``replace`` swapped for its value.

    Replacements are applied from the root down: a replaced container (the new target) is
    then searched for deeper paths (the image inside a flat-dict target). Containers off the
    paths are returned as they are; those on them are copied, keeping their type.
    """
    node = replace.get(path, sample)
    deeper = [p for p in replace if len(p) > len(path) and p[: len(path)] == path]
    if not deeper:
        return node
    if isinstance(node, Mapping):
        items = [(k, rebuild(v, replace, path + (k,))) for k, v in node.items()]
        return dict(items) if type(node) is dict else type(node)(items)
    if isinstance(node, tuple):
        items = [rebuild(v, replace, path + (i,)) for i, v in enumerate(node)]
        return type(node)(*items) if hasattr(node, "_fields") else type(node)(items)
    if isinstance(node, list):
        return [rebuild(v, replace, path + (i,)) for i, v in enumerate(node)]
    return node


def wrap_image(new: torch.Tensor, like: Any) -> Any:
    """Return ``new`` as the same kind of object as ``like`` (tv_tensor, PIL or plain tensor)."""
    if isinstance(like, PIL.Image.Image):
        array = new.detach().cpu().permute(1, 2, 0).numpy()
        out = PIL.Image.fromarray(np.ascontiguousarray(array[..., 0] if array.shape[-1] == 1 else array))
        if out.mode != like.mode:  # pragma: no cover - parse_sample admits only modes that round-trip
            raise TypeError(f"cannot return a {new.dtype} image as a PIL image of mode {like.mode!r}")
        return out
    if isinstance(like, tv_tensors.TVTensor):
        return tv_tensors.wrap(new, like=like)
    return new
