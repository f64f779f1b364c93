"""Throughput of ``NoduleInpaint`` and of the paste-and-blend peer, per stage, against the
machine's matmul rate; and what the augmentation costs a detector's DataLoader.

    flock /tmp/cxr_cpu.lock .venv/bin/python benchmarks/throughput.py --device cpu --threads 2
    .venv/bin/python benchmarks/throughput.py --quick --out /tmp/throughput.json   # < 1 min

Every configuration runs in a fresh subprocess so that its peak resident memory
(``ru_maxrss``) is its own. Inputs: the real radiograph RG1_UNCR.dcm (``pydicom-data``, as
the README quickstart and tests/test_shipped.py use it), as float32 in [0, 1] resized to
S x S; no lung mask (the shipped lung model finds the lungs) unless the row says "lung mask
given". Models: the shipped ``weights/`` (``NoduleInpaint()``'s default). Nodule diameters:
5-30 mm uniform with the radiograph taken as 350 mm wide, so 15-88 px at 1024 px.

Per configuration:

* nodules/s over ``--repeats`` timed calls of the transform after warm-up, and the per-stage
  wall time of the same work run through the engine's public stages
  (``NoduleSynthesizer.working`` + ``lung_mask``, ``shapes``, ``functional.nodule_footprints``,
  ``functional.place_nodules``, ``cut``, ``compose`` (the texture network), ``paste``), each
  timed with ``time.perf_counter``; "other" is the transform's time minus the stages' (parsing,
  checks and writing the target back; two runs, so it carries their noise);
* the texture stage's achieved GFLOP/s (FLOPs counted by ``torch.utils.flop_counter`` on the
  very inputs it got; FFTs are not counted) and its ratio to a 2048^3 float32 matmul timed in
  the same process just before;
* peak RSS of the process.

The peer is ``PasteBlendInpainter`` (NODE21-generation-baseline style: a real nodule residual
resized into the hole and Poisson-blended) behind the same ``NoduleInpaint`` pipeline, so the
two differ only in the texture stage. Its residual bank is cut from the SimCXR export in
``data/simcxr_train`` when present (real projected nodules), else synthetic bumps (said in the
output).

The DataLoader row: a training step of the project's CPU detector (configs/detector-cpu.yaml:
Faster R-CNN, Lite0 FPN, 256 px, batch 4, AdamW) fed by a 2-worker DataLoader whose dataset
yields the 1024 px radiograph, with and without ``NoduleInpaint(p=0.5)`` before the detector's
input transform; the overhead is ``with / without - 1``. It runs twice: workers at normal
priority, and workers niced by ``LowPriorityWorkers`` (cxr_nodule_aug.datasets). Next to it,
one worker's single-thread CPU per sample, plain and augmented, gives the overhead the
augmentation would add if it cost only its own CPU time (the rest is contention).

The texture network alone: batch 1 / 4 / 8 of random patches, time, GFLOP/s against the
matmul, and the operators that take the time (torch.profiler), to show what bounds it; and the
same under ``torch.compile`` (inductor), with its compile time and its largest difference from
eager (``--no-compile`` skips it).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
FIELD_OF_VIEW_MM = 350.0
DIAMETERS_MM = (5.0, 30.0)
STAGES = ("lung", "shape", "size", "placement", "cut", "texture", "paste")

PRESETS = {
    "full": dict(sizes=[1024, 2048], nodules=[1, 4], repeats=20, warmup=3, batch_images=8, matmul_n=2048,
                 dl_image_size=1024, dl_batch=4, dl_warmup=3, dl_steps=20, dl_item_repeats=20, det_size=256,
                 profile_batches=[1, 4, 8], compile=True, compositions=["additive", "replace"]),
    "quick": dict(sizes=[256], nodules=[2], repeats=2, warmup=1, batch_images=2, matmul_n=512,
                  dl_image_size=256, dl_batch=2, dl_warmup=1, dl_steps=2, dl_item_repeats=2, det_size=128,
                 profile_batches=[1, 2], compile=False, compositions=["additive", "replace"]),
}
DL_NICENESS = 19  # the LowPriorityWorkers setting of the second DataLoader group
TARGETS = {"nodules_per_s": 20.0, "matmul_fraction": 0.5, "peak_rss_mb": 2048.0, "peer_speedup": 2.0, "dataloader_overhead": 0.15}


# -- child side ---------------------------------------------------------------------------------
def _sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def radiograph(size: int):
    """RG1_UNCR as a (1, size, size) float32 image in [0, 1]."""
    import importlib.resources

    import torch
    import torch.nn.functional as F

    from cxr_nodule_aug.io import read_image

    raw = read_image(importlib.resources.files("data_store") / "data" / "RG1_UNCR.dcm").to_tensor().as_subclass(torch.Tensor).float()
    raw = (raw - raw.min()) / (raw.max() - raw.min())
    mode = "area" if size <= min(raw.shape[-2:]) else "bilinear"
    return F.interpolate(raw[None], size=(size, size), mode=mode)[0].clamp_(0, 1).contiguous()


def empty_target(size: int) -> dict:
    import torch
    from torchvision import tv_tensors

    return {"boxes": tv_tensors.BoundingBoxes(torch.zeros(0, 4), format="XYXY", canvas_size=(size, size)), "labels": torch.zeros(0, dtype=torch.int64)}


def peer_bank(patch_size: int, max_fill: float, limit: int = 64):
    """(residuals, masks, source): nodule residuals for PasteBlendInpainter."""
    import torch
    import torch.nn.functional as F

    data = ROOT / "data" / "simcxr_train"
    if (data / "pairs").is_dir():
        from cxr_nodule_aug.datasets import SimCXRDataset
        from cxr_nodule_aug.functional.intensity import to_working

        ds = SimCXRDataset(data, subset="nodule", return_pair=True)
        res, msk = [], []
        for i in range(len(ds)):
            image, target = ds[i]
            image = image.as_subclass(torch.Tensor)
            _, lo, hi = to_working(image)
            diff = (image.float() - target["image_nodule_free"].as_subclass(torch.Tensor).float()).mean(0) / (hi - lo)
            for m in target["masks"].as_subclass(torch.Tensor).bool():
                if not m.any():
                    continue
                ys, xs = torch.nonzero(m, as_tuple=True)
                cy, cx = (int(ys.min()) + int(ys.max())) // 2, (int(xs.min()) + int(xs.max())) // 2
                half = max(int(ys.max() - ys.min()), int(xs.max() - xs.min())) + 2
                y0, x0 = max(cy - half, 0), max(cx - half, 0)
                crop = (diff * m)[y0 : cy + half, x0 : cx + half]
                mcrop = m[y0 : cy + half, x0 : cx + half].float()
                res.append(F.interpolate(crop[None, None], size=(patch_size, patch_size), mode="bilinear", align_corners=False)[0])
                msk.append((F.interpolate(mcrop[None, None], size=(patch_size, patch_size), mode="bilinear", align_corners=False)[0] > 0.5).float())
                if len(res) >= limit:
                    return torch.stack(res), torch.stack(msk), f"SimCXR residuals ({data.relative_to(ROOT)}, {len(res)} nodules)"
        if res:
            return torch.stack(res), torch.stack(msk), f"SimCXR residuals ({data.relative_to(ROOT)}, {len(res)} nodules)"
    g = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.arange(patch_size), torch.arange(patch_size), indexing="ij")
    c = (patch_size - 1) / 2
    radius = patch_size * max_fill / 2 * (0.6 + 0.4 * torch.rand(limit, generator=g))
    r2 = ((yy - c) ** 2 + (xx - c) ** 2)[None].float()
    masks = (r2 <= radius[:, None, None] ** 2).float()[:, None]
    residuals = 0.08 * torch.exp(-r2 / (2 * (radius[:, None, None] / 2) ** 2))[:, None] * masks
    return residuals, masks, "synthetic Gaussian bumps (no SimCXR export in data/simcxr_train)"


def matmul_gflops(n: int, device) -> float:
    import torch

    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    times = []
    for _ in range(12):
        _sync(device)
        t0 = time.perf_counter()
        a @ b
        _sync(device)
        times.append(time.perf_counter() - t0)
    times = sorted(times[2:])
    return 2 * n**3 / times[len(times) // 2] / 1e9


class StageTimer:
    """Runs one augmentation step through the engine's public stages, each timed with
    perf_counter: what ``NoduleInpaint`` does per call, stage by stage (no patching)."""

    def __init__(self, tf, cfg: dict, device) -> None:
        import torch

        self.tf, self.synth, self.device = tf, tf.synthesizer, device
        self.generator = torch.Generator().manual_seed(cfg["seed"] + 1)
        self.spacing_mm = FIELD_OF_VIEW_MM / cfg["size"]
        self.nodules = cfg["nodules"]
        self.seconds = dict.fromkeys(STAGES, 0.0)
        self.texture_inputs: list[tuple] = []
        self.record_inputs = False

    def reset(self) -> None:
        self.seconds = dict.fromkeys(STAGES, 0.0)
        self.texture_inputs = []

    def _timed(self, stage: str, call):
        _sync(self.device)
        t0 = time.perf_counter()
        out = call()
        _sync(self.device)
        self.seconds[stage] += time.perf_counter() - t0
        return out

    def step(self, samples) -> int:
        """The stages for ``samples`` [(image, target), ...], one texture call for all;
        returns the number of nodules inserted. Draws as NoduleInpaint draws (diameters from
        its sampler, fresh shape seeds: the shape cache helps no more than it does online)."""
        import torch

        from cxr_nodule_aug.functional import nodule_footprints, place_nodules
        from cxr_nodule_aug.records import NoduleRecord
        from cxr_nodule_aug.samplers.base import draw

        tf, synth, g = self.tf, self.synth, self.generator
        texture = synth.texture_model
        cuts, records = [], []
        for image, target in samples:
            image = image.as_subclass(torch.Tensor)
            sizes = draw(tf.diameters, self.nodules, g, "diameters")
            diameters = [round(d / self.spacing_mm, 4) for d in sizes.tolist()]
            seeds = torch.randint(0, 2**62, (self.nodules,), generator=g).tolist()
            if "lung_mask" in target:
                lung = target["lung_mask"].as_subclass(torch.Tensor).to(self.device)
                working = synth.working(image)  # (outside the stages, as in NoduleInpaint's "other")
            else:
                working = self._timed("lung", lambda: synth.working(image))
                lung = self._timed("lung", lambda: synth.lung_mask(image, working=working))
            shapes = self._timed("shape", lambda: synth.shapes(seeds, device=self.device))
            fps = self._timed("size", lambda: nodule_footprints(shapes, diameters, texture.patch_size, texture.max_fill))
            centres = self._timed("placement", lambda: place_nodules(lung, fps, tf.existing_boxes_xyxy(target), gap_px=tf.gap_px, generator=g))
            densities = tf.density(self.nodules, generator=g) if tf.density is not None else [None] * self.nodules
            recs = [NoduleRecord(center_xy=c, diameter_px=d, seed=s, density=dn) for c, d, s, dn in zip(centres, diameters, seeds, densities)]
            cuts.append(self._timed("cut", lambda: synth.cut(image, recs, footprints=fps, working=working)))
            records.append(recs)
        if self.record_inputs:
            self.texture_inputs.append((torch.cat([c.patches for c in cuts]), torch.cat([c.holes for c in cuts])))
        changes = self._timed("texture", lambda: synth.compose(cuts, records))
        self._timed("paste", lambda: [synth.paste(c, r, ch) for c, r, ch in zip(cuts, records, changes)])
        return sum(len(r) for r in records)


def counted_flops(model, inputs) -> int:
    """FLOPs of the texture (or layer) model on the recorded (patches, holes) batches (not timed)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from cxr_nodule_aug.models.layer import LayerGenerator

    layer = isinstance(getattr(model, "_orig_mod", model), LayerGenerator)
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        for patches, holes in inputs:
            dtype = next(model.parameters()).dtype
            if layer:  # the condition's value does not change the FLOPs
                model(patches.to(dtype), holes.to(dtype), ["solid"] * len(patches))
            else:
                model(patches.to(dtype), holes)
    return counter.get_total_flops()


