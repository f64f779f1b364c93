"""``cxr-nodule-aug masks``: pseudo nodule masks from a box-only dataset, for training.

The public datasets give boxes (NODE21, VinDr-CXR, ChestX-ray14) or centres and sizes (JSRT),
while ``train shape`` and ``train texture`` need nodule masks. For every box this command runs
:func:`~cxr_nodule_aug.functional.extraction.extract_nodules` (background under the box from the
pixels around it, residual = image - background, mask = the residual's main component in the box;
fallback the inscribed ellipse, flagged) and writes to ``--out``::

    masks/<name>.png     uint8 labelled mask per image with boxes, full resolution: 0 background,
                         k + 1 = the image's k-th box (the layout of SimCXR's masks/*_nodules.png);
                         <name> as for lung masks (the image file name up to its first dot)
    rows/<name>.json     that image's per-nodule quality (kept for resuming)
    nodules.csv          one row per nodule: box, equivalent diameter, residual contrast, SNR,
                         fill, fallback flag and reason
    contact_sheet.png    the first nodules: image crop | crop with the mask outline (red: from the
                         residual, yellow: fallback ellipse)
    failed.txt           only when some image failed: <image path><TAB><reason>

Train with ``train shape masks=OUT`` and ``train texture data=DIR dataset=KIND masks=OUT``; in
Python, ``open_dataset(KIND, DIR, nodule_masks=OUT)`` gives targets with instance ``masks``.
Rerunning resumes (images whose mask and row exist are kept); every file is written atomically.
An image that cannot be processed is named on stderr and in failed.txt, and the exit status is 3.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from cxr_nodule_aug.cli.arguments import existing_dir, number, open_image_dataset, output_dir, whole_number
from cxr_nodule_aug.cli.errors import EXIT_SOME_FAILED
from cxr_nodule_aug.datasets import DATASET_KINDS, mask_file_names
from cxr_nodule_aug.functional.extraction import DEFAULT_LEVEL, DEFAULT_PRIOR
from cxr_nodule_aug.io import atomic_write, png_bytes, remove_temp_files

DATASETS = tuple(name for name, kind in DATASET_KINDS.items() if kind.lung_mask_folder)  # the box-only kinds
COLUMNS = ["image", "mask_file", "label", "x0", "y0", "x1", "y1", "diameter_px", "contrast", "snr", "fill", "fallback", "reason"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = ("Writes OUT/masks/<name>.png (labelled: k+1 = k-th box), OUT/nodules.csv (quality, fallback flag), "
                     "OUT/contact_sheet.png; exit 3 naming the images that failed. Then: train shape masks=OUT; "
                     "train texture data=DIR dataset=KIND masks=OUT.")
    parser.add_argument("--data", required=True, type=existing_dir, help="dataset root")
    parser.add_argument("--dataset", default="node21", choices=DATASETS, help="dataset kind (default node21)")
    parser.add_argument("--out", required=True, type=output_dir, help="output folder (created; an earlier run's folder resumes)")
    parser.add_argument("--level", type=number(above=0.0, below=1.0), default=DEFAULT_LEVEL, help=f"mask = smoothed residual >= LEVEL x its peak (default {DEFAULT_LEVEL})")
    parser.add_argument("--prior", type=number(0.0, 1.0), default=DEFAULT_PRIOR,
                        help=f"weight of the box's inscribed ellipse against the residual, 0 = residual only, 1 = ellipse only (default {DEFAULT_PRIOR})")
    parser.add_argument("--sheet", type=whole_number(0), default=48, help="nodules on the contact sheet (default 48)")
    parser.add_argument("--no-progress", action="store_true")


def _rows(image_name: str, mask_file: str, extractions: list) -> list[dict]:
    from cxr_nodule_aug.functional import equivalent_diameter

    rows = []
    for k, e in enumerate(extractions):
        x0, y0, x1, y1 = e.window_xyxy
        rows.append({"image": image_name, "mask_file": mask_file, "label": k + 1, "x0": x0, "y0": y0, "x1": x1, "y1": y1,
                     "diameter_px": round(float(equivalent_diameter(e.mask)), 3), "contrast": round(e.contrast, 5),
                     "snr": round(min(e.snr, 1e6), 3), "fill": round(e.fill, 4), "fallback": int(e.fallback), "reason": e.reason})
    return rows


def write_nodule_masks(dataset: Any, out: Path, level: float = DEFAULT_LEVEL, prior: float = DEFAULT_PRIOR, sheet: int = 48, progress: bool = False) -> dict:
    """Write the masks, rows, ``nodules.csv``, ``contact_sheet.png`` (and ``failed.txt``) of
    ``dataset`` (an ``AnnotatedImages`` opened without transforms) into ``out``; returns
    ``{"written": [...], "kept": [...], "failed": [(path, reason)], "nodules": n, "fallbacks": m}``."""
    import torch
    from tqdm import tqdm

    from cxr_nodule_aug.functional.extraction import extract_nodules, labelled_mask

    if dataset.transforms is not None:
        raise ValueError("open the dataset without transforms: masks are computed on the raw images")
    names = mask_file_names(dataset)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    (out / "rows").mkdir(exist_ok=True)
    summary: dict = {"written": [], "kept": [], "failed": []}
    all_rows: list[dict] = []
    for i in tqdm(range(len(names)), desc="masks", unit="img", disable=not progress):
        name, path, boxes = names[i], dataset.items[i][1], dataset.items[i][2]
        row_file = out / "rows" / f"{Path(name).stem}.json"
        if len(boxes) == 0:
            continue  # no nodule, no mask: the dataset attaches an empty (0, H, W)
        if row_file.is_file() and (out / "masks" / name).is_file():
            all_rows += json.loads(row_file.read_text())
            summary["kept"].append(name)
            continue
        try:
            image, _ = dataset[i]
            image = image.as_subclass(torch.Tensor)
            extractions = extract_nodules(image, torch.as_tensor(np.asarray(boxes)), level=level, prior=prior)
            labels = labelled_mask(extractions, *image.shape[-2:])
        except (ValueError, OSError, RuntimeError) as err:
            summary["failed"].append((str(path), " ".join(str(err).split())))
            continue
        rows = _rows(dataset.image_name(i), name, extractions)
        atomic_write(out / "masks" / name, png_bytes(labels))
        atomic_write(row_file, json.dumps(rows).encode())
        all_rows += rows
        summary["written"].append(name)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows(all_rows)
    atomic_write(out / "nodules.csv", buf.getvalue().encode())
    if sheet and all_rows:
        atomic_write(out / "contact_sheet.png", contact_sheet(dataset, out / "masks", all_rows[:sheet]))
    failed_txt = out / "failed.txt"
    if summary["failed"]:
        atomic_write(failed_txt, "".join(f"{p}\t{r}\n" for p, r in summary["failed"]).encode())
    elif failed_txt.is_file():
        failed_txt.unlink()
    remove_temp_files(out)
    summary["nodules"] = len(all_rows)
    summary["fallbacks"] = sum(int(r["fallback"]) for r in all_rows)
    return summary


def contact_sheet(dataset: Any, mask_dir: Path, rows: list[dict], tile: int = 96) -> bytes:
    """PNG bytes: per nodule, the crop around its box (1.5x the box) beside the same crop with the
    mask outline, red from the residual, yellow for the fallback ellipse; 4 pairs a row."""
    import torch
    from PIL import Image
    from scipy import ndimage

    from cxr_nodule_aug.functional import to_working

    index = {dataset.image_name(i): i for i in range(len(dataset))}
    per_row = 4
    n_rows = (len(rows) + per_row - 1) // per_row
    sheet = np.zeros((n_rows * tile, per_row * 2 * tile, 3), np.uint8)
    cache: dict[str, tuple] = {}
    for j, r in enumerate(rows):
        if r["image"] not in cache:
            image, _ = dataset[index[r["image"]]]
            gray, _, _ = to_working(image.as_subclass(torch.Tensor))
            with Image.open(mask_dir / r["mask_file"]) as im:
                cache = {r["image"]: (gray.clamp(0, 1).numpy(), np.array(im))}
        gray, labels = cache[r["image"]]
        H, W = gray.shape
        cx, cy = (r["x0"] + r["x1"]) / 2, (r["y0"] + r["y1"]) / 2
        half = max(4, 0.75 * max(r["x1"] - r["x0"], r["y1"] - r["y0"]))
        ys = np.clip(np.linspace(cy - half, cy + half, tile).astype(int), 0, H - 1)
        xs = np.clip(np.linspace(cx - half, cx + half, tile).astype(int), 0, W - 1)
        crop = (gray[ys][:, xs] * 255).astype(np.uint8)
        m = labels[ys][:, xs] == r["label"]
        edge = m & ~ndimage.binary_erosion(m)
        rgb = np.repeat(crop[..., None], 3, axis=2)
        outlined = rgb.copy()
        outlined[edge] = (255, 220, 0) if int(r["fallback"]) else (255, 0, 0)
        y, x = (j // per_row) * tile, (j % per_row) * 2 * tile
        sheet[y : y + tile, x : x + tile] = rgb
        sheet[y : y + tile, x + tile : x + 2 * tile] = outlined
    buf = io.BytesIO()
    Image.fromarray(sheet).save(buf, format="PNG")
    return buf.getvalue()


def run(args: argparse.Namespace) -> int:
    dataset, _ = open_image_dataset(args.dataset, args.data, args.out / "masks")
    summary = write_nodule_masks(dataset, args.out, args.level, args.prior, args.sheet, progress=not args.no_progress)
    print(f"{len(dataset)} images: wrote masks for {len(summary['written'])}, kept {len(summary['kept'])}, "
          f"{len(summary['failed'])} failed; {summary['nodules']} nodules, {summary['fallbacks']} inscribed-ellipse fallbacks "
          f"(see {args.out / 'nodules.csv'} and {args.out / 'contact_sheet.png'})")
    if summary["failed"]:
        for path, reason in summary["failed"]:
            print(f"cxr-nodule-aug masks: could not process {path}: {reason}", file=sys.stderr)
        print(f"the {len(summary['failed'])} images above have no mask (listed in {args.out / 'failed.txt'}); "
              "a dataset opened with these masks refuses them: fix or drop their rows")
        return EXIT_SOME_FAILED
    data = f"data={args.data} dataset={args.dataset} masks={args.out}"
    print(f"train with: cxr-nodule-aug train shape masks={args.out}, cxr-nodule-aug train layer {data} (additive) "
          f"and cxr-nodule-aug train texture {data} (replace)")
    return 0
