"""Export SimCXR renders as a dataset directory (16-bit PNG, NODE21 CSV, COCO, records, masks).

Layout of ``out``::

    manifest.json            seed, counts, size, config overrides, library version, "complete"
    images/<name>.png        16-bit radiograph (MONOCHROME2)
    pairs/<name>.png         the same image without its nodules (nodule images only)
    masks/<name>_lung.png    8-bit 0/255 lung field; also _heart
    masks/<name>_nodules.png 8-bit instance map: value k + 1 = nodule k (0 = background)
    records/<name>.json      everything about the image (written last: its presence = done)
    metadata.csv             NODE21 layout: img_name,x,y,width,height,label (written at the end)
    nodules.csv, annotations_coco.json

Image ``i`` (0 <= i < normal + nodule) depends only on (seed, i), so shards (``i % n == k``)
and resumed runs produce the same bytes as one uninterrupted run.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Callable

import numpy as np

from cxr_nodule_aug.eval.node21_io import write_node21_metadata
from cxr_nodule_aug.io.writers import atomic_write, check_or_write_manifest, image_seed, png_bytes, remove_temp_files

FORMAT = "simcxr-export/1"


def image_name(index: int) -> str:
    return f"simcxr_{index:06d}"


def export_plan(seed: int, normal: int, nodule: int) -> np.ndarray:
    """Bool array, True where image ``i`` carries nodules (a seeded shuffle)."""
    if normal < 0 or nodule < 0 or normal + nodule == 0:
        raise ValueError(f"normal={normal}, nodule={nodule}: need non-negative counts, at least one image")
    flags = np.zeros(normal + nodule, dtype=bool)
    flags[:nodule] = True
    np.random.default_rng([int(seed), 1]).shuffle(flags)
    return flags


def manifest_for(seed, normal, nodule, size, shards, config_overrides) -> dict[str, Any]:
    from cxr_nodule_aug import __version__

    return {
        "format": FORMAT, "library_version": __version__, "seed": int(seed), "normal": int(normal),
        "nodule": int(nodule), "size": int(size), "config": config_overrides,
        # No shard count: image i's bytes do not depend on how the work was split.
    }


def render_one(sim, seed: int, index: int, has_nodules: bool, out: Path, max_nodules: int = 3) -> dict:
    """Render and write image ``index``; returns its record (also written to records/)."""
    name = image_name(index)
    iseed = image_seed(seed, index)
    lo, hi = sim.config.nodules_per_image
    n = int(np.random.default_rng([iseed, 7]).integers(lo, hi + 1)) if has_nodules else 0
    res = sim.render(iseed, n_nodules=n)
    to16 = lambda t: np.round(t.numpy() * 65535.0).astype(np.uint16)  # noqa: E731
    atomic_write(out / "images" / f"{name}.png", png_bytes(to16(res.image)))
    if has_nodules:
        atomic_write(out / "pairs" / f"{name}.png", png_bytes(to16(res.image_nodule_free)))
    for key in ("lung", "heart"):
        m = res.lung_mask if key == "lung" else res.masks[key]
        atomic_write(out / "masks" / f"{name}_{key}.png", png_bytes(m.numpy().astype(np.uint8) * 255))
    inst = np.zeros(res.image.shape, np.uint8)
    for k, m in enumerate(res.nodule_masks.numpy()):
        inst[m] = k + 1
    atomic_write(out / "masks" / f"{name}_nodules.png", png_bytes(inst))
    record = {
        "img_name": f"{name}.png", "index": index, "seed": iseed,
        "height": int(res.image.shape[0]), "width": int(res.image.shape[1]),
        "pixel_spacing_mm": list(res.pixel_spacing_mm), "params": res.params,
        "nodules": [n_.as_dict() for n_ in res.nodules],
    }
    atomic_write(out / "records" / f"{name}.json", json.dumps(_jsonable(record), sort_keys=True).encode())
    return record


def _jsonable(x):
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.floating, float)):
        return float(x)
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, np.bool_):
        return bool(x)
    return x


_WORKER: dict[str, Any] = {}


def _worker_init(config_kwargs: dict) -> None:
    import torch

    torch.set_num_threads(1)  # one process per core; also keeps float reductions reproducible
    _WORKER["sim"] = make_sim(config_kwargs)


def make_sim(config_kwargs: dict):
    """A :class:`SimCXR` from JSON-able overrides: ``nodule_source`` ("lidc", the default, or
    "procedural"), ``lidc_split`` (the LIDC split real nodules come from, default "train") and
    ``nodule_diameter_mm`` (range of real sizes for LIDC, of drawn sizes for procedural) set
    the nodule sampler; the rest are :class:`RenderConfig` fields."""
    from cxr_nodule_aug.sim.nodules import LIDCNoduleSampler, NoduleSampler
    from cxr_nodule_aug.sim.render import RenderConfig, SimCXR

    kw = dict(config_kwargs)
    source = kw.pop("nodule_source", "lidc")
    split = kw.pop("lidc_split", "train")
    diam = kw.pop("nodule_diameter_mm", None)
    extra = {} if diam is None else {"diameter_mm": tuple(diam)}
    if source == "lidc":
        kw["nodules"] = LIDCNoduleSampler(split=split, **extra)
    elif source == "procedural":
        kw["nodules"] = NoduleSampler(**extra)
    else:
        raise ValueError(f"nodule_source={source!r}: expected 'lidc' or 'procedural'")
    return SimCXR(config=RenderConfig(**kw))


def _worker_job(job):
    seed, index, has_nodules, out = job
    return render_one(_WORKER["sim"], seed, index, has_nodules, Path(out))["index"]


def export(
    out: str | Path,
    normal: int,
    nodule: int,
    seed: int = 0,
    size: int = 512,
    shard: tuple[int, int] = (0, 1),
    workers: int = 1,
    progress: bool = True,
    config_overrides: dict[str, Any] | None = None,
    on_image: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Render this shard's missing images and, when every image exists, the dataset files.

    Returns the manifest (``complete`` is True once all shards' images are written).
    """
    out = Path(out)
    k, n = shard
    if not (0 <= k < n):
        raise ValueError(f"shard={k}/{n}: expected 0 <= i < n")
    overrides = dict(config_overrides or {})
    # Where the nodules come from is always recorded (a val/test export must not share shapes
    # with a training export: each draws from its own LIDC split).
    overrides.setdefault("nodule_source", "lidc")
    if overrides["nodule_source"] == "lidc":
        overrides.setdefault("lidc_split", "train")
    manifest = manifest_for(seed, normal, nodule, size, n, overrides)
    check_or_write_manifest(out, manifest, "a SimCXR export")
    for sub in ("images", "pairs", "masks", "records"):
        (out / sub).mkdir(exist_ok=True)
    flags = export_plan(seed, normal, nodule)
    todo = [i for i in range(len(flags)) if i % n == k and not (out / "records" / f"{image_name(i)}.json").exists()]
    from tqdm import tqdm

    bar = tqdm(total=len(todo), desc=f"SimCXR shard {k}/{n}", disable=not progress, unit="img")
    jobs = [(seed, i, bool(flags[i]), str(out)) for i in todo]
    cfg = {"size": size, **overrides}
    if workers <= 1:
        _worker_init(cfg)
        for job in jobs:
            idx = _worker_job(job)
            bar.update(1)
            if on_image:
                on_image(idx)
    else:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(workers, initializer=_worker_init, initargs=(cfg,)) as pool:
            for idx in pool.imap_unordered(_worker_job, jobs, chunksize=4):
                bar.update(1)
                if on_image:
                    on_image(idx)
    bar.close()
    done = all((out / "records" / f"{image_name(i)}.json").exists() for i in range(len(flags)))
    if done:
        remove_temp_files(out)  # left by a killed run; every image is written, so no shard is still writing
        write_dataset_files(out, len(flags))
        atomic_write(out / "manifest.json", json.dumps({**manifest, "complete": True}, indent=1, sort_keys=True).encode())
        manifest["complete"] = True
    else:
        manifest["complete"] = False
    return manifest


