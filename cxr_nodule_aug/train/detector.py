"""``cxr-nodule-aug train detector``: a nodule detector, with or without synthesized nodules.

Every sample goes: dataset -> (``NoduleInpaint`` online, when ``augment_p > 0``) ->
:class:`~cxr_nodule_aug.detection.ToDetectorInput` (window, resize) -> random shift and
horizontal flip (the paper's augmentation) -> ``SanitizeBoundingBoxes``. Pre-synthesized sets
(``synth=``: comma-separated roots, each ``kind:path`` or a bare path of the same kind as
``dataset``; e.g. ``cxr-nodule-aug synthesize`` output as ``node21:DIR``, or a ``cxr-nodule-aug
sim`` export) are concatenated to the training set. Validation (NODE21 metrics, MONAI mode) runs every
``eval_every`` steps on ``val_data`` or on a held-out fraction of ``data`` split by image.

Speed of online augmentation: ``lung_masks=DIR`` (masks from ``cxr-nodule-aug lungs``) gives the
training images their lung masks, so ``NoduleInpaint`` does not run its lung model on every call;
``worker_niceness=N`` runs the DataLoader workers at a lower CPU priority
(:class:`~cxr_nodule_aug.datasets.LowPriorityWorkers`) so that they fill the gaps training leaves.

The Python entry point :func:`train` also takes ready datasets (detector-ready samples), which
is how the detection benchmark drives it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from pathlib import Path
from typing import Any, Callable

import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Subset
from torchvision.transforms import v2

from cxr_nodule_aug.datasets import DATASET_KINDS, open_dataset
from cxr_nodule_aug.datasets.kinds import check_lung_mask_folder
from cxr_nodule_aug.detection import NoduleDetector, ToDetectorInput, detection_collate, predict_dataset
from cxr_nodule_aug.train import common

log = logging.getLogger(__name__)


@dataclasses.dataclass
class DetectorConfig(common.RunConfig):
    """:class:`~cxr_nodule_aug.train.common.RunConfig` plus the detector's fields. Samples
    (``sample_every``): training images with their true boxes (green) and the detector's
    boxes scoring >= 0.5 (red)."""

    out: str = "runs/detector"
    steps: int = 1500
    batch_size: int = 4
    lr: float = 2e-4
    log_every: int = 20
    dataset: str = "simcxr"
    val_data: str = ""
    holdout_fraction: float = 0.1
    synth: str = ""
    init: str = ""
    arch: str = "fasterrcnn"
    backbone: str = "lite0"
    imagenet: bool = True
    image_size: int = 256
    anchor_size: int = 8
    fpn_channels: int = 64
    box_head_width: int = 256
    optimizer: str = "adamw"
    weight_decay: float = 1e-4
    warmup_steps: int = 50
    grad_clip: float = 10.0
    shift: float = 0.05
    flip: bool = True
    augment_p: float = 0.0
    augment_diameters: str = "4,24"
    augment_unit: str = "mm"
    augment_num_nodules: str = "1,3"
    augment_contrast: float = 1.0
    augment_composition: str = "additive"
    lung_masks: str = ""
    worker_niceness: int = 0
    eval_every: int = 500

    def check(self) -> None:
        super().check()
        for name in ("anchor_size", "fpn_channels", "box_head_width", "eval_every"):
            common.check_value(self, name, minimum=1)
        common.check_value(self, "image_size", minimum=16)
        for name in ("weight_decay", "warmup_steps", "grad_clip", "augment_contrast"):
            common.check_value(self, name, minimum=0)
        common.check_value(self, "holdout_fraction", minimum=0, below=1)
        common.check_value(self, "shift", minimum=0, below=1)
        common.check_value(self, "augment_p", minimum=0, maximum=1)
        if self.augment_composition not in ("additive", "replace"):
            raise ValueError(f"augment_composition={self.augment_composition!r}: expected 'additive' (the nodule's layer added; the default) or 'replace' (the paper's inpainting)")
        # 0: workers at normal priority; 1 (slightly lower) to 19 (lowest), see LowPriorityWorkers
        common.check_value(self, "worker_niceness", minimum=0, maximum=19)


class Augmented(Dataset):
    """Applies ``transform(image, target)`` to each sample of ``base`` (a view, nothing cached)."""

    def __init__(self, base: Dataset, transform: Callable) -> None:
        self.base, self.transform = base, transform

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> Any:
        return self.transform(*self.base[i])


def geometric_augment(shift: float, flip: bool) -> v2.Compose:
    """The paper's detector augmentation: random shift (fraction of the side) and horizontal flip."""
    steps: list[Any] = []
    if shift > 0:
        steps.append(v2.RandomAffine(degrees=0.0, translate=(shift, shift)))
    if flip:
        steps.append(v2.RandomHorizontalFlip())
    steps.append(v2.SanitizeBoundingBoxes(min_size=1.0))
    return v2.Compose(steps)


