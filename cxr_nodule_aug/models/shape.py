"""Shape GAN (paper section III-A): a DCGAN that maps z ~ N(0, I) to a nodule shape mask."""

from __future__ import annotations

import itertools
import math
from collections import OrderedDict

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cxr_nodule_aug.hub import PretrainedMixin


def _num_upsamplings(image_size: int) -> int:
    n = math.log2(image_size / 4)
    if image_size < 8 or n != int(n):
        raise ValueError(f"image_size must be 4 * 2**k with k >= 1 (8, 16, ..., 128), got {image_size}")
    return int(n)


class ShapeGenerator(PretrainedMixin, nn.Module):
    """DCGAN generator: ``z`` (B, latent_dim) -> shape probabilities (B, 1, S, S) in [0, 1].

    Paper size (the defaults): latent_dim=100, base_width=512 at 4x4, five stride-2 4x4 transposed
    convolutions (BN + ReLU) to 128x128. The shipped model is smaller (base_width=128,
    image_size=64: four upsamplings); ``image_size`` sets the number of upsamplings. Threshold at
    0.5 for the binary mask.

    ``smooth``: the side of the mean filter :func:`binarize_shapes` applies before the 0.5
    threshold (3, the default, for the models trained before it existed; 1 = none). It is part
    of the model's definition and saved in its config: a model trained on pixel-exact masks
    (the LIDC-IDRI silhouettes) loses their real boundary roughness to a 3 x 3 mean.

    In eval mode :meth:`generate` keeps the last ``cache_size`` masks per (seed, device) in an
    LRU cache, so a replay (``InsertNodules``) or a repeated seed does not run the network
    again. Any change to the weights (an optimiser step, ``load_state_dict``, ``.to()``)
    empties it.
    """

    cache_size: int = 2048

    def __init__(self, latent_dim: int = 100, base_width: int = 512, image_size: int = 128, smooth: int = 3) -> None:
        super().__init__()
        if int(smooth) != smooth or smooth < 1 or smooth % 2 == 0:
            raise ValueError(f"smooth must be an odd int >= 1 (the mean filter's side; 1 = none), got {smooth!r}")
        self.register_config(latent_dim=latent_dim, base_width=base_width, image_size=image_size, smooth=int(smooth))
        self.latent_dim = latent_dim
        self.image_size = image_size
        self.smooth = int(smooth)
        n_up = _num_upsamplings(image_size)
        widths = [max(base_width // 2**i, 8) for i in range(n_up)]
        layers: list[nn.Module] = [
            nn.ConvTranspose2d(latent_dim, widths[0], 4, 1, 0, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
        ]
        for i in range(n_up - 1):
            layers += [nn.ConvTranspose2d(widths[i], widths[i + 1], 4, 2, 1, bias=False), nn.BatchNorm2d(widths[i + 1]), nn.ReLU(inplace=True)]
        layers += [nn.ConvTranspose2d(widths[-1], 1, 4, 2, 1, bias=False)]
        self.net = nn.Sequential(*layers)
        self._shape_cache: OrderedDict[tuple[int, torch.device], torch.Tensor] = OrderedDict()
        self._cache_stamp: tuple | None = None

    def __getstate__(self) -> dict:
        state = dict(super().__getstate__())  # pickled to DataLoader workers: without the cache
        state["_shape_cache"], state["_cache_stamp"] = OrderedDict(), None
        return state

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Logits -> probabilities; ``z`` is (B, latent_dim) or (B, latent_dim, 1, 1)."""
        if z.ndim == 2:
            z = z[:, :, None, None]
        if z.ndim != 4 or z.shape[1] != self.latent_dim:
            raise ValueError(f"z must be (B, {self.latent_dim}), got shape {tuple(z.shape)}")
        return torch.sigmoid(self.net(z))

    def latent_from_seeds(self, seeds: list[int] | torch.Tensor) -> torch.Tensor:
        """One z per seed, drawn on the CPU so the latent is identical on every device."""
        seeds = [int(s) for s in (seeds.tolist() if isinstance(seeds, torch.Tensor) else seeds)]
        out = torch.empty(len(seeds), self.latent_dim)
        for i, seed in enumerate(seeds):
            out[i] = torch.randn(self.latent_dim, generator=torch.Generator().manual_seed(seed))
        return out

    @torch.inference_mode()
    def generate(self, seeds: list[int] | torch.Tensor, device: torch.device | str | None = None) -> torch.Tensor:
        """Binary shape masks (B, S, S) bool, one per seed, reproducible from the seeds.

        The seeds not in the cache go through the network in one batch.
        """
        device = torch.device(device) if device is not None else next(self.parameters()).device
        seeds = [int(s) for s in (seeds.tolist() if isinstance(seeds, torch.Tensor) else seeds)]
        if self.training or self.cache_size <= 0:  # BatchNorm on batch statistics: nothing to cache
            return binarize_shapes(self(self.latent_from_seeds(seeds).to(device))[:, 0], self.smooth)
        cache = self._shape_cache
        stamp = self._weights_stamp()
        if stamp != self._cache_stamp:
            cache.clear()
            self._cache_stamp = stamp
        missing = list(dict.fromkeys(s for s in seeds if (s, device) not in cache))
        if missing:
            masks = binarize_shapes(self(self.latent_from_seeds(missing).to(device))[:, 0], self.smooth)
            cache.update(((s, device), m) for s, m in zip(missing, masks))
        out = [cache[(s, device)] for s in seeds]
        for s in seeds:
            cache.move_to_end((s, device))
        while len(cache) > self.cache_size:
            cache.popitem(last=False)
        if not out:
            return torch.zeros(0, self.image_size, self.image_size, dtype=torch.bool, device=device)
        return torch.stack(out)

    def _weights_stamp(self) -> tuple:
        # In-place updates bump a tensor's version counter; replacing a tensor changes its storage.
        return tuple((t.data_ptr(), t._version, t.dtype, t.device) for t in itertools.chain(self.parameters(), self.buffers()))


def binarize_shapes(prob: torch.Tensor, smooth: int = 3) -> torch.Tensor:
    """Shape probabilities (B, S, S) -> solid binary masks (B, S, S) bool: one region each.

    Part of the generator's definition (what :meth:`ShapeGenerator.generate` returns):

    1. a ``smooth`` x ``smooth`` mean (default 3; 1 = none) before the 0.5 threshold removes
       the isolated pixels and ragged edges that transposed convolutions leave;
    2. only the largest 8-connected region is kept (a nodule is one lesion; stray islands
       would add a second, unlabelled lesion, and size modulation measures one region);
    3. enclosed holes are filled.

    A mask with no pixel above the threshold stays empty.
    """
    from scipy import ndimage

    x = prob.float()
    if smooth > 1:
        x = F.avg_pool2d(x[:, None], smooth, stride=1, padding=smooth // 2, count_include_pad=False)[:, 0]
    x = x > 0.5
    # The structures connect pixels within each mask only, never across the batch. On the CPU
    # in every case (a (B, S, S) bool copy): 0.2 ms for one 64 px mask against 1.3 ms for a
    # max-pool flood fill.
    x = x.cpu().numpy()
    if len(x) == 0:  # no masks asked for (reshape(0, -1) is undefined)
        return torch.from_numpy(x).to(prob.device)
    within_mask_8 = np.zeros((3, 3, 3), dtype=bool)
    within_mask_8[1] = True
    labels, n = ndimage.label(x, structure=within_mask_8)
    if n > int(x.reshape(len(x), -1).any(1).sum()):  # some mask has more than one region
        sizes = np.bincount(labels.ravel(), minlength=n + 1)
        sizes[0] = 0
        flat = labels.reshape(len(x), -1)
        for i in range(len(x)):
            ids = np.unique(flat[i])
            ids = ids[ids > 0]
            if len(ids) > 1:
                x[i] = labels[i] == ids[np.argmax(sizes[ids])]
    # Background 8-connected to the border stays background, the rest is filled.
    filled = ndimage.binary_fill_holes(x, structure=within_mask_8)
    return torch.from_numpy(filled).to(prob.device)


DISCRIMINATOR_NORMS = ("batch", "spectral")


class ShapeDiscriminator(PretrainedMixin, nn.Module):
    """Mirror of :class:`ShapeGenerator`: (B, 1, S, S) -> one LSGAN score per mask (B,).

    ``norm="batch"``: the paper's DCGAN discriminator (BatchNorm after every inner convolution).
    ``norm="spectral"``: the same convolutions, each spectrally normalised (Miyato et al. 2018)
    and without BatchNorm, which bounds the discriminator's Lipschitz constant.
    """

    def __init__(self, base_width: int = 512, image_size: int = 128, norm: str = "batch") -> None:
        super().__init__()
        if norm not in DISCRIMINATOR_NORMS:
            raise ValueError(f"norm={norm!r}: expected one of {DISCRIMINATOR_NORMS}")
        self.register_config(base_width=base_width, image_size=image_size, norm=norm)
        n_down = _num_upsamplings(image_size)
        widths = [max(base_width // 2**i, 8) for i in range(n_down)][::-1]
        sn = nn.utils.parametrizations.spectral_norm if norm == "spectral" else (lambda m: m)
        layers: list[nn.Module] = [sn(nn.Conv2d(1, widths[0], 4, 2, 1, bias=False)), nn.LeakyReLU(0.2, inplace=True)]
        for i in range(n_down - 1):
            layers.append(sn(nn.Conv2d(widths[i], widths[i + 1], 4, 2, 1, bias=norm == "spectral")))
            if norm == "batch":
                layers.append(nn.BatchNorm2d(widths[i + 1]))
            layers.append(nn.LeakyReLU(0.2, inplace=True))
        layers += [sn(nn.Conv2d(widths[-1], 1, 4, 1, 0, bias=False))]
        self.net = nn.Sequential(*layers)

    def forward(self, mask: torch.Tensor) -> torch.Tensor:
        return self.net(mask).flatten(1).mean(1)
