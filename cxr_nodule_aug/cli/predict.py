"""``cxr-nodule-aug predict``: run a trained detector on a dataset and write its boxes as the
NODE21 / grand-challenge "Multiple 2D bounding boxes" JSON that ``cxr-nodule-aug eval`` reads.

The detector sees each image resized to its own ``image_size`` (as in training); the boxes are
written in pixels of the dataset's original images (the corners' x and y; slice = the image's
position), with a top-level ``image_names`` list holding each image's file name as the dataset's
annotation file names it (NODE21: ``metadata.csv``'s ``img_name``), so ``eval`` pairs them by
name. Boxes down to ``--min-score`` are kept (default: the detector's own ``score_thresh``,
0.005 unless trained otherwise), at most the detector's saved ``detections_per_img`` per image:
the FROC needs the low-score tail.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from cxr_nodule_aug.datasets import DATASET_KINDS, open_dataset


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--detector", required=True, help="trained detector: a weights directory (train detector's <out>/model) or org/name[@rev]")
    parser.add_argument("--data", required=True, help="dataset root directory")
    parser.add_argument("--dataset", required=True, choices=list(DATASET_KINDS), help="dataset kind")
    parser.add_argument("--out", type=Path, default=Path("predictions.json"), help="output JSON file (default ./predictions.json)")
    parser.add_argument("--min-score", type=float, default=None,
                        help="lowest box score written (default: the detector's own score_thresh; keep it low for the FROC)")
    parser.add_argument("--batch-size", type=int, default=8, help="images per detector call (default 8)")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")


def _image_name(dataset, index: int, target: dict) -> str:
    """The name the dataset's own annotation file gives image ``index`` (what eval pairs on)."""
    if hasattr(dataset, "image_name"):
        return str(dataset.image_name(index))
    return str(target.get("image_id", index))


def _set_min_score(detector, min_score: float) -> None:
    inner = detector.model
    if hasattr(inner, "roi_heads"):  # Faster R-CNN
        inner.roi_heads.score_thresh = min_score
    else:  # RetinaNet
        inner.score_thresh = min_score


def _detections_per_img(detector) -> int:
    inner = detector.model
    return int(inner.roi_heads.detections_per_img if hasattr(inner, "roi_heads") else inner.detections_per_img)


def run(args: argparse.Namespace) -> int:
    import torch

    from cxr_nodule_aug.detection import NoduleDetector, ToDetectorInput, predictions_in_original_frame
    from cxr_nodule_aug.eval import node21_json_from_predictions

    def fail(message: str) -> int:
        print(f"cxr-nodule-aug predict: error: {message}", file=sys.stderr)
        return 2

    if args.min_score is not None and not 0 <= args.min_score < 1:
        return fail(f"--min-score must be in [0, 1), got {args.min_score}")
    if args.batch_size < 1:
        return fail(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.out.is_dir():
        return fail(f"--out {str(args.out)!r} is a directory; give the JSON file to write, e.g. {args.out}/predictions.json")
    try:
        device = torch.device(args.device)
    except RuntimeError:
        return fail(f"--device {args.device!r}: not a torch device (e.g. cpu, cuda, cuda:1)")
    try:
        detector = NoduleDetector.from_pretrained(args.detector, map_location=device)
        dataset = open_dataset(args.dataset, args.data, transforms=ToDetectorInput(int(detector.config["image_size"])))
    except (ValueError, FileNotFoundError, OSError) as err:
        return fail(str(err))
    if len(dataset) == 0:
        return fail(f"--data {args.data!r}: the {args.dataset} dataset holds no images")
    if args.min_score is not None:
        _set_min_score(detector, args.min_score)

    named: dict[str, dict] = {}
    images, targets, names = [], [], []

    def flush() -> None:
        if images:
            for name, pred in zip(names, predictions_in_original_frame(detector.predict(images, batch_size=args.batch_size), targets)):
                named[name] = {"boxes": pred["boxes"], "scores": pred["scores"]}
            images.clear(), targets.clear(), names.clear()

    try:
        for i in range(len(dataset)):
            image, target = dataset[i]
            name = _image_name(dataset, i, target)
            if name in named or name in names:
                return fail(f"two images of --data are both named {name!r}; the prediction JSON pairs images by name")
            images.append(image.as_subclass(torch.Tensor))
            targets.append(target)
            names.append(name)
            if len(images) == args.batch_size:
                flush()
        flush()
    except (ValueError, FileNotFoundError, OSError) as err:
        return fail(str(err))

    data = node21_json_from_predictions(named)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, args.out)
    n_boxes = sum(len(p["boxes"]) for p in named.values())
    min_score = args.min_score if args.min_score is not None else float(detector.config.get("score_thresh", float("nan")))
    print(f"wrote {n_boxes} boxes for {len(named)} images to {args.out} (pixels of the original images; "
          f"score >= {min_score:g}, at most {_detections_per_img(detector)} per image)")
    if args.dataset in ("node21", "simcxr"):
        print(f"evaluate with: cxr-nodule-aug eval --predictions {args.out} --ground-truth {Path(args.data) / 'metadata.csv'}")
    return 0
