"""Detection benchmark on SimCXR: does HEM-synthesized data make a nodule detector better?

The paper's Tables III and IV, on the one chest CT available offline (see docs/simcxr.md):

* "real" nodule images are SimCXR's 3-D-inserted ones (``--train-data``, an export of
  ``cxr-nodule-aug sim``); the test set is a separate export rendered with another seed
  (``--test-data``), so train and test share no image;
* a detector is pre-trained on the real training images only (per seed);
* HEM: the pre-trained detector runs on its own training images; the nodules it misses at the
  operating threshold (0.25 FP/image on the validation images) give the diameter distribution;
* fine-tuning, equal steps for every condition, on real + N synthesized images. The synthesized
  images start from *other* renders' nodule-free twins (the "bases"), so every method inserts
  into the same anatomy:
  - ``hem`` (ours, HEM diameters), ``random`` (ours, uniform 4-24 mm), ``paste`` (paste-and-blend
    of real nodule residuals, same placement and random diameters as ``random``), ``ct`` (the
    bases' own 3-D-inserted renders: CT-to-CXR insertion; here this is the real data's generator
    itself, so it is an upper bound rather than a peer);
  - Table III: ``hem`` at N = 0, 25, 50, 75, 100 % of the real nodule-image count;
  - Table IV at the best N (highest mean validation NODE21 score over seeds, N > 0): no
    augmentation (N = 0), random, HEM, CT-to-CXR, paste-and-blend.

Metrics on the test export: AUC, sensitivity at 0.25 FP/image, NODE21 score (MONAI mode),
mean +- std over seeds, and the paired (same seed, same pre-training) difference to no
augmentation. Everything is cached under ``--work``; rerunning resumes.

    python benchmarks/detection.py --quick                      # minutes; builds tiny exports
    python benchmarks/detection.py --train-data data/simcxr_train --test-data data/simcxr_test
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchvision import tv_tensors

from cxr_nodule_aug import HEMSampler, NoduleInpaint
from cxr_nodule_aug.baselines import PasteBlendInpainter
from cxr_nodule_aug.datasets import SimCXRDataset
from cxr_nodule_aug.detection import NoduleDetector, ToDetectorInput, mine_nodules, missed_sampler, operating_threshold, plot_missed_histogram, predict_dataset
from cxr_nodule_aug.eval import evaluate_detections
from cxr_nodule_aug.functional.intensity import to_working
from cxr_nodule_aug.train.detector import DetectorConfig
from cxr_nodule_aug.train.detector import train as train_detector

log = logging.getLogger("detection-benchmark")


@contextlib.contextmanager
def cpu_lock():
    """Hold the file lock named by ``$CXR_CPU_LOCK`` (if set) for one heavy stage, so that jobs
    sharing a small machine take turns instead of slowing each other (and each other's timings)."""
    path = os.environ.get("CXR_CPU_LOCK")
    if not path:
        yield
        return
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)

PRESETS: dict[str, dict[str, Any]] = {
    # ~75 min on 2 CPU cores (Faster R-CNN, EfficientNet-Lite0 FPN, 256 px).
    "full": dict(image_size=256, n_real=300, n_real_normal=100, n_val=100, n_val_normal=50, n_bases=300,
                 pretrain_steps=500, finetune_steps=200, seeds=[0, 1, 2], batch_size=4, sim_size=512,
                 sim_train=(200, 1000), sim_test=(150, 150)),
    # minutes; what the tests run. Numbers from it mean nothing.
    "quick": dict(image_size=128, n_real=8, n_real_normal=4, n_val=6, n_val_normal=4, n_bases=8,
                  pretrain_steps=6, finetune_steps=3, seeds=[0, 1], batch_size=2, sim_size=128,
                  sim_train=(10, 24), sim_test=(6, 6)),
}
FRACTIONS = (0, 25, 50, 75, 100)
METHODS = ("none", "random", "hem", "ct", "paste")
RANDOM_DIAMETERS_MM = (4.0, 24.0)
NODULES_PER_IMAGE = (1, 3)


