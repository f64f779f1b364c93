"""``cxr-nodule-aug synthesize``: write a pre-synthesized nodule detection set (NODE21 layout).

Picks ``--count`` source images of ``--data`` (a seeded shuffle, cycled when the count exceeds
the dataset), inserts nodules into each with :class:`~cxr_nodule_aug.NoduleInpaint` (``p=1``)
and writes, to ``--out``::

    images/<name>.png        the synthesized radiograph: 16-bit PNG for 16-bit sources (8-bit for
                             8-bit ones), the source's values kept as they are (no rescaling)
    lung_masks/<name>.png    8-bit 0/255 lung field, when the source sample has one (SimCXR)
    metadata.csv             NODE21: img_name,x,y,width,height,label; one label-1 row per box
                             (the source's own boxes, then the inserted nodules), a label-0 row
                             of zeros for an image without boxes
    pixel_spacing.csv        img_name,row_mm,col_mm (empty when unknown): PNG as read by
                             Node21Dataset carries no spacing, so it is kept here
    records.jsonl            one line per inserted nodule: img_name, source_id, source_index,
                             source_image ("image" or "image_nodule_free") and the NoduleRecord
                             (``record``, naming its composition mode), which
                             ``InsertNodules([record])`` replays on the source
    manifest.json            the arguments, the library version, the count, "complete"

``Node21Dataset(out)`` reads it, and ``cxr-nodule-aug train detector ... synth=node21:OUT``
trains on it next to the real data.

Image ``i`` depends only on the arguments and ``i`` (its generator is seeded from
``(--seed, i)``), so an interrupted run resumes where it stopped and gives the same bytes as one
uninterrupted run. Networks run single-threaded for the same reason.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from cxr_nodule_aug.cli.arguments import NumberRange, output_dir, torch_device, whole_number
from cxr_nodule_aug.cli.errors import UsageError
from cxr_nodule_aug.datasets import DATASET_KINDS, open_dataset
from cxr_nodule_aug.eval.node21_io import write_node21_metadata
from cxr_nodule_aug.io import atomic_write, check_or_write_manifest, image_seed, png_bytes, remove_temp_files

# /2: image i's generator seed is io.image_seed(seed, i, 5), the one per-item seed (was a 63-bit draw).
FORMAT = "cxr-nodule-aug-synthesize/2"


# -- argument types ------------------------------------------------------------------------------
_DIAMETER = NumberRange(float, above=0.0)


def _diameters(text: str) -> str | float | tuple[float, float]:
    """A HEM sampler file (checked in run) or a diameter > 0 / 'min,max' range."""
    if text.endswith(".json"):
        return text
    return _DIAMETER(text)


def _num_nodules(text: str) -> int | tuple[int, int]:
    value = NumberRange(int, minimum=0)(text)
    if max(value if isinstance(value, tuple) else (value,)) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: must allow at least one nodule")
    return value


COMPOSITION_CHOICES = ("additive", "replace")


def _density(text: str) -> str:
    from cxr_nodule_aug.models.layer import DENSITY_CLASSES

    if text == "lidc":
        return text
    bad = [c for c in text.split(",") if c not in DENSITY_CLASSES]
    if bad or not text:
        raise argparse.ArgumentTypeError(f"{text!r}: expected 'lidc' or class names from {', '.join(DENSITY_CLASSES)} separated by commas")
    return text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = (
        "Writes images/<name>.png, metadata.csv (NODE21), records.jsonl (one NoduleRecord per inserted nodule, "
        "replayable with InsertNodules on the source image), pixel_spacing.csv (the spacing the PNGs cannot carry: "
        "Node21Dataset reads them with pixel_spacing_mm=None), lung_masks/ (when the source has lung masks) and "
        "manifest.json. Read it with Node21Dataset(OUT) or train on it with 'train detector ... synth=node21:OUT'. "
        "Rerunning the same command resumes; another command on a non-empty OUT is refused."
    )
    parser.add_argument("--data", required=True, help="source dataset root")
    parser.add_argument("--dataset", default="simcxr", choices=list(DATASET_KINDS), help="source dataset kind (default simcxr)")
    parser.add_argument("--count", type=whole_number(1), required=True, help="images to write (sources are cycled when this exceeds the dataset)")
    parser.add_argument("--out", type=output_dir, required=True, help="output directory (new, empty, or a run of the same command to resume)")
    parser.add_argument("--diameters", type=_diameters, default=(4.0, 24.0),
                        help="nodule diameter: a number, 'min,max' (uniform), or a hem_sampler.json from 'cxr-nodule-aug hem' (default 4,24)")
    parser.add_argument("--unit", choices=("mm", "px"), default="mm",
                        help="unit of a numeric --diameters (default mm; needs the source's pixel spacing); a sampler file has its own")
    parser.add_argument("--num-nodules", type=_num_nodules, default=(1, 3), help="nodules per image: a number or 'min,max' (default 1,3)")
    parser.add_argument("--contrast", type=NumberRange(float, minimum=0.0), default=1.0, help="contrast scale: a number or 'min,max' (default 1.0)")
    parser.add_argument("--seed", type=whole_number(0), default=0, help="seeds the choice of source images and every nodule (default 0)")
    parser.add_argument("--weights", default=None, help="weights directory or org/name[@rev] (default: the shipped weights)")
    parser.add_argument("--composition", choices=sorted(COMPOSITION_CHOICES), default="additive",
                        help="how a nodule's pixels are made: 'additive' (default: its layer added to the radiograph, the anatomy behind it kept; "
                             "the weights' layer/ model) or 'replace' (the paper's inpainting; texture/)")
    parser.add_argument("--density", type=_density, default="lidc",
                        help="additive only: the nodules' density class, a name or 'name,name,...' (uniform choice) of "
                             "ground_glass, part_solid, solid, calcified; default 'lidc' (LIDC-IDRI's frequencies)")
    parser.add_argument("--nodule-free-only", action="store_true",
                        help="only sources without boxes; for SimCXR, a nodule image's nodule-free twin is used (its boxes dropped)")
    parser.add_argument("--device", type=torch_device, default="cpu", help="where the networks run (default cpu); records replay exactly on the same device")
    parser.add_argument("--no-progress", action="store_true")


# -- helpers -------------------------------------------------------------------------------------
def source_order(num_sources: int, count: int, seed: int) -> list[int]:
    """``count`` positions into the eligible sources: a seeded shuffle, cycled."""
    perm = np.random.default_rng([int(seed), 11]).permutation(num_sources).tolist()
    return [perm[i % num_sources] for i in range(count)]


def _source_boxes(dataset: Any, index: int) -> int:
    """Number of boxes of source ``index`` without reading its pixels where the dataset allows."""
    if hasattr(dataset, "records"):  # SimCXRDataset
        return len(dataset.records[index]["nodules"])
    if hasattr(dataset, "items"):  # AnnotatedImages (NODE21, VinDr)
        return len(dataset.items[index][2])
    return len(dataset[index][1]["boxes"])


def _source_id(dataset: Any, index: int) -> str:
    """The source's image id without reading its pixels where the dataset allows."""
    if hasattr(dataset, "records"):  # SimCXRDataset: image_id is the file stem
        return Path(dataset.records[index]["img_name"]).stem
    if hasattr(dataset, "items"):
        return str(dataset.items[index][0])
    return str(dataset[index][1].get("image_id", index))


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(text)).strip("._") or "image"


