"""``cxr-nodule-aug train texture``: the coarse-to-fine gated-conv inpainter (paper III-C, IV-B).

Training pairs are (patch with a nodule, the nodule's shape mask): the hole is the mask, the
ground truth is the patch. Patches are cut by inference's own cut
(:func:`cxr_nodule_aug.functional.insertion.cut_nodules`, which ``NoduleSynthesizer.cut``
runs; the image's own intensity window),
so a trained model sees at inference what it saw in training.

Loss (all weights 1 by default, as in the paper): L1(coarse) + L1(fine) + perceptual(fine)
+ LSGAN(D(mask, composite)). Adam (0.5, 0.999); D at a tenth of G's learning rate; both
dropped by 10x at ``lr_drop_step`` (the paper's second phase).
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

from cxr_nodule_aug.baselines.partial_conv import PartialConvUNet
from cxr_nodule_aug.eval.features import feature_extractor
from cxr_nodule_aug.functional.insertion import cut_nodules, region_side
from cxr_nodule_aug.functional.intensity import to_working
from cxr_nodule_aug.functional.size import equivalent_diameter
from cxr_nodule_aug.models.texture import PatchDiscriminator, TextureGenerator, context_moments
from cxr_nodule_aug.train import common

log = logging.getLogger(__name__)


@dataclasses.dataclass
class TextureConfig(common.PatchConfig):
    """:class:`~cxr_nodule_aug.train.common.PatchConfig` (its defaults are this trainer's) plus
    the inpainter's own fields. ``lr`` is G's learning rate, ``d_lr`` D's (the paper: a tenth);
    both drop 10x at ``lr_drop_step``. ``dataset``: the kind of ``data`` (default a SimCXR
    export); a box-only kind needs ``masks``, a ``cxr-nodule-aug masks`` output folder."""

    dataset: str = "simcxr"
    masks: str = ""
    out: str = "runs/texture"
    steps: int = 6000
    generator: str = "gated"  # "gated" (the paper) or "partial_conv" (the Syn&Select baseline)
    mask_type: str = "shape"
    w_perceptual: float = 1.0
    backbone: str = "efficientnet-lite0"  # the perceptual loss's feature extractor
    # "auto": the saved model maps each patch's context to the training patches' median context
    # mean/std (TextureGenerator's context_norm); "none": save it without.
    context_norm: str = "auto"

    def check(self) -> None:
        super().check()
        common.check_value(self, "w_perceptual", minimum=0)
        if self.context_norm not in ("auto", "none"):
            raise ValueError(f"context_norm={self.context_norm!r}: expected 'auto' or 'none'")


def context_statistics(patches: torch.Tensor, masks: torch.Tensor) -> tuple[float, float]:
    """Median over patches of the context's (outside the hole) mean and std, rounded to 1e-3."""
    mean, std = context_moments(patches, (masks >= 0.5).float())  # the hole as TextureGenerator sees it
    return round(float(mean.median()), 3), round(float(std.median()), 3)


def with_context_norm(model: TextureGenerator, stats: tuple[float, float]) -> TextureGenerator:
    """The same weights, with ``context_norm=stats`` (see :class:`TextureGenerator`)."""
    config = {k: v for k, v in model.config.items() if k != "context_norm"}
    out = TextureGenerator(**config, context_norm=stats)
    out.load_state_dict(model.state_dict())
    return out.eval()


class PerceptualLoss(torch.nn.Module):
    """Sum over the backbone's three taps of the L1 feature distance, relative to the target's
    mean absolute activation at that tap.

    Raw activations differ by orders of magnitude between backbones and taps (EfficientNet-Lite0
    starts near 15 where the pixel L1 starts near 0.3, measured), so with the paper's weight of 1
    a raw sum would drown the reconstruction terms; the relative form keeps every term O(1).
    """

    def __init__(self, backbone: str) -> None:
        super().__init__()
        self.extractor = feature_extractor(backbone)

    def train(self, mode: bool = True) -> PerceptualLoss:
        super().train(mode)
        self.extractor.eval()  # frozen, BN statistics untouched
        return self

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        total = output.new_zeros(())
        for a, b in zip(self.extractor.taps(output), self.extractor.taps(target)):
            total = total + F.l1_loss(a, b) / b.detach().abs().mean().clamp_min(1e-6)
        return total


def random_intensity(patch: torch.Tensor, gamma_range: tuple = (0.3, 1.5), contrast_range: tuple = (0.7, 1.2)) -> torch.Tensor:
    """A random monotonic grey-level map per patch (gamma, then contrast about the patch mean).

    Radiographs reach the model through very different windows and processing; SimCXR puts the
    lungs near 0.1 where a clinical image puts them near 0.4 (measured on RG1_UNCR). Trained
    without this, the inpainter filled real lungs with dark discs; a monotonic map keeps what a
    nodule is (brighter than its surroundings) while the levels vary.
    """
    b = patch.shape[0]
    lo, hi = (math.log(v) for v in gamma_range)
    gamma = torch.exp(torch.empty(b, 1, 1, 1, device=patch.device).uniform_(lo, hi))
    x = patch.clamp(0, 1) ** gamma
    contrast = torch.empty(b, 1, 1, 1, device=patch.device).uniform_(*contrast_range)
    mean = x.mean((1, 2, 3), keepdim=True)
    return ((x - mean) * contrast + mean).clamp(0, 1)


def extract_patches(
    samples: Iterable[tuple[torch.Tensor, dict[str, Any]]],
    patch_size: int,
    max_fill: float,
    *,
    jitter: float = 0.0,
    mask_type: str = "shape",
    generator: torch.Generator | None = None,
    masks_key: str = "masks",
) -> dict[str, torch.Tensor]:
    """Cut one (patch, mask) pair per nodule instance mask, the way inference cuts them.

    Returns ``patch`` (N, 1, P, P) float in ~[0, 1], ``mask`` (N, 1, P, P) float {0, 1},
    ``image_index`` (N,) and ``diameter_px`` (N,).
    """
    patches, masks, index, diameters = [], [], [], []
    for i, (image, target) in enumerate(samples):
        if masks_key not in target:
            raise ValueError(f"sample {i} has no target[{masks_key!r}] instance masks to train the inpainter on")
        image = torch.as_tensor(image).as_subclass(torch.Tensor)
        working = to_working(image)
        for m in torch.as_tensor(target[masks_key]).as_subclass(torch.Tensor).bool():
            if not m.any():
                continue
            d = float(equivalent_diameter(m))
            R = region_side(d, patch_size, max_fill)
            ys, xs = torch.nonzero(m, as_tuple=True)
            y0, x0 = int(ys.min()), int(xs.min())
            h, w = int(ys.max()) + 1 - y0, int(xs.max()) + 1 - x0
            # The nodule's footprint on its R x R canvas, placed as modulate_size places a
            # generated shape (bounding box centred), and the centre inference would give it.
            top, left = (R - h) // 2, (R - w) // 2
            if jitter > 0:  # move the nodule inside its canvas, i.e. the window around the nodule
                dy, dx = ((torch.rand(2, generator=generator) * 2 - 1) * jitter * R).round().int().tolist()
                top, left = top - dy, left - dx
            if top < 0 or left < 0 or top + h > R or left + w > R:
                continue  # the nodule does not fit its window
            footprint = torch.zeros(R, R, dtype=torch.bool, device=m.device)
            footprint[top : top + h, left : left + w] = m[y0 : y0 + h, x0 : x0 + w]
            cut = cut_nodules(image, [(x0 + w // 2, y0 + h // 2)], [footprint], patch_size, mask_type, working)
            patch, hole = cut.patches, cut.holes
            patches.append(patch[0])
            masks.append(hole[0])
            index.append(i)
            diameters.append(d)
    if not patches:
        raise ValueError("no nodule patches could be cut from the data")
    return {
        "patch": torch.stack(patches),
        "mask": torch.stack(masks),
        "image_index": torch.tensor(index),
        "diameter_px": torch.tensor(diameters),
    }


def split_by_image(pairs: dict[str, torch.Tensor], holdout_fraction: float) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Hold out the last images (all their nodules), never a nodule's own image."""
    images = pairs["image_index"]
    n_images = int(images.max()) + 1
    n_hold = max(1, math.ceil(n_images * holdout_fraction)) if holdout_fraction > 0 else 0
    held = images >= n_images - n_hold
    return ({k: v[~held] for k, v in pairs.items()}, {k: v[held] for k, v in pairs.items()})


def open_masked_dataset(kind: str, data: str, masks: str):
    """The box-only dataset ``kind`` at ``data`` with the pseudo nodule masks of ``masks`` (a
    ``cxr-nodule-aug masks`` output folder) attached; refused, pointing at that command, without."""
    from cxr_nodule_aug.datasets import open_dataset

    if not masks:
        raise ValueError(f"dataset={kind!r} has boxes, not nodule masks: derive them with 'cxr-nodule-aug masks --data {data} "
                         f"--dataset {kind} --out OUT' and pass masks=OUT")
    return open_dataset(kind, Path(data), nodule_masks=masks)


def load_pairs(data: str, cfg: TextureConfig) -> dict[str, torch.Tensor]:
    """Pairs from a cache (``.pt`` written by this function), a SimCXR export directory, or a
    box-only dataset (``cfg.dataset``) with the pseudo masks of ``cfg.masks``."""
    path = Path(data)
    if path.suffix == ".pt":
        return torch.load(path, weights_only=True)
    if not path.is_dir():
        raise FileNotFoundError(f"data={data!r} is neither a dataset directory nor a .pt pairs file")
    from cxr_nodule_aug.datasets import SimCXRDataset

    if cfg.dataset != "simcxr" or cfg.masks:
        dataset = open_masked_dataset(cfg.dataset, data, cfg.masks)
    else:
        dataset = SimCXRDataset(path, subset="nodule")
    return extract_patches(
        (dataset[i] for i in range(len(dataset))),
        cfg.patch_size,
        cfg.max_fill,
        jitter=cfg.jitter,
        mask_type=cfg.mask_type,
        generator=torch.Generator().manual_seed(cfg.seed),
    )


def train(cfg: TextureConfig, pairs: dict[str, torch.Tensor] | None = None) -> Path:
    d, out = common.start_run(cfg)

    if pairs is None:
        pairs = common.cached(out / "pairs.pt", d, lambda: load_pairs(cfg.data, cfg))
    train_pairs, held = split_by_image(pairs, cfg.holdout_fraction)
    if d.is_main:
        (out / "split.json").write_text(json.dumps({"train_images": sorted(set(train_pairs["image_index"].tolist())), "holdout_images": sorted(set(held["image_index"].tolist())), "train_pairs": len(train_pairs["patch"]), "holdout_pairs": len(held["patch"])}))
    data = TensorDataset(train_pairs["patch"].float(), train_pairs["mask"].float())
    loader = common.make_loader(cfg, data, d)

    generators = {"gated": TextureGenerator, "partial_conv": PartialConvUNet}
    if cfg.generator not in generators:
        raise ValueError(f"generator must be one of {sorted(generators)}, got {cfg.generator!r}")
    G = generators[cfg.generator](1, cfg.base_width, cfg.num_stages, cfg.patch_size, cfg.mask_type, cfg.max_fill).to(d.device)
    D = PatchDiscriminator(1, cfg.d_width).to(d.device)
    perceptual = PerceptualLoss(cfg.backbone).to(d.device) if cfg.w_perceptual > 0 else None
    Gd, Dd = common.wrap_ddp(G, d), common.wrap_ddp(D, d)
    opt_g = torch.optim.Adam(G.parameters(), lr=cfg.lr, betas=tuple(cfg.betas))
    opt_d = torch.optim.Adam(D.parameters(), lr=cfg.d_lr, betas=tuple(cfg.betas))
    drop = lambda step: 1.0 if step < cfg.lr_drop_step else 0.1  # noqa: E731
    sched_g = torch.optim.lr_scheduler.LambdaLR(opt_g, drop)
    sched_d = torch.optim.lr_scheduler.LambdaLR(opt_d, drop)
    show = held if len(held["patch"]) else train_pairs
    n_show = min(8, len(show["patch"]))
    show_patch, show_mask = show["patch"][:n_show].float().to(d.device), show["mask"][:n_show].float().to(d.device)

    def step(batch: list[torch.Tensor], n: int) -> dict[str, Any]:
        gt, mask = (t.to(d.device) for t in batch)
        if torch.rand(1).item() < 0.5:  # left-right flips: anatomy-plausible, doubles the data
            gt, mask = gt.flip(-1), mask.flip(-1)
        gt = random_intensity(gt, cfg.gamma_range, cfg.contrast_range)
        coarse, fine = Gd(gt, mask)
        composite = fine * mask + gt * (1 - mask)
        scores = Dd(torch.cat([gt, composite.detach()]), torch.cat([mask, mask]))
        loss_d = common.lsgan_d_loss(scores[: len(gt)], scores[len(gt) :])
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()

        l1c, l1f = F.l1_loss(coarse, gt), F.l1_loss(fine, gt)
        perc = perceptual(fine, gt) if perceptual is not None else torch.zeros((), device=d.device)
        adv = common.lsgan_g_loss(Dd(composite, mask))
        loss_g = cfg.w_l1_coarse * l1c + cfg.w_l1_fine * l1f + cfg.w_perceptual * perc + cfg.w_adversarial * adv
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
        sched_g.step()
        sched_d.step()
        hole_l1 = ((fine.detach() - gt).abs() * mask).sum() / mask.sum().clamp_min(1)
        return dict(lr=sched_g.get_last_lr()[0], loss_g=loss_g, loss_d=loss_d, l1_coarse=l1c, l1_fine=l1f, perceptual=perc, adversarial=adv, hole_l1=hole_l1)

    def samples(_batch) -> tuple[torch.Tensor, int]:
        comp = G(show_patch, show_mask).fine * show_mask + show_patch * (1 - show_mask)
        holed = show_patch * (1 - show_mask) + show_mask
        return torch.cat([holed, comp, show_patch]), n_show

    last = common.train_loop(cfg, d, out, loader, step, modules={"G": G, "D": D}, optimizers={"G": opt_g, "D": opt_d},
                             schedulers={"G": sched_g, "D": sched_d}, samples=samples, name="texture", show=("hole_l1",))
    if d.is_main:
        G.eval()
        meta = {"trained_steps": last, "data": str(cfg.data), "train_pairs": len(train_pairs["patch"]), "backbone": cfg.backbone}
        if cfg.context_norm == "auto" and isinstance(G, TextureGenerator):
            stats = context_statistics(train_pairs["patch"].float(), train_pairs["mask"].float())
            G = with_context_norm(G, stats)
            meta["context_norm_source"] = "median context mean/std of the training patches"
        G.save_pretrained(out / "model", metadata=meta)
    common.cleanup(d)
    return out / "model"