def _range(text: str, name: str, cast: type = float, **bounds: float) -> tuple[Any, Any] | Any:
    """A config value in the command line's one range syntax (a number or ``min,max``;
    :class:`~cxr_nodule_aug.cli.arguments.NumberRange`), its error naming the key."""
    import argparse

    from cxr_nodule_aug.cli.arguments import NumberRange

    try:
        return NumberRange(cast, **bounds)(text)
    except argparse.ArgumentTypeError as err:
        raise ValueError(f"{name}={text!r}: {err}") from None


def online_augment(cfg: DetectorConfig):
    """``NoduleInpaint`` from the config: diameters from a range or a HEM JSON file."""
    from cxr_nodule_aug import HEMSampler, NoduleInpaint

    if Path(cfg.augment_diameters).suffix == ".json":
        diameters: Any = HEMSampler.load(cfg.augment_diameters)
        unit = diameters.unit
    else:
        diameters, unit = _range(cfg.augment_diameters, "augment_diameters", above=0.0), cfg.augment_unit
    return NoduleInpaint(diameters=diameters, unit=unit, p=cfg.augment_p, num_nodules=_range(cfg.augment_num_nodules, "augment_num_nodules", int, minimum=0),
                         contrast=cfg.augment_contrast, composition=cfg.augment_composition)


def _check_lung_masks(dataset: Dataset, key: str) -> None:
    """Every image of ``dataset`` has its mask: a clear error now, not a missing file mid-training."""
    from cxr_nodule_aug.datasets import lung_mask_filename

    folder = Path(dataset.lung_mask_dir)
    missing = [str(path) for _, path, _ in dataset.items if not (folder / lung_mask_filename(path)).is_file()]
    if missing:
        failed = " (its failed.txt lists the images the lung model found no lung in: leave them out of data)" if (folder / "failed.txt").is_file() else ""
        raise FileNotFoundError(f"{key}={str(folder)!r} has no lung mask for {len(missing)} of {len(dataset.items)} images, e.g. {missing[0]}; "
                                f"run cxr-nodule-aug lungs on the data{failed}")


def _kind_and_root(entry: str, default_kind: str) -> tuple[str, str]:
    """``"node21:path"`` -> ("node21", "path"); a bare path takes ``default_kind``."""
    kind, sep, root = entry.partition(":")
    if sep and kind in DATASET_KINDS:
        return kind, root
    return default_kind, entry


