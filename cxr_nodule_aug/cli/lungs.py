"""``cxr-nodule-aug lungs``: compute once the lung masks that ``NoduleInpaint`` computes online.

A sample without ``target["lung_mask"]`` makes :class:`~cxr_nodule_aug.NoduleInpaint` run its
lung model on every call (about 20 ms an image in a single-threaded DataLoader worker, the
largest per-image cost of online augmentation on a CPU). This command runs the same code, the
engine's :meth:`~cxr_nodule_aug.NoduleSynthesizer.lung_mask`, once per image of a NODE21 or
VinDr-CXR dataset (loading the lung model only) and writes to ``--out``::

    <name>.png     8-bit 0/255 lung field at the image's full resolution; <name> is
                   :func:`~cxr_nodule_aug.datasets.lung_mask_filename`, the name the
                   datasets' ``lung_mask_dir=`` reads
    failed.txt     only when some image got no mask: one line per such image,
                   ``<image path><TAB><reason>`` (e.g. the lung model found no lung)

Train on it with ``cxr-nodule-aug train detector ... lung_masks=OUT``; the dataset then yields
``target["lung_mask"]`` and the augmentation skips the model. On the same device the masks are
the online ones bit for bit (the network runs single-threaded, as in a DataLoader worker), so
precomputing changes nothing but speed.

Rerunning resumes: existing masks are kept (delete ``--out`` to recompute with another model);
images without a mask are tried again. An image whose lung the model cannot find gets no file
(never an empty mask) and the exit status is 3; ``NoduleInpaint`` could not augment it online
either.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from cxr_nodule_aug.cli.arguments import open_image_dataset, output_dir
from cxr_nodule_aug.cli.errors import EXIT_SOME_FAILED, CommandError, UsageError
from cxr_nodule_aug.datasets import DATASET_KINDS, mask_file_names
from cxr_nodule_aug.io import atomic_write, png_bytes, remove_temp_files

DATASETS = tuple(name for name, kind in DATASET_KINDS.items() if kind.lung_mask_folder)  # the kinds that take lung_mask_dir


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = (
        "Writes OUT/<name>.png (0/255, full resolution; the name the datasets' lung_mask_dir reads) and, for images "
        "where the lung model finds no lung, OUT/failed.txt (exit status 3). Rerunning skips existing masks. "
        "Use it with 'train detector ... lung_masks=OUT' or Node21Dataset(root, lung_mask_dir=OUT)."
    )
    parser.add_argument("--data", required=True, help="dataset root")
    parser.add_argument("--dataset", default="node21", help=f"dataset kind: {' or '.join(DATASETS)} (default node21; SimCXR exports ship their masks)")
    parser.add_argument("--out", type=Path, required=True, help="folder for the masks (created; an earlier run's folder resumes)")
    parser.add_argument("--lung-model", default=None,
                        help="LungSegmenter weights directory or org/name[@rev] (default: the shipped lung model, as NoduleInpaint loads it)")
    parser.add_argument("--device", default="cpu", help="where the lung model runs (default cpu); masks equal the online ones on the same device")
    parser.add_argument("--no-progress", action="store_true")


def _fail(message: str) -> UsageError:
    return UsageError(message)


@dataclasses.dataclass
class LungMaskSummary:
    """What :func:`write_lung_masks` did: mask names written and kept, and ``(image path,
    reason)`` for every image left without a mask."""

    written: list[str] = dataclasses.field(default_factory=list)
    skipped: list[str] = dataclasses.field(default_factory=list)
    failed: list[tuple[str, str]] = dataclasses.field(default_factory=list)


def replaced_image(dataset: Any, out: Path, names: list[str]) -> str | None:
    """A mask name in ``out`` that is one of the dataset's images (``out`` is its image folder)."""
    images = {Path(path).resolve() for _, path, _ in dataset.items}
    return next((n for n in names if (out / n).resolve() in images), None)


