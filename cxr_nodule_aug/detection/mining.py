"""Hard-example mining with a trained detector: the operating threshold, each nodule's outcome
and attributes (size, location, contrast), and the sampler of the missed ones.

One definition of "detected", eval's: a ground-truth nodule is detected at a score threshold
when :func:`cxr_nodule_aug.eval.match_image` (NODE21's one-to-one greedy matching, IoU strictly
above ``iou_threshold``) gives it to a prediction scoring at or above the threshold. Because the
matching visits predictions from the highest score down, this is exactly the set of nodules the
FROC counts as hit at that threshold, which :func:`operating_threshold` chooses from.

Sizes are measured in the **original image's frame**: a detector runs on resized images
(:class:`~cxr_nodule_aug.detection.ToDetectorInput` records the size it resized from under
``target["original_size"]``), but the mined diameters are what an insertion into the dataset's
own images must draw, so boxes are mapped back before they are measured, and the spacing with
them.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as TF

from cxr_nodule_aug.detection.data import to_original_frame
from cxr_nodule_aug.samplers.hem import HEMSampler

OUTCOME_COLUMNS = ("image_index", "center_x_px", "center_y_px", "width_px", "height_px", "diameter_px", "diameter_mm", "detected")


def as_xyxy(boxes: Any, name: str) -> torch.Tensor:
    """``boxes`` (``BoundingBoxes`` in any format, or an (N, 4) XYXY tensor / list) as a plain
    (N, 4) float32 XYXY tensor; a ``ValueError`` naming ``name`` for another shape or for
    non-finite coordinates."""
    if isinstance(boxes, tv_tensors.BoundingBoxes):
        boxes = TF.convert_bounding_box_format(boxes, new_format=tv_tensors.BoundingBoxFormat.XYXY)
    boxes = torch.as_tensor(boxes, dtype=torch.float32)
    if boxes.numel() == 0:
        return boxes.reshape(0, 4).as_subclass(torch.Tensor)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"{name} must be (N, 4) XYXY boxes, got shape {tuple(boxes.shape)}")
    if not torch.isfinite(boxes).all():
        raise ValueError(f"{name} contains NaN or infinite coordinates")
    return boxes.as_subclass(torch.Tensor)


def _spacing_pair(value: Any, name: str) -> tuple[float, float]:
    if isinstance(value, (int, float)):
        pair = (float(value), float(value))
    else:
        values = [float(v) for v in torch.as_tensor(value, dtype=torch.float64).flatten().tolist()]
        if len(values) != 2:
            raise ValueError(f"{name} must be one number or (row_mm, col_mm), got {value!r}")
        pair = (values[0], values[1])
    if not all(math.isfinite(v) and v > 0 for v in pair):
        raise ValueError(f"{name} must be positive and finite, got {value!r}")
    return pair


def nodule_outcomes(
    predictions: Sequence[Mapping[str, Any]],
    targets: Sequence[Mapping[str, Any]],
    iou_threshold: float = 0.2,
    score_threshold: float = 0.5,
    pixel_spacing_mm: float | Sequence[float | None] | None = None,
    spacing_key: str = "pixel_spacing_mm",
) -> dict[str, torch.Tensor]:
    """One row per ground-truth nodule, detected or not, measured in the original image frame.

    A nodule is detected when eval's one-to-one matcher (:func:`cxr_nodule_aug.eval.match_image`)
    gives it to a prediction with ``score >= score_threshold`` at IoU > ``iou_threshold``.

    Args:
        predictions: torchvision detector outputs (``boxes`` XYXY, ``scores``), in the frame of
            the matching target's boxes.
        targets: ``boxes`` (``BoundingBoxes`` in any format, or XYXY tensors; all count as
            nodules); optionally ``original_size`` (see :func:`to_original_frame`) and the pixel
            spacing under ``spacing_key`` (``(row_mm, col_mm)`` or one number, in the target's
            frame, as :class:`~cxr_nodule_aug.detection.ToDetectorInput` rescales it).
        pixel_spacing_mm: the spacing of the original images for targets that carry none: one
            number or one per image. A target's own spacing is used otherwise; both given and
            different is an error.

    Returns:
        float64 columns ``image_index``, ``center_x_px``, ``center_y_px``, ``width_px``,
        ``height_px``, ``diameter_px`` (mean of box width and height), ``diameter_mm`` (mean of
        width x column spacing and height x row spacing) when every image with a nodule has a
        spacing, and ``detected`` (0/1). Pixels are the original image's.
    """
    from cxr_nodule_aug.eval.detection import match_image

    if len(predictions) != len(targets):
        raise ValueError(f"predictions and targets must have one entry per image, got {len(predictions)} and {len(targets)}")
    if not 0 <= iou_threshold < 1:
        raise ValueError(f"iou_threshold must be in [0, 1), got {iou_threshold}")
    n_images = len(targets)
    if pixel_spacing_mm is None or isinstance(pixel_spacing_mm, (int, float)):
        given = [pixel_spacing_mm] * n_images
    else:
        given = list(pixel_spacing_mm)
        if len(given) != n_images:
            raise ValueError(f"pixel_spacing_mm must be one number or one per image ({n_images}), got {len(given)}")
    rows: list[list[float]] = []
    for i, (pred, tgt) in enumerate(zip(predictions, targets)):
        gt = as_xyxy(tgt["boxes"], f"targets[{i}]['boxes']")
        if len(gt) == 0:
            continue
        boxes = as_xyxy(pred.get("boxes", torch.zeros(0, 4)), f"predictions[{i}]['boxes']")
        scores = torch.as_tensor(pred.get("scores", torch.zeros(len(boxes))), dtype=torch.float32).flatten()
        if len(scores) != len(boxes):
            raise ValueError(f"predictions[{i}] has {len(boxes)} boxes but {len(scores)} scores")
        keep = scores >= score_threshold
        _, matched = match_image(boxes[keep], scores[keep], gt, iou_threshold)
        detected = torch.zeros(len(gt), dtype=torch.bool)
        detected[matched[matched >= 0]] = True
        fx, fy = to_original_frame(tgt, f"targets[{i}]")
        own = tgt.get(spacing_key)
        spacing = None
        if own is not None:
            row_mm, col_mm = _spacing_pair(own, f"targets[{i}][{spacing_key!r}]")
            spacing = (row_mm / fy, col_mm / fx)  # per pixel of the original image
        if given[i] is not None:
            other = _spacing_pair(given[i], "pixel_spacing_mm")
            if spacing is not None and not np.allclose(spacing, other, rtol=1e-4):
                raise ValueError(f"pixel_spacing_mm={given[i]!r} disagrees with targets[{i}][{spacing_key!r}] "
                                 f"({spacing[0]:.5g}, {spacing[1]:.5g} mm in the original frame); leave pixel_spacing_mm out")
            spacing = other
        for box, hit in zip(gt.tolist(), detected.tolist()):
            x0, y0, x1, y1 = box[0] * fx, box[1] * fy, box[2] * fx, box[3] * fy
            w, h = x1 - x0, y1 - y0
            d_mm = (w * spacing[1] + h * spacing[0]) / 2 if spacing is not None else math.nan
            rows.append([i, x0 + w / 2, y0 + h / 2, w, h, (w + h) / 2, d_mm, float(hit)])
    table = torch.tensor(rows, dtype=torch.float64).reshape(-1, len(OUTCOME_COLUMNS))
    out = {k: table[:, j] for j, k in enumerate(OUTCOME_COLUMNS)}
    if len(out["diameter_mm"]) == 0 or torch.isnan(out["diameter_mm"]).any():
        out.pop("diameter_mm")
    return out


def find_missed(predictions: Sequence[Mapping[str, Any]], targets: Sequence[Mapping[str, Any]], iou_threshold: float = 0.2,
                score_threshold: float = 0.5, pixel_spacing_mm: float | Sequence[float | None] | None = None) -> dict[str, torch.Tensor]:
    """The rows of :func:`nodule_outcomes` for the nodules that were not detected (without the
    ``detected`` column)."""
    table = nodule_outcomes(predictions, targets, iou_threshold, score_threshold, pixel_spacing_mm)
    missed = table.pop("detected") == 0
    return {k: v[missed] for k, v in table.items()}


def operating_threshold(predictions: Sequence[Mapping[str, Any]], targets: Sequence[Mapping[str, Any]], fp_per_image: float = 0.25, iou_threshold: float = 0.2) -> float:
    """The lowest score threshold whose false positives per image stay <= ``fp_per_image``
    (NODE21 matching; the operating point of the sensitivity in the NODE21 score). The nodules
    :func:`nodule_outcomes` calls detected at this threshold are the ones its FROC point counts."""
    from cxr_nodule_aug.eval.detection import froc_curve_all_thresholds, match_detections

    if not fp_per_image > 0:
        raise ValueError(f"fp_per_image must be > 0, got {fp_per_image}")
    targets = [{"boxes": as_xyxy(t["boxes"], f"targets[{i}]['boxes']")} for i, t in enumerate(targets)]
    _, matches = match_detections(list(predictions), targets, iou_threshold=iou_threshold)
    num_targets = sum(m.num_targets for m in matches)
    if num_targets == 0:
        raise ValueError("targets: choosing an operating threshold needs at least one ground-truth nodule")
    fp = np.concatenate([m.fp_scores for m in matches]) if matches else np.zeros(0)
    tp = np.concatenate([m.tp_scores for m in matches]) if matches else np.zeros(0)
    fps, _, thresholds = froc_curve_all_thresholds(fp, tp, num_targets, len(matches))
    ok = fps <= fp_per_image
    return float(thresholds[ok][-1])  # ascending FP/image: the last admissible point is the lowest threshold


def local_contrast(image: torch.Tensor, boxes: Any, ring: float = 0.5) -> torch.Tensor:
    """Per box: mean grey level inside the ellipse inscribed in the box minus the mean of the
    ring around it (the box grown by ``ring`` x its size on each side, ellipse excluded), in the
    image's own units. Positive = brighter than the surroundings (a nodule on a radiograph).

    ``image``: (H, W) or (1, H, W); ``boxes``: (N, 4) XYXY.
    """
    img = torch.as_tensor(image).as_subclass(torch.Tensor).float()
    if img.ndim == 3:
        img = img.mean(0)
    if img.ndim != 2:
        raise ValueError(f"image must be (H, W) or (C, H, W), got shape {tuple(torch.as_tensor(image).shape)}")
    b = as_xyxy(boxes, "boxes")
    h, w = img.shape
    out = torch.full((len(b),), math.nan)
    for k, (x0, y0, x1, y1) in enumerate(b.tolist()):
        bw, bh = max(x1 - x0, 1.0), max(y1 - y0, 1.0)
        gx0, gy0 = max(int(math.floor(x0 - ring * bw)), 0), max(int(math.floor(y0 - ring * bh)), 0)
        gx1, gy1 = min(int(math.ceil(x1 + ring * bw)), w), min(int(math.ceil(y1 + ring * bh)), h)
        if gx1 <= gx0 or gy1 <= gy0:
            continue
        yy, xx = torch.meshgrid(torch.arange(gy0, gy1) + 0.5, torch.arange(gx0, gx1) + 0.5, indexing="ij")
        r = ((xx - (x0 + x1) / 2) / (bw / 2)) ** 2 + ((yy - (y0 + y1) / 2) / (bh / 2)) ** 2
        crop = img[gy0:gy1, gx0:gx1]
        inside, outside = crop[r <= 1], crop[r > 1.0]
        if inside.numel() and outside.numel():
            out[k] = inside.mean() - outside.mean()
    return out


def mine_nodules(
    predictions: Sequence[Mapping[str, Any]],
    samples: Sequence[tuple[torch.Tensor, Mapping[str, Any]]],
    score_threshold: float,
    iou_threshold: float = 0.2,
    spacing_key: str = "pixel_spacing_mm",
) -> dict[str, torch.Tensor]:
    """:func:`nodule_outcomes` for detector-ready ``samples`` (image, target), sizes in the
    original image frame (mm when every target has a spacing), plus ``contrast``
    (:func:`local_contrast` on the detector's input image)."""
    targets = [t for _, t in samples]
    table = nodule_outcomes(predictions, targets, iou_threshold, score_threshold, spacing_key=spacing_key)
    contrast = torch.full((len(table["image_index"]),), math.nan, dtype=torch.float64)
    for i, (image, target) in enumerate(samples):
        rows = (table["image_index"] == i).nonzero().flatten()
        if len(rows):
            contrast[rows] = local_contrast(image, target["boxes"]).double()
    table["contrast"] = contrast
    return table


def missed_sampler(table: Mapping[str, torch.Tensor], attribute: str | None = None, bandwidth: float = 0.0) -> HEMSampler:
    """A :class:`HEMSampler` over the rows of a :func:`mine_nodules` table that were missed."""
    missed = torch.as_tensor(table["detected"]) == 0
    if not missed.any():
        raise ValueError("the detector missed no nodule at this threshold: there is nothing to mine "
                         "(raise the score threshold, or sample diameters another way)")
    return HEMSampler({k: torch.as_tensor(v)[missed] for k, v in table.items() if k != "detected"}, attribute=attribute, bandwidth=bandwidth)


def plot_missed_histogram(table: Mapping[str, torch.Tensor], path: str | os.PathLike, attribute: str = "diameter_mm", bins: int = 20, title: str | None = None) -> None:
    """Histogram PNG of ``attribute`` for missed vs detected nodules."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if attribute not in table:
        raise ValueError(f"attribute {attribute!r} is not in the table (has {sorted(table)})")
    values = torch.as_tensor(table[attribute]).double().numpy()
    detected = torch.as_tensor(table["detected"]).numpy() > 0
    finite = np.isfinite(values)
    edges = np.histogram_bin_edges(values[finite], bins=bins) if finite.any() else np.linspace(0, 1, bins + 1)
    fig = Figure(figsize=(5.5, 3.6), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.hist(values[finite & detected], bins=edges, alpha=0.6, label=f"detected ({int((finite & detected).sum())})")
    ax.hist(values[finite & ~detected], bins=edges, alpha=0.6, label=f"missed ({int((finite & ~detected).sum())})")
    ax.set_xlabel(attribute.replace("_", " "))
    ax.set_ylabel("nodules")
    ax.legend()
    if title:
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(os.fspath(path))
