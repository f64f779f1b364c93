"""``cxr-nodule-aug train layer``: the additive nodule-layer model (issue 13).

Training pairs come from a SimCXR export: every nodule image has its nodule-free render at the
same pose (``pairs/``), so ``working(nodule image) - working(nodule-free image)`` (both under
the nodule-free image's intensity window, the one the engine uses when it inserts into it) is
the nodule's exact layer. The model sees the nodule-free patch (nothing blanked), the mask and
the density class, and is trained with L1 on the layer (coarse and fine); optionally L1 on the
composite's high-pass detail and LSGAN on the composite (``w_adversarial``, off by default on
CPU).

Box-only data (``dataset=node21`` etc. with ``masks=``, the ``cxr-nodule-aug masks`` output) has
no nodule-free render; the pair is estimated per box by
:func:`~cxr_nodule_aug.functional.extraction.extract_nodules`: the context is the image with the
box's estimated background under the pseudo mask (the image minus the residual), the target
layer the residual clipped at 0 inside the mask (0 outside), both in the image's own working
window; the density is "solid" unless the dataset records one (:func:`extract_box_layer_pairs`).
The target is an estimate (the background's error inside the box is of the order of a faint
nodule's contrast, ``benchmarks/results/box_only.md``), not SimCXR's exact layer.

Patches are cut by inference's cut (:func:`cxr_nodule_aug.functional.insertion.cut_patch`).
Intensity augmentation applies one random monotonic grey-level map to both images of a pair
and recomputes the layer from them, so the target stays exact under the map.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from cxr_nodule_aug.functional.extraction import extract_nodules
from cxr_nodule_aug.functional.insertion import cut_patch, region_side
from cxr_nodule_aug.functional.intensity import to_working
from cxr_nodule_aug.functional.size import equivalent_diameter
from cxr_nodule_aug.models.layer import DEFAULT_DENSITY, DENSITY_CLASSES, LayerGenerator, density_of_sim_nodule
from cxr_nodule_aug.models.texture import PatchDiscriminator
from cxr_nodule_aug.train import common
from cxr_nodule_aug.train.texture import open_masked_dataset, split_by_image

log = logging.getLogger(__name__)


@dataclasses.dataclass
class LayerConfig(common.PatchConfig):
    """:class:`~cxr_nodule_aug.train.common.PatchConfig` plus the layer model's fields. ``lr`` is
    the model's learning rate (``d_lr`` the optional discriminator's); both drop 10x at
    ``lr_drop_step``. ``w_adversarial`` > 0 adds LSGAN on the composite (context + layer).
    ``dataset``: the kind of ``data`` (default a SimCXR export); a box-only kind needs ``masks``,
    a ``cxr-nodule-aug masks`` output folder (see :func:`extract_box_layer_pairs`)."""

    dataset: str = "simcxr"
    masks: str = ""
    out: str = "runs/layer"
    steps: int = 4000
    batch_size: int = 16
    lr: float = 5e-4
    d_lr: float = 5e-5
    lr_drop_step: int = 3000
    base_width: int = 8
    d_width: int = 16
    patch_size: int = 32
    max_layer: float = 1.0
    w_adversarial: float = 0.0
    contrast_range: tuple = (0.7, 1.3)

    def check(self) -> None:
        super().check()
        common.check_value(self, "max_layer", above=0)


_PAIR_KEYS = ("context", "nodule", "layer", "mask", "density", "image_index", "diameter_px")


def _cut_layer_pairs(out: dict[str, list], index: int, gray_free: torch.Tensor, gray_nodule: torch.Tensor, masks: torch.Tensor,
                     densities: list[str], patch_size: int, max_fill: float, jitter: float, generator: torch.Generator | None) -> None:
    """Append one pair per non-empty mask of one image to ``out``: the working-domain nodule-free
    image ``gray_free`` and nodule image ``gray_nodule`` (H, W) cut the way inference cuts."""
    for m, density in zip(masks, densities):
        if not m.any():
            continue
        d = float(equivalent_diameter(m))
        ys, xs = torch.nonzero(m, as_tuple=True)
        y0, x0 = int(ys.min()), int(xs.min())
        h, w = int(ys.max()) + 1 - y0, int(xs.max()) + 1 - x0
        R = region_side(max(d, h, w), patch_size, max_fill)
        top, left = (R - h) // 2, (R - w) // 2
        if jitter > 0:
            dy, dx = ((torch.rand(2, generator=generator) * 2 - 1) * jitter * R).round().int().tolist()
            top, left = top - dy, left - dx
        if top < 0 or left < 0 or top + h > R or left + w > R:
            continue
        footprint = torch.zeros(R, R, dtype=torch.bool)
        footprint[top : top + h, left : left + w] = m[y0 : y0 + h, x0 : x0 + w]
        centre = (x0 + w // 2, y0 + h // 2)
        c_free = cut_patch(gray_free, centre, footprint, patch_size)
        c_nod = cut_patch(gray_nodule, centre, footprint, patch_size)
        layer = (c_nod.region - c_free.region) * footprint
        if R != patch_size:
            layer = F.interpolate(layer[None, None], size=(patch_size, patch_size), mode="area")[0, 0]
        out["context"].append(c_free.patch[0])
        out["nodule"].append(c_nod.patch[0])
        out["layer"].append(layer[None])
        out["mask"].append(c_free.hole[0])
        out["density"].append(DENSITY_CLASSES.index(density))
        out["image_index"].append(index)
        out["diameter_px"].append(d)


def _stack_pairs(out: dict[str, list]) -> dict[str, torch.Tensor]:
    if not out["context"]:
        raise ValueError("no nodule patches could be cut from the data")
    return {
        **{k: torch.stack(out[k]) for k in ("context", "nodule", "layer", "mask")},
        "density": torch.tensor(out["density"]),
        "image_index": torch.tensor(out["image_index"]),
        "diameter_px": torch.tensor(out["diameter_px"]),
    }


def extract_layer_pairs(
    samples: Iterable[tuple[torch.Tensor, dict[str, Any]]],
    patch_size: int,
    max_fill: float,
    *,
    jitter: float = 0.0,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """Cut one (context, mask, layer, density) quadruple per nodule, the way inference cuts.

    ``samples`` are :class:`~cxr_nodule_aug.datasets.SimCXRDataset` samples with
    ``return_pair=True`` (``target["image_nodule_free"]``, ``masks``, ``sim_nodules``).

    Returns ``context`` (N, 1, P, P) the nodule-free working patch, ``nodule`` (N, 1, P, P) the
    nodule image's patch under the same window, ``layer`` = nodule - context (area-resampled
    from the unclamped regions), ``mask`` (N, 1, P, P) {0, 1}, ``density`` (N,) index into
    :data:`DENSITY_CLASSES`, ``image_index`` (N,), ``diameter_px`` (N,).
    """
    out: dict[str, list] = {k: [] for k in _PAIR_KEYS}
    for i, (image, target) in enumerate(samples):
        if "image_nodule_free" not in target or "masks" not in target:
            raise ValueError(f"sample {i} needs target['image_nodule_free'] and target['masks'] (SimCXRDataset(return_pair=True))")
        free = torch.as_tensor(target["image_nodule_free"]).as_subclass(torch.Tensor)
        image = torch.as_tensor(image).as_subclass(torch.Tensor)
        gray_free, lo, hi = to_working(free)
        gray_nod = (image[0].float() - lo) / (hi - lo)  # the nodule-free image's window: the engine's
        densities = [density_of_sim_nodule(nd["params"]) for nd in target["sim_nodules"]]
        masks = torch.as_tensor(target["masks"]).as_subclass(torch.Tensor).bool()
        _cut_layer_pairs(out, i, gray_free, gray_nod, masks, densities, patch_size, max_fill, jitter, generator)
    return _stack_pairs(out)


def box_only_layers(image: torch.Tensor, boxes: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The (nodule-free, nodule) working-domain pair (H, W) of one box-only image.

    ``masks`` (N, H, W) are the boxes' pseudo masks (``cxr-nodule-aug masks``); under each mask
    the nodule-free image is the box's estimated background
    (:func:`~cxr_nodule_aug.functional.extraction.extract_nodules`), i.e. the image minus the
    residual, and the nodule image is that background plus the residual clipped at 0 (a layer
    only adds). Outside the masks both are the image's working domain.
    """
    gray, _, _ = to_working(image)
    free, layer = gray.clone(), torch.zeros_like(gray)
    for k, (e, m) in enumerate(zip(extract_nodules(image, boxes), masks)):
        x0, y0, x1, y1 = e.window_xyxy
        inside = m[y0:y1, x0:x1]
        if int(inside.sum()) != int(m.sum()):
            raise ValueError(f"mask {k} reaches outside its box {e.window_xyxy}: masks= must be 'cxr-nodule-aug masks' output for these boxes")
        free[y0:y1, x0:x1] = torch.where(inside, e.background, free[y0:y1, x0:x1])
        layer[y0:y1, x0:x1] = torch.where(inside, e.residual.clamp(min=0), layer[y0:y1, x0:x1])
    return free, free + layer