def write_lung_masks(dataset: Any, out: Path, engine: Any, progress: bool = False) -> LungMaskSummary:
    """Write ``out/<name>.png`` for every image of ``dataset`` that has none yet.

    Args:
        dataset: an ``AnnotatedImages`` (Node21Dataset, VinDrCXRDataset, JSRTDataset,
            ChestXray14Dataset) opened without ``transforms`` and without ``lung_mask_dir``.
        out: the mask folder (created).
        engine: the :class:`~cxr_nodule_aug.NoduleSynthesizer` whose :meth:`lung_mask` is
            recorded (its lung model, its device), or a transform holding one
            (``NoduleInpaint``: its ``synthesizer``).
    Returns:
        A :class:`LungMaskSummary`. Writes (or removes a stale) ``out/failed.txt``.
    """
    import torch
    from tqdm import tqdm

    from cxr_nodule_aug.synthesizer import NoduleSynthesizer

    if dataset.transforms is not None or dataset.lung_mask_dir is not None:
        raise ValueError("open the dataset without transforms and without lung_mask_dir: the masks are computed from the raw images")
    synth = getattr(engine, "synthesizer", engine)
    if not isinstance(synth, NoduleSynthesizer):
        raise TypeError(f"engine must be a NoduleSynthesizer or a transform holding one, got {type(engine).__name__}")
    if synth.lung_model is None:
        raise ValueError("the synthesizer has no lung model: nothing to compute the masks with")
    names = mask_file_names(dataset)
    clash = replaced_image(dataset, out, names)
    if clash is not None:
        raise ValueError(f"out={str(out)!r} holds the images themselves ({clash}): a mask would replace an image; use another folder")
    out.mkdir(parents=True, exist_ok=True)
    summary = LungMaskSummary()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a DataLoader worker, and the same bits on every machine
    try:
        for i in tqdm(range(len(names)), desc="lungs", unit="img", disable=not progress):
            name, path = names[i], dataset.items[i][1]
            if (out / name).is_file():
                summary.skipped.append(name)
                continue
            image, _ = dataset[i]
            try:
                mask = synth.lung_mask(image)
            except ValueError as err:  # no lung found, a constant image: NoduleInpaint fails on it online too
                summary.failed.append((str(path), str(err)))
                continue
            if tuple(mask.shape) != tuple(image.shape[-2:]) or not mask.any():  # lung_mask guarantees both
                raise RuntimeError(f"{path}: lung mask of shape {tuple(mask.shape)} with {int(mask.sum())} pixels; refusing to write it")
            atomic_write(out / name, png_bytes(mask.cpu().numpy().astype(np.uint8) * 255))
            summary.written.append(name)
    finally:
        torch.set_num_threads(threads)
    remove_temp_files(out)  # left by a killed run
    failed_txt = out / "failed.txt"
    if summary.failed:
        atomic_write(failed_txt, "".join(f"{p}\t{' '.join(r.split())}\n" for p, r in summary.failed).encode())
    elif failed_txt.is_file():
        failed_txt.unlink()  # an earlier run's failures now all have masks
    return summary


def run(args: argparse.Namespace) -> int:
    import torch

    from cxr_nodule_aug import NoduleSynthesizer
    from cxr_nodule_aug.hub import WeightsError

    out: Path = args.out
    if args.dataset not in DATASETS:
        extra = f" ({args.dataset} datasets ship their lung masks)" if args.dataset in DATASET_KINDS else ""
        raise _fail(f"--dataset {args.dataset!r}: expected {' or '.join(DATASETS)}{extra}; "
                    "for other datasets call cxr_nodule_aug.cli.lungs.write_lung_masks(dataset, out, NoduleSynthesizer.from_pretrained(shape_model=False, texture_model=False)) in Python")
    if not Path(args.data).is_dir():
        raise _fail(f"--data {args.data!r}: no such directory")
    try:
        output_dir(str(out))  # not a file, and creatable/writable
    except argparse.ArgumentTypeError as err:
        raise _fail(f"--out {err}") from None
    try:
        torch.device(args.device)
    except RuntimeError:
        raise _fail(f"--device {args.device!r}: not a torch device (e.g. cpu, cuda, cuda:1)") from None
    dataset, _ = open_image_dataset(args.dataset, args.data, out)
    try:
        # The engine train detector's augmentation uses (shipped weights), its lung model only.
        synth = NoduleSynthesizer.from_pretrained(shape_model=False, texture_model=False, lung_model=args.lung_model, device=args.device)
    except (ValueError, WeightsError) as err:
        raise _fail(f"--lung-model {args.lung_model!r}: {err}" if args.lung_model is not None else str(err)) from None
    if synth.lung_model is None:
        raise _fail("no shipped lung model was found (set CXR_NODULE_AUG_WEIGHTS or pass --lung-model DIR or org/name[@rev])")
    try:
        summary = write_lung_masks(dataset, out, synth, progress=not args.no_progress)
    except ValueError as err:
        raise CommandError(str(err)) from None
    print(f"{len(dataset)} images: wrote {len(summary.written)} lung masks, kept {len(summary.skipped)} already in {out}, "
          f"{len(summary.failed)} without a lung")
    if summary.failed:
        for path, reason in summary.failed[:5]:
            print(f"  no mask: {path}: {reason}")
        print(f"the {len(summary.failed)} images without a mask are listed in {out / 'failed.txt'}; NoduleInpaint cannot augment them "
              "online either: leave them out of the training data (train detector refuses a lung_masks= folder that lacks any image's mask)")
        return EXIT_SOME_FAILED
    print(f"train with: cxr-nodule-aug train detector ... data={args.data} dataset={args.dataset} lung_masks={out}")
    return 0
