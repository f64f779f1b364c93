"""``cxr-nodule-aug train lung``: lung-field segmentation for samples without a lung mask.

Trains :class:`~cxr_nodule_aug.models.LungSegmenter` on (radiograph, lung mask) pairs (SimCXR
renders here) with strong geometric and intensity augmentation, so that it transfers to real
radiographs processed differently: random affine, crop/zoom, gamma, contrast, blur, noise,
unsharp masking. Loss: BCE + soft Dice.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from torchvision import tv_tensors
from torchvision.transforms import v2
from tqdm import tqdm

from cxr_nodule_aug.functional.intensity import to_working
from cxr_nodule_aug.models.lung import LungSegmenter
from cxr_nodule_aug.train import common

log = logging.getLogger(__name__)


@dataclasses.dataclass
class LungConfig:
    data: str = ""
    out: str = "runs/lung"
    steps: int = 2000
    batch_size: int = 8
    lr: float = 1e-3
    base_width: int = 16
    depth: int = 4
    input_size: int = 128
    holdout_fraction: float = 0.1
    seed: int = 0
    device: str = "auto"
    log_every: int = 50
    sample_every: int = 500
    checkpoint_every: int = 250


def prepare_pairs(samples: Iterable[tuple[torch.Tensor, dict[str, Any]]], size: int, lung_key: str = "lung_mask") -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, 1, 2S, 2S) in [0, 1] (working window) and masks (N, 1, 2S, 2S), kept at twice
    the training size so that crops and zooms still have detail."""
    images, masks = [], []
    for i, (image, target) in enumerate(samples):
        if lung_key not in target:
            raise ValueError(f"sample {i} has no target[{lung_key!r}] to train the lung model on")
        gray, _, _ = to_working(torch.as_tensor(image).as_subclass(torch.Tensor))
        images.append(F.interpolate(gray.clamp(0, 1)[None, None], size=(2 * size, 2 * size), mode="area")[0])
        m = torch.as_tensor(target[lung_key]).as_subclass(torch.Tensor).float().reshape(1, 1, *gray.shape)
        masks.append((F.interpolate(m, size=(2 * size, 2 * size), mode="area")[0] >= 0.5).float())
    if not images:
        raise ValueError("no lung training samples")
    return torch.stack(images), torch.stack(masks)


