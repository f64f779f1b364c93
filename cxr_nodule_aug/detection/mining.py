"""Hard-example mining with a trained detector: the operating threshold, each nodule's outcome
and attributes (size, location, contrast), and the sampler of the missed ones."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from cxr_nodule_aug.samplers.hem import HEMSampler, _xyxy


def operating_threshold(predictions: Sequence[Mapping[str, Any]], targets: Sequence[Mapping[str, Any]], fp_per_image: float = 0.25, iou_threshold: float = 0.2) -> float:
    """The lowest score threshold whose false positives per image stay <= ``fp_per_image``
    (NODE21 matching; the operating point of the sensitivity in the NODE21 score)."""
    from cxr_nodule_aug.eval.detection import froc_curve_all_thresholds, match_detections

    if not fp_per_image > 0:
        raise ValueError(f"fp_per_image must be > 0, got {fp_per_image}")
    _, matches = match_detections(list(predictions), list(targets), iou_threshold=iou_threshold)
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
    b = _xyxy(boxes, "boxes")
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
    """:meth:`HEMSampler.nodule_outcomes` for detector-ready ``samples`` (image, target), plus
    ``contrast`` (:func:`local_contrast` on the image) and ``diameter_mm`` from each target's
    ``pixel_spacing_mm`` (the mean of row and column spacing) when every target has one."""
    targets = [t for _, t in samples]
    spacings = [t.get(spacing_key) for t in targets]
    known = all(s is not None for s in spacings)
    iso = [float(np.mean(s)) if not isinstance(s, (int, float)) else float(s) for s in spacings] if known else None
    table = HEMSampler.nodule_outcomes(predictions, targets, iou_threshold, score_threshold, iso)
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