def _manifest_arguments(args: argparse.Namespace) -> dict[str, Any]:
    """The arguments that decide the output bytes, in a form that compares across reruns."""
    diameters = args.diameters
    sampler_sha = None
    if isinstance(diameters, str):
        path = Path(diameters)
        if not path.is_file():
            raise UsageError(f"--diameters {diameters!r}: no such HEM sampler file")
        sampler_sha = hashlib.sha256(path.read_bytes()).hexdigest()
        diameters = str(path.resolve())
    weights = args.weights
    if weights is not None and Path(weights).expanduser().is_dir():
        weights = str(Path(weights).expanduser().resolve())
    return {
        "data": str(Path(args.data).resolve()), "dataset": args.dataset, "count": args.count,
        "diameters": diameters, "diameters_sha256": sampler_sha, "unit": args.unit,
        "num_nodules": args.num_nodules, "contrast": args.contrast, "seed": args.seed,
        "weights": weights, "nodule_free_only": bool(args.nodule_free_only), "device": args.device,
        "composition": args.composition, "density": args.density if args.composition == "additive" else None,
    }


def _to_numpy(image) -> np.ndarray:
    """(1, H, W) integer tensor -> (H, W) uint8/uint16 array, values unchanged."""
    import torch

    t = image.as_subclass(torch.Tensor).detach().cpu()
    if t.ndim != 3 or t.shape[0] != 1:
        raise ValueError(f"expected a single-channel (1, H, W) image, got shape {tuple(t.shape)}")
    if t.dtype == torch.uint8:
        return t[0].numpy()
    if t.dtype == torch.uint16:
        return t[0].to(torch.int32).numpy().astype(np.uint16)
    raise ValueError(f"image dtype {t.dtype} cannot be written as an 8/16-bit PNG without rescaling (only uint8 and uint16 sources are supported)")