def build_sets(cfg: DetectorConfig) -> tuple[Dataset, Dataset | None]:
    """Training and validation sets (detector-ready samples, before shift/flip) from the config."""
    to_input = ToDetectorInput(cfg.image_size)
    if cfg.augment_p > 0:
        inpaint = online_augment(cfg)

        def train_tf(image, target):
            return to_input(*inpaint(image, target))
    else:
        train_tf = to_input
    if not cfg.data:
        raise ValueError("data= is required: the training dataset's root directory")
    lung_mask_dir = None
    if cfg.lung_masks:
        try:
            check_lung_mask_folder(cfg.dataset, cfg.lung_masks)
        except (ValueError, FileNotFoundError) as err:
            raise type(err)(f"lung_masks={cfg.lung_masks!r}: {err}") from None
        if cfg.augment_p > 0:
            lung_mask_dir = cfg.lung_masks
        else:  # only the online augmentation reads them: do not decode masks for nothing
            log.warning("lung_masks=%r is not used: augment_p=0 (no online augmentation)", cfg.lung_masks)
    base = open_dataset(cfg.dataset, cfg.data, transforms=train_tf, lung_mask_dir=lung_mask_dir)
    if lung_mask_dir is not None:
        _check_lung_masks(base, "lung_masks")
    if cfg.augment_p > 0 and inpaint.unit == "mm" and len(base) and open_dataset(cfg.dataset, cfg.data)[0][1].get("pixel_spacing_mm") is None:
        fix = ("mine this data with 'cxr-nodule-aug hem' (px diameters where the spacing is unknown)" if Path(cfg.augment_diameters).suffix == ".json"
               else "give augment_diameters in pixels with augment_unit=px")
        raise ValueError(f"augment diameters are in mm, but the {cfg.dataset} images of data={cfg.data!r} record no pixel spacing: {fix}")
    if cfg.val_data:
        train_set: Dataset = base
        val_set: Dataset | None = open_dataset(cfg.dataset, cfg.val_data, transforms=to_input)
    elif cfg.holdout_fraction > 0:
        n_val = max(1, int(round(len(base) * cfg.holdout_fraction)))
        order = torch.randperm(len(base), generator=torch.Generator().manual_seed(cfg.seed)).tolist()
        train_set = Subset(base, order[n_val:])
        val_set = Subset(open_dataset(cfg.dataset, cfg.data, transforms=to_input), order[:n_val])
    else:
        train_set, val_set = base, None
    extra = [open_dataset(*_kind_and_root(p.strip(), cfg.dataset), transforms=to_input) for p in cfg.synth.split(",") if p.strip()]
    if extra:
        train_set = ConcatDataset([train_set, *extra])
    return train_set, val_set


def build_loader(cfg: DetectorConfig, data: Dataset, d: common.Dist | None = None) -> DataLoader:
    """The training DataLoader: ``cfg.workers`` workers (persistent), at ``cfg.worker_niceness`` when > 0."""
    from cxr_nodule_aug.datasets import LowPriorityWorkers

    niceness = cfg.worker_niceness  # checked by DetectorConfig
    if niceness and cfg.workers == 0:
        log.info("worker_niceness=%d has no effect with workers=0: the augmentation runs in the training process", niceness)
    return common.make_loader(cfg, data, d, collate_fn=detection_collate, persistent_workers=cfg.workers > 0,
                              worker_init_fn=LowPriorityWorkers(niceness) if niceness else None)


def build_model(cfg: DetectorConfig) -> NoduleDetector:
    if cfg.init:
        model = NoduleDetector.from_pretrained(cfg.init)
        if model.config["image_size"] != cfg.image_size:
            raise ValueError(f"init={cfg.init!r} was trained at image_size={model.config['image_size']}, the config asks for {cfg.image_size}")
        return model.train()
    return NoduleDetector(cfg.arch, cfg.backbone, image_size=cfg.image_size, anchor_size=cfg.anchor_size, fpn_channels=cfg.fpn_channels,
                          box_head_width=cfg.box_head_width, imagenet=cfg.imagenet)


def evaluate(model: NoduleDetector, samples: Dataset, bootstrap: int = 0) -> dict[str, Any]:
    """NODE21 metrics (MONAI mode) of ``model`` on detector-ready ``samples``."""
    from cxr_nodule_aug.eval import evaluate_detections

    preds, targets = predict_dataset(model, (samples[i] for i in range(len(samples))))
    metrics = evaluate_detections(preds, [{"boxes": t["boxes"]} for t in targets], mode="monai", bootstrap=bootstrap)
    return metrics.to_dict()


