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
from pathlib import Path

from cxr_nodule_aug.cli.arguments import existing_dir, number, torch_device, weights_source, whole_number
from cxr_nodule_aug.cli.errors import UsageError
from cxr_nodule_aug.datasets import DATASET_KINDS, open_dataset


def _json_file(text: str) -> Path:
    path = Path(text).expanduser()
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a directory; give the JSON file to write, e.g. {path / 'predictions.json'}")
    return path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--detector", required=True, help="trained detector: a weights directory (train detector's <out>/model) or org/name[@rev]")
    parser.add_argument("--data", required=True, type=existing_dir, help="dataset root directory")
    parser.add_argument("--dataset", required=True, choices=list(DATASET_KINDS), help="dataset kind")
    parser.add_argument("--out", type=_json_file, default=Path("predictions.json"), help="output JSON file (default ./predictions.json)")
    parser.add_argument("--min-score", type=number(0.0, below=1.0), default=None,
                        help="lowest box score written, in [0, 1) (default: the detector's own score_thresh; keep it low for the FROC)")
    parser.add_argument("--batch-size", type=whole_number(1), default=8, help="images per detector call (default 8)")
    parser.add_argument("--device", type=torch_device, default="cpu", help="torch device (default cpu)")


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
    from cxr_nodule_aug.io.writers import atomic_write

    detector = weights_source("--detector", args.detector, lambda source: NoduleDetector.from_pretrained(source, map_location=args.device))
    try:
        dataset = open_dataset(args.dataset, args.data, transforms=ToDetectorInput(int(detector.config["image_size"])))
    except (ValueError, FileNotFoundError) as err:
        raise UsageError(f"--data {str(args.data)!r}: {err}") from None
    if len(dataset) == 0:
        raise UsageError(f"--data {str(args.data)!r}: the {args.dataset} dataset holds no images")
    if args.min_score is not None:
        _set_min_score(detector, args.min_score)

    named: dict[str, dict] = {}
    images, targets, names = [], [], []

    def flush() -> None:
        if images:
            for name, pred in zip(names, predictions_in_original_frame(detector.predict(images, batch_size=args.batch_size), targets)):
                named[name] = {"boxes": pred["boxes"], "scores": pred["scores"]}
            images.clear(), targets.clear(), names.clear()

    for i in range(len(dataset)):
        image, target = dataset[i]
        name = _image_name(dataset, i, target)
        if name in named or name in names:
            raise UsageError(f"--data {str(args.data)!r}: two images are both named {name!r}; the prediction JSON pairs images by name")
        images.append(image.as_subclass(torch.Tensor))
        targets.append(target)
        names.append(name)
        if len(images) == args.batch_size:
            flush()
    flush()

    data = node21_json_from_predictions(named)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(args.out, (json.dumps(data, indent=1) + "\n").encode("utf-8"))
    n_boxes = sum(len(p["boxes"]) for p in named.values())
    min_score = args.min_score if args.min_score is not None else float(detector.config.get("score_thresh", float("nan")))
    print(f"wrote {n_boxes} boxes for {len(named)} images to {args.out} (pixels of the original images; "
          f"score >= {min_score:g}, at most {_detections_per_img(detector)} per image)")
    if args.dataset in ("node21", "simcxr"):
        print(f"evaluate with: cxr-nodule-aug eval --predictions {args.out} --ground-truth {Path(args.data) / 'metadata.csv'}")
    return 0
