"""``cxr-nodule-aug info``: what is installed and where weights come from."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    import torch
    import torchvision

    from cxr_nodule_aug import __version__
    from cxr_nodule_aug.hub import default_weights_dir

    print(f"cxr-nodule-aug {__version__}")
    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}")
    print(f"cuda available: {torch.cuda.is_available()}")
    weights = default_weights_dir()
    print(f"default weights: {weights if weights is not None else 'none found'}")
    return 0