def extract_box_layer_pairs(
    samples: Iterable[tuple[torch.Tensor, dict[str, Any]]],
    patch_size: int,
    max_fill: float,
    *,
    jitter: float = 0.0,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """:func:`extract_layer_pairs` for box-only data: ``samples`` are a box dataset's samples with
    the pseudo masks attached (``open_dataset(kind, DIR, nodule_masks=MASKS)``: ``boxes`` and one
    instance mask per box). Context and layer come from :func:`box_only_layers`; the cut is the
    SimCXR path's. Density: ``target["density"]`` (one class name per box) when the dataset
    records it, else :data:`~cxr_nodule_aug.models.layer.DEFAULT_DENSITY` ("solid", LIDC-IDRI's
    commonest); no box dataset shipped today records one.
    """
    out: dict[str, list] = {k: [] for k in _PAIR_KEYS}
    for i, (image, target) in enumerate(samples):
        if "masks" not in target:
            raise ValueError(f"sample {i} has no target['masks']: open the dataset with nodule_masks= ('cxr-nodule-aug masks' output)")
        masks = torch.as_tensor(target["masks"]).as_subclass(torch.Tensor).bool()
        boxes = torch.as_tensor(target["boxes"]).as_subclass(torch.Tensor).reshape(-1, 4)
        if len(masks) != len(boxes):
            raise ValueError(f"sample {i} has {len(boxes)} boxes but {len(masks)} nodule masks")
        if not len(boxes):
            continue
        densities = list(target.get("density", [DEFAULT_DENSITY] * len(boxes)))
        if len(densities) != len(boxes) or any(d not in DENSITY_CLASSES for d in densities):
            raise ValueError(f"sample {i}: target['density'] must give one of {DENSITY_CLASSES} per box, got {densities!r}")
        gray_free, gray_nod = box_only_layers(torch.as_tensor(image).as_subclass(torch.Tensor), boxes, masks)
        _cut_layer_pairs(out, i, gray_free, gray_nod, masks, densities, patch_size, max_fill, jitter, generator)
    return _stack_pairs(out)


def load_layer_pairs(data: str, patch_size: int, max_fill: float, *, jitter: float = 0.0, seed: int = 0,
                     dataset: str = "simcxr", masks: str = "") -> dict[str, torch.Tensor]:
    """Layer pairs from a ``.pt`` cache, a SimCXR export directory, or a box-only dataset of kind
    ``dataset`` with the pseudo masks of ``masks`` (a ``cxr-nodule-aug masks`` output folder)."""
    path = Path(data)
    if path.suffix == ".pt":
        return torch.load(path, weights_only=True)
    if not path.is_dir():
        raise FileNotFoundError(f"data={data!r} is neither a dataset directory nor a .pt pairs file")
    generator = torch.Generator().manual_seed(seed)
    if dataset != "simcxr" or masks:
        boxed = open_masked_dataset(dataset, data, masks)
        return extract_box_layer_pairs((boxed[i] for i in range(len(boxed))), patch_size, max_fill, jitter=jitter, generator=generator)
    from cxr_nodule_aug.datasets import SimCXRDataset

    sim = SimCXRDataset(path, subset="nodule", return_pair=True)
    return extract_layer_pairs((sim[i] for i in range(len(sim))), patch_size, max_fill, jitter=jitter, generator=generator)


def paired_intensity(context: torch.Tensor, nodule: torch.Tensor, gamma_range: tuple, contrast_range: tuple,
                     generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One random monotonic grey-level map per pair (gamma, then contrast about the context's
    mean), applied to both patches: the layer recomputed from them stays the exact layer."""
    b = context.shape[0]
    lo, hi = (math.log(v) for v in gamma_range)
    gamma = torch.exp(torch.rand(b, 1, 1, 1, generator=generator) * (hi - lo) + lo).to(context)
    contrast = (torch.rand(b, 1, 1, 1, generator=generator) * (contrast_range[1] - contrast_range[0]) + contrast_range[0]).to(context)
    mean = context.clamp(0, 1).pow(gamma).mean((1, 2, 3), keepdim=True)
    f = lambda x: (x.clamp(0, 1).pow(gamma) - mean) * contrast + mean  # noqa: E731
    return f(context), f(nodule)


def train(cfg: LayerConfig, pairs: dict[str, torch.Tensor] | None = None) -> Path:
    d, out = common.start_run(cfg)
    if pairs is None:
        pairs = common.cached(out / "pairs.pt", d, lambda: load_layer_pairs(cfg.data, cfg.patch_size, cfg.max_fill, jitter=cfg.jitter, seed=cfg.seed,
                                                                           dataset=cfg.dataset, masks=cfg.masks))
    train_pairs, held = split_by_image(pairs, cfg.holdout_fraction)
    if d.is_main:
        counts = torch.bincount(train_pairs["density"], minlength=len(DENSITY_CLASSES)).tolist()
        (out / "split.json").write_text(json.dumps({"train_pairs": len(train_pairs["context"]), "holdout_pairs": len(held["context"]),
                                                    "train_density_counts": dict(zip(DENSITY_CLASSES, counts))}))
    data = TensorDataset(train_pairs["context"].float(), train_pairs["nodule"].float(), train_pairs["mask"].float(), train_pairs["density"])
    loader = common.make_loader(cfg, data, d)
    G = LayerGenerator(cfg.base_width, cfg.num_stages, cfg.patch_size, cfg.max_fill, cfg.max_layer).to(d.device)
    D = PatchDiscriminator(1, cfg.d_width).to(d.device) if cfg.w_adversarial > 0 else None
    Gd = common.wrap_ddp(G, d)
    Dd = common.wrap_ddp(D, d) if D is not None else None
    opt_g = torch.optim.Adam(G.parameters(), lr=cfg.lr, betas=tuple(cfg.betas))
    drop = lambda step: 1.0 if step < cfg.lr_drop_step else 0.1  # noqa: E731
    modules, optimizers = {"G": G}, {"G": opt_g}
    schedulers = {"G": torch.optim.lr_scheduler.LambdaLR(opt_g, drop)}
    if D is not None:
        opt_d = torch.optim.Adam(D.parameters(), lr=cfg.d_lr, betas=tuple(cfg.betas))
        modules["D"], optimizers["D"], schedulers["D"] = D, opt_d, torch.optim.lr_scheduler.LambdaLR(opt_d, drop)
    held_t = {k: held[k].to(d.device) for k in ("context", "mask", "density", "layer")} if len(held["context"]) else None

    def step(batch, n):
        context, nodule, mask, density = (t.to(d.device) for t in batch)
        if torch.rand(1).item() < 0.5:  # left-right flips (global RNG: restored on resume)
            context, nodule, mask = context.flip(-1), nodule.flip(-1), mask.flip(-1)
        context, nodule = paired_intensity(context, nodule, cfg.gamma_range, cfg.contrast_range)
        target = (nodule - context) * mask
        coarse, fine = Gd(context, mask, density)
        composite = context + fine
        metrics = {}
        adv = torch.zeros((), device=d.device)
        if Dd is not None:
            scores = Dd(torch.cat([context + target, composite.detach()]), torch.cat([mask, mask]))
            loss_d = common.lsgan_d_loss(scores[: len(context)], scores[len(context) :])
            optimizers["D"].zero_grad(set_to_none=True)
            loss_d.backward()
            optimizers["D"].step()
            adv = common.lsgan_g_loss(Dd(composite, mask))
            metrics.update(loss_d=loss_d, adversarial=adv)
        # L1 over the mask's pixels (the layer is 0 outside it by construction).
        n_in = mask.sum().clamp_min(1)
        l1c = (coarse - target).abs().sum() / n_in
        l1f = (fine - target).abs().sum() / n_in
        loss_g = cfg.w_l1_coarse * l1c + cfg.w_l1_fine * l1f + cfg.w_adversarial * adv
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
        for s in schedulers.values():
            s.step()
        metrics.update(loss_g=loss_g, l1_coarse=l1c, l1_fine=l1f, lr=schedulers["G"].get_last_lr()[0])
        if held_t is not None and common.due(n, cfg.log_every, cfg.steps):
            with torch.no_grad():
                G.eval()
                h = G(held_t["context"].float(), held_t["mask"].float(), held_t["density"]).fine
                G.train()
            metrics["holdout_mask_l1"] = ((h - held_t["layer"]).abs() * held_t["mask"]).sum() / held_t["mask"].sum().clamp_min(1)
        return metrics

    show = held if len(held["context"]) else train_pairs
    n_show = min(8, len(show["context"]))

    def samples(batch):
        c, m, dn = (show[k][:n_show].to(d.device) for k in ("context", "mask", "density"))
        lay = G(c.float(), m.float(), dn).fine.cpu()
        true = show["layer"][:n_show].float()
        scale = max(float(true.max()), 1e-6)
        grid = torch.cat([c.cpu().float(), c.cpu().float() + lay, show["nodule"][:n_show].float(), lay / scale, true / scale]).clamp(0, 1)
        return grid, n_show

    step_n = common.train_loop(cfg, d, out, loader, step, modules=modules, optimizers=optimizers, schedulers=schedulers,
                               samples=samples, name="layer", show=("l1_fine", "holdout_mask_l1"))
    if d.is_main:
        G.eval()
        meta = {"trained_steps": step_n, "data": str(cfg.data), "dataset": cfg.dataset, "train_pairs": len(train_pairs["context"]),
                "loss": "L1 on the layer (coarse + fine)" + (" + LSGAN on the composite" if D is not None else "")}
        G.save_pretrained(out / "model", metadata=meta)
    common.cleanup(d)
    return out / "model"
