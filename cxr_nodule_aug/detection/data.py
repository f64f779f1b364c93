"""Turning library samples into detector inputs, batching them, and running a detector on a set."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from cxr_nodule_aug.functional.intensity import check_image, to_working

ORIGINAL_SIZE_KEY = "original_size"


class ToDetectorInput(torch.nn.Module):
    """``(image, target)`` -> ``(Image (1, S, S) float32 in [0, 1], target)`` for a detector.

    The grey level is mapped by the image's own window (the 0.1 / 99.9 percentiles, as for
    insertion) so that 8-bit, 12-bit and float radiographs all reach the detector alike, then
    resized to ``size`` x ``size`` with its boxes and masks (``v2.Resize``). The target's
    ``pixel_spacing_mm`` is rescaled to the resized image, and ``original_size`` records the
    ``(H, W)`` it was resized from, so that boxes found at the detector's size can be taken back
    to the dataset's own images (:func:`to_original_frame`, :func:`predictions_in_original_frame`;
    HEM mining measures there). The input sample is not modified.
    """

    def __init__(self, size: int, spacing_key: str = "pixel_spacing_mm") -> None:
        super().__init__()
        if not isinstance(size, int) or size < 16:
            raise ValueError(f"size must be an int >= 16, got {size!r}")
        self.size = size
        self.spacing_key = spacing_key
        self.resize = v2.Resize((size, size), antialias=True)

    def forward(self, image: torch.Tensor, target: dict[str, Any]) -> tuple[tv_tensors.Image, dict[str, Any]]:
        check_image(image)
        if not isinstance(target, dict):
            raise TypeError(f"target must be a dict, got {type(target).__name__}")
        h, w = image.shape[-2:]
        gray, _, _ = to_working(image.as_subclass(torch.Tensor))
        out = tv_tensors.Image(gray.clamp(0, 1)[None])
        target = dict(target)
        spacing = target.get(self.spacing_key)
        out, target = self.resize(out, target)
        target.setdefault(ORIGINAL_SIZE_KEY, (int(h), int(w)))
        if spacing is not None:
            sy, sx = (float(spacing), float(spacing)) if isinstance(spacing, (int, float)) else (float(spacing[0]), float(spacing[1]))
            target[self.spacing_key] = (sy * h / self.size, sx * w / self.size)
        return out, target

    def extra_repr(self) -> str:
        return f"size={self.size}"


def to_original_frame(target: Mapping[str, Any], name: str = "target") -> tuple[float, float]:
    """``(fx, fy)``: the factors that take x and y from the frame of ``target["boxes"]`` to the
    original image's: ``(1, 1)`` unless the target records ``original_size`` (``(H, W)``, written
    by :class:`ToDetectorInput`). The current frame is the ``canvas_size`` of the target's
    ``BoundingBoxes``."""
    original = target.get(ORIGINAL_SIZE_KEY)
    if original is None:
        return 1.0, 1.0
    boxes = target.get("boxes")
    if not isinstance(boxes, tv_tensors.BoundingBoxes):
        raise ValueError(f"{name} has {ORIGINAL_SIZE_KEY!r} but its boxes are not tv_tensors.BoundingBoxes: "
                         "the frame they are in (canvas_size) is unknown")
    (h0, w0), (h, w) = (int(v) for v in original), boxes.canvas_size
    return w0 / w, h0 / h


def predictions_in_original_frame(predictions: Sequence[Mapping[str, Any]], targets: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Detector outputs with their ``boxes`` (XYXY) mapped to each target's original image
    (:func:`to_original_frame`); other keys are kept. The inputs are not modified."""
    if len(predictions) != len(targets):
        raise ValueError(f"predictions and targets must have one entry per image, got {len(predictions)} and {len(targets)}")
    out = []
    for i, (pred, target) in enumerate(zip(predictions, targets)):
        fx, fy = to_original_frame(target, f"targets[{i}]")
        boxes = torch.as_tensor(pred["boxes"]).as_subclass(torch.Tensor).float().reshape(-1, 4)
        out.append({**pred, "boxes": boxes * boxes.new_tensor([fx, fy, fx, fy])})
    return out


def detection_collate(batch: Sequence[tuple[torch.Tensor, dict[str, Any]]]) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    """A DataLoader ``collate_fn``: images as a list, targets reduced to plain ``boxes`` (XYXY
    float32) and ``labels`` (int64) — what torchvision detectors train on."""
    images, targets = [], []
    for i, (image, target) in enumerate(batch):
        boxes = target["boxes"]
        if isinstance(boxes, tv_tensors.BoundingBoxes) and boxes.format != tv_tensors.BoundingBoxFormat.XYXY:
            boxes = v2.functional.convert_bounding_box_format(boxes, new_format=tv_tensors.BoundingBoxFormat.XYXY)
        boxes = torch.as_tensor(boxes).as_subclass(torch.Tensor).float().reshape(-1, 4)
        labels = torch.as_tensor(target.get("labels", torch.ones(len(boxes), dtype=torch.int64))).as_subclass(torch.Tensor).long()
        if len(labels) != len(boxes):
            raise ValueError(f"sample {i}: {len(boxes)} boxes but {len(labels)} labels")
        images.append(image.as_subclass(torch.Tensor))
        targets.append({"boxes": boxes, "labels": labels})
    return images, targets


def predict_dataset(detector: torch.nn.Module, samples: Iterable[tuple[torch.Tensor, dict[str, Any]]], batch_size: int = 8) -> tuple[list[dict[str, torch.Tensor]], list[dict[str, Any]]]:
    """Run ``detector.predict`` over detector-ready samples; returns ``(predictions, targets)``
    aligned, ready for :func:`cxr_nodule_aug.eval.evaluate_detections` and
    :meth:`cxr_nodule_aug.HEMSampler.find_missed`."""
    predictions: list[dict[str, torch.Tensor]] = []
    targets: list[dict[str, Any]] = []
    images: list[torch.Tensor] = []

    def flush() -> None:
        if images:
            predictions.extend(detector.predict(images, batch_size=batch_size))
            images.clear()

    for image, target in samples:
        images.append(image.as_subclass(torch.Tensor))
        targets.append(target)
        if len(images) == batch_size:
            flush()
    flush()
    return predictions, targets
