"""NODE21 detection metrics: image-level AUC, FROC at IoU > 0.2, sensitivity at 0.25 FP/image.

The definitions (see the design notes, "The NODE21 metric, exactly"):

* **AUC**: image-level ROC AUC (``sklearn.metrics.roc_auc_score``). An image's score is its highest
  box probability, 0 when it has no box; its label is "has at least one nodule".
* **FROC matching**: per image, predictions are visited from the highest score down (ties keep
  input order); each one is a true positive when its IoU with a not-yet-matched ground-truth box is
  strictly greater than ``iou_threshold`` (0.2), and it takes the unmatched box it overlaps most.
  Every other prediction is a false positive, including the lower-scoring second, third...
  predictions on a nodule that is already hit. IoU comes from ``torchvision.ops.box_iou`` in
  float64, so a box pair at exactly IoU 0.2 does not count.
* **FP/image** divides by the number of all images, negatives included; **sensitivity** divides by
  the number of ground-truth boxes.
* **NODE21 score** = 0.75 * AUC + 0.25 * sensitivity at 0.25 FP/image.

Two conventions for the FROC curve and the sensitivity at the target FP rate (every number in a
:class:`DetectionMetrics` says which one produced it in ``conventions``):

* ``mode="monai"``: the curve is MONAI's ``compute_froc_curve_data`` fed the way MONAI's own
  ``compute_fp_tp_probs_nd`` feeds it (one entry per ground truth: its matched score, 0 when missed;
  one entry per false positive), and the sensitivity is MONAI's ``compute_froc_score`` at the single
  FP rate, i.e. ``numpy.interp`` linear interpolation between operating points, clamped to the last
  operating point beyond the curve. Inherited property of MONAI's function: its thresholds skip the
  lowest distinct probability (normally the 0 of a missed nodule), so when *every* nodule is hit the
  operating point at the lowest score is dropped.
* ``mode="all-thresholds"``: the exact step curve with one operating point per distinct score
  (plus the empty operating point (0, 0)); the sensitivity at the target is the highest sensitivity
  among operating points whose FP/image is <= the target: an operating point a user can actually
  pick by choosing a score threshold, never interpolated.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torchvision.ops import box_iou

__all__ = [
    "MODES",
    "DetectionMetrics",
    "ImageMatches",
    "match_image",
    "match_detections",
    "image_level_auc",
    "froc_curve_all_thresholds",
    "froc_curve_monai",
    "sensitivity_at_fp_all_thresholds",
    "sensitivity_at_fp_monai",
    "evaluate_detections",
]

MODES = ("monai", "all-thresholds")
NODE21_AUC_WEIGHT = 0.75
NODE21_SENSITIVITY_WEIGHT = 0.25

_CONVENTIONS = {
    "auc": "image-level ROC AUC (sklearn.metrics.roc_auc_score); image score = highest box "
    "probability, 0 without boxes; label = has at least one nodule",
    "matching": "greedy by descending score (ties: input order); TP when IoU > {iou} (strict, "
    "torchvision.ops.box_iou, float64) with an unmatched ground truth; further hits on a matched "
    "ground truth are FPs; FP/image over all images, negatives included",
    "monai": "FROC curve from monai.metrics.froc.compute_froc_curve_data; sensitivity at the target "
    "FP/image from monai.metrics.froc.compute_froc_score (numpy.interp linear interpolation, clamped "
    "beyond the curve; MONAI skips the lowest distinct probability as a threshold)",
    "all-thresholds": "exact FROC step curve, one operating point per distinct score plus (0, 0); "
    "sensitivity at the target FP/image = highest sensitivity among operating points with "
    "FP/image <= target (no interpolation)",
    "node21_score": "0.75 * auc + 0.25 * sensitivity_at_target_fp",
    "bootstrap": "images resampled with replacement (numpy.random.default_rng(seed)); replicates "
    "without both positive and negative images are skipped; percentile interval",
}


# --------------------------------------------------------------------------------------- inputs
def _as_boxes(value: Any, name: str) -> torch.Tensor:
    """(N, 4) XYXY float64 tensor from a tensor / array / nested list; raises naming ``name``."""
    try:
        boxes = torch.as_tensor(value if not isinstance(value, torch.Tensor) else value.detach(),
                                dtype=torch.float64).cpu()
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ValueError(f"{name} must be an (N, 4) XYXY array of numbers, got {type(value).__name__}") from exc
    if boxes.numel() == 0:
        return boxes.reshape(0, 4)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"{name} must have shape (N, 4) (XYXY), got {tuple(boxes.shape)}")
    if not torch.isfinite(boxes).all():
        raise ValueError(f"{name} contains NaN or infinite coordinates")
    if (boxes[:, 2] < boxes[:, 0]).any() or (boxes[:, 3] < boxes[:, 1]).any():
        raise ValueError(f"{name} must be XYXY with x2 >= x1 and y2 >= y1")
    return boxes


def _as_scores(value: Any, name: str, count: int) -> torch.Tensor:
    """(N,) float64 scores in [0, 1]; the range matters because an image without boxes scores 0
    and MONAI uses 0 for a missed nodule."""
    try:
        scores = torch.as_tensor(value if not isinstance(value, torch.Tensor) else value.detach(),
                                 dtype=torch.float64).cpu().reshape(-1)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ValueError(f"{name} must be a 1-D array of numbers, got {type(value).__name__}") from exc
    if scores.numel() != count:
        raise ValueError(f"{name} has {scores.numel()} entries but the boxes have {count}")
    if not torch.isfinite(scores).all() or (scores < 0).any() or (scores > 1).any():
        raise ValueError(f"{name} must be probabilities in [0, 1] (the no-box image score is 0)")
    return scores


def _select_label(item: Mapping, boxes: torch.Tensor, name: str, nodule_label: int | None) -> torch.Tensor:
    """Row mask keeping the nodule class when ``nodule_label`` is set and ``labels`` is present."""
    keep = torch.ones(boxes.shape[0], dtype=torch.bool)
    if nodule_label is None or "labels" not in item or item["labels"] is None:
        return keep
    labels = torch.as_tensor(item["labels"]).reshape(-1).cpu()
    if labels.numel() != boxes.shape[0]:
        raise ValueError(f"{name}['labels'] has {labels.numel()} entries but boxes has {boxes.shape[0]}")
    return labels == nodule_label


def _stem(name: Any) -> str:
    return str(name).replace("\\", "/").rsplit("/", 1)[-1].split(".")[0]


def _name_mismatch(missing: list, extra: list) -> str:
    """What is wrong when predictions and targets key different images, and what to do."""
    extra_by_stem = {_stem(k): k for k in extra}
    renamed = [(m, extra_by_stem[_stem(m)]) for m in missing if _stem(m) in extra_by_stem]
    if renamed:
        m, e = renamed[0]
        return (f"predictions and targets name {len(renamed)} image(s) differently, e.g. {e!r} in the predictions "
                f"and {m!r} in the ground truth: the same image under another file name. The predictions' image "
                "names must be the ground truth's exactly (NODE21: metadata.csv's img_name, as 'cxr-nodule-aug predict' "
                "writes them)")
    if missing and not extra:
        return (f"predictions has no entry for image(s) {missing[:5]!r} present in targets "
                "(give an empty prediction for an image without boxes)")
    if extra and not missing:
        return f"predictions has image(s) {extra[:5]!r} that are not in targets"
    return (f"predictions has no entry for image(s) {missing[:3]!r} present in targets ({len(missing)} in all), "
            f"and has image(s) {extra[:3]!r} that are not in targets ({len(extra)} in all): the predictions' image "
            "names must be the ground truth's, in slice order")


def _pair_inputs(predictions: Any, targets: Any) -> tuple[list[str], list[Mapping], list[Mapping]]:
    """Aligns predictions with targets: two sequences of equal length, or two mappings keyed by image."""
    if isinstance(targets, Mapping) != isinstance(predictions, Mapping):
        raise ValueError("predictions and targets must both be sequences (aligned by position) "
                         "or both be mappings keyed by image id")
    if isinstance(targets, Mapping):
        missing = [k for k in targets if k not in predictions]
        extra = [k for k in predictions if k not in targets]
        if missing or extra:
            raise ValueError(_name_mismatch(missing, extra))
        keys = list(targets)
        return [str(k) for k in keys], [predictions[k] for k in keys], [targets[k] for k in keys]
    if isinstance(predictions, (str, bytes)) or not isinstance(predictions, Sequence):
        raise ValueError(f"predictions must be a list of dicts, got {type(predictions).__name__}")
    if isinstance(targets, (str, bytes)) or not isinstance(targets, Sequence):
        raise ValueError(f"targets must be a list of dicts, got {type(targets).__name__}")
    if len(predictions) != len(targets):
        raise ValueError(f"predictions has {len(predictions)} images but targets has {len(targets)}")
    return [str(i) for i in range(len(targets))], list(predictions), list(targets)


# ------------------------------------------------------------------------------------- matching
@dataclass(frozen=True)
class ImageMatches:
    """The outcome of matching one image.

    ``tp_scores``: (n_hit,) float64 score of the prediction that counts for each hit nodule.
    ``fp_scores``: (n_fp,) float64 scores of the false positives.
    ``num_targets``: ground-truth boxes in the image. ``max_score``: the image score for the AUC
    (highest box probability, 0.0 when there is no box).
    """

    tp_scores: np.ndarray
    fp_scores: np.ndarray
    num_targets: int
    max_score: float


def match_image(
    pred_boxes: torch.Tensor,
    pred_scores: torch.Tensor,
    gt_boxes: torch.Tensor,
    iou_threshold: float = 0.2,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Matches one image's predictions to its ground truth (NODE21 convention, see module doc).

    Args:
        pred_boxes: (P, 4) XYXY boxes, pixels. pred_scores: (P,) scores. gt_boxes: (G, 4) XYXY.
        iou_threshold: a match needs IoU strictly greater than this.

    Returns:
        ``is_tp``: (P,) bool, in the input order. ``matched_gt``: (P,) int64, the index of the
        ground truth each true positive took, -1 for false positives.
    """
    num_pred, num_gt = pred_boxes.shape[0], gt_boxes.shape[0]
    is_tp = torch.zeros(num_pred, dtype=torch.bool)
    matched_gt = torch.full((num_pred,), -1, dtype=torch.int64)
    if num_pred == 0 or num_gt == 0:
        return is_tp, matched_gt
    iou = box_iou(pred_boxes.to(torch.float64), gt_boxes.to(torch.float64))  # (P, G)
    taken = torch.zeros(num_gt, dtype=torch.bool)
    order = torch.sort(pred_scores, descending=True, stable=True).indices
    for p in order.tolist():
        candidates = (iou[p] > iou_threshold) & ~taken
        if not candidates.any():
            continue
        g = int(torch.where(candidates, iou[p], torch.tensor(-1.0, dtype=iou.dtype)).argmax())
        taken[g] = True
        is_tp[p] = True
        matched_gt[p] = g
    return is_tp, matched_gt