def _finish(out: Path) -> None:
    """Remove what only an unfinished run needs (.parts/) and temp files a killed run left;
    idempotent, run after the manifest says complete."""
    shutil.rmtree(out / ".parts", ignore_errors=True)
    remove_temp_files(out)


def _diameter_range(args: argparse.Namespace) -> tuple[float, float, str, str]:
    """(smallest, largest) requested diameter, its unit and the words that asked for it."""
    if isinstance(args.diameters, str):
        from cxr_nodule_aug import HEMSampler

        try:
            sampler = HEMSampler.load(args.diameters)
        except (ValueError, KeyError, OSError) as err:
            raise UsageError(f"--diameters {args.diameters!r}: not a HEM sampler file ({err})") from None
        values = sampler.table[sampler.attribute]
        # A smoothed sampler can draw past its largest mined value; 4 bandwidths covers it.
        return float(values.min()), float(values.max()) + 4 * sampler.bandwidth, sampler.unit, f"--diameters {args.diameters!r} (a {sampler.unit} sampler)"
    lo, hi = args.diameters if isinstance(args.diameters, tuple) else (args.diameters, args.diameters)
    return float(lo), float(hi), args.unit, f"--diameters {lo:g}" + (f",{hi:g}" if hi != lo else "") + f" --unit {args.unit}"


def check_diameters_fit(args: argparse.Namespace, dataset: Any, source_index: int) -> None:
    """Refuse, before any model loads, diameters no nodule of which can fit in the first source.

    A nodule's diameter is its area-equivalent diameter, so one of ``d`` px covers
    ``pi d^2 / 4`` px; it must lie inside the lung field (the source's lung mask, else the
    whole image). A largest requested diameter whose disc is larger than that area cannot be
    placed on any image of the size of the first source, and would only fail after the
    models loaded (or, for a range, midway through the run). ``--unit mm`` needs the source's
    pixel spacing. Borderline sizes are left to the placement, which names the nodule.
    """
    import math

    import torch

    _, hi, unit, asked = _diameter_range(args)
    image, target = dataset[source_index]
    source_id = str(target.get("image_id", source_index))
    H, W = (int(v) for v in image.shape[-2:])
    lung = target.get("lung_mask")
    area_px = int(torch.as_tensor(lung).bool().sum()) if lung is not None else H * W
    where = f"the lung field ({area_px} px)" if lung is not None else "the image"
    px_area_mm2 = 1.0
    if unit == "mm":
        spacing = target.get("pixel_spacing_mm")
        if spacing is None:
            raise UsageError(f"{asked}: diameters in mm need the pixel spacing, and source image {source_id!r} has none; "
                             "give the diameters in pixels with --unit px")
        mm = torch.as_tensor(spacing, dtype=torch.float64).flatten()  # (row, col), or one value for both
        px_area_mm2 = float(mm[0] * mm[-1])
    largest = 2 * math.sqrt(area_px * px_area_mm2 / math.pi)  # in the unit asked
    if hi > largest:
        raise UsageError(f"{asked}: a {hi:g} {unit} nodule cannot fit in {where} of source image {source_id!r} ({W} x {H} px); "
                         f"diameters must stay below {largest:.1f} {unit}")


# -- the work ------------------------------------------------------------------------------------
def _open_sources(args: argparse.Namespace):
    options = {"return_pair": True} if args.dataset == "simcxr" and args.nodule_free_only else {}
    dataset = open_dataset(args.dataset, args.data, **options)
    if len(dataset) == 0:
        raise ValueError(f"--data {args.data!r}: the {args.dataset} dataset holds no images")
    eligible = list(range(len(dataset)))
    if args.nodule_free_only and args.dataset != "simcxr":
        eligible = [i for i in eligible if _source_boxes(dataset, i) == 0]
        if not eligible:
            raise ValueError(f"--nodule-free-only: no image of --data {args.data!r} is without boxes")
    return dataset, eligible


