"""``cxr-nodule-aug demo --out DIR``: nodules of several shapes at three diameters (paper Fig. 7).

Runs on the real radiograph that ships in the ``pydicom-data`` wheel (``RG1_UNCR.dcm``,
MONOCHROME1, no pixel spacing recorded: diameters in px there) and on a SimCXR render (spacing
known: diameters in mm). The lung mask of the real radiograph comes from the lung model;
SimCXR's comes from its projected labels. Writes, per image, a figure (``demo_<name>.png``:
rows = shapes, columns = diameters, contours drawn), an overview with every nodule inserted
at once, and the per-nodule records (``records_<name>.json``) that replay them exactly.
"""

from __future__ import annotations

import argparse
import importlib.resources
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torchvision import tv_tensors

from cxr_nodule_aug.cli.arguments import existing_file, number, output_dir, whole_number
from cxr_nodule_aug.cli.errors import CommandError, UsageError
from cxr_nodule_aug.models.layer import DENSITY_CLASSES

DEFAULT_SEEDS = (11, 22, 33, 44)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    diameter = number(above=0.0)
    parser.add_argument("--out", type=output_dir, required=True, help="output directory")
    parser.add_argument("--weights", default=None, help="weights directory or org/name[@rev] (default: the shipped weights)")
    parser.add_argument("--image", type=existing_file, default=None, help="a radiograph to use instead of the pydicom-data one")
    parser.add_argument("--diameters-px", type=diameter, nargs=3, default=(30.0, 60.0, 100.0), help="for the real radiograph (three, > 0)")
    parser.add_argument("--diameters-mm", type=diameter, nargs=3, default=(6.0, 12.0, 20.0), help="for the SimCXR render (three, > 0)")
    parser.add_argument("--seed", type=whole_number(0), default=0, help="placement seed")
    parser.add_argument("--composition", choices=("additive", "replace"), default="additive",
                        help="'additive' (default: the nodule's layer added, the anatomy behind it kept) or 'replace' (the paper's inpainting)")
    parser.add_argument("--density", choices=DENSITY_CLASSES, default="solid", help="additive only: the nodules' density class (default solid)")
    parser.add_argument("--shape-seeds", type=whole_number(0), nargs="+", default=list(DEFAULT_SEEDS))
    parser.add_argument("--no-sim", action="store_true", help="skip the SimCXR render")


def real_radiograph(path: Path | None = None):
    from cxr_nodule_aug.io import read_image

    if path is None:
        path = Path(str(importlib.resources.files("data_store") / "data" / "RG1_UNCR.dcm"))
        if not path.is_file():
            raise CommandError(f"the demo radiograph {path} is missing: install pydicom-data (pip install pydicom-data)")
    return read_image(path)


def _boundary(mask: torch.Tensor, width: int = 2) -> torch.Tensor:
    m = mask.float()[None, None]
    eroded = -F.max_pool2d(-m, 2 * width + 1, stride=1, padding=width)
    return (m - eroded)[0, 0] > 0


def _rgb(gray: torch.Tensor, contours: list[tuple[torch.Tensor, tuple[float, float, float]]]) -> torch.Tensor:
    rgb = gray[None].repeat(3, 1, 1).clone()
    for mask, color in contours:
        b = _boundary(mask)
        for c in range(3):
            rgb[c][b] = color[c]
    return rgb.permute(1, 2, 0)


