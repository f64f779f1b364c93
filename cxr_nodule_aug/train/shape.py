"""``cxr-nodule-aug train shape``: the DCGAN + LSGAN shape generator (paper section III-A, IV-B).

Data: any folder of nodule masks (PNG, any size): a binary file (nonzero = nodule) holds one
nodule; a labelled file (values 1, 2, ...) holds one nodule per value, as SimCXR's
``masks/*_nodules.png`` do. ``pattern`` picks the files. Or ``data=lidc:SPLIT`` (train, val,
test): the coronal silhouettes of the LIDC-IDRI nodules of that split (readers' >= 50 %
consensus, coronal diameter >= ``lidc_min_diameter_mm``; needs the ``lidc`` extra).
Or ``masks=OUT``: the pseudo masks ``cxr-nodule-aug masks`` derived from a box-only dataset.
Each mask is size-modulated to ``norm_diameter_px`` on a ``norm_canvas`` grid, then resized to
``image_size`` (the paper: 100 px on 256, then 128 x 128).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from cxr_nodule_aug.functional.size import modulate_size
from cxr_nodule_aug.models.shape import ShapeDiscriminator, ShapeGenerator, binarize_shapes
from cxr_nodule_aug.train import common

log = logging.getLogger(__name__)


@dataclasses.dataclass
class ShapeConfig(common.AdversarialConfig):
    """:class:`~cxr_nodule_aug.train.common.AdversarialConfig` plus the shape GAN's fields.
    ``lr`` is G's learning rate, ``d_lr`` D's; ``base_width`` G's channels at 4 x 4 (the
    paper's 512), ``d_width`` D's widest layer. ``masks``: a ``cxr-nodule-aug masks`` output
    folder (box-only data), in place of ``data``."""

    masks: str = ""
    out: str = "runs/shape"
    steps: int = 4000
    batch_size: int = 16
    pattern: str = "*.png"
    lidc_min_diameter_mm: float = 5.0
    latent_dim: int = 100
    base_width: int = 512
    d_width: int = 512
    image_size: int = 128
    norm_diameter_px: float = 100.0
    norm_canvas: int = 256
    augment: bool = True
    # With augment: rotations by 90 degrees too (true), or only flips and 180 degrees (false),
    # which keep horizontal edges horizontal, e.g. the axial-slice steps of LIDC silhouettes.
    augment_rot90: bool = True
    # Stabilisers, all off by default (the paper's DCGAN + LSGAN): "spectral" normalises D's
    # convolutions instead of BatchNorm; ema_decay > 0 keeps an exponential moving average of
    # G's weights, which is what is sampled and saved; real_label < 1 is one-sided label
    # smoothing (LSGAN target for real masks); d_blur_sigma > 0 blurs both real and generated
    # masks (Gaussian, in px) before D, so D cannot judge by binary vs soft edges alone.
    d_norm: str = "batch"
    ema_decay: float = 0.0
    real_label: float = 1.0
    d_blur_sigma: float = 0.0
    # The generator's mean filter before its 0.5 threshold (ShapeGenerator's ``smooth``; saved
    # with the model): 3 = as before, 1 = none.
    smooth: int = 3
    # Fine-tuning: ``init`` = a ShapeGenerator weights folder (save_pretrained / weights/shape)
    # G starts from (same latent_dim, base_width, image_size); D starts fresh. For the first
    # ``d_warmup_steps`` steps only D trains (G frozen, its fakes drawn in eval mode, so G is
    # exactly the init model until then), at ``d_warmup_lr`` (0: ``d_lr``).
    init: str = ""
    d_warmup_steps: int = 0
    d_warmup_lr: float = 0.0
    # Every ``snapshot_every`` steps (0: never) the sampled model (G, or its EMA) is saved as
    # ``<out>/snapshots/stepNNNNNN/`` (loadable with from_pretrained), for selection on held-out
    # masks: ``checkpoint.pt`` keeps only the latest step.
    snapshot_every: int = 0

    def check(self) -> None:
        super().check()
        for name in ("latent_dim", "image_size", "norm_canvas"):
            common.check_value(self, name, minimum=1)
        common.check_value(self, "norm_diameter_px", above=0)
        common.check_value(self, "lidc_min_diameter_mm", minimum=0)
        for name in ("d_warmup_steps", "d_warmup_lr", "snapshot_every"):
            common.check_value(self, name, minimum=0)
        if self.d_warmup_steps >= self.steps:
            raise ValueError(f"d_warmup_steps={self.d_warmup_steps}: expected fewer than steps={self.steps} (G would never train)")


def read_masks(path: Path) -> list[torch.Tensor]:
    """One bool mask per nodule in a PNG: one for a binary file, one per label value otherwise."""
    from PIL import Image

    with Image.open(path) as im:
        arr = np.array(im)
    if arr.ndim == 3:
        arr = arr[..., 0]
    values = [v for v in np.unique(arr) if v != 0]
    if len(values) <= 1:
        return [torch.from_numpy(arr > 0)] if values else []
    return [torch.from_numpy(arr == v) for v in values]


MAX_LABELS = 32  # distinct nonzero values a labelled mask file may hold (SimCXR's hold 1-3)
CHECKED_FILES = 5  # files looked at before anything else happens


def check_mask_files(root: Path, files: list[Path], max_labels: int = MAX_LABELS) -> None:
    """Refuse files that are not nodule masks, from the first :data:`CHECKED_FILES` of them.

    A nodule mask is binary (0 and one value) or labelled (0 and at most ``max_labels``
    values, one per nodule). A radiograph has hundreds or thousands of grey levels, each of
    which :func:`read_masks` would take for a nodule: raise ``ValueError`` saying what was found.
    """
    from PIL import Image

    for f in files[:CHECKED_FILES]:
        try:
            with Image.open(f) as im:
                arr = np.array(im)
        except OSError as err:
            raise ValueError(f"data={str(root)!r}: cannot read {str(f)!r} as an image ({err}); train shape needs PNG nodule masks") from None
        if arr.ndim == 3:
            arr = arr[..., 0]
        values = np.unique(arr)
        labels = int((values != 0).sum())
        if labels > max_labels:
            raise ValueError(
                f"data={str(root)!r}: image {f.name!r} has {len(values):,} distinct values ({arr.dtype}, {arr.shape[1]} x {arr.shape[0]}); "
                f"expected binary nodule masks (0 = background) or a labelled image with <= {max_labels} labels. "
                "Is this a folder of radiographs? train shape needs nodule masks (e.g. a SimCXR export's masks/ with pattern='*_nodules.png')"
            )


def normalise_masks(named_masks, image_size: int, norm_diameter_px: float, norm_canvas: int, source: str) -> torch.Tensor:
    """Size-modulate each ``(name, mask)`` to ``norm_diameter_px`` on ``norm_canvas``, resize to
    ``image_size``: (N, 1, S, S) float {0, 1}. Masks that cannot be normalised are skipped (logged)."""
    masks, skipped, total = [], [], 0
    for name, m in named_masks:
        total += 1
        try:
            norm = modulate_size(m, norm_diameter_px, canvas=norm_canvas)
        except ValueError as err:
            skipped.append(f"{name}: {err}")
            continue
        small = F.interpolate(norm[None, None].float(), size=(image_size, image_size), mode="area")[0] >= 0.5
        masks.append(small)
    if skipped:
        log.warning("skipped %d of %d masks that could not be normalised, e.g. %s", len(skipped), total, skipped[0])
    if not masks:
        raise ValueError(f"none of the {total} masks in {source} could be normalised")
    return torch.stack(masks).float()


class MaskFolder(Dataset):
    """Normalised shape masks (1, S, S) float {0, 1} from a folder of PNG masks."""

    def __init__(self, root: str | Path, image_size: int = 128, norm_diameter_px: float = 100.0, norm_canvas: int = 256, augment: bool = True, pattern: str = "*.png") -> None:
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"data={str(root)!r} is not a directory of PNG masks")
        files = sorted(root.rglob(pattern))
        if not files:
            raise FileNotFoundError(f"data={str(root)!r} holds no files matching {pattern!r}")
        check_mask_files(root, files)
        named = ((f.name, m) for f in files for m in read_masks(f))
        self.masks = normalise_masks(named, image_size, norm_diameter_px, norm_canvas, str(root))
        self.augment = augment
        self.files = files

    def __len__(self) -> int:
        return len(self.masks)

    rot90: bool = True  # augment with quarter turns (else only half turns and flips)

    def __getitem__(self, i: int) -> torch.Tensor:
        m = self.masks[i]
        if self.augment:  # shapes have no preferred orientation
            k = int(torch.randint(4, (1,))) if self.rot90 else 2 * int(torch.randint(2, (1,)))
            m = torch.rot90(m, k, dims=(1, 2))
            if bool(torch.randint(2, (1,))):
                m = m.flip(2)
        return m


class LIDCSilhouettes(MaskFolder):
    """Normalised coronal silhouettes of one LIDC-IDRI split (``data=lidc:SPLIT``).

    Each silhouette is cut at a pixel size that makes its coronal diameter about
    ``norm_diameter_px`` (so the shape is resampled once from the readers' contours, not
    upsampled from a small mask), then normalised like :class:`MaskFolder`'s masks.
    """

    def __init__(self, split: str, image_size: int = 128, norm_diameter_px: float = 100.0, norm_canvas: int = 256,
                 augment: bool = True, min_diameter_mm: float = 5.0, limit: int | None = None) -> None:
        from cxr_nodule_aug.lidc import LIDCDatabase, nodule_table

        self.nodule_ids = [r["nodule_id"] for r in nodule_table(split)
                           if r["coronal_diameter_mm"] >= min_diameter_mm][:limit]
        if not self.nodule_ids:
            raise ValueError(f"data=lidc:{split}: no nodule with coronal diameter >= {min_diameter_mm} mm")
        size = {r["nodule_id"]: r["coronal_diameter_mm"] for r in nodule_table(split)}
        db = LIDCDatabase()

        def named():
            for nid in self.nodule_ids:
                sil = db.nodule(nid).silhouette(spacing_mm=size[nid] / norm_diameter_px)
                yield nid, torch.from_numpy(sil)

        self.masks = normalise_masks(named(), image_size, norm_diameter_px, norm_canvas, f"lidc:{split}")
        self.augment = augment
        self.files = []


def mask_source(cfg: ShapeConfig) -> tuple[str, str]:
    """(folder, file pattern): ``cfg.data`` and ``cfg.pattern``, or the mask folder of
    ``cfg.masks`` (a ``cxr-nodule-aug masks`` output) and every PNG in it."""
    if not cfg.masks:
        return cfg.data, cfg.pattern
    if cfg.data:
        raise ValueError(f"give data= (a folder of mask PNGs or lidc:SPLIT) or masks= (a cxr-nodule-aug masks output), not both: "
                         f"data={cfg.data!r}, masks={cfg.masks!r}")
    from cxr_nodule_aug.datasets import nodule_mask_folder

    return str(nodule_mask_folder(cfg.masks)), "*.png"


def open_shape_data(cfg: ShapeConfig, augment: bool | None = None) -> MaskFolder:
    """The training masks ``cfg.data`` names: a folder of PNG masks, or ``lidc:SPLIT``; or
    ``cfg.masks``' pseudo masks."""
    augment = cfg.augment if augment is None else augment
    if cfg.masks:
        folder, pattern = mask_source(cfg)
        return MaskFolder(folder, cfg.image_size, cfg.norm_diameter_px, cfg.norm_canvas, augment, pattern)
    if str(cfg.data).startswith("lidc:"):
        split = str(cfg.data).split(":", 1)[1]
        from cxr_nodule_aug.lidc import SPLITS

        if split not in SPLITS:
            raise ValueError(f"data={cfg.data!r}: expected lidc:SPLIT with SPLIT one of {SPLITS}")
        data = LIDCSilhouettes(split, cfg.image_size, cfg.norm_diameter_px, cfg.norm_canvas, augment,
                               cfg.lidc_min_diameter_mm)
    else:
        data = MaskFolder(cfg.data, cfg.image_size, cfg.norm_diameter_px, cfg.norm_canvas, augment, cfg.pattern)
    data.rot90 = cfg.augment_rot90
    return data