def _make_transform(args: argparse.Namespace):
    import torch

    from cxr_nodule_aug import HEMSampler, NoduleInpaint, NoduleSynthesizer

    if isinstance(args.diameters, str):
        diameters: Any = HEMSampler.load(args.diameters)
        unit = diameters.unit
    else:
        diameters, unit = args.diameters, args.unit
    synth = NoduleSynthesizer.from_pretrained(args.weights, device=args.device, composition=args.composition)
    density = None
    if args.composition == "additive" and args.density != "lidc":
        density = args.density.split(",")
    return NoduleInpaint(diameters=diameters, unit=unit, num_nodules=args.num_nodules, contrast=args.contrast, p=1.0,
                         synthesizer=synth, generator=torch.Generator(), density=density)


def _check_spacing_for_mm(args: argparse.Namespace, tf, dataset, eligible: list[int]) -> None:
    """Diameters in mm need the source's pixel spacing: say so in the command's own terms."""
    if tf.unit != "mm":
        return
    _, target = dataset[eligible[0]]
    if target.get("pixel_spacing_mm") is None:
        source = f"the HEM sampler {args.diameters!r} holds mm diameters" if args.diameters.endswith(".json") else "--unit mm"
        fix = ("mine this data with 'cxr-nodule-aug hem' (it writes px diameters where the spacing is unknown)"
               if args.diameters.endswith(".json") else "give --diameters in pixels with --unit px")
        raise ValueError(f"{source}, but the {args.dataset} images of --data {args.data!r} record no pixel spacing "
                         f"(e.g. {target.get('image_id', eligible[0])!r}): {fix}")


def _clean_sample(image, target, nodule_free_twin: bool):
    """Only what insertion needs: boxes, labels, lung mask, spacing (the source's own records,
    instance masks and heart masks are not carried into the synthesized set)."""
    import torch
    from torchvision import tv_tensors

    boxes = target["boxes"]
    if nodule_free_twin:  # the twin has none of the original nodules
        boxes = tv_tensors.wrap(boxes.as_subclass(torch.Tensor)[:0], like=boxes)
    clean = {"boxes": boxes, "labels": torch.ones(len(boxes), dtype=torch.int64), "pixel_spacing_mm": target.get("pixel_spacing_mm")}
    if target.get("lung_mask") is not None:
        clean["lung_mask"] = target["lung_mask"]
    return image, clean


def synthesize_one(tf, dataset, source_index: int, index: int, name: str, seed: int, out: Path, nodule_free_only: bool) -> dict[str, Any]:
    """Write image ``index`` (pixels, lung mask) and return its part (boxes, records, spacing)."""
    import torch
    from torchvision.transforms.v2 import functional as TF

    image, target = dataset[source_index]
    source_id = str(target.get("image_id", source_index))
    use_twin = nodule_free_only and "image_nodule_free" in target and len(target["boxes"]) > 0
    if use_twin:
        image = target["image_nodule_free"]
    image, clean = _clean_sample(image, target, use_twin)
    tf.generator.manual_seed(image_seed(seed, index, 5))
    try:
        out_image, out_target = tf(image, clean)
    except ValueError as err:  # PlacementError included
        raise ValueError(f"source image {source_id!r} (output {name}): {err}") from err
    boxes = out_target["boxes"]
    xyxy = TF.convert_bounding_box_format(boxes.as_subclass(torch.Tensor).float(), old_format=boxes.format, new_format="XYXY")
    records = out_target["nodules"]
    atomic_write(out / "images" / f"{name}.png", png_bytes(_to_numpy(out_image)))
    if "lung_mask" in clean:
        lung = clean["lung_mask"].as_subclass(torch.Tensor).cpu().bool().numpy().astype(np.uint8) * 255
        atomic_write(out / "lung_masks" / f"{name}.png", png_bytes(lung))
    spacing = clean.get("pixel_spacing_mm")
    return {
        "img_name": f"{name}.png", "source_id": source_id, "source_index": int(source_index),
        "source_image": "image_nodule_free" if use_twin else "image",
        "boxes_xyxy": [[float(v) for v in b] for b in xyxy.tolist()],
        "pixel_spacing_mm": None if spacing is None else [float(v) for v in torch.as_tensor(spacing, dtype=torch.float64).flatten().tolist()],
        "records": [r.to_dict() for r in records],
    }


