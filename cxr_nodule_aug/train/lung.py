"""``cxr-nodule-aug train lung``: lung-field segmentation for samples without a lung mask.

Trains :class:`~cxr_nodule_aug.models.LungSegmenter` on (radiograph, lung mask) pairs (SimCXR
renders here) with strong geometric and intensity augmentation, so that it transfers to real
radiographs processed differently: random affine, crop/zoom, gamma, contrast, blur, noise,
unsharp masking. Loss: BCE + soft Dice.

SimCXR's CT ends at the lung apices and holds one healthy patient, so two label-preserving
augmentations teach what its renders never show (both measured on the real radiograph in
``benchmarks/lung_check.py``):

- :class:`_Opacities`: smooth bright blobs (masses, consolidation, breast shadows) inside and
  outside the lungs and a low-frequency brightness field, labels unchanged: a lung field with
  an opacity in it is still lung field (the shipped model left holes over masses and missed a
  lower zone behind them).
- :class:`_Neck`: soft tissue above the image's top edge (the neck and shoulders a real
  radiograph shows above the apices), labelled not-lung (the shipped model ran up the neck).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from cxr_nodule_aug.functional.intensity import to_working
from cxr_nodule_aug.models.lung import LungSegmenter
from cxr_nodule_aug.train import common

log = logging.getLogger(__name__)


@dataclasses.dataclass
class LungConfig(common.RunConfig):
    """:class:`~cxr_nodule_aug.train.common.RunConfig` plus the lung U-Net's fields
    (``base_width``, ``depth``, ``input_size``: :class:`~cxr_nodule_aug.models.LungSegmenter`'s
    arguments)."""

    out: str = "runs/lung"
    steps: int = 2000
    batch_size: int = 8
    lr: float = 1e-3
    base_width: int = 16
    depth: int = 4
    input_size: int = 128
    holdout_fraction: float = 0.1
    # Label-preserving augmentations for real radiographs (see the module docstring).
    opacity_p: float = 0.0
    neck_p: float = 0.0
    # Start from these weights (a from_pretrained source; same architecture) instead of scratch.
    init: str = ""

    def check(self) -> None:
        super().check()
        for name in ("base_width", "depth", "input_size"):
            common.check_value(self, name, minimum=1)
        common.check_value(self, "holdout_fraction", minimum=0, below=1)
        common.check_value(self, "opacity_p", minimum=0, maximum=1)
        common.check_value(self, "neck_p", minimum=0, maximum=1)


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


def _smooth_field(size: int, cells: int) -> torch.Tensor:
    """(size, size) smooth random field in about [-1, 1]: ``cells`` x ``cells`` normals, bicubic."""
    return F.interpolate(torch.randn(1, 1, cells, cells), size=(size, size), mode="bicubic", align_corners=True)[0, 0].clamp(-2, 2) / 2


class _Opacities(torch.nn.Module):
    """Label-preserving disease and habitus on an image (1, S, S) in [0, 1]: up to 4 smooth
    bright blobs of radius 3-15 % of the side (centred on a lung pixel with probability 0.7, so
    most overlap the lungs), each raising the grey level by 0.05-0.35 with a Gaussian profile,
    and a brightness field of amplitude up to 0.15 varying over a third of the image."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.p <= 0 or float(torch.rand(1)) >= self.p:
            return x
        size = x.shape[-1]
        yy, xx = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32), indexing="ij")
        lung = mask[0].nonzero().float()
        add = float(torch.empty(1).uniform_(0, 0.15)) * _smooth_field(size, 3)
        for _ in range(int(torch.randint(0, 5, (1,)))):
            if len(lung) and float(torch.rand(1)) < 0.7:
                cy, cx = lung[int(torch.randint(len(lung), (1,)))]
            else:
                cy, cx = torch.rand(2) * size
            r = float(torch.empty(1).uniform_(0.03, 0.15)) * size
            amp = float(torch.empty(1).uniform_(0.05, 0.35))
            add += amp * torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * (r / 1.5) ** 2))
        return (x + add).clamp(0, 1)