def load_records(out: str | Path, count: int | None = None) -> list[dict]:
    out = Path(out)
    if count is None:
        m = json.loads((out / "manifest.json").read_text())
        count = m["normal"] + m["nodule"]
    return [json.loads((out / "records" / f"{image_name(i)}.json").read_text()) for i in range(count)]


def write_dataset_files(out: Path, count: int) -> None:
    """metadata.csv (NODE21), nodules.csv and annotations_coco.json from records/."""
    import io

    records = load_records(out, count)
    nod = io.StringIO()
    fields = ["img_name", "index", "box_x_min", "box_y_min", "box_x_max", "box_y_max", "diameter_px",
              "diameter_detector_mm", "diameter_projected_mm", "diameter_mm", "shape", "density",
              "contrast", "center_x", "center_y", "magnification", "pixel_spacing_mm", "lidc_id", "lidc_split"]
    nw = csv.DictWriter(nod, fieldnames=fields, lineterminator="\n")
    nw.writeheader()
    coco = {"info": {"description": "SimCXR export", "format": FORMAT},
            "categories": [{"id": 1, "name": "nodule"}], "images": [], "annotations": []}
    ann_id = 1
    for img_id, r in enumerate(records, start=1):
        coco["images"].append({"id": img_id, "file_name": f"images/{r['img_name']}", "height": r["height"],
                               "width": r["width"], "pixel_spacing_mm": r["pixel_spacing_mm"]})
        for nd in r["nodules"]:
            x0, y0, x1, y1 = nd["box_xyxy"]
            nw.writerow({
                "img_name": r["img_name"], "index": nd["index"], "box_x_min": x0, "box_y_min": y0,
                "box_x_max": x1, "box_y_max": y1, "diameter_px": round(nd["diameter_px"], 3),
                "diameter_detector_mm": round(nd["diameter_detector_mm"], 3),
                "diameter_projected_mm": round(nd["diameter_projected_mm"], 3),
                "diameter_mm": round(nd["params"]["diameter_mm"], 3), "shape": nd["params"]["shape"],
                "density": nd["params"]["density"], "contrast": round(nd["contrast"], 5),
                "center_x": round(nd["center_px"][0], 3), "center_y": round(nd["center_px"][1], 3),
                "magnification": round(nd["magnification"], 5), "pixel_spacing_mm": round(r["pixel_spacing_mm"][0], 5),
                "lidc_id": nd["params"].get("lidc_id") or "", "lidc_split": nd["params"].get("lidc_split") or "",
            })
            coco["annotations"].append({"id": ann_id, "image_id": img_id, "category_id": 1,
                                        "bbox": [x0, y0, x1 - x0, y1 - y0], "area": nd["area_px"], "iscrowd": 0})
            ann_id += 1
    write_node21_metadata(out / "metadata.csv", {r["img_name"]: [nd["box_xyxy"] for nd in r["nodules"]] for r in records})
    atomic_write(out / "nodules.csv", nod.getvalue().encode())
    atomic_write(out / "annotations_coco.json", json.dumps(coco, sort_keys=True).encode())