def check_stabilisers(cfg: ShapeConfig) -> None:
    """Refuse out-of-range stabiliser settings, naming the config key."""
    from cxr_nodule_aug.models.shape import DISCRIMINATOR_NORMS

    if cfg.d_norm not in DISCRIMINATOR_NORMS:
        raise ValueError(f"d_norm={cfg.d_norm!r}: expected one of {DISCRIMINATOR_NORMS}")
    if not 0.0 <= cfg.ema_decay < 1.0:
        raise ValueError(f"ema_decay={cfg.ema_decay}: expected 0 (off) <= ema_decay < 1")
    if not 0.5 < cfg.real_label <= 1.0:
        raise ValueError(f"real_label={cfg.real_label}: expected 0.5 < real_label <= 1 (1 = no smoothing)")
    if not cfg.d_blur_sigma >= 0.0:
        raise ValueError(f"d_blur_sigma={cfg.d_blur_sigma}: expected >= 0 px (0 = off)")


def lsgan_d_loss(real: torch.Tensor, fake: torch.Tensor, real_label: float = 1.0) -> torch.Tensor:
    """LSGAN discriminator loss with the real target ``real_label`` (< 1: one-sided smoothing)."""
    return 0.5 * ((real - real_label) ** 2).mean() + 0.5 * (fake**2).mean()