def run_one(name: str, image: torch.Tensor, target: dict, synth, diameters: list[float], unit: str, seeds: list[int], seed: int, out: Path,
            density: str | None = None) -> dict:
    """Fig.-7-style grid for one radiograph (``synth``: the
    :class:`~cxr_nodule_aug.NoduleSynthesizer`; ``density``: the records' density class, for
    the additive mode); returns a summary."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cxr_nodule_aug import NoduleRecord
    from cxr_nodule_aug.functional.insertion import place_nodules

    spacing = target.get("pixel_spacing_mm")
    mm_per_px = None if spacing is None else (spacing[0] + spacing[1]) / 2
    d_px = [d / mm_per_px for d in diameters] if unit == "mm" else list(diameters)
    if max(d_px) * 1.5 > min(image.shape[-2:]):  # the lungs are smaller than the image: refuse before any work
        flag = "--diameters-mm" if unit == "mm" else "--diameters-px"
        raise UsageError(f"{flag} {max(diameters):g}: a {max(d_px):.0f} px nodule cannot fit in the lungs of the {name} image "
                         f"({image.shape[-1]} x {image.shape[-2]} px)")
    image = image.as_subclass(torch.Tensor)
    given = target.get("lung_mask")  # SimCXR's projected labels; else the lung model's
    if given is not None:
        given = torch.as_tensor(given).as_subclass(torch.Tensor)
        lung = given > 0.5 if given.is_floating_point() else given.bool()
    else:
        lung = synth.lung_mask(image)
    # Place each shape once, at its largest size, so that all three sizes fit where it sits.
    big = synth.footprints(seeds, [max(d_px)] * len(seeds))
    centres = place_nodules(lung, big, gap_px=int(max(d_px) // 2), generator=torch.Generator().manual_seed(seed))

    display_lo_hi = _display_with_window(image, image)
    half = int(max(d_px) * 1.4)
    rows, records = [], []
    for shape_seed, centre in zip(seeds, centres):
        cx, cy = centre
        y0, x0 = max(cy - half, 0), max(cx - half, 0)
        crop = (slice(y0, cy + half), slice(x0, cx + half))
        row = [display_lo_hi[crop]]
        for d in d_px:
            rec = NoduleRecord(center_xy=centre, diameter_px=round(d, 3), seed=shape_seed, diameter_mm=None if mm_per_px is None else round(d * mm_per_px, 3),
                               density=density)
            (inserted,) = synth.insert([image], [[rec]])
            shown = _display_with_window(inserted.image, image)
            records.append(inserted.records[-1].to_dict())
            row.append((shown[crop], inserted.masks[-1][crop]))
        rows.append(row)

    fig, axes = plt.subplots(len(rows), 1 + 2 * len(d_px), figsize=(2.2 * (1 + 2 * len(d_px)), 2.3 * len(rows)), squeeze=False)
    for i, row in enumerate(rows):
        axes[i, 0].imshow(row[0], cmap="gray", vmin=0, vmax=1)
        axes[i, 0].set_title("original" if i == 0 else "", fontsize=9)
        axes[i, 0].set_ylabel(f"shape seed {seeds[i]}", fontsize=8)
        for j, (shown, mask) in enumerate(row[1:]):
            label = f"{diameters[j]:g} {unit}"
            axes[i, 1 + 2 * j].imshow(shown, cmap="gray", vmin=0, vmax=1)
            axes[i, 2 + 2 * j].imshow(_rgb(shown, [(mask, (1.0, 0.15, 0.15))]))
            if i == 0:
                axes[i, 1 + 2 * j].set_title(label, fontsize=9)
                axes[i, 2 + 2 * j].set_title(label + " (contour)", fontsize=9)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"cxr-nodule-aug demo: {name}", fontsize=11)
    fig.tight_layout()
    fig.savefig(out / f"demo_{name}.png", dpi=110)
    plt.close(fig)

    # Overview: the largest version of every shape, all at once, with lung and nodule contours.
    all_records = [NoduleRecord(center_xy=c, diameter_px=round(max(d_px), 3), seed=s, density=density) for s, c in zip(seeds, centres)]
    (overview,) = synth.insert([image], [all_records])
    shown = _display_with_window(overview.image, image)
    contours = [(lung, (0.2, 0.9, 0.2))] + [(m, (1.0, 0.15, 0.15)) for m in overview.masks]
    small = 1024 / max(shown.shape)
    fig, ax = plt.subplots(1, 2, figsize=(12, 6.4))
    ax[0].imshow(display_lo_hi, cmap="gray", vmin=0, vmax=1)
    ax[0].set_title("input")
    ax[1].imshow(_rgb(shown, contours))
    ax[1].set_title("nodules inserted (red), lung mask (green)")
    for a in ax:
        a.set_xticks([])
        a.set_yticks([])
    fig.tight_layout()
    fig.savefig(out / f"overview_{name}.png", dpi=int(100 * max(small, 0.5) + 20))
    plt.close(fig)
    (out / f"records_{name}.json").write_text(json.dumps({"grid": records, "overview": [r.to_dict() for r in overview.records]}, indent=1))
    return {"name": name, "nodules": len(records), "lung_fraction": float(lung.float().mean())}


def _display_with_window(new: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Show ``new`` through ``reference``'s window, so inserted nodules are not re-windowed."""
    from cxr_nodule_aug.functional.intensity import to_working

    _, lo, hi = to_working(reference.as_subclass(torch.Tensor))
    return ((new.as_subclass(torch.Tensor).float().mean(0) - lo) / (hi - lo)).clamp(0, 1)


def run(args: argparse.Namespace) -> int:
    from cxr_nodule_aug import NoduleSynthesizer
    from cxr_nodule_aug.hub import WeightsError

    try:
        synth = NoduleSynthesizer.from_pretrained(args.weights, composition=args.composition)
    except (WeightsError, ValueError, FileNotFoundError) as err:
        raise UsageError(f"--weights {args.weights!r}: {err}" if args.weights is not None else str(err)) from None
    density = args.density if synth.composition == "additive" else None
    try:
        radiograph = real_radiograph(args.image)
    except ValueError as err:
        raise UsageError(f"--image {str(args.image)!r}: {err}") from None
    args.out.mkdir(parents=True, exist_ok=True)
    summaries = []
    image = radiograph.to_tensor()
    H, W = image.shape[-2:]
    target = {
        "boxes": tv_tensors.BoundingBoxes(torch.zeros(0, 4), format="XYXY", canvas_size=(H, W)),
        "labels": torch.zeros(0, dtype=torch.int64),
    }
    if radiograph.pixel_spacing_mm is not None:
        target["pixel_spacing_mm"] = radiograph.pixel_spacing_mm
    name = Path(radiograph.path).stem
    summaries.append(run_one(name, image, target, synth, list(args.diameters_px), "px", args.shape_seeds, args.seed, args.out, density))
    if not args.no_sim:
        from cxr_nodule_aug.sim import SimCXR

        render = SimCXR().render(seed=args.seed + 7, n_nodules=0)
        image, target = render.to_sample()
        target = {k: target[k] for k in ("boxes", "labels", "lung_mask", "pixel_spacing_mm")}
        summaries.append(run_one("simcxr", image, target, synth, list(args.diameters_mm), "mm", args.shape_seeds, args.seed, args.out, density))
    for s in summaries:
        print(f"{s['name']}: {s['nodules']} nodules inserted; figure demo_{s['name']}.png, overview_{s['name']}.png, records_{s['name']}.json")
    print(f"demo written to {args.out}")
    return 0