def child_insert(cfg: dict) -> dict:
    import torch

    from cxr_nodule_aug import NoduleInpaint
    from cxr_nodule_aug.baselines import PasteBlendInpainter
    from cxr_nodule_aug.models.texture import TextureGenerator
    from cxr_nodule_aug.hub import default_weights_dir

    device = torch.device(cfg["device"])
    size, n, images = cfg["size"], cfg["nodules"], cfg["images"]
    extra = {}
    texture_model = None
    if cfg["method"] == "peer":
        shipped = TextureGenerator.from_pretrained(default_weights_dir() / "texture")
        residuals, masks, source = peer_bank(shipped.patch_size, shipped.max_fill)
        texture_model = PasteBlendInpainter(residuals, masks, patch_size=shipped.patch_size, max_fill=shipped.max_fill, strength=0.5)
        extra["peer_bank"] = source
    tf = NoduleInpaint(diameters=DIAMETERS_MM, unit="mm", pixel_spacing_mm=FIELD_OF_VIEW_MM / size, num_nodules=n, p=1.0,
                       texture_model=texture_model, generator=torch.Generator().manual_seed(cfg["seed"]), device=device,
                       compile_texture=cfg.get("compile", False), composition=cfg.get("composition"))
    from torchvision import tv_tensors

    image = tv_tensors.Image(radiograph(size).to(device))
    target = empty_target(size)
    if cfg["lung"] == "given":
        target["lung_mask"] = tv_tensors.Mask(tf.synthesizer.lung_mask(image))
    samples = [(image, target)] * images
    timer = StageTimer(tf, cfg, device)

    def step():
        return tf.batch(samples) if images > 1 else [tf(image, target)]

    # The transform end to end: nodules/s and ms/image.
    for _ in range(cfg["warmup"]):
        step()
    gflops_matmul = matmul_gflops(cfg["matmul_n"], device)
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(cfg["repeats"]):
        out = step()
    _sync(device)
    total = time.perf_counter() - t0
    inserted = sum(len(o[1]["nodules"]) for o in out) * cfg["repeats"]
    # The same work through the engine's public stages, each timed; "other" is what the
    # transform adds (parsing, checks, writing the target back), by difference.
    for _ in range(cfg["warmup"]):
        timer.step(samples)
    timer.reset()
    timer.record_inputs = True
    staged_inserted = sum(timer.step(samples) for _ in range(cfg["repeats"]))
    timer.record_inputs = False
    seconds = dict(timer.seconds)
    flops = counted_flops(tf.texture_model, timer.texture_inputs)  # of the timed texture stage
    per_image = cfg["repeats"] * images
    stages_ms = {k: 1000 * v / per_image for k, v in seconds.items()}
    stages_ms["other"] = 1000 * total / per_image - sum(stages_ms.values())
    texture_gflops = flops / seconds["texture"] / 1e9 if seconds["texture"] > 0 else 0.0
    return {
        **cfg, **extra,
        "nodules_per_s": inserted / total,
        "ms_per_image": 1000 * total / per_image,
        "stages_ms_per_image": stages_ms,
        "texture_gflop_per_nodule": flops / staged_inserted / 1e9,
        "texture_gflops": texture_gflops,
        "matmul_gflops": gflops_matmul,
        "matmul_fraction": texture_gflops / gflops_matmul,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


class _DetectionSet:
    """The same radiograph as a detector sample: optional augmentation at full resolution, then
    the detector's input transform (window + resize), as a training pipeline would do."""

    def __init__(self, image, length: int, augment, to_input, lung=None) -> None:
        self.image, self.length, self.augment, self.to_input, self.lung = image, length, augment, to_input, lung

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, idx: int):
        from torchvision import tv_tensors

        image, target = tv_tensors.Image(self.image), empty_target(self.image.shape[-1])
        if self.lung is not None:
            target["lung_mask"] = tv_tensors.Mask(self.lung)
        if self.augment is not None:
            image, target = self.augment(image, target)
        return self.to_input(image, target)