def blur_for_discriminator(sigma: float):
    """``x -> x`` for ``sigma == 0``, else a separable Gaussian blur of (B, 1, S, S) masks
    (reflect padding, kernel radius 3 sigma): applied alike to real and generated masks."""
    if sigma <= 0:
        return lambda x: x
    r = max(1, int(round(3 * sigma)))
    k = torch.exp(-0.5 * (torch.arange(-r, r + 1, dtype=torch.float32) / sigma) ** 2)
    k = k / k.sum()

    def blur(x: torch.Tensor) -> torch.Tensor:
        kk = k.to(x.device, x.dtype)
        x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="reflect"), kk.view(1, 1, 1, -1))
        return F.conv2d(F.pad(x, (0, 0, r, r), mode="reflect"), kk.view(1, 1, -1, 1))

    return blur


@torch.no_grad()
def update_ema(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """``ema <- decay * ema + (1 - decay) * model`` for the weights; buffers (BatchNorm's
    running statistics) copied. Those statistics are the training G's, not the averaged
    weights': :func:`recalibrate_batchnorm` the EMA before it is sampled or saved."""
    for pe, p in zip(ema.parameters(), model.parameters()):
        pe.lerp_(p.detach(), 1.0 - decay)
    for be, b in zip(ema.buffers(), model.buffers()):
        be.copy_(b)


RECALIBRATION_BATCHES = 64
RECALIBRATION_BATCH_SIZE = 256


@torch.no_grad()
def recalibrate_batchnorm(model: ShapeGenerator, seed: int = 0, batches: int = RECALIBRATION_BATCHES,
                          batch_size: int = RECALIBRATION_BATCH_SIZE) -> ShapeGenerator:
    """A copy of ``model`` (eval mode) whose BatchNorm running statistics are the exact
    averages over ``batches`` batches of ``batch_size`` latents (seeded) through *its own*
    weights. An EMA of G's weights with G's running statistics (what :func:`update_ema` keeps)
    normalises with statistics of other weights; ``model`` itself is left as it is."""
    out = copy.deepcopy(model)
    bns = [m for m in out.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    out.train()
    device = next(out.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    for _ in range(batches):
        out(torch.randn(batch_size, out.latent_dim, generator=gen).to(device))
    for m, orig in zip(bns, (m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm))):
        m.momentum = orig.momentum
    return out.eval()


def load_init(cfg: ShapeConfig) -> dict[str, torch.Tensor]:
    """``cfg.init``'s generator weights (a state dict); refuse a different architecture, naming ``init``."""
    from cxr_nodule_aug.hub import WeightsError

    try:
        src = ShapeGenerator.from_pretrained(cfg.init)
    except (OSError, ValueError, WeightsError) as err:
        raise ValueError(f"init={cfg.init!r}: cannot load ShapeGenerator weights ({err})") from None
    mine = {"latent_dim": cfg.latent_dim, "base_width": cfg.base_width, "image_size": cfg.image_size}
    theirs = {k: src.config[k] for k in mine}
    if theirs != mine:
        raise ValueError(f"init={cfg.init!r}: the model has {theirs}, the config {mine}")
    return src.state_dict()


def train(cfg: ShapeConfig) -> Path:
    folder, pattern = mask_source(cfg)
    root = Path(folder)
    if root.is_dir():  # refuse a folder that is not masks before the run folder is made
        check_mask_files(root, sorted(root.rglob(pattern)))
    check_stabilisers(cfg)  # before the run folder is made
    init = load_init(cfg) if cfg.init else None  # a bad init= fails before the run folder is made
    d, out = common.start_run(cfg)  # seeds everything: the networks are made after it

    data = open_shape_data(cfg)
    loader = common.make_loader(cfg, data, d)
    G = ShapeGenerator(cfg.latent_dim, cfg.base_width, cfg.image_size, cfg.smooth)
    if init is not None:
        G.load_state_dict(init)
    G = G.to(d.device)
    D = ShapeDiscriminator(cfg.d_width, cfg.image_size, cfg.d_norm).to(d.device)
    G_ema = copy.deepcopy(G).requires_grad_(False) if cfg.ema_decay > 0 else None
    blur = blur_for_discriminator(cfg.d_blur_sigma)
    Gd, Dd = common.wrap_ddp(G, d), common.wrap_ddp(D, d)
    opt_g = torch.optim.Adam(G.parameters(), lr=cfg.lr, betas=tuple(cfg.betas))
    opt_d = torch.optim.Adam(D.parameters(), lr=cfg.d_lr, betas=tuple(cfg.betas))
    warmup_lr = cfg.d_warmup_lr or cfg.d_lr

    def set_d_lr(n: int) -> None:  # from the step number, so a resume gets it right
        for group in opt_d.param_groups:
            group["lr"] = warmup_lr if n <= cfg.d_warmup_steps else cfg.d_lr

    fixed_z = torch.randn(32, cfg.latent_dim, generator=torch.Generator().manual_seed(cfg.seed)).to(d.device)

    last_step = {"n": 0}  # the latest optimiser step: the EMA changes only there

    def step(real: torch.Tensor, n: int) -> dict[str, torch.Tensor]:
        last_step["n"] = n
        real = real.to(d.device)
        z = torch.randn(real.shape[0], cfg.latent_dim, device=d.device)
        warmup = n <= cfg.d_warmup_steps
        set_d_lr(n)
        if warmup:  # D only: G (weights and BatchNorm statistics) stays the init model
            G.eval()
            with torch.no_grad():
                fake = G(z)
            G.train()
        else:
            fake = Gd(z)
        # Real and fake in separate batches: with BatchNorm in D, a mixed batch would let D
        # judge by batch statistics that the generator step (fake only) never shows it.
        loss_d = lsgan_d_loss(Dd(blur(real)), Dd(blur(fake.detach())), cfg.real_label)
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()
        if warmup:
            return {"loss_d": loss_d, "fake_fill": (fake > 0.5).float().mean(), "real_fill": real.mean()}
        loss_g = common.lsgan_g_loss(Dd(blur(fake)))
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
        if G_ema is not None:
            update_ema(G_ema, G, cfg.ema_decay)
        return {"loss_g": loss_g, "loss_d": loss_d, "fake_fill": (fake.detach() > 0.5).float().mean(), "real_fill": real.mean()}

    recalibrated: dict[str, Any] = {}

    def sampled() -> ShapeGenerator:
        """What is sampled and saved: G, or its EMA with BatchNorm statistics of its own weights
        (recalibrated once per step, however many of samples / snapshot / final save ask)."""
        if G_ema is None:
            return G
        if recalibrated.get("n") != last_step["n"]:
            recalibrated.update(n=last_step["n"], model=recalibrate_batchnorm(G_ema, cfg.seed))
        return recalibrated["model"]

    def save_sampled(folder: Path, n: int) -> None:
        with common.rng_preserved():  # a snapshot does not change the run's random draws
            model = sampled()
            was_training = model.training
            model.eval().save_pretrained(folder, metadata={"trained_steps": n, "data": str(cfg.data), "num_masks": len(data),
                                                           **({"init": cfg.init} if cfg.init else {})})
            model.train(was_training)

    def samples(_batch) -> tuple[torch.Tensor, int]:
        model = sampled()
        return binarize_shapes(model(fixed_z)[:, 0], model.smooth)[:, None].float(), 8

    def step_and_snapshot(real: torch.Tensor, n: int) -> dict[str, torch.Tensor]:
        values = step(real, n)
        if d.is_main and common.due(n, cfg.snapshot_every, cfg.steps):
            save_sampled(out / "snapshots" / f"step{n:06d}", n)
        return values

    modules, optimizers = {"G": G, "D": D, **({"G_ema": G_ema} if G_ema is not None else {})}, {"G": opt_g, "D": opt_d}
    last = common.train_loop(cfg, d, out, loader, step_and_snapshot, modules=modules, optimizers=optimizers, samples=samples, name="shape", show=("loss_g", "loss_d"))
    if d.is_main:
        save_sampled(out / "model", last)
    common.cleanup(d)
    return out / "model"