def match_detections(
    predictions: Sequence[Mapping] | Mapping[str, Mapping],
    targets: Sequence[Mapping] | Mapping[str, Mapping],
    *,
    iou_threshold: float = 0.2,
    nodule_label: int | None = None,
) -> tuple[list[str], list[ImageMatches]]:
    """Validates and matches every image.

    Args:
        predictions: per image a dict with ``boxes`` ((P, 4) XYXY float, pixels), ``scores``
            ((P,) in [0, 1]) and optionally ``labels`` (torchvision detector output). A list aligned
            with ``targets``, or a mapping image id -> dict with the same keys as ``targets``.
        targets: per image a dict with ``boxes`` ((G, 4) XYXY; empty for an image without nodules)
            and optionally ``labels``.
        iou_threshold: TP needs IoU > this. nodule_label: when set, only boxes with this label count
            (in both predictions and targets); None counts every box.

    Returns:
        Image ids (list positions as strings for sequences) and one :class:`ImageMatches` each.
    """
    names, preds, gts = _pair_inputs(predictions, targets)
    matches: list[ImageMatches] = []
    for name, pred, gt in zip(names, preds, gts):
        pname, tname = f"predictions[{name!r}]", f"targets[{name!r}]"
        if not isinstance(pred, Mapping) or "boxes" not in pred or "scores" not in pred:
            raise ValueError(f"{pname} must be a dict with 'boxes' and 'scores'")
        if not isinstance(gt, Mapping) or "boxes" not in gt:
            raise ValueError(f"{tname} must be a dict with 'boxes'")
        pb = _as_boxes(pred["boxes"], f"{pname}['boxes']")
        ps = _as_scores(pred["scores"], f"{pname}['scores']", pb.shape[0])
        gb = _as_boxes(gt["boxes"], f"{tname}['boxes']")
        keep_p = _select_label(pred, pb, pname, nodule_label)
        keep_g = _select_label(gt, gb, tname, nodule_label)
        pb, ps, gb = pb[keep_p], ps[keep_p], gb[keep_g]
        is_tp, _ = match_image(pb, ps, gb, iou_threshold)
        matches.append(ImageMatches(
            tp_scores=ps[is_tp].numpy(),
            fp_scores=ps[~is_tp].numpy(),
            num_targets=int(gb.shape[0]),
            max_score=float(ps.max()) if ps.numel() else 0.0,
        ))
    return names, matches