def _write_dataset_files(out: Path, parts: list[dict[str, Any]]) -> None:
    write_node21_metadata(out / "metadata.csv", {part["img_name"]: part["boxes_xyxy"] for part in parts})
    spacing = io.StringIO()
    sw = csv.writer(spacing, lineterminator="\n")
    sw.writerow(["img_name", "row_mm", "col_mm"])
    lines = []
    for part in parts:
        sw.writerow([part["img_name"], *(part["pixel_spacing_mm"] or ["", ""])])
        for record in part["records"]:
            line = {k: part[k] for k in ("img_name", "source_id", "source_index", "source_image")}
            lines.append(json.dumps({**line, "record": record}, sort_keys=True))
    atomic_write(out / "pixel_spacing.csv", spacing.getvalue().encode())
    atomic_write(out / "records.jsonl", "".join(line + "\n" for line in lines).encode())
    if (out / "lung_masks").is_dir() and not any((out / "lung_masks").iterdir()):
        (out / "lung_masks").rmdir()  # sources without lung masks (real datasets)


def run(args: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm

    from cxr_nodule_aug import __version__

    out: Path = args.out
    if not Path(args.data).is_dir():
        raise UsageError(f"--data {args.data!r}: no such directory")
    # Through JSON once, so that it compares equal to the manifest read back on resume.
    manifest = json.loads(json.dumps({"format": FORMAT, "library_version": __version__, "arguments": _manifest_arguments(args), "count": args.count}))
    try:
        dataset, eligible = _open_sources(args)
    except (ValueError, FileNotFoundError) as err:
        raise UsageError(f"--data {args.data!r} (--dataset {args.dataset}): {err}") from None
    order = source_order(len(eligible), args.count, args.seed)
    check_diameters_fit(args, dataset, eligible[order[0]])  # before the models load: a nodule that cannot fit fails in seconds
    try:
        tf = _make_transform(args)
    except ValueError as err:  # e.g. a --weights folder without the composition's model
        raise UsageError(f"--weights {args.weights!r} (--composition {args.composition}): {err}" if args.weights is not None else str(err)) from None
    try:
        _check_spacing_for_mm(args, tf, dataset, eligible)  # before the manifest: a corrected rerun starts clean
    except ValueError as err:
        raise UsageError(str(err)) from None
    created = not out.exists()
    complete = check_or_write_manifest(out, manifest, "a synthesized set")
    parts_dir = out / ".parts"
    if complete:
        _finish(out)  # an earlier run killed after marking the set complete
        print(f"{out}: the synthesized set is already complete ({args.count} images); nothing to do")
        return 0
    for sub in ("images", "lung_masks", ".parts"):
        (out / sub).mkdir(exist_ok=True)
    width = max(6, len(str(args.count - 1)))
    names = [f"synth_{i:0{width}d}_{_safe(_source_id(dataset, eligible[k]))}" for i, k in enumerate(order)]
    todo = [i for i in range(args.count) if not (parts_dir / f"{names[i]}.json").is_file()]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # float reductions then do not depend on the machine: resumed runs give the same bytes
    try:
        for i in tqdm(todo, desc="synthesize", unit="img", disable=args.no_progress):
            try:
                part = synthesize_one(tf, dataset, eligible[order[i]], i, names[i], args.seed, out, args.nodule_free_only)
            except (ValueError, FileNotFoundError):
                if created and not any(parts_dir.iterdir()):
                    shutil.rmtree(out)  # nothing done yet: leave no run behind that a corrected command would clash with
                raise
            # Written last: its presence marks image i as done for a resumed run.
            atomic_write(parts_dir / f"{names[i]}.json", json.dumps(part, sort_keys=True).encode())
    finally:
        torch.set_num_threads(threads)
    parts = [json.loads((parts_dir / f"{n}.json").read_text()) for n in names]
    _write_dataset_files(out, parts)
    atomic_write(out / "manifest.json", json.dumps({**manifest, "complete": True}, indent=1, sort_keys=True).encode())
    _finish(out)
    nodules = sum(len(p["records"]) for p in parts)
    print(f"wrote {args.count} images with {nodules} inserted nodules to {out} (metadata.csv, records.jsonl, manifest.json); "
          f"train on it with: cxr-nodule-aug train detector ... synth=node21:{out}")
    return 0