def build_detector(size: int):
    """The project's CPU detector (configs/detector-cpu.yaml: Faster R-CNN, Lite0 FPN), random
    init (the ImageNet start changes no timing); torchvision's MobileNet one if it is absent."""
    import torch

    torch.manual_seed(0)
    try:
        from cxr_nodule_aug.detection import NoduleDetector, ToDetectorInput, detection_collate
    except ImportError:
        from torchvision.models.detection import fasterrcnn_mobilenet_v3_large_fpn
        from torchvision.transforms import v2

        model = fasterrcnn_mobilenet_v3_large_fpn(weights=None, weights_backbone=None, num_classes=2, min_size=size, max_size=size)
        return model, v2.Resize((size, size)), _collate, "torchvision fasterrcnn_mobilenet_v3_large_fpn (cxr_nodule_aug.detection absent)"
    model = NoduleDetector(arch="fasterrcnn", backbone="lite0", image_size=size, anchor_size=8, fpn_channels=64, box_head_width=256)
    return model, ToDetectorInput(size), detection_collate, f"NoduleDetector(fasterrcnn, lite0, image_size={size}) as configs/detector-cpu.yaml"


def _collate(batch):
    images, targets = zip(*batch)
    return [im.expand(3, -1, -1) for im in images], [{"boxes": t["boxes"].float(), "labels": t["labels"]} for t in targets]