def draw_detections(model: NoduleDetector, images: list[torch.Tensor], targets: list[dict[str, torch.Tensor]], threshold: float = 0.5) -> torch.Tensor:
    """Detector-ready images (C, S, S) in [0, 1] as RGB (B, 3, S, S) in [0, 1], true boxes in
    green, the model's boxes scoring >= ``threshold`` in red."""
    from torchvision.utils import draw_bounding_boxes

    preds = model.predict(images)
    drawn = []
    for image, target, pred in zip(images, targets, preds):
        rgb = (image[:1].expand(3, -1, -1).clamp(0, 1) * 255).to(torch.uint8).cpu()
        rgb = draw_bounding_boxes(rgb, target["boxes"].cpu().float(), colors="lime")
        boxes = pred["boxes"][pred["scores"] >= threshold].float()
        drawn.append(draw_bounding_boxes(rgb, boxes, colors="red") if len(boxes) else rgb)
    return torch.stack(drawn).float() / 255


def _optimizer(cfg: DetectorConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)
    raise ValueError(f"optimizer={cfg.optimizer!r}: expected 'adamw' or 'sgd'")


def train(cfg: DetectorConfig, train_set: Dataset | None = None, val_set: Dataset | None = None) -> Path:
    """Train; returns ``<out>/model`` (a :class:`NoduleDetector` weights directory).

    ``train_set`` / ``val_set``: detector-ready samples (``ToDetectorInput`` output) overriding
    the config's datasets. An existing ``<out>/checkpoint.pt`` is resumed.
    """
    d, out = common.start_run(cfg)
    if train_set is None:
        train_set, built_val = build_sets(cfg)
        val_set = built_val if val_set is None else val_set
    if len(train_set) == 0:
        raise ValueError("the training set is empty")
    data = Augmented(train_set, geometric_augment(cfg.shift, cfg.flip))
    loader = build_loader(cfg, data, d)
    model = build_model(cfg).to(d.device)
    md = common.wrap_ddp(model, d)
    opt = _optimizer(cfg, model)
    warm = max(cfg.warmup_steps, 0)

    def lr_at(step: int) -> float:  # linear warm-up, then cosine to 0
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(cfg.steps - warm, 1)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    val: dict[str, Any] = {}

    def step(batch: tuple[list, list], n: int) -> dict[str, Any]:
        nonlocal val
        images = [im.to(d.device) for im in batch[0]]
        targets = [{k: v.to(d.device) for k, v in t.items()} for t in batch[1]]
        losses = md(images, targets)
        loss = sum(losses.values())
        if not torch.isfinite(loss):
            raise FloatingPointError(f"step {n}: non-finite detector loss {({k: float(v) for k, v in losses.items()})}; lower lr")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        sched.step()
        if d.is_main and val_set is not None and len(val_set) and common.due(n, cfg.eval_every, cfg.steps):
            try:
                val = evaluate(model, val_set)
            except ValueError as err:  # e.g. a validation set without negatives
                log.warning("validation skipped: %s", err)
            model.train()
        row = {"loss": loss, "lr": sched.get_last_lr()[0], **losses}
        if val:
            row.update(val_auc=val["auc"], val_node21_score=val["node21_score"])
        return row

    def samples(batch: tuple[list, list]) -> tuple[torch.Tensor, int]:
        return draw_detections(model, batch[0][:4], batch[1][:4]), 4

    last = common.train_loop(cfg, d, out, loader, step, modules={"model": model}, optimizers={"model": opt}, schedulers={"model": sched},
                             samples=samples, name="detector", show=("loss", "val_node21_score"))
    if d.is_main:
        model.eval()
        meta = {"trained_steps": last, "data": str(cfg.data) or "in-memory", "train_images": len(train_set)}
        if val:
            meta.update(val_auc=val["auc"], val_node21_score=val["node21_score"])
            (out / "val_metrics.json").write_text(json.dumps(val, indent=1) + "\n")
        model.save_pretrained(out / "model", metadata=meta)
    common.cleanup(d)
    return out / "model"
