"""NODE21 / grand-challenge file formats.

* **Predictions**: the grand-challenge "Multiple 2D bounding boxes" JSON that NODE21 detection
  algorithms write::

      {"type": "Multiple 2D bounding boxes",
       "boxes": [{"corners": [[x2, y2, s], [x1, y2, s], [x1, y1, s], [x2, y1, s]],
                  "probability": 0.83}, ...],
       "version": {"major": 1, "minor": 0}}

  ``s`` is the slice of the stacked input volume, i.e. the index of the image; x and y are in
  millimetres (pixel index * pixel spacing), which is why reading and writing take
  ``pixel_spacing_mm``. Corners may come in any order: the box is their min / max. The JSON has no
  image names, so :func:`write_node21_predictions` may add a top-level ``"image_names"`` list
  (slice order; an extension other readers ignore) and :func:`read_node21_predictions` uses it
  unless ``image_names`` is given.
* **Ground truth**: NODE21's ``metadata.csv`` with columns ``img_name,x,y,width,height,label``
  (pixels; a row with ``label`` 0 lists an image without nodules; other columns are ignored).
  :func:`write_node21_metadata` is the one writer (``sim`` and ``synthesize`` use it): box
  values exactly as given (whole pixels as integers, others as the shortest exact float),
  so that :func:`read_node21_metadata` gives the same float32 boxes back.

Boxes in memory are torchvision's: (N, 4) XYXY float32 tensors in pixels.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch

__all__ = [
    "NODE21_JSON_TYPE",
    "read_node21_predictions",
    "write_node21_predictions",
    "node21_json_from_predictions",
    "predictions_from_node21_json",
    "read_node21_metadata",
    "write_node21_metadata",
    "node21_metadata_csv",
]

NODE21_JSON_TYPE = "Multiple 2D bounding boxes"


def _spacing(pixel_spacing_mm: Sequence[float]) -> tuple[float, float]:
    if len(pixel_spacing_mm) != 2 or not all(float(s) > 0 for s in pixel_spacing_mm):
        raise ValueError(f"pixel_spacing_mm must be two positive numbers (x, y), got {pixel_spacing_mm!r}")
    return float(pixel_spacing_mm[0]), float(pixel_spacing_mm[1])


def predictions_from_node21_json(
    data: Mapping[str, Any],
    image_names: Sequence[str] | None = None,
    *,
    num_images: int | None = None,
    pixel_spacing_mm: Sequence[float] = (1.0, 1.0),
) -> dict[str, dict[str, torch.Tensor]]:
    """Parses a NODE21 prediction JSON object (see module doc) into torchvision-style dicts.

    Args:
        data: the parsed JSON. image_names: the image of each slice, in slice order; default: the
            file's ``"image_names"`` when present, else the slice numbers as strings.
        num_images: the number of slices when no names are known (images after the last slice
            with a box have no boxes); default: last slice with a box + 1.
        pixel_spacing_mm: (x, y) spacing the coordinates were multiplied by.

    Returns:
        image name -> {"boxes": (N, 4) XYXY float32 pixels, "scores": (N,) float32,
        "labels": (N,) int64 ones}, in slice order, every image present (possibly empty).
    """
    sx, sy = _spacing(pixel_spacing_mm)
    if not isinstance(data, Mapping) or not isinstance(data.get("boxes"), list):
        raise ValueError("predictions JSON must be an object with a 'boxes' list "
                         f"(grand-challenge '{NODE21_JSON_TYPE}')")
    if "type" in data and data["type"] != NODE21_JSON_TYPE:
        raise ValueError(f"predictions JSON has type {data['type']!r}, expected {NODE21_JSON_TYPE!r}")
    parsed: list[tuple[int, list[float], float]] = []
    for i, box in enumerate(data["boxes"]):
        where = f"predictions JSON boxes[{i}]"
        if not isinstance(box, Mapping) or "corners" not in box:
            raise ValueError(f"{where} must be an object with 'corners'")
        if "probability" not in box:
            raise ValueError(f"{where} has no 'probability'")
        corners = box["corners"]
        if (not isinstance(corners, list) or len(corners) < 2
                or not all(isinstance(c, (list, tuple)) and len(c) in (2, 3) for c in corners)):
            raise ValueError(f"{where}['corners'] must be a list of [x, y, slice] points")
        xs = [float(c[0]) / sx for c in corners]
        ys = [float(c[1]) / sy for c in corners]
        slices = {int(round(float(c[2]))) if len(c) == 3 else 0 for c in corners}
        if len(slices) != 1 or min(slices) < 0:
            raise ValueError(f"{where}['corners'] must share one non-negative slice index, got {sorted(slices)}")
        prob = float(box["probability"])
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f"{where}['probability'] must be in [0, 1], got {prob}")
        parsed.append((slices.pop(), [min(xs), min(ys), max(xs), max(ys)], prob))

    if image_names is None and isinstance(data.get("image_names"), list):
        image_names = [str(n) for n in data["image_names"]]
    last = max((s for s, _, _ in parsed), default=-1)
    if image_names is not None:
        names = [str(n) for n in image_names]
        if len(set(names)) != len(names):
            raise ValueError("image_names must be unique")
    else:
        count = last + 1 if num_images is None else int(num_images)
        names = [str(i) for i in range(count)]
    if last >= len(names):
        raise ValueError(f"predictions JSON has a box on slice {last} but only {len(names)} images are named "
                         "(image_names / num_images)")
    per_image: dict[str, list[tuple[list[float], float]]] = {n: [] for n in names}
    for s, xyxy, prob in parsed:
        per_image[names[s]].append((xyxy, prob))
    return {
        name: {
            "boxes": torch.tensor([b for b, _ in items], dtype=torch.float32).reshape(-1, 4),
            "scores": torch.tensor([p for _, p in items], dtype=torch.float32),
            "labels": torch.ones(len(items), dtype=torch.int64),
        }
        for name, items in per_image.items()
    }


def read_node21_predictions(
    path: str | os.PathLike,
    image_names: Sequence[str] | None = None,
    *,
    num_images: int | None = None,
    pixel_spacing_mm: Sequence[float] = (1.0, 1.0),
) -> dict[str, dict[str, torch.Tensor]]:
    """Reads a NODE21 prediction JSON file; see :func:`predictions_from_node21_json`."""
    with open(path, encoding="utf-8") as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as exc:
            raise ValueError(f"predictions file {os.fspath(path)!r} is not valid JSON: {exc}") from exc
    return predictions_from_node21_json(data, image_names, num_images=num_images, pixel_spacing_mm=pixel_spacing_mm)


def node21_json_from_predictions(
    predictions: Sequence[Mapping] | Mapping[str, Mapping],
    *,
    pixel_spacing_mm: Sequence[float] = (1.0, 1.0),
    include_image_names: bool = True,
) -> dict[str, Any]:
    """Builds the NODE21 JSON object from torchvision-style predictions.

    Args:
        predictions: per image ``{"boxes": (N, 4) XYXY pixels, "scores": (N,) in [0, 1]}``, a list
            (slice = position) or a mapping name -> dict (slice = insertion order).
        pixel_spacing_mm: (x, y) spacing to multiply coordinates by (NODE21 writes millimetres).
        include_image_names: add the top-level ``"image_names"`` extension (mappings only).
    """
    sx, sy = _spacing(pixel_spacing_mm)
    if isinstance(predictions, Mapping):
        names: list[str] | None = [str(k) for k in predictions]
        items = list(predictions.values())
    else:
        names, items = None, list(predictions)
    boxes_out = []
    for s, pred in enumerate(items):
        where = f"predictions[{names[s]!r}]" if names else f"predictions[{s}]"
        if not isinstance(pred, Mapping) or "boxes" not in pred or "scores" not in pred:
            raise ValueError(f"{where} must be a dict with 'boxes' and 'scores'")
        boxes = torch.as_tensor(pred["boxes"], dtype=torch.float64).detach().cpu()
        boxes = boxes.reshape(0, 4) if boxes.numel() == 0 else boxes
        scores = torch.as_tensor(pred["scores"], dtype=torch.float64).detach().cpu().reshape(-1)
        if boxes.ndim != 2 or boxes.shape[1] != 4:
            raise ValueError(f"{where}['boxes'] must have shape (N, 4) (XYXY), got {tuple(boxes.shape)}")
        if scores.numel() != boxes.shape[0]:
            raise ValueError(f"{where}['scores'] has {scores.numel()} entries but boxes has {boxes.shape[0]}")
        if ((scores < 0) | (scores > 1) | scores.isnan()).any():
            raise ValueError(f"{where}['scores'] must be probabilities in [0, 1]")
        for (x1, y1, x2, y2), p in zip(boxes.tolist(), scores.tolist()):
            x1, x2, y1, y2 = x1 * sx, x2 * sx, y1 * sy, y2 * sy
            # Corner order as the NODE21 baseline writes it.
            corners = [[x2, y2, s], [x1, y2, s], [x1, y1, s], [x2, y1, s]]
            boxes_out.append({"corners": corners, "probability": float(p)})
    data: dict[str, Any] = {"type": NODE21_JSON_TYPE, "boxes": boxes_out, "version": {"major": 1, "minor": 0}}
    if include_image_names and names is not None:
        data["image_names"] = names
    return data


def write_node21_predictions(
    predictions: Sequence[Mapping] | Mapping[str, Mapping],
    path: str | os.PathLike,
    *,
    pixel_spacing_mm: Sequence[float] = (1.0, 1.0),
    include_image_names: bool = True,
) -> None:
    """Writes predictions as NODE21 JSON; see :func:`node21_json_from_predictions`."""
    data = node21_json_from_predictions(predictions, pixel_spacing_mm=pixel_spacing_mm,
                                        include_image_names=include_image_names)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1)


def read_node21_metadata(path: str | os.PathLike) -> dict[str, dict[str, torch.Tensor]]:
    """Reads NODE21 ground truth (``img_name,x,y,width,height,label``; pixels).

    The parsing is :func:`cxr_nodule_aug.datasets.parse_node21_metadata` (one reader for the
    format); this wraps its boxes for :func:`evaluate_detections`.

    Returns:
        image name -> {"boxes": (G, 4) XYXY float32 pixels, "labels": (G,) int64 ones}, in the
        order images first appear; images whose only rows have ``label`` 0 get empty boxes.
    """
    from cxr_nodule_aug.datasets.node21 import parse_node21_metadata

    return {
        name: {"boxes": torch.from_numpy(b).reshape(-1, 4), "labels": torch.ones(len(b), dtype=torch.int64)}
        for name, b in parse_node21_metadata(path).items()
    }


def _csv_number(value: float) -> int | str:
    """Whole pixels as integers (as NODE21 writes them), anything else exactly (``repr``)."""
    return int(value) if float(value).is_integer() else repr(float(value))


def node21_metadata_csv(boxes: Mapping[str, Any]) -> str:
    """NODE21 ``metadata.csv`` text: ``boxes`` maps each image name to its (N, 4) XYXY pixel
    boxes (a tensor, array or nested sequence; N may be 0), in the order given. One label-1 row
    ``x, y, width, height`` per box; an image without boxes gets one label-0 row of zeros.
    Coordinates are written exactly (no rounding, no truncation); width and height are
    ``x1 - x0`` and ``y1 - y0`` in float64."""
    import csv
    import io

    text = io.StringIO()
    w = csv.writer(text, lineterminator="\n")
    w.writerow(["img_name", "x", "y", "width", "height", "label"])
    for name, image_boxes in boxes.items():
        b = torch.as_tensor(image_boxes, dtype=torch.float64).detach().cpu()
        b = b.reshape(0, 4) if b.numel() == 0 else b
        if b.ndim != 2 or b.shape[1] != 4:
            raise ValueError(f"boxes[{name!r}] must have shape (N, 4) (XYXY pixels), got {tuple(b.shape)}")
        if not torch.isfinite(b).all() or (b[:, 2] < b[:, 0]).any() or (b[:, 3] < b[:, 1]).any():
            raise ValueError(f"boxes[{name!r}] must be finite XYXY boxes with x1 >= x0 and y1 >= y0, got {b.tolist()}")
        if not len(b):
            w.writerow([name, 0, 0, 0, 0, 0])
        for x0, y0, x1, y1 in b.tolist():
            w.writerow([name, *(_csv_number(v) for v in (x0, y0, x1 - x0, y1 - y0)), 1])
    return text.getvalue()


def write_node21_metadata(path: str | os.PathLike, boxes: Mapping[str, Any]) -> None:
    """Write :func:`node21_metadata_csv` to ``path`` atomically (whole or not at all)."""
    from cxr_nodule_aug.io.writers import atomic_write

    atomic_write(path, node21_metadata_csv(boxes).encode())
