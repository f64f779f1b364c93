"""``cxr-nodule-aug train {shape,texture,layer,lung,detector} [--config FILE.yaml] [key=value ...]``.

Runs unchanged under ``torchrun --nproc-per-node N -m cxr_nodule_aug.cli train ...``.
The resolved config is written to ``<out>/config.yaml``; an existing ``<out>/checkpoint.pt``
is resumed.
"""

from __future__ import annotations

import argparse
import importlib
import logging
from pathlib import Path

from cxr_nodule_aug.cli.errors import CommandError, UsageError

TASKS = {
    "shape": ("cxr_nodule_aug.train.shape", "ShapeConfig"),
    "texture": ("cxr_nodule_aug.train.texture", "TextureConfig"),
    "layer": ("cxr_nodule_aug.train.layer", "LayerConfig"),
    "lung": ("cxr_nodule_aug.train.lung", "LungConfig"),
    "detector": ("cxr_nodule_aug.train.detector", "DetectorConfig"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("task", choices=sorted(TASKS), help="which model to train (detector: a Faster R-CNN / RetinaNet nodule detector)")
    parser.add_argument("--config", default=None, help="YAML file with config values, or the name of a bundled one (e.g. texture-cpu, texture-paper)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. steps=2000 out=runs/x")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")


def run(args: argparse.Namespace) -> int:
    from cxr_nodule_aug.train.common import config_yaml, resolve_config

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    module_name, config_name = TASKS[args.task]
    module = importlib.import_module(module_name)
    config = args.config
    if config is not None and not Path(config).exists():
        bundled = Path(__file__).resolve().parent.parent / "train" / "configs" / f"{config}.yaml"
        if not bundled.exists():
            names = sorted(p.stem for p in bundled.parent.glob("*.yaml"))
            raise UsageError(f"--config {config!r} is neither a file nor a bundled config ({', '.join(names)})")
        config = bundled
    try:
        cfg = resolve_config(getattr(module, config_name), config, args.overrides)
    except ValueError as err:
        raise UsageError(str(err)) from None
    if args.print_config:
        print(config_yaml(cfg))
        return 0
    try:
        out = module.train(cfg)
    except (ValueError, FileNotFoundError) as err:
        raise CommandError(f"{args.task}: {err}") from None
    print(f"trained {args.task}: {out}")
    return 0
