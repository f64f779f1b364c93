"""``cxr-nodule-aug hem``: run a trained detector on a labelled set and mine the nodules it misses.

A nodule is missed when NODE21's one-to-one matching (eval's) gives it to no prediction with a
score at or above the operating threshold (IoU > 0.2). The threshold is ``--score-threshold``,
or by default the one that gives ``--fp-per-image`` (0.25, NODE21's operating point) on the same
set. Sizes and positions are in the dataset's own images, whatever size the detector runs at;
diameters in mm when the dataset has the pixel spacing, else in px. Writes to ``--out``:

* ``hem_sampler.json``: a :class:`~cxr_nodule_aug.HEMSampler` over the missed nodules (diameter
  in px and mm, centre, box size, contrast), for ``NoduleInpaint(diameters=HEMSampler.load(...))``,
  ``cxr-nodule-aug synthesize --diameters`` or ``train detector augment_diameters=...``;
* ``nodules.csv``: every nodule with its attributes and whether it was detected;
* ``missed_histogram.png``: diameters of missed vs detected nodules;
* ``summary.json``: the threshold, counts and the detector/data used.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

from cxr_nodule_aug.cli.arguments import existing_dir, number, output_dir, weights_source, whole_number
from cxr_nodule_aug.cli.errors import UsageError
from cxr_nodule_aug.datasets import DATASET_KINDS, open_dataset


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--detector", required=True, help="trained detector: a weights directory (train detector's <out>/model) or org/name[@rev]")
    parser.add_argument("--data", required=True, type=existing_dir, help="labelled dataset root (the detector's training set, as in the paper)")
    parser.add_argument("--dataset", default="simcxr", choices=list(DATASET_KINDS), help="dataset kind (default simcxr)")
    parser.add_argument("--score-threshold", type=number(0.0, 1.0), default=None, help="operating threshold in [0, 1]; default: the one giving --fp-per-image on --data")
    parser.add_argument("--fp-per-image", type=number(above=0.0), default=0.25, help="FP/image of the default operating threshold (NODE21: 0.25)")
    parser.add_argument("--iou-threshold", type=number(0.0, below=1.0), default=0.2, help="a nodule is detected by a box with IoU strictly above this, in [0, 1) (default 0.2)")
    parser.add_argument("--bandwidth", type=number(0.0), default=0.0, help="Gaussian smoothing of the sampled diameters, mm (default 0: the paper's plain resampling)")
    parser.add_argument("--batch-size", type=whole_number(1), default=8)
    parser.add_argument("--out", type=output_dir, default=Path("hem"), help="output directory (default ./hem)")


def run(args: argparse.Namespace) -> int:
    import torch

    from cxr_nodule_aug.detection import NoduleDetector, ToDetectorInput, mine_nodules, missed_sampler, operating_threshold, plot_missed_histogram, predict_dataset

    detector = weights_source("--detector", args.detector, NoduleDetector.from_pretrained)
    try:
        dataset = open_dataset(args.dataset, args.data, transforms=ToDetectorInput(detector.config["image_size"]))
    except (ValueError, FileNotFoundError) as err:
        raise UsageError(f"--data {str(args.data)!r}: {err}") from None
    if len(dataset) == 0:
        raise UsageError(f"--data {str(args.data)!r}: the {args.dataset} dataset holds no images")
    samples = [dataset[i] for i in range(len(dataset))]
    predictions, targets = predict_dataset(detector, samples, batch_size=args.batch_size)
    if args.score_threshold is None:
        threshold = operating_threshold(predictions, targets, args.fp_per_image, args.iou_threshold)
    else:
        threshold = args.score_threshold
    table = mine_nodules(predictions, samples, threshold, args.iou_threshold)
    sampler = missed_sampler(table, attribute="diameter_mm" if "diameter_mm" in table else "diameter_px", bandwidth=args.bandwidth)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    sampler.save(out / "hem_sampler.json")
    names = list(table)
    with open(out / "nodules.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image_id", *names])
        for r in range(len(table["image_index"])):
            image_id = targets[int(table["image_index"][r])].get("image_id", "")
            writer.writerow([image_id, *(round(float(table[k][r]), 4) for k in names)])
    attribute = "diameter_mm" if "diameter_mm" in table else "diameter_px"
    plot_missed_histogram(table, out / "missed_histogram.png", attribute=attribute, title=f"missed vs detected at score >= {threshold:.3f}")
    detected = torch.as_tensor(table["detected"])
    summary = {
        "detector": str(args.detector), "data": str(args.data), "dataset": args.dataset, "images": len(samples),
        "score_threshold": threshold, "threshold_source": "given" if args.score_threshold is not None else f"{args.fp_per_image} FP/image on --data",
        "iou_threshold": args.iou_threshold, "nodules": int(len(detected)), "missed": int((detected == 0).sum()),
        f"median_missed_{attribute}": float(torch.as_tensor(table[attribute])[detected == 0].median()),
        f"median_detected_{attribute}": float(torch.as_tensor(table[attribute])[detected == 1].median()) if (detected == 1).any() else None,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(f"missed {summary['missed']} of {summary['nodules']} nodules at score >= {threshold:.4f}; wrote {out}/hem_sampler.json, nodules.csv, missed_histogram.png")
    return 0