class _Neck(torch.nn.Module):
    """With probability ``p``, shift image and mask (1, S, S) down by 5-30 % of the side and fill
    the rows above with soft tissue: bright (the image's 55-90th percentile), smooth, noisy, with a
    darker air column (the trachea) near the middle half of the time; the mask there is 0."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.p <= 0 or float(torch.rand(1)) >= self.p:
            return x, mask
        size = x.shape[-1]
        h = max(1, int(float(torch.empty(1).uniform_(0.05, 0.3)) * size))
        level = float(torch.quantile(x.flatten(), float(torch.empty(1).uniform_(0.55, 0.9))))
        tissue = level + 0.08 * _smooth_field(size, 4)[:h] + 0.02 * torch.randn(h, size)
        if float(torch.rand(1)) < 0.5:
            cx = size * float(torch.empty(1).uniform_(0.4, 0.6))
            w = size * float(torch.empty(1).uniform_(0.03, 0.08))
            cols = torch.arange(size, dtype=torch.float32)
            tissue = tissue - float(torch.empty(1).uniform_(0.05, 0.2)) * torch.exp(-((cols - cx) / w) ** 2)
        # A soft transition: real apices fade into the neck, they do not stop at a ruled line.
        edge = torch.linspace(0, 1, min(h, max(2, size // 32)))
        below = x[0, : len(edge)]
        out_x = torch.cat([tissue, x[0, : size - h]])
        out_x[h : h + len(edge)] = edge[:, None] * below + (1 - edge[:, None]) * tissue[-1:]
        out_m = torch.cat([torch.zeros(h, size), mask[0, : size - h]])
        return out_x.clamp(0, 1)[None], out_m[None]


class LungPairs(Dataset):
    def __init__(self, images: torch.Tensor, masks: torch.Tensor, size: int, augment: bool = True, opacity_p: float = 0.0, neck_p: float = 0.0) -> None:
        self.images, self.masks, self.size, self.augment = images, masks, size, augment
        # Zooming out down to 0.7 shows more of what surrounds the thorax (shoulders, abdomen).
        wide = opacity_p > 0 or neck_p > 0
        self.geometry = v2.Compose([
            v2.RandomAffine(degrees=10, translate=(0.1, 0.1) if wide else (0.08, 0.08), scale=(0.7, 1.15) if wide else (0.85, 1.15), shear=4),
            v2.RandomResizedCrop(size, scale=(0.6, 1.0), ratio=(0.85, 1.18), antialias=True),
        ])
        self.neck = _Neck(neck_p)
        self.opacities = _Opacities(opacity_p)
        self.intensity = _Intensity()

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = self.images[i], self.masks[i]
        if not self.augment:
            return F.interpolate(image[None], size=(self.size,) * 2, mode="area")[0], (F.interpolate(mask[None], size=(self.size,) * 2, mode="area")[0] >= 0.5).float()
        image, mask = self.neck(image, mask)  # before the geometry, which then turns and zooms it too
        image, mask = self.geometry(tv_tensors.Image(image), tv_tensors.Mask(mask))
        image, mask = image.as_subclass(torch.Tensor), (mask.as_subclass(torch.Tensor) >= 0.5).float()
        return self.intensity(self.opacities(image, mask)), mask


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
    train_set = LungPairs(images[: len(images) - n_hold], masks[: len(images) - n_hold], cfg.input_size, opacity_p=cfg.opacity_p, neck_p=cfg.neck_p)
    held = LungPairs(images[len(images) - n_hold :], masks[len(images) - n_hold :], cfg.input_size, augment=False)
    loader = common.make_loader(cfg, train_set, d)

    model = LungSegmenter(cfg.base_width, cfg.depth, cfg.input_size)
    if cfg.init:
        start = LungSegmenter.from_pretrained(cfg.init)
        if start.config != model.config:
            raise ValueError(f"init={cfg.init!r} has the architecture {start.config}, the config asks for {model.config}")
        model.load_state_dict(start.state_dict())
    model = model.to(d.device)
    md = common.wrap_ddp(model, d)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(cfg.steps, 1))
    held_dice = float("nan")

    def step(batch: list[torch.Tensor], n: int) -> dict[str, Any]:
        nonlocal held_dice
        x, y = (t.to(d.device) for t in batch)
        logits = md(x)
        loss = F.binary_cross_entropy_with_logits(logits, y) + (1 - dice(torch.sigmoid(logits), y))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if len(held) and common.due(n, cfg.log_every, cfg.steps):
            model.eval()
            with torch.no_grad():
                hx = torch.stack([held[i][0] for i in range(len(held))]).to(d.device)
                hy = torch.stack([held[i][1] for i in range(len(held))]).to(d.device)
                held_dice = float(dice((torch.sigmoid(model(hx)) > 0.5).float(), hy))
            model.train()
        return {"loss": loss, "holdout_dice": held_dice, "lr": sched.get_last_lr()[0]}

    def samples(batch: list[torch.Tensor]) -> tuple[torch.Tensor, int]:
        show, y = (t[:8].to(d.device) for t in batch)
        pred = (torch.sigmoid(model(show)) > 0.5).float()
        return torch.cat([show, pred, y]), len(show)

    last = common.train_loop(cfg, d, out, loader, step, modules={"model": model}, optimizers={"model": opt}, schedulers={"model": sched},
                             samples=samples, name="lung", show=("loss", "holdout_dice"))
    if d.is_main:
        model.eval()
        model.save_pretrained(out / "model", metadata={"trained_steps": last, "data": str(cfg.data), "train_images": len(train_set), "holdout_dice": held_dice, "init": cfg.init, "opacity_p": cfg.opacity_p, "neck_p": cfg.neck_p})
    common.cleanup(d)
    return out / "model"