# ------------------------------------------------------------------------------ curves, scores
def image_level_auc(image_scores: Sequence[float] | np.ndarray, image_labels: Sequence[int] | np.ndarray) -> float:
    """NODE21 AUC: ``sklearn.metrics.roc_auc_score(labels, scores)``; needs both classes."""
    from sklearn.metrics import roc_auc_score

    labels = np.asarray(image_labels, dtype=np.int64)
    if labels.size == 0 or labels.min() == labels.max():
        raise ValueError("targets: the image-level AUC needs at least one image with a nodule "
                         "and one image without")
    return float(roc_auc_score(labels, np.asarray(image_scores, dtype=np.float64)))


def froc_curve_all_thresholds(
    fp_scores: np.ndarray, tp_scores: np.ndarray, num_targets: int, num_images: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The exact FROC step curve: one operating point per distinct score, plus (0, 0).

    Args:
        fp_scores: scores of all false positives. tp_scores: the counted score of each *hit*
            nodule (missed nodules left out). num_targets: all nodules. num_images: all images.

    Returns:
        ``fps_per_image``, ``sensitivity``, ``thresholds`` (float64, ascending FP/image; the first
        operating point is threshold +inf -> (0, 0)). A detection counts when score >= threshold.
    """
    if num_targets <= 0 or num_images <= 0:
        raise ValueError("targets: the FROC needs at least one image and one ground-truth box")
    fp = np.sort(np.asarray(fp_scores, dtype=np.float64))
    tp = np.sort(np.asarray(tp_scores, dtype=np.float64))
    thresholds = np.unique(np.concatenate([fp, tp]))[::-1]
    fp_counts = fp.size - np.searchsorted(fp, thresholds, side="left")  # number >= threshold
    tp_counts = tp.size - np.searchsorted(tp, thresholds, side="left")
    fps = np.concatenate([[0.0], fp_counts / float(num_images)])
    sens = np.concatenate([[0.0], tp_counts / float(num_targets)])
    return fps, sens, np.concatenate([[np.inf], thresholds])


def sensitivity_at_fp_all_thresholds(fps_per_image: np.ndarray, sensitivity: np.ndarray, fp_rate: float = 0.25) -> float:
    """Highest sensitivity among operating points with FP/image <= ``fp_rate`` (no interpolation)."""
    fps, sens = np.asarray(fps_per_image), np.asarray(sensitivity)
    ok = fps <= fp_rate
    return float(sens[ok].max()) if ok.any() else 0.0


def froc_curve_monai(
    fp_scores: np.ndarray, tp_scores: np.ndarray, num_targets: int, num_images: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """MONAI's FROC curve (``monai.metrics.froc.compute_froc_curve_data``).

    Fed as MONAI's ``compute_fp_tp_probs_nd`` would: ``tp_probs`` has one entry per nodule, its
    counted score or 0 when missed. Returned in ascending FP/image order (MONAI returns descending),
    with the threshold of each operating point (MONAI's ``sorted(set(probs))[1:]``, then +inf for the
    final (0, 0) it appends).
    """
    from monai.metrics.froc import compute_froc_curve_data

    if num_targets <= 0 or num_images <= 0:
        raise ValueError("targets: the FROC needs at least one image and one ground-truth box")
    tp = np.asarray(tp_scores, dtype=np.float64)
    tp_probs = np.concatenate([tp, np.zeros(num_targets - tp.size)])
    fp_probs = np.asarray(fp_scores, dtype=np.float64)
    fps, sens = compute_froc_curve_data(fp_probs, tp_probs, num_targets, num_images)
    thresholds = np.asarray(sorted(set(fp_probs.tolist()) | set(tp_probs.tolist()))[1:] + [np.inf])
    if thresholds.size != np.asarray(fps).size:  # pragma: no cover - a change in MONAI
        thresholds = np.full(np.asarray(fps).size, np.nan)
    return (np.asarray(fps, dtype=np.float64)[::-1].copy(), np.asarray(sens, dtype=np.float64)[::-1].copy(),
            thresholds[::-1].copy())


def sensitivity_at_fp_monai(fps_per_image: np.ndarray, sensitivity: np.ndarray, fp_rate: float = 0.25) -> float:
    """MONAI's ``compute_froc_score`` at one FP rate; takes the curve in ascending FP/image order."""
    from monai.metrics.froc import compute_froc_score

    # compute_froc_score expects MONAI's own (descending) order and reverses it itself.
    fps = np.asarray(fps_per_image, dtype=np.float64)[::-1]
    sens = np.asarray(sensitivity, dtype=np.float64)[::-1]
    return float(compute_froc_score(fps, sens, eval_thresholds=(fp_rate,)))


# ----------------------------------------------------------------------------------- evaluation
@dataclass(frozen=True)
class DetectionMetrics:
    """NODE21 detection metrics. ``conventions`` says which convention produced each number.

    ``froc_fps_per_image`` / ``froc_sensitivity`` / ``froc_thresholds``: the FROC operating points
    of ``mode`` in ascending FP/image order. ``confidence_intervals``: metric name ->
    (low, high) from the bootstrap, empty without one.
    """

    mode: str
    auc: float
    sensitivity_at_target_fp: float
    node21_score: float
    target_fp_per_image: float
    iou_threshold: float
    num_images: int
    num_positive_images: int
    num_targets: int
    num_predictions: int
    num_true_positives: int
    froc_fps_per_image: list[float]
    froc_sensitivity: list[float]
    froc_thresholds: list[float]
    conventions: dict[str, str]
    confidence_level: float = 0.95
    bootstrap_replicates: int = 0
    bootstrap_valid_replicates: int = 0
    bootstrap_seed: int | None = None
    confidence_intervals: dict[str, tuple[float, float]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (+inf thresholds become the string "inf")."""
        out = asdict(self)
        out["froc_thresholds"] = [t if math.isfinite(t) else str(t) for t in self.froc_thresholds]
        out["confidence_intervals"] = {k: [float(a), float(b)] for k, (a, b) in self.confidence_intervals.items()}
        return out

    def summary(self) -> str:
        """A few human-readable lines."""
        def ci(key: str) -> str:
            if key not in self.confidence_intervals:
                return ""
            lo, hi = self.confidence_intervals[key]
            return f"  [{lo:.4f}, {hi:.4f}] ({self.confidence_level:.0%} CI)"

        return "\n".join([
            f"mode: {self.mode}   images: {self.num_images} ({self.num_positive_images} with nodules)   "
            f"nodules: {self.num_targets}   predictions: {self.num_predictions}",
            f"AUC:                  {self.auc:.4f}{ci('auc')}",
            f"sens@{self.target_fp_per_image:g} FP/image:   {self.sensitivity_at_target_fp:.4f}{ci('sensitivity_at_target_fp')}",
            f"NODE21 score:         {self.node21_score:.4f}{ci('node21_score')}",
        ])


def _concat(arrays: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(arrays) if arrays else np.zeros(0)


def _score(matches: Sequence[ImageMatches], mode: str, fp_rate: float) -> tuple[float, float, tuple]:
    """(auc, sensitivity, curve) for a list of matched images."""
    labels = [int(m.num_targets > 0) for m in matches]
    auc = image_level_auc([m.max_score for m in matches], labels)
    fp = _concat([m.fp_scores for m in matches])
    tp = _concat([m.tp_scores for m in matches])
    num_targets = sum(m.num_targets for m in matches)
    if mode == "monai":
        curve = froc_curve_monai(fp, tp, num_targets, len(matches))
        sens = sensitivity_at_fp_monai(curve[0], curve[1], fp_rate)
    else:
        curve = froc_curve_all_thresholds(fp, tp, num_targets, len(matches))
        sens = sensitivity_at_fp_all_thresholds(curve[0], curve[1], fp_rate)
    return auc, sens, curve


def evaluate_detections(
    predictions: Sequence[Mapping] | Mapping[str, Mapping],
    targets: Sequence[Mapping] | Mapping[str, Mapping],
    *,
    mode: str = "monai",
    iou_threshold: float = 0.2,
    fp_per_image: float = 0.25,
    nodule_label: int | None = None,
    bootstrap: int = 0,
    seed: int = 0,
    confidence_level: float = 0.95,
) -> DetectionMetrics:
    """NODE21 AUC, FROC, sensitivity at ``fp_per_image`` and score, with optional bootstrap CIs.

    Args:
        predictions, targets: see :func:`match_detections` (torchvision detector output and
            targets, as aligned lists or as mappings keyed by image id). Evaluate detectors with a
            low score threshold (e.g. 0.005): the FROC needs the tail.
        mode: ``"monai"`` (MONAI's FROC functions, linear interpolation) or ``"all-thresholds"``
            (exact step curve, best operating point with FP/image <= target); see module doc.
        iou_threshold: TP needs IoU strictly greater than this (NODE21: 0.2).
        fp_per_image: the FP/image rate for the sensitivity (NODE21: 0.25).
        nodule_label: count only boxes with this label; None counts all boxes.
        bootstrap: number of bootstrap replicates over images (0: none). seed: their RNG seed.
        confidence_level: of the percentile intervals.

    Raises:
        ValueError: on malformed input (naming the argument), an unknown mode, or a set without
            both positive and negative images.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if not fp_per_image > 0:
        raise ValueError(f"fp_per_image must be > 0, got {fp_per_image}")
    if bootstrap < 0:
        raise ValueError(f"bootstrap must be >= 0, got {bootstrap}")
    if not 0 < confidence_level < 1:
        raise ValueError(f"confidence_level must be in (0, 1), got {confidence_level}")
    _, matches = match_detections(predictions, targets, iou_threshold=iou_threshold, nodule_label=nodule_label)
    auc, sens, (fps, sensitivity, thresholds) = _score(matches, mode, fp_per_image)

    intervals: dict[str, tuple[float, float]] = {}
    valid = 0
    if bootstrap:
        rng = np.random.default_rng(seed)
        labels = np.array([m.num_targets > 0 for m in matches])
        samples: list[tuple[float, float, float]] = []
        for _ in range(bootstrap):
            idx = rng.integers(0, len(matches), len(matches))
            if labels[idx].all() or not labels[idx].any():
                continue  # AUC and sensitivity undefined on this replicate
            b_auc, b_sens, _ = _score([matches[i] for i in idx], mode, fp_per_image)
            samples.append((b_auc, b_sens, NODE21_AUC_WEIGHT * b_auc + NODE21_SENSITIVITY_WEIGHT * b_sens))
        valid = len(samples)
        if samples:
            arr = np.asarray(samples)
            q = 100 * np.array([(1 - confidence_level) / 2, (1 + confidence_level) / 2])
            for j, key in enumerate(("auc", "sensitivity_at_target_fp", "node21_score")):
                lo, hi = np.percentile(arr[:, j], q)
                intervals[key] = (float(lo), float(hi))

    conventions = {
        "auc": _CONVENTIONS["auc"],
        "matching": _CONVENTIONS["matching"].format(iou=iou_threshold),
        "froc_and_sensitivity_at_target_fp": _CONVENTIONS[mode],
        "node21_score": _CONVENTIONS["node21_score"],
    }
    if bootstrap:
        conventions["bootstrap"] = _CONVENTIONS["bootstrap"]
    return DetectionMetrics(
        mode=mode,
        auc=auc,
        sensitivity_at_target_fp=sens,
        node21_score=NODE21_AUC_WEIGHT * auc + NODE21_SENSITIVITY_WEIGHT * sens,
        target_fp_per_image=float(fp_per_image),
        iou_threshold=float(iou_threshold),
        num_images=len(matches),
        num_positive_images=sum(m.num_targets > 0 for m in matches),
        num_targets=sum(m.num_targets for m in matches),
        num_predictions=sum(m.tp_scores.size + m.fp_scores.size for m in matches),
        num_true_positives=sum(m.tp_scores.size for m in matches),
        froc_fps_per_image=[float(x) for x in fps],
        froc_sensitivity=[float(x) for x in sensitivity],
        froc_thresholds=[float(x) for x in thresholds],
        conventions=conventions,
        confidence_level=float(confidence_level),
        bootstrap_replicates=int(bootstrap),
        bootstrap_valid_replicates=valid,
        bootstrap_seed=int(seed) if bootstrap else None,
        confidence_intervals=intervals,
    )
