"""``cxr-nodule-aug sim``: export a SimCXR dataset (simulated radiographs with 3-D nodules)."""

from __future__ import annotations

import argparse
import json


def _shard(text: str) -> tuple[int, int]:
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"--shard {text!r}: expected i/n, e.g. 0/4") from err
    if not (0 <= i < n):
        raise argparse.ArgumentTypeError(f"--shard {text!r}: expected 0 <= i < n")
    return i, n


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--normal", type=int, default=0, help="images without nodules")
    parser.add_argument("--nodule", type=int, default=0, help="images with 1-3 nodules")
    parser.add_argument("--size", type=int, default=512, help="output size in pixels (square)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help="output directory (resumes if it holds the same export)")
    parser.add_argument("--shard", type=_shard, default=(0, 1), help="i/n: render images with index %% n == i")
    parser.add_argument("--workers", type=int, default=1, help="processes (one thread each)")
    parser.add_argument("--diameter-mm", type=float, nargs=2, default=None, metavar=("MIN", "MAX"),
                        help="nodule diameter range in mm (default 4 30; for LIDC nodules: their real sizes)")
    parser.add_argument("--nodules", choices=("lidc", "procedural"), default="lidc",
                        help="real LIDC-IDRI nodule shapes (default) or procedural ones")
    parser.add_argument("--lidc-split", choices=("train", "val", "test"), default="train",
                        help="LIDC split the nodules come from: match it to the export's use (default train)")
    parser.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    from cxr_nodule_aug.sim.export import export

    overrides = {"nodule_source": args.nodules}
    if args.nodules == "lidc":
        overrides["lidc_split"] = args.lidc_split
    if args.diameter_mm is not None:
        overrides["nodule_diameter_mm"] = list(args.diameter_mm)
    manifest = export(args.out, normal=args.normal, nodule=args.nodule, seed=args.seed, size=args.size,
                      shard=args.shard, workers=args.workers, progress=not args.no_progress,
                      config_overrides=overrides)
    state = "complete" if manifest["complete"] else "incomplete (other shards still missing)"
    print(f"SimCXR export in {args.out}: {state}")
    print(json.dumps({k: manifest[k] for k in ("seed", "normal", "nodule", "size")}))
    return 0