def _item_cpu_ms(dataset, repeats: int) -> float:
    """Single-thread milliseconds of CPU per ``dataset[0]`` (what one loader worker spends)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # DataLoader workers run with one thread
    try:
        dataset[0]
        t0 = time.process_time()
        for _ in range(repeats):
            dataset[0]
        return 1000 * (time.process_time() - t0) / repeats
    finally:
        torch.set_num_threads(threads)


def child_dataloader(cfg: dict) -> dict:
    import torch
    from torch.utils.data import DataLoader

    from cxr_nodule_aug import NoduleInpaint
    from cxr_nodule_aug.datasets import LowPriorityWorkers

    size = cfg["dl_image_size"]
    image = radiograph(size)
    augment = NoduleInpaint(diameters=DIAMETERS_MM, unit="mm", pixel_spacing_mm=FIELD_OF_VIEW_MM / size, num_nodules=(1, 3), p=0.5)
    model, to_input, collate, detector = build_detector(cfg["det_size"])
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4)
    result = {**cfg, "detector": detector, "niceness": DL_NICENESS}
    lung = augment.synthesizer.lung_mask(image)
    conditions = (("without", None, None), ("with", augment, None), ("with_lung_mask_given", augment, lung))
    # What one worker spends on a sample, single-threaded: the CPU the augmentation takes from
    # training; an augmented sample (p=1) against a plain one.
    always = NoduleInpaint(diameters=DIAMETERS_MM, unit="mm", pixel_spacing_mm=FIELD_OF_VIEW_MM / size, num_nodules=(1, 3), p=1.0,
                           generator=torch.Generator().manual_seed(cfg["seed"]))
    for label, aug, given in (("without", None, None), ("augmented", always, None), ("augmented_lung_mask_given", always, lung)):
        result[f"item_cpu_ms_{label}"] = _item_cpu_ms(_DetectionSet(image, 1, aug, to_input, given), cfg["dl_item_repeats"])
    for priority, init in (("", None), ("_low_priority", LowPriorityWorkers(DL_NICENESS))):
        for label, aug, given in conditions:
            torch.manual_seed(cfg["seed"])
            loader = DataLoader(_DetectionSet(image, cfg["dl_images"], aug, to_input, given), batch_size=cfg["dl_batch"], num_workers=2,
                                collate_fn=collate, worker_init_fn=init)
            steps, t0 = 0, None
            for i, (images, targets) in enumerate(loader):
                if i == cfg["dl_warmup"]:
                    t0 = time.perf_counter()
                loss = sum(model(images, targets).values())
                opt.zero_grad()
                loss.backward()
                opt.step()
                if t0 is not None:
                    steps += 1
                if steps == cfg["dl_steps"]:
                    break
            result[f"step_s_{label}{priority}"] = (time.perf_counter() - t0) / steps
            del loader
        result[f"overhead{priority}"] = result[f"step_s_with{priority}"] / result[f"step_s_without{priority}"] - 1
        result[f"overhead_lung_mask_given{priority}"] = result[f"step_s_with_lung_mask_given{priority}"] / result[f"step_s_without{priority}"] - 1
    # The share of the step's CPU the augmentation needs if nothing else were lost: p * batch
    # augmented samples' extra single-thread CPU over (threads x the plain step's wall time).
    cpu_step = cfg["threads"] * result["step_s_without"] * 1000
    for label in ("augmented", "augmented_lung_mask_given"):
        extra = result[f"item_cpu_ms_{label}"] - result["item_cpu_ms_without"]
        result[f"cpu_share_{label}"] = 0.5 * cfg["dl_batch"] * extra / cpu_step
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


def _mean_seconds(call, repeats: int, device, warmup: int = 3) -> float:
    for _ in range(warmup):
        call()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(repeats):
        call()
    _sync(device)
    return (time.perf_counter() - t0) / repeats


def child_texture_profile(cfg: dict) -> dict:
    """The shipped texture network alone on random patches, batch 1 / 4 / 8: time, GFLOP/s
    against the matmul, and where the time goes (torch.profiler self CPU time by operator)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from cxr_nodule_aug.hub import default_weights_dir
    from cxr_nodule_aug.models.texture import TextureGenerator

    device = torch.device(cfg["device"])
    model = TextureGenerator.from_pretrained(default_weights_dir() / "texture").eval().to(device)
    P = model.patch_size
    g = torch.Generator().manual_seed(cfg["seed"])
    mm = matmul_gflops(cfg["matmul_n"], device)
    out = {**cfg, "matmul_gflops": mm, "patch_size": P, "batches": []}
    compiled = torch.compile(model) if cfg.get("compile") else None  # inductor; recompiles per new batch size
    for B in cfg["profile_batches"]:
        patches = torch.rand(B, 1, P, P, generator=g).to(device)
        holes = torch.zeros(B, 1, P, P, device=device)
        holes[:, :, P // 4 : 3 * P // 4, P // 4 : 3 * P // 4] = 1
        flops = counted_flops(model, [(patches, holes)])
        with torch.inference_mode():
            seconds = _mean_seconds(lambda: model(patches, holes), cfg["repeats"], device)
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                for _ in range(3):
                    model(patches, holes)
        extra = {}
        if compiled is not None:
            with torch.inference_mode():
                reference = model(patches, holes).fine
                t0 = time.perf_counter()
                first = compiled(patches, holes).fine
                extra["compile_s"] = time.perf_counter() - t0
                extra["compiled_max_abs_diff"] = float((first - reference).abs().max())
                extra["compiled_ms"] = 1000 * _mean_seconds(lambda: compiled(patches, holes), cfg["repeats"], device)
                extra["compiled_matmul_fraction"] = flops / (extra["compiled_ms"] / 1000) / 1e9 / mm
        ops = {}
        for e in prof.key_averages():
            ops[e.key] = ops.get(e.key, 0.0) + e.self_cpu_time_total
        total = sum(ops.values())
        top = sorted(ops.items(), key=lambda kv: -kv[1])[:6]
        out["batches"].append({
            "batch": B, "ms": 1000 * seconds, "gflop": flops / 1e9, "gflops": flops / seconds / 1e9,
            "matmul_fraction": flops / seconds / 1e9 / mm, "calls_per_forward": sum(e.count for e in prof.key_averages()) / 3,
            "top_ops": [{"op": k, "share": v / total} for k, v in top], **extra,
        })
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def child_main(cfg: dict) -> None:
    import torch

    torch.set_num_threads(cfg["threads"])
    kinds = {"dataloader": child_dataloader, "texture_profile": child_texture_profile, "insert": child_insert}
    out = kinds[cfg["kind"]](cfg)
    print("RESULT " + json.dumps(out), flush=True)


# -- parent side --------------------------------------------------------------------------------
def cpu_busy_fraction(seconds: float = 2.0) -> float | None:
    """Fraction of all CPUs busy over ``seconds`` (from /proc/stat), before a run: anything
    well above 0 means another process is competing and the timings are not clean."""
    def read():
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:]]
        idle = values[3] + values[4]
        return sum(values) - idle, sum(values)

    try:
        busy0, total0 = read()
        time.sleep(seconds)
        busy1, total1 = read()
    except OSError:
        return None
    return round((busy1 - busy0) / max(total1 - total0, 1), 3)