class _Intensity(torch.nn.Module):
    """Radiograph-processing variety: gamma, contrast/brightness, blur or unsharp, noise."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.clamp(0, 1) ** float(torch.empty(1).uniform_(0.6, 1.6))
        x = (x - 0.5) * float(torch.empty(1).uniform_(0.7, 1.3)) + 0.5 + float(torch.empty(1).uniform_(-0.1, 0.1))
        sigma = float(torch.empty(1).uniform_(0.5, 3.0))
        blurred = v2.functional.gaussian_blur(x, kernel_size=[int(2 * round(3 * sigma) + 1)] * 2, sigma=[sigma, sigma])
        amount = float(torch.empty(1).uniform_(-0.8, 1.5))  # < 0 blurs, > 0 sharpens
        x = x + amount * (x - blurred)
        x = x + torch.randn_like(x) * float(torch.empty(1).uniform_(0.0, 0.03))
        return x.clamp(0, 1)


class LungPairs(Dataset):
    def __init__(self, images: torch.Tensor, masks: torch.Tensor, size: int, augment: bool = True) -> None:
        self.images, self.masks, self.size, self.augment = images, masks, size, augment
        self.geometry = v2.Compose([
            v2.RandomAffine(degrees=10, translate=(0.08, 0.08), scale=(0.85, 1.15), shear=4),
            v2.RandomResizedCrop(size, scale=(0.6, 1.0), ratio=(0.85, 1.18), antialias=True),
        ])
        self.intensity = _Intensity()

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = tv_tensors.Image(self.images[i]), tv_tensors.Mask(self.masks[i])
        if not self.augment:
            return F.interpolate(image[None], size=(self.size,) * 2, mode="area")[0].as_subclass(torch.Tensor), (F.interpolate(mask[None], size=(self.size,) * 2, mode="area")[0] >= 0.5).float().as_subclass(torch.Tensor)
        image, mask = self.geometry(image, mask)
        return self.intensity(image.as_subclass(torch.Tensor)), (mask.as_subclass(torch.Tensor) >= 0.5).float()


def dice(prob: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    inter = (prob * target).sum((1, 2, 3))
    return ((2 * inter + 1) / (prob.sum((1, 2, 3)) + target.sum((1, 2, 3)) + 1)).mean()


def load_samples(data: str) -> list[tuple[torch.Tensor, dict[str, Any]]]:
    path = Path(data)
    if not path.is_dir():
        raise FileNotFoundError(f"data={data!r} is not a SimCXR export directory")
    from cxr_nodule_aug.datasets import SimCXRDataset

    dataset = SimCXRDataset(path)
    return [dataset[i] for i in range(len(dataset))]


def train(cfg: LungConfig, samples: list[tuple[torch.Tensor, dict[str, Any]]] | None = None) -> Path:
    d, out = common.start_run(cfg)
    if samples is None:
        samples = load_samples(cfg.data)
    images, masks = prepare_pairs(samples, cfg.input_size)
    n_hold = max(1, int(round(len(images) * cfg.holdout_fraction))) if cfg.holdout_fraction > 0 and len(images) > 1 else 0
    train_set = LungPairs(images[: len(images) - n_hold], masks[: len(images) - n_hold], cfg.input_size)
    held = LungPairs(images[len(images) - n_hold :], masks[len(images) - n_hold :], cfg.input_size, augment=False)
    sampler = DistributedSampler(train_set, num_replicas=d.world_size, rank=d.rank, seed=cfg.seed, drop_last=True) if d.enabled else None
    loader = DataLoader(train_set, batch_size=cfg.batch_size, shuffle=sampler is None, sampler=sampler, drop_last=len(train_set) >= cfg.batch_size, generator=torch.Generator().manual_seed(cfg.seed))

    model = LungSegmenter(cfg.base_width, cfg.depth, cfg.input_size).to(d.device)
    md = common.wrap_ddp(model, d)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(cfg.steps, 1))
    ckpt = out / "checkpoint.pt"
    step, state = 0, {}
    if ckpt.exists():
        state = common.load_checkpoint(ckpt, modules={"model": model}, optimizers={"model": opt}, schedulers={"model": sched}, map_location=d.device)
        step = int(state["step"])
    metrics = common.MetricsLog(out / "metrics.jsonl", enabled=d.is_main)
    metrics.truncate_after(step)
    batches = common.Batches(loader, sampler, state=state.get("data"), step=step)  # resumes at the exact batch
    held_dice = float("nan")
    bar = tqdm(total=cfg.steps, initial=step, desc="lung", disable=not d.is_main, dynamic_ncols=True)
    model.train()
    while step < cfg.steps:
        x, y = (t.to(d.device) for t in next(batches))
        logits = md(x)
        loss = F.binary_cross_entropy_with_logits(logits, y) + (1 - dice(torch.sigmoid(logits), y))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        step += 1
        bar.update(1)
        if step % cfg.log_every == 0 or step == cfg.steps:
            if len(held):
                model.eval()
                with torch.no_grad():
                    hx = torch.stack([held[i][0] for i in range(len(held))]).to(d.device)
                    hy = torch.stack([held[i][1] for i in range(len(held))]).to(d.device)
                    held_dice = float(dice((torch.sigmoid(model(hx)) > 0.5).float(), hy))
                model.train()
            metrics.write(step, loss=common.all_mean(loss.detach(), d), holdout_dice=held_dice, lr=sched.get_last_lr()[0])
            bar.set_postfix(loss=f"{float(loss.detach()):.3f}", holdout_dice=f"{held_dice:.3f}")
        if d.is_main and (step % cfg.sample_every == 0 or step == cfg.steps):
            model.eval()
            with torch.no_grad():
                show = x[:8]
                pred = (torch.sigmoid(model(show)) > 0.5).float()
                common.save_grid(torch.cat([show, pred, y[:8]]), out / "samples" / f"step{step:06d}.png", nrow=len(show))
            model.train()
        if d.is_main and (step % cfg.checkpoint_every == 0 or step == cfg.steps):
            common.save_checkpoint(ckpt, step=step, modules={"model": model}, optimizers={"model": opt}, schedulers={"model": sched}, data=batches)
    bar.close()
    if d.is_main:
        model.eval()
        model.save_pretrained(out / "model", metadata={"trained_steps": step, "data": str(cfg.data), "train_images": len(train_set), "holdout_dice": held_dice})
    common.cleanup(d)
    return out / "model"
