"""``cxr-nodule-aug eval``: NODE21 detection metrics from a prediction JSON and a metadata.csv.

Prints AUC, sensitivity at 0.25 FP/image and the NODE21 score, and writes ``metrics.json`` and
``froc.png`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from cxr_nodule_aug.cli.arguments import existing_file, number, output_dir, whole_number


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--predictions", required=True, type=existing_file,
                        help="NODE21 / grand-challenge 'Multiple 2D bounding boxes' JSON; the corner's "
                             "third value is the image's slice index")
    parser.add_argument("--ground-truth", required=True, type=existing_file,
                        help="NODE21 metadata.csv (img_name,x,y,width,height,label; label 0 = no nodule)")
    parser.add_argument("--mode", choices=("monai", "all-thresholds"), default="monai",
                        help="monai: MONAI's FROC functions, linearly interpolated sensitivity (default); "
                             "all-thresholds: exact step curve, best operating point at <= target FP/image")
    parser.add_argument("--bootstrap", type=whole_number(0), default=0, metavar="N",
                        help="bootstrap replicates over images for confidence intervals (default 0: none)")
    parser.add_argument("--seed", type=whole_number(0), default=0, help="bootstrap seed (default 0)")
    parser.add_argument("--fp-per-image", type=number(above=0.0), default=0.25,
                        help="FP/image rate for the sensitivity (NODE21: 0.25)")
    parser.add_argument("--iou-threshold", type=number(0.0, below=1.0), default=0.2,
                        help="a prediction is a TP when IoU is strictly greater than this (NODE21: 0.2)")
    parser.add_argument("--pixel-spacing-mm", type=number(above=0.0), nargs=2, default=(1.0, 1.0), metavar=("X", "Y"),
                        help="spacing the JSON coordinates were multiplied by (default 1 1: pixels)")
    parser.add_argument("--image-names", type=existing_file, default=None,
                        help="text file, one image name per line in slice order; default: the JSON's "
                             "'image_names' if present, else the metadata.csv names sorted")
    parser.add_argument("--out", type=output_dir, default=Path("eval-results"),
                        help="output directory for metrics.json and froc.png (default ./eval-results)")


def run(args: argparse.Namespace) -> int:
    from cxr_nodule_aug.eval import evaluate_detections, plot_froc, read_node21_metadata, read_node21_predictions

    targets = read_node21_metadata(args.ground_truth)
    image_names = None
    if args.image_names is not None:
        image_names = [ln.strip() for ln in args.image_names.read_text(encoding="utf-8").splitlines() if ln.strip()]
    else:
        with open(args.predictions, encoding="utf-8") as f:
            try:
                data = json.load(f)
            except json.JSONDecodeError as exc:
                raise ValueError(f"predictions file {str(args.predictions)!r} is not valid JSON: {exc}") from exc
        has_names = isinstance(data, dict) and isinstance(data.get("image_names"), list)
        if not has_names:
            # The NODE21 baseline stacks images in sorted file-name order.
            image_names = sorted(targets)
    predictions = read_node21_predictions(args.predictions, image_names, pixel_spacing_mm=args.pixel_spacing_mm)
    metrics = evaluate_detections(predictions, targets, mode=args.mode, bootstrap=args.bootstrap,
                                  seed=args.seed, fp_per_image=args.fp_per_image,
                                  iou_threshold=args.iou_threshold)

    print(metrics.summary())
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "metrics.json").write_text(json.dumps(metrics.to_dict(), indent=2), encoding="utf-8")
    plot_froc(metrics, args.out / "froc.png")
    print(f"wrote {args.out / 'metrics.json'} and {args.out / 'froc.png'}")
    return 0