def run_child(cfg: dict) -> dict:
    import tempfile

    env = dict(os.environ, OMP_NUM_THREADS=str(cfg["threads"]), MKL_NUM_THREADS=str(cfg["threads"]))
    with tempfile.TemporaryDirectory(prefix="cxr_inductor_") as cache:
        env["TORCHINDUCTOR_CACHE_DIR"] = cache  # torch.compile timings start from a cold cache
        proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(cfg)], capture_output=True, text=True, env=env, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"configuration {cfg} failed:\n{proc.stderr[-4000:]}")
    line = next(ln for ln in proc.stdout.splitlines()[::-1] if ln.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def method_label(r: dict) -> str:
    if r["method"] == "peer":
        return "paste-and-blend"
    return f"NoduleInpaint ({r.get('composition') or 'replace'})"  # rows before issue 13 ran the replace mode


def row_label(r: dict) -> str:
    label = f"{r['size']}px, {r['nodules']}/img"
    if r["images"] > 1:
        label += f", batch() of {r['images']}"
    if r["lung"] == "given":
        label += ", lung mask given"
    if r.get("compile"):
        label += ", compile_texture"
    return label


def configurations(p: dict, args) -> list[dict]:
    base = {"kind": "insert", "device": args.device, "threads": args.threads, "seed": args.seed, "repeats": p["repeats"], "warmup": p["warmup"], "matmul_n": p["matmul_n"], "images": 1, "lung": "model"}
    cfgs = []
    for size in p["sizes"]:
        for n in p["nodules"]:
            for composition in p["compositions"]:  # issue 13: the additive default next to the paper's replace
                cfgs.append({**base, "method": "ours", "composition": composition, "size": size, "nodules": n})
            if p.get("peer", True):
                cfgs.append({**base, "method": "peer", "size": size, "nodules": n})
    if p.get("insert_only"):
        return cfgs
    base = {**base, "composition": p["compositions"][0]}
    small, most = p["sizes"][0], p["nodules"][-1]
    cfgs.append({**base, "method": "ours", "size": small, "nodules": p["nodules"][0], "lung": "given"})
    batched = {**base, "method": "ours", "size": small, "nodules": most, "images": p["batch_images"], "repeats": max(1, p["repeats"] // p["batch_images"] * 2)}
    cfgs.append(batched)
    if p["compile"] and not args.no_compile:  # the same rows with the texture network compiled (warm-up compiles)
        cfgs.append({**base, "method": "ours", "size": small, "nodules": p["nodules"][0], "compile": True})
        cfgs.append({**batched, "compile": True})
    return cfgs


def markdown(result: dict) -> str:
    lines = [
        f"# NoduleInpaint throughput ({result['preset']} preset, {result['device']}, {result['threads']} threads)",
        "",
        f"Command: `{result['command']}`. Machine: {result['machine']}; CPUs busy with other work just before / after the run: {result['cpu_busy_before']} / {result['cpu_busy_after']} (fraction; load average {result['loadavg_before'][0]} / {result['loadavg_after'][0]}).",
        f"Radiograph RG1_UNCR (float32, resized), shipped weights, diameters {DIAMETERS_MM[0]:g}-{DIAMETERS_MM[1]:g} mm "
        f"({FIELD_OF_VIEW_MM:g} mm field of view). Stage times in ms per image. Peer residual bank: {result['peer_bank']}.",
        "",
        "| config | method | nodules/s | ms/image | " + " | ".join(STAGES) + " | other | texture GFLOP/nodule | texture GFLOP/s | % of matmul | peak RSS MB |",
        "|---|---|---:|---:|" + "---:|" * len(STAGES) + "---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        s = r["stages_ms_per_image"]
        lines.append(
            f"| {row_label(r)} | {method_label(r)} | {r['nodules_per_s']:.1f} | {r['ms_per_image']:.1f} | "
            + " | ".join(f"{s[k]:.1f}" for k in STAGES)
            + f" | {s['other']:.1f} | {r['texture_gflop_per_nodule']:.3f} | {r['texture_gflops']:.1f} | {100 * r['matmul_fraction']:.0f}% | {r['peak_rss_mb']:.0f} |"
        )
    d = result.get("dataloader")
    lines += [
        "",
        f"Matmul ({result['matmul_n']}^3 float32, same processes): {min(r['matmul_gflops'] for r in result['rows']):.0f}-{max(r['matmul_gflops'] for r in result['rows']):.0f} GFLOP/s.",
        "",
    ]
    tp = result.get("texture_profile")
    if tp:
        lines += [
            f"## The texture network alone ({tp['patch_size']} px patches, matmul {tp['matmul_gflops']:.0f} GFLOP/s in the same process)",
            "",
            "| batch | ms | GFLOP | GFLOP/s | % of matmul | torch.compile: ms (% of matmul; compile s; max abs diff) | operator calls per forward | where the time goes (torch.profiler, self CPU) |",
            "|---:|---:|---:|---:|---:|---|---:|---|",
        ]
        for b in tp["batches"]:
            ops = ", ".join(f"{o['op']} {100 * o['share']:.0f}%" for o in b["top_ops"])
            comp = (f"{b['compiled_ms']:.1f} ({100 * b['compiled_matmul_fraction']:.0f}%; {b['compile_s']:.0f} s; {b['compiled_max_abs_diff']:.1e})"
                    if "compiled_ms" in b else "not run")
            lines.append(f"| {b['batch']} | {b['ms']:.1f} | {b['gflop']:.2f} | {b['gflops']:.0f} | {100 * b['matmul_fraction']:.0f}% | {comp} | {b['calls_per_forward']:.0f} | {ops} |")
        lines.append("")
    if d is None:
        lines += ["The texture-network profile and the DataLoader runs were skipped (`--insert-only`).", ""]
    lines += [] if d is None else [
        "## DataLoader",
        "",
        f"{d['detector']}; radiograph {d['dl_image_size']} px augmented at full size, then resized to {d['det_size']} px; batch {d['dl_batch']}, "
        f"2 workers, AdamW, {d['threads']} training threads; {d['dl_steps']} timed steps after {d['dl_warmup']}. NoduleInpaint(p=0.5, 1-3 nodules).",
        "",
        "| workers | s/step without | s/step with | overhead | s/step with, lung mask given | overhead |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for priority, name in () if d is None else (("", "normal priority"), ("_low_priority", f"`LowPriorityWorkers({d['niceness']})`")):
        lines.append(f"| {name} | {d['step_s_without' + priority]:.3f} | {d['step_s_with' + priority]:.3f} | {100 * d['overhead' + priority]:.1f}% | "
                     f"{d['step_s_with_lung_mask_given' + priority]:.3f} | {100 * d['overhead_lung_mask_given' + priority]:.1f}% |")
    lines += [] if d is None else [
        "",
        f"One worker's CPU per sample (single thread): {d['item_cpu_ms_without']:.1f} ms plain, {d['item_cpu_ms_augmented']:.1f} ms augmented "
        f"(1-3 nodules, lung model), {d['item_cpu_ms_augmented_lung_mask_given']:.1f} ms augmented with the lung mask given. At p=0.5 that is "
        f"{100 * d['cpu_share_augmented']:.1f}% ({100 * d['cpu_share_augmented_lung_mask_given']:.1f}% with the mask) of the CPU time of a plain "
        "step: the overhead if the augmentation cost nothing but its own CPU time. Anything measured above that is contention: workers at "
        "normal priority preempt training threads, and the other training thread waits for the preempted one.",
    ]
    lines += [
        "",
        "## Targets",
        "",
    ]
    lines += [f"- {t['name']}: {t['value']} ({'met' if t['met'] else 'NOT met'})" for t in result["targets"]]
    return "\n".join(lines) + "\n"


def evaluate_targets(result: dict) -> list[dict]:
    rows = result["rows"]
    out = []
    size = 1024 if any(r["size"] == 1024 for r in rows) else rows[0]["size"]
    for r in rows:
        if r["method"] == "ours" and r["size"] == size and r["images"] == 1:
            out.append({"name": f">= {TARGETS['nodules_per_s']:g} nodules/s, {method_label(r)}, {row_label(r)}", "value": f"{r['nodules_per_s']:.1f} nodules/s", "met": r["nodules_per_s"] >= TARGETS["nodules_per_s"]})
    ours = [r for r in rows if r["method"] == "ours" and not r.get("compile")]
    goal = f"texture network >= {100 * TARGETS['matmul_fraction']:.0f}% of the same-run matmul GFLOP/s"
    for kind, group in (("eager", ours), ("compile_texture", [r for r in rows if r.get("compile")])):
        if group:
            best, worst = max(r["matmul_fraction"] for r in group), min(r["matmul_fraction"] for r in group)
            out.append({"name": f"{goal}, inside NoduleInpaint ({kind})", "value": f"{100 * worst:.0f}-{100 * best:.0f}% across rows", "met": best >= TARGETS["matmul_fraction"]})
    for b in result.get("texture_profile", {}).get("batches", []):
        out.append({"name": f"{goal}, alone, batch {b['batch']}", "value": f"{100 * b['matmul_fraction']:.0f}%", "met": b["matmul_fraction"] >= TARGETS["matmul_fraction"]})
        if "compiled_ms" in b:
            out.append({"name": f"{goal}, alone, batch {b['batch']}, torch.compile", "value": f"{100 * b['compiled_matmul_fraction']:.0f}%",
                        "met": b["compiled_matmul_fraction"] >= TARGETS["matmul_fraction"]})
    for r in rows:  # issue 13 item 5: the additive default no slower than replace, same run, same configuration
        if r["method"] == "ours" and r.get("composition") == "additive" and not r.get("compile"):
            same = [o for o in ours if o.get("composition") == "replace" and all(o[k] == r[k] for k in ("size", "nodules", "images", "lung"))]
            if same:
                out.append({"name": f"additive nodules/s >= replace's, {row_label(r)}", "value": f"{r['nodules_per_s']:.1f} vs {same[0]['nodules_per_s']:.1f}",
                            "met": r["nodules_per_s"] >= same[0]["nodules_per_s"]})
    rss = max(r["peak_rss_mb"] for r in rows + [result.get("dataloader", {"peak_rss_mb": 0}), result.get("texture_profile", {"peak_rss_mb": 0})])
    out.append({"name": f"peak RSS < {TARGETS['peak_rss_mb']:.0f} MB", "value": f"max {rss:.0f} MB", "met": rss < TARGETS["peak_rss_mb"]})
    for r in rows:
        if r["method"] != "peer":
            continue
        mine = [o for o in ours if o["size"] == r["size"] and o["nodules"] == r["nodules"] and o["images"] == 1 and o["lung"] == "model"]
        mine = next((o for o in mine if o.get("composition") == "additive"), mine[0])  # the default's row where there is one
        ratio = mine["nodules_per_s"] / r["nodules_per_s"]
        out.append({"name": f">= {TARGETS['peer_speedup']:g}x the peer's nodules/s, {row_label(r)}", "value": f"{ratio:.2f}x", "met": ratio >= TARGETS["peer_speedup"]})
    d = result.get("dataloader")
    if d is None:
        return out
    for key, name in (("overhead", "normal-priority workers, lung model"), ("overhead_lung_mask_given", "normal-priority workers, lung mask given"),
                      ("overhead_low_priority", f"LowPriorityWorkers({d['niceness']}), lung model"),
                      ("overhead_lung_mask_given_low_priority", f"LowPriorityWorkers({d['niceness']}), lung mask given")):
        out.append({"name": f"DataLoader overhead of NoduleInpaint(p=0.5) <= {100 * TARGETS['dataloader_overhead']:.0f}% of a detector step, {name}",
                    "value": f"{100 * d[key]:.1f}%", "met": d[key] <= TARGETS["dataloader_overhead"]})
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny smoke preset (256 px, 2 repeats; < 1 min)")
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--threads", type=int, default=2, help="torch/OMP threads per process")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="JSON path (default benchmarks/results/throughput_<device>.json; a .md is written next to it)")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile timing of the texture network (~15 s of compiling per batch size)")
    ap.add_argument("--render", default=None, metavar="JSON", help="rewrite the targets and the .md of an existing result JSON (no measuring)")
    ap.add_argument("--sizes", type=int, nargs="+", default=None, help="radiograph sizes of the insertion rows (default: the preset's)")
    ap.add_argument("--nodules", type=int, nargs="+", default=None, help="nodules per image of the insertion rows (default: the preset's)")
    ap.add_argument("--compositions", nargs="+", choices=("additive", "replace"), default=None,
                    help="composition modes of the insertion rows (default: additive and replace)")
    ap.add_argument("--insert-only", action="store_true", help="only the per-size insertion rows (no lung-given/batch/compile rows, texture profile or DataLoader)")
    ap.add_argument("--no-peer", action="store_true", help="skip the paste-and-blend peer rows")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child is not None:
        child_main(json.loads(args.child))
        return 0
    if args.render is not None:
        path = Path(args.render)
        result = json.loads(path.read_text())
        result["targets"] = evaluate_targets(result)
        path.write_text(json.dumps(result, indent=1) + "\n")
        path.with_suffix(".md").write_text(markdown(result))
        print(f"rewrote {path} and {path.with_suffix('.md')}")
        return 0
    preset = "quick" if args.quick else "full"
    out = Path(args.out) if args.out else RESULTS / f"throughput_{args.device}.json"
    if args.quick and out.resolve().parent == RESULTS.resolve():
        ap.error("--quick results are a smoke test: pass --out outside benchmarks/results")
    p = dict(PRESETS[preset])
    for key in ("sizes", "nodules", "compositions"):
        if getattr(args, key) is not None:
            p[key] = getattr(args, key)
    p["insert_only"], p["peer"] = args.insert_only, not args.no_peer
    result = {
        "preset": preset, "device": args.device, "threads": args.threads,
        "command": " ".join(["python", "benchmarks/throughput.py", *(argv if argv is not None else sys.argv[1:])]),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.processor() or platform.platform()}",
        "loadavg_before": [round(x, 2) for x in os.getloadavg()], "cpu_busy_before": cpu_busy_fraction(), "matmul_n": p["matmul_n"], "rows": [],
    }
    if args.device == "cuda":
        import torch

        result["machine"] += f", {torch.cuda.get_device_name()}"
    for cfg in configurations(p, args):
        row = run_child(cfg)
        result["rows"].append(row)
        print(f"{row_label(row):40s} {method_label(row):24s} {row['nodules_per_s']:7.1f} nodules/s  {row['ms_per_image']:7.1f} ms/image  "
              f"texture {100 * row['matmul_fraction']:3.0f}% of matmul  RSS {row['peak_rss_mb']:.0f} MB", flush=True)
    result["peer_bank"] = next((r["peer_bank"] for r in result["rows"] if r["method"] == "peer"), "not run")
    result["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    result["cpu_busy_after"] = cpu_busy_fraction()
    if args.insert_only:
        return _finish(result, out)
    prof = {"kind": "texture_profile", "device": args.device, "threads": args.threads, "seed": args.seed, "repeats": p["repeats"],
            "matmul_n": p["matmul_n"], "profile_batches": p["profile_batches"], "compile": p["compile"] and not args.no_compile}
    result["texture_profile"] = run_child(prof)
    for b in result["texture_profile"]["batches"]:
        print(f"texture network alone, batch {b['batch']}: {b['ms']:.1f} ms, {b['gflops']:.0f} GFLOP/s = {100 * b['matmul_fraction']:.0f}% of matmul; "
              f"top ops: " + ", ".join(f"{o['op']} {100 * o['share']:.0f}%" for o in b["top_ops"][:3]), flush=True)
    dl = {"kind": "dataloader", "device": "cpu", "threads": args.threads, "seed": args.seed, **{k: v for k, v in p.items() if k.startswith(("dl_", "det_"))}}
    dl["dl_images"] = dl["dl_batch"] * (dl["dl_warmup"] + dl["dl_steps"])
    result["dataloader"] = run_child(dl)
    d = result["dataloader"]
    for priority, name in (("", "normal priority"), ("_low_priority", f"workers at nice +{d['niceness']}")):
        print(f"DataLoader ({name}): {d['step_s_without' + priority]:.3f} s/step without, {d['step_s_with' + priority]:.3f} s/step with "
              f"(overhead {100 * d['overhead' + priority]:.1f}%; {100 * d['overhead_lung_mask_given' + priority]:.1f}% with the lung mask given)", flush=True)
    print(f"  one worker's CPU per sample: {d['item_cpu_ms_without']:.1f} ms plain, {d['item_cpu_ms_augmented']:.1f} ms augmented, "
          f"{d['item_cpu_ms_augmented_lung_mask_given']:.1f} ms augmented with the lung mask given [{d['detector']}]", flush=True)
    result["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    result["cpu_busy_after"] = cpu_busy_fraction()
    return _finish(result, out)


def _finish(result: dict, out: Path) -> int:
    result["targets"] = evaluate_targets(result)
    busy = [b for b in (result["cpu_busy_before"], result["cpu_busy_after"]) if b is not None]
    if busy and max(busy) > 0.2:
        print(f"\nWARNING: {100 * max(busy):.0f}% of the CPUs were busy with other work just before/after the run: timings are not clean.")
    print("\nTargets:")
    for t in result["targets"]:
        print(f"  [{'met' if t['met'] else 'NOT met'}] {t['name']}: {t['value']}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    out.with_suffix(".md").write_text(markdown(result))
    print(f"wrote {out} and {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