# ------------------------------------------------------------------------------------- data
class Ready(torch.utils.data.Dataset):
    """Detector-ready samples kept in memory: (image (1,S,S) float16, boxes (N,4), spacing)."""

    def __init__(self, items: list[dict[str, Any]]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        it = self.items[i]
        image = tv_tensors.Image(it["image"].float())
        s = image.shape[-1]
        boxes = tv_tensors.BoundingBoxes(it["boxes"].float().reshape(-1, 4), format="XYXY", canvas_size=(s, s))
        return image, {"boxes": boxes, "labels": torch.ones(len(boxes), dtype=torch.int64), "pixel_spacing_mm": tuple(it["spacing"])}


def ready(to_input: ToDetectorInput, image: torch.Tensor, target: dict[str, Any]) -> dict[str, Any]:
    img, tgt = to_input(image, target)
    boxes = torch.as_tensor(tgt["boxes"]).as_subclass(torch.Tensor).float().reshape(-1, 4)
    return {"image": img.as_subclass(torch.Tensor).half(), "boxes": boxes, "spacing": list(tgt["pixel_spacing_mm"])}


def nodule_free_target(target: dict[str, Any]) -> dict[str, Any]:
    h, w = target["lung_mask"].shape[-2:]
    return {"boxes": tv_tensors.BoundingBoxes(torch.zeros(0, 4), format="XYXY", canvas_size=(h, w)),
            "labels": torch.zeros(0, dtype=torch.int64), "lung_mask": target["lung_mask"], "pixel_spacing_mm": target["pixel_spacing_mm"]}


def residual_bank(dataset: SimCXRDataset, indices: list[int], side: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Nodule residuals (nodule image minus its nodule-free twin, in the nodule image's working
    window) and footprints, cropped square around each real training nodule, resized to ``side``."""
    residuals, masks = [], []
    for i in indices:
        image, target = dataset[i]
        gray, lo, hi = to_working(image.as_subclass(torch.Tensor))
        free = (target["image_nodule_free"].as_subclass(torch.Tensor).float().mean(0) - lo) / (hi - lo)
        res = gray - free
        for box, mask in zip(torch.as_tensor(target["boxes"]).tolist(), target["masks"]):
            cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
            half = max(box[2] - box[0], box[3] - box[1]) * 0.75 + 1
            y0, y1 = max(int(cy - half), 0), min(int(math.ceil(cy + half)), res.shape[0])
            x0, x1 = max(int(cx - half), 0), min(int(math.ceil(cx + half)), res.shape[1])
            crop = res[y0:y1, x0:x1][None, None]
            m = mask.as_subclass(torch.Tensor)[y0:y1, x0:x1].float()[None, None]
            residuals.append(torch.nn.functional.interpolate(crop, size=(side, side), mode="bilinear", antialias=True, align_corners=False)[0])
            masks.append((torch.nn.functional.interpolate(m, size=(side, side), mode="bilinear", align_corners=False) >= 0.5).float()[0])
    return torch.stack(residuals), torch.stack(masks)


def ensure_exports(args: argparse.Namespace, preset: dict[str, Any], work: Path) -> tuple[Path, Path]:
    from cxr_nodule_aug.sim.export import export

    roots = []
    for given, (normal, nodule), seed, name in ((args.train_data, preset["sim_train"], 1, "simcxr_train"), (args.test_data, preset["sim_test"], 2, "simcxr_test")):
        if given:
            roots.append(Path(given))
            continue
        root = work / name
        log.info("exporting %s (%d normal, %d nodule, %d px)", root, normal, nodule, preset["sim_size"])
        export(root, normal=normal, nodule=nodule, seed=seed, size=preset["sim_size"], workers=1, progress=False,
               config_overrides={"nodule_diameter_mm": list(RANDOM_DIAMETERS_MM)})
        roots.append(root)
    return roots[0], roots[1]


def prepare(train_root: Path, test_root: Path, preset: dict[str, Any], work: Path) -> dict[str, Any]:
    path = work / "prepared.pt"
    if path.exists():
        return torch.load(path, weights_only=True)
    t0 = time.perf_counter()
    train = SimCXRDataset(train_root, return_pair=True)
    nod = [i for i, r in enumerate(train.records) if r["nodules"]]
    nrm = [i for i, r in enumerate(train.records) if not r["nodules"]]
    p = preset
    need_nod, need_nrm = p["n_real"] + p["n_val"] + p["n_bases"], p["n_real_normal"] + p["n_val_normal"]
    if len(nod) < need_nod or len(nrm) < need_nrm:
        raise SystemExit(f"{train_root} has {len(nod)} nodule and {len(nrm)} normal images; this preset needs {need_nod} and {need_nrm}")
    split = {
        "real": nod[: p["n_real"]] + nrm[: p["n_real_normal"]],
        "val": nod[p["n_real"] : p["n_real"] + p["n_val"]] + nrm[p["n_real_normal"] : need_nrm],
        "bases": nod[p["n_real"] + p["n_val"] : need_nod],
    }
    to_input = ToDetectorInput(p["image_size"])
    out: dict[str, Any] = {"split": split}
    for name in ("real", "val"):
        out[name] = [ready(to_input, *train[i][:2]) for i in split[name]]
    out["ct"] = [ready(to_input, *train[i][:2]) for i in split["bases"]]
    test = SimCXRDataset(test_root)
    out["test"] = [ready(to_input, *test[i]) for i in range(len(test))]
    out["test_ids"] = [r["img_name"] for r in test.records]
    residuals, masks = residual_bank(train, [i for i in split["real"] if train.records[i]["nodules"]])
    out["residuals"], out["residual_masks"] = residuals, masks
    torch.save(out, path)
    log.info("prepared %d real, %d val, %d bases, %d test images, %d residuals in %.0f s", len(out["real"]), len(out["val"]),
             len(out["ct"]), len(out["test"]), len(residuals), time.perf_counter() - t0)
    return out


def synthesize(train_root: Path, bases: list[int], transform: NoduleInpaint, image_size: int) -> list[dict[str, Any]]:
    """Insert nodules into each base's nodule-free twin at native resolution, then make it
    detector-ready."""
    train = SimCXRDataset(train_root, return_pair=True)
    to_input = ToDetectorInput(image_size)
    items = []
    for i in bases:
        _, target = train[i]
        image, tgt = transform(target["image_nodule_free"], nodule_free_target(target))
        if len(tgt["boxes"]) == 0:
            raise RuntimeError(f"base {i}: no nodule was inserted")  # p=1: must not happen
        items.append(ready(to_input, image, tgt))
    return items


# ------------------------------------------------------------------------------------- runs
def detector_config(preset: dict[str, Any], out: Path, seed: int, steps: int, init: str = "", lr: float = 2e-4) -> DetectorConfig:
    return DetectorConfig(out=str(out), init=init, arch=preset["arch"], image_size=preset["image_size"], steps=steps, batch_size=preset["batch_size"],
                          lr=lr, warmup_steps=min(50, steps // 5), eval_every=steps, checkpoint_every=max(steps // 4, 1),
                          log_every=max(steps // 10, 1), seed=seed)


def run_dir_done(run: Path) -> bool:
    return (run / "result.json").exists()


def score(model_dir: Path, data: list[dict[str, Any]], bootstrap: int = 0) -> tuple[dict[str, Any], list[dict[str, torch.Tensor]]]:
    model = NoduleDetector.from_pretrained(model_dir)
    preds, targets = predict_dataset(model, Ready(data))
    m = evaluate_detections(preds, [{"boxes": t["boxes"]} for t in targets], mode="monai", bootstrap=bootstrap)
    return m.to_dict(), preds


def finetune(name: str, seed_dir: Path, prep: dict[str, Any], synth: list[dict[str, Any]], preset: dict[str, Any], seed: int) -> dict[str, Any]:
    run = seed_dir / name
    if run_dir_done(run):
        return json.loads((run / "result.json").read_text())
    with cpu_lock():
        t0 = time.perf_counter()
        cfg = detector_config(preset, run, seed, preset["finetune_steps"], init=str(seed_dir / "pretrain" / "model"), lr=1e-4)
        model_dir = train_detector(cfg, train_set=torch.utils.data.ConcatDataset([Ready(prep["real"]), Ready(synth)]) if synth else Ready(prep["real"]),
                                   val_set=Ready(prep["val"]))
        train_s = time.perf_counter() - t0
        val, _ = score(model_dir, prep["val"])
        test, preds = score(model_dir, prep["test"])
    torch.save([{k: v for k, v in p.items()} for p in preds], run / "test_predictions.pt")
    result = {"name": name, "seed": seed, "synthesized": len(synth), "real": len(prep["real"]), "train_seconds": round(train_s, 1),
              "val": _brief(val), "test": _brief(test), "test_froc": froc_on_grid(test)}
    (run / "result.json").write_text(json.dumps(result, indent=1) + "\n")
    log.info("seed %d %-10s test AUC %.3f sens %.3f score %.3f (val score %.3f) %.0f s", seed, name, test["auc"],
             test["sensitivity_at_target_fp"], test["node21_score"], val["node21_score"], time.perf_counter() - t0)
    return result


FROC_GRID = np.round(np.linspace(0, 2, 101), 3)  # FP/image points kept per run (the full curve has one per score)


def froc_on_grid(m: dict[str, Any]) -> dict[str, list[float]]:
    return {"fps": FROC_GRID.tolist(), "sensitivity": np.round(np.interp(FROC_GRID, m["froc_fps_per_image"], m["froc_sensitivity"]), 5).tolist()}


def _brief(m: dict[str, Any]) -> dict[str, float]:
    return {"auc": m["auc"], "sensitivity": m["sensitivity_at_target_fp"], "node21_score": m["node21_score"]}


def n_synth(fraction: int, prep: dict[str, Any]) -> int:
    real_nodule_images = sum(1 for it in prep["real"] if len(it["boxes"]))
    return int(round(real_nodule_images * fraction / 100))


def seed_stage(seed: int, train_root: Path, prep: dict[str, Any], preset: dict[str, Any], work: Path, methods_at: int | None, weights: str | None = None) -> list[dict[str, Any]]:
    """Pre-train, mine, synthesize and fine-tune for one seed. ``methods_at``: None runs the
    Table III sweep; a fraction runs the Table IV methods at it."""
    seed_dir = work / f"seed{seed}"
    pre = seed_dir / "pretrain"
    if not (pre / "model" / "config.json").exists():
        t0 = time.perf_counter()
        cfg = detector_config(preset, pre, seed, preset["pretrain_steps"])
        with cpu_lock():
            train_detector(cfg, train_set=Ready(prep["real"]), val_set=Ready(prep["val"]))
        log.info("seed %d pre-trained in %.0f s", seed, time.perf_counter() - t0)
    n_max = n_synth(100, prep)
    bases = prep["split"]["bases"][:n_max]
    hem_file = seed_dir / "hem_sampler.json"
    if not hem_file.exists():
        model = NoduleDetector.from_pretrained(pre / "model")
        vp, vt = predict_dataset(model, Ready(prep["val"]))
        threshold = operating_threshold(vp, vt, 0.25)
        real = Ready(prep["real"])
        samples = [real[i] for i in range(len(real))]
        preds, _ = predict_dataset(model, samples)
        table = mine_nodules(preds, samples, threshold)
        try:
            sampler = missed_sampler(table, attribute="diameter_mm", bandwidth=0.5)
        except ValueError:  # nothing missed: HEM has no distribution to sample
            raise SystemExit(f"seed {seed}: the pre-trained detector missed no training nodule at {threshold:.3f}; HEM has nothing to mine")
        sampler.save(hem_file)
        plot_missed_histogram(table, seed_dir / "missed_histogram.png", title=f"seed {seed}: training nodules at score >= {threshold:.3f}")
        detected = table["detected"]
        (seed_dir / "hem_summary.json").write_text(json.dumps({
            "operating_threshold": threshold, "nodules": int(len(detected)), "missed": int((detected == 0).sum()),
            "missed_diameter_mm_median": float(table["diameter_mm"][detected == 0].median()),
            "detected_diameter_mm_median": float(table["diameter_mm"][detected == 1].median()) if (detected == 1).any() else None,
        }, indent=1) + "\n")
    hem = HEMSampler.load(hem_file)

    def synth_set(method: str, count: int) -> list[dict[str, Any]]:
        """The first ``count`` synthesized images of ``method`` (a prefix of one seeded sequence)."""
        cache = seed_dir / f"synth_{method}.pt"
        if cache.exists():
            items = torch.load(cache, weights_only=True)
            if len(items) >= count:
                return items[:count]
        t0 = time.perf_counter()
        if method == "ct":
            items = prep["ct"][:count]
        else:
            gen = torch.Generator().manual_seed(10_000 * seed + METHODS.index(method))
            kw: dict[str, Any] = dict(p=1.0, num_nodules=NODULES_PER_IMAGE, generator=gen, lung_model=False, weights=weights)
            if method == "hem":
                tf = NoduleInpaint(diameters=hem, **kw)
            elif method == "random":
                tf = NoduleInpaint(diameters=RANDOM_DIAMETERS_MM, unit="mm", **kw)
            elif method == "paste":
                bank = PasteBlendInpainter(prep["residuals"], prep["residual_masks"])
                tf = NoduleInpaint(diameters=RANDOM_DIAMETERS_MM, unit="mm", texture_model=bank, **kw)
            else:
                raise ValueError(method)
            with cpu_lock():
                items = synthesize(train_root, bases[:count], tf, preset["image_size"])
        torch.save(items, cache)
        log.info("seed %d synthesized %d %s images in %.0f s", seed, len(items), method, time.perf_counter() - t0)
        return items

    results = []
    if methods_at is None:
        hem_items = synth_set("hem", n_max)
        for f in FRACTIONS:
            results.append(finetune(f"hem_{f:03d}", seed_dir, prep, hem_items[: n_synth(f, prep)], preset, seed) | {"fraction": f, "method": "hem" if f else "none"})
    else:
        for method in ("random", "ct", "paste"):
            items = synth_set(method, n_synth(methods_at, prep))
            results.append(finetune(f"{method}_{methods_at:03d}", seed_dir, prep, items, preset, seed) | {"fraction": methods_at, "method": method})
    return results


# ---------------------------------------------------------------------------------- summary
def mean_std(values: list[float]) -> tuple[float, float]:
    a = np.asarray(values, dtype=float)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


def summarize(table3: list[dict[str, Any]], table4: list[dict[str, Any]], best: int, seeds: list[int], out: Path, meta: dict[str, Any], stem: str = "detection") -> dict[str, Any]:
    def rows(results, key):
        groups: dict[Any, list[dict[str, Any]]] = {}
        for r in results:
            groups.setdefault(r[key], []).append(r)
        return groups

    summary: dict[str, Any] = {"meta": meta, "best_fraction": best, "table3": {}, "table4": {}, "paired_vs_none": {}}
    for f, rs in sorted(rows(table3, "fraction").items()):
        summary["table3"][str(f)] = {m: mean_std([r["test"][m] for r in rs]) for m in ("auc", "sensitivity", "node21_score")} | {"val_node21_score": mean_std([r["val"]["node21_score"] for r in rs]), "seeds": len(rs), "synthesized": rs[0]["synthesized"]}
    by_method = rows(table4, "method")
    for method in METHODS:
        rs = by_method.get(method, [])
        if rs:
            summary["table4"][method] = {m: mean_std([r["test"][m] for r in rs]) for m in ("auc", "sensitivity", "node21_score")} | {"seeds": len(rs)}
    none = {r["seed"]: r for r in by_method.get("none", [])}
    for method in METHODS[1:]:
        diffs = {m: [r["test"][m] - none[r["seed"]]["test"][m] for r in by_method.get(method, []) if r["seed"] in none] for m in ("auc", "node21_score")}
        if diffs["node21_score"]:
            summary["paired_vs_none"][method] = {m: mean_std(v) for m, v in diffs.items()} | {"per_seed_node21_score": diffs["node21_score"]}
    hem_r = {r["seed"]: r for r in by_method.get("hem", [])}
    rnd = [r["test"]["node21_score"] - hem_r[r["seed"]]["test"]["node21_score"] for r in by_method.get("random", []) if r["seed"] in hem_r]
    if rnd:
        summary["paired_random_minus_hem"] = {"node21_score": mean_std(rnd), "per_seed": rnd}
    (out / f"{stem}.json").write_text(json.dumps({"summary": summary, "runs": table3 + [r for r in table4 if r["method"] != "none"]}, indent=1) + "\n")
    lines = [f"# Detection benchmark (SimCXR): {meta['detector']}", "", f"{meta['preset']} preset; {len(seeds)} seeds; test set: {meta['test_images']} images "
             f"({meta['test_nodule_images']} with nodules); real training images: {meta['real_images']} ({meta['real_nodule_images']} with nodules).",
             "Metrics on the test export, mean ± std over seeds (MONAI-mode FROC, IoU > 0.2).", "",
             "## Table III analog: ours (HEM diameters), N synthesized images", "",
             "| N (% of real) | synthesized | AUC | sens@0.25 | NODE21 score | val score |", "|---|---|---|---|---|---|"]
    for f, s in summary["table3"].items():
        lines.append(f"| {f}% | {s['synthesized']} | {_fmt(s['auc'])} | {_fmt(s['sensitivity'])} | {_fmt(s['node21_score'])} | {_fmt(s['val_node21_score'])} |")
    lines += ["", f"## Table IV analog: methods at N = {best}% (best mean validation score)", "",
              "| method | AUC | sens@0.25 | NODE21 score | score − none (paired) |", "|---|---|---|---|---|"]
    labels = {"none": "no augmentation", "random": "ours, random diameters", "hem": "ours, HEM diameters", "ct": "CT-to-CXR (3-D insertion; the real data's generator)", "paste": "paste-and-blend"}
    for method, s in summary["table4"].items():
        pair = summary["paired_vs_none"].get(method, {}).get("node21_score")
        lines.append(f"| {labels[method]} | {_fmt(s['auc'])} | {_fmt(s['sensitivity'])} | {_fmt(s['node21_score'])} | {_fmt(pair) if pair else '—'} |")
    (out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    return summary


def _fmt(ms: tuple[float, float]) -> str:
    return f"{ms[0]:.3f} ± {ms[1]:.3f}"


def plot_frocs(table4: list[dict[str, Any]], path: Path, best: int) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    grid = np.linspace(0, 2, 101)
    fig = Figure(figsize=(6, 4.2), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for method in METHODS:
        curves = [np.interp(grid, r["test_froc"]["fps"], r["test_froc"]["sensitivity"]) for r in table4 if r["method"] == method]
        if not curves:
            continue
        c = np.stack(curves)
        line, = ax.plot(grid, c.mean(0), label=f"{method} ({len(curves)} seeds)")
        ax.fill_between(grid, c.mean(0) - c.std(0), c.mean(0) + c.std(0), color=line.get_color(), alpha=0.15)
    ax.axvline(0.25, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("false positives per image")
    ax.set_ylabel("sensitivity")
    ax.set_title(f"FROC on the SimCXR test export (N = {best}%), mean ± std over seeds")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the minutes-long smoke preset (tiny exports built in --work)")
    parser.add_argument("--train-data", default=None, help="SimCXR export for real training / validation / bases (default: built in --work)")
    parser.add_argument("--test-data", default=None, help="SimCXR export rendered with another seed (default: built in --work)")
    parser.add_argument("--work", type=Path, default=None, help="cache of prepared data, runs and checkpoints (default runs/bench_detection[_quick])")
    parser.add_argument("--out", type=Path, default=None, help="where the tables and plots go (default benchmarks/results, or --work for --quick)")
    parser.add_argument("--arch", choices=("fasterrcnn", "retinanet"), default="fasterrcnn", help="detector (default fasterrcnn)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--weights", default=None, help="weights folder for our synthesis: its shape/ and layer/ models (NoduleInpaint's additive default; default: the shipped ones); pin them for a run that spans a weights update")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stdout)
    for name in ("cxr_nodule_aug.train.common", "cxr_nodule_aug.train.detector"):
        logging.getLogger(name).setLevel(logging.WARNING)
    torch.set_num_threads(args.threads)
    preset_name = "quick" if args.quick else "full"
    preset = dict(PRESETS[preset_name])
    if args.seeds:
        preset["seeds"] = args.seeds
    preset["arch"] = args.arch
    suffix = "" if args.arch == "fasterrcnn" else f"_{args.arch}"
    stem = f"detection{suffix}"
    work = args.work or Path("runs") / (("bench_detection_quick" if args.quick else "bench_detection") + suffix)
    out = args.out or (work if args.quick else Path("benchmarks/results"))
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    train_root, test_root = ensure_exports(args, preset, work)
    with cpu_lock():
        prep = prepare(train_root, test_root, preset, work)
    table3: list[dict[str, Any]] = []
    for seed in preset["seeds"]:
        table3 += seed_stage(seed, train_root, prep, preset, work, None, args.weights)
    val_means = {f: np.mean([r["val"]["node21_score"] for r in table3 if r["fraction"] == f]) for f in FRACTIONS if f > 0}
    best = max(val_means, key=val_means.get)
    table4 = [r for r in table3 if r["fraction"] in (0, best)]
    for seed in preset["seeds"]:
        table4 += seed_stage(seed, train_root, prep, preset, work, best, args.weights)
    meta = {"preset": preset_name, **{k: v for k, v in preset.items() if k != "seeds"}, "seeds": preset["seeds"],
            "train_data": str(train_root), "test_data": str(test_root), "test_images": len(prep["test"]),
            "test_nodule_images": sum(1 for it in prep["test"] if len(it["boxes"])), "real_images": len(prep["real"]),
            "real_nodule_images": sum(1 for it in prep["real"] if len(it["boxes"])), "detector": {"fasterrcnn": "Faster R-CNN", "retinanet": "RetinaNet"}[args.arch] + ", EfficientNet-Lite0 FPN (ImageNet init), " + f"{preset['image_size']} px",
            "threads": args.threads, "synthesis_weights": args.weights or "shipped (weights/)", "wall_seconds": round(time.perf_counter() - t0, 1), "torch": torch.__version__}
    summary = summarize(table3, table4, best, preset["seeds"], out, meta, stem)
    plot_frocs(table4, out / f"{stem}_froc.png", best)
    hist = work / f"seed{preset['seeds'][0]}" / "missed_histogram.png"
    if hist.exists():
        (out / f"{stem}_missed_histogram.png").write_bytes(hist.read_bytes())
    print((out / f"{stem}.md").read_text())
    pv = summary["paired_vs_none"].get("hem")
    if pv:
        spread = summary["table4"]["none"]["node21_score"][1]
        print(f"HEM - none NODE21 score: {pv['node21_score'][0]:+.3f} ± {pv['node21_score'][1]:.3f} (paired over seeds); "
              f"seed spread (std) of no augmentation: {spread:.3f}; "
              f"{'larger' if pv['node21_score'][0] > max(spread, pv['node21_score'][1]) else 'not larger'} than the spread")
    if "paired_random_minus_hem" in summary:
        d = summary["paired_random_minus_hem"]["node21_score"]
        print(f"random - HEM NODE21 score: {d[0]:+.3f} ± {d[1]:.3f} (paired)")
    print(f"wall time {time.perf_counter() - t0:.0f} s; results in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
