"""Nodule *layer* model for additive composition (issue 13).

A radiograph is a projection: after the log transform a nodule *adds* its attenuation to what
lies behind it (``/work/shared/PHYSICS.md``). So instead of inpainting a hole, this network
predicts the nodule's layer: a non-negative change of the working (log-intensity) grey level,
zero outside the nodule's mask, that fades towards the edge. The composite is
``context + layer``: ribs and vessels behind the nodule stay visible.

The network is the texture model's coarse-to-fine gated-convolution design (the same
:class:`~cxr_nodule_aug.models.texture.GatedConv2d` blocks), with skip connections so that
the layer follows the mask pixel for pixel, conditioned on

* the context patch, **not** blanked (the background under the nodule is known when
  augmenting, and the layer's amplitude depends on the local window and anatomy);
* the shape mask;
* a density class: ``ground_glass``, ``part_solid``, ``solid`` or ``calcified``
  (:data:`DENSITY_CLASSES`), as four constant input planes (a one-hot, or any mixture).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from cxr_nodule_aug.hub import PretrainedMixin
from cxr_nodule_aug.models.texture import GatedConv2d

DENSITY_CLASSES = ("ground_glass", "part_solid", "solid", "calcified")
"""The density conditions, in order of increasing attenuation."""

DEFAULT_DENSITY = "solid"
"""The density used when none is given: LIDC-IDRI's commonest (texture rating 5: 5,020 of
6,859 readings)."""


def density_index(density: str | int) -> int:
    """Index into :data:`DENSITY_CLASSES` of a class name (or a valid index)."""
    if isinstance(density, str):
        if density not in DENSITY_CLASSES:
            raise ValueError(f"density must be one of {DENSITY_CLASSES}, got {density!r}")
        return DENSITY_CLASSES.index(density)
    if isinstance(density, bool) or not isinstance(density, int) or not 0 <= density < len(DENSITY_CLASSES):
        raise ValueError(f"density must be one of {DENSITY_CLASSES} or an index 0-{len(DENSITY_CLASSES) - 1}, got {density!r}")
    return int(density)


def density_of_sim_nodule(params: dict) -> str:
    """The density class of a SimCXR nodule from its ``params`` (``density``, ``calcification``):
    any calcification makes it ``calcified``; else SimCXR's solid / part-solid / ground-glass."""
    if params.get("calcification", "none") != "none":
        return "calcified"
    density = params["density"]
    if density not in DENSITY_CLASSES:
        raise ValueError(f"SimCXR density {density!r} is not one of {DENSITY_CLASSES}")
    return density


def density_planes(density: torch.Tensor | Sequence[str | int], batch: int, device: torch.device | None = None) -> torch.Tensor:
    """(B, 4) float weights of the density condition from class names, indices (B,) or weights (B, 4)."""
    if isinstance(density, torch.Tensor):
        if density.ndim == 2 and density.shape == (batch, len(DENSITY_CLASSES)) and density.is_floating_point():
            if (density < 0).any():
                raise ValueError("density weights must be non-negative")
            return density.to(device)
        if density.ndim == 1 and density.shape[0] == batch and not density.is_floating_point():
            if density.min() < 0 or density.max() >= len(DENSITY_CLASSES):
                raise ValueError(f"density indices must lie in 0-{len(DENSITY_CLASSES) - 1}, got {density.tolist()}")
            return F.one_hot(density.long(), len(DENSITY_CLASSES)).float().to(device)
        raise ValueError(f"density must be (B,) class indices or (B, {len(DENSITY_CLASSES)}) float weights with B = {batch}, got {tuple(density.shape)} {density.dtype}")
    if len(density) != batch:
        raise ValueError(f"density must give one class per patch ({batch}), got {len(density)}")
    idx = torch.tensor([density_index(d) for d in density], device=device)
    return F.one_hot(idx, len(DENSITY_CLASSES)).float()


class _LayerStage(nn.Module):
    """Gated-conv U-Net: two downsamplings, a dilated bottleneck, nearest-up decoder with skips.
    Ends in a linear 3x3 convolution: the caller chooses the output's range."""

    def __init__(self, in_channels: int, width: int) -> None:
        super().__init__()
        w1, w2, w4 = width, 2 * width, 4 * width
        self.enc1 = nn.Sequential(GatedConv2d(in_channels, w1, 5), GatedConv2d(w1, w1, 3))
        self.enc2 = nn.Sequential(GatedConv2d(w1, w2, 3, stride=2), GatedConv2d(w2, w2, 3))
        self.enc3 = GatedConv2d(w2, w4, 3, stride=2)
        self.bottleneck = nn.Sequential(*[GatedConv2d(w4, w4, 3, dilation=d) for d in (1, 2, 4, 8, 1)])
        self.dec2 = nn.Sequential(GatedConv2d(w4 + w2, w2, 3), GatedConv2d(w2, w2, 3))
        self.dec1 = nn.Sequential(GatedConv2d(w2 + w1, w1, 3), GatedConv2d(w1, w1, 3))
        self.out = nn.Conv2d(w1, 1, 3, padding=1)
        nn.init.constant_(self.out.bias, -4.0)  # start near an empty layer (sigmoid(-4) = 0.018)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s1 = self.enc1(x)
        s2 = self.enc2(s1)
        y = self.bottleneck(self.enc3(s2))
        y = self.dec2(torch.cat([F.interpolate(y, scale_factor=2.0, mode="nearest"), s2], 1))
        y = self.dec1(torch.cat([F.interpolate(y, scale_factor=2.0, mode="nearest"), s1], 1))
        return self.out(y)


class LayerOutput(NamedTuple):
    coarse: torch.Tensor
    """Stage-1 layer (B, 1, P, P), >= 0, zero outside the mask."""
    fine: torch.Tensor
    """Final layer (B, 1, P, P), >= 0, zero outside the mask; equals ``coarse`` for one stage."""


class LayerGenerator(PretrainedMixin, nn.Module):
    """Coarse-to-fine gated-convolution network predicting a nodule's additive layer.

    ``forward(image, mask, density) -> LayerOutput``:

    * ``image`` (B, 1, P, P) float, the working grey level around the nodule in ~[0, 1], with
      the anatomy under the mask intact (it is kept, not replaced);
    * ``mask`` (B, 1, P, P) in {0, 1}, the nodule's footprint;
    * ``density``: class names or indices (B,) of :data:`DENSITY_CLASSES`, or (B, 4) weights.

    The layer is ``max_layer * sigmoid(.)`` times the mask: non-negative, bounded, zero outside
    the footprint; the network learns the soft edge (projected thickness falls to zero at the
    rim). The composite is ``image + layer``. P must be a multiple of 4.

    Args:
        base_width: first-layer width (CPU-sized default 8; 16-32 on a GPU).
        num_stages: 2 (coarse + refinement) or 1.
        patch_size: the patch side it was trained on; inference resamples regions to it.
        max_fill: largest nodule diameter / region side; as :class:`TextureGenerator`, the
            region around a nodule is ``max(patch_size, diameter / max_fill)`` resampled to P.
        max_layer: the largest layer value, in working grey levels.
    """

    mask_type = "shape"
    image_channels = 1

    def __init__(self, base_width: int = 8, num_stages: int = 2, patch_size: int = 64, max_fill: float = 0.5, max_layer: float = 1.0) -> None:
        super().__init__()
        if num_stages not in (1, 2):
            raise ValueError(f"num_stages must be 1 or 2, got {num_stages}")
        if patch_size % 4 or patch_size < 16:
            raise ValueError(f"patch_size must be a multiple of 4 and >= 16, got {patch_size}")
        if base_width < 1:
            raise ValueError(f"base_width must be >= 1, got {base_width}")
        if not 0 < max_fill <= 1:
            raise ValueError(f"max_fill must be in (0, 1], got {max_fill}")
        if not max_layer > 0:
            raise ValueError(f"max_layer must be > 0, got {max_layer}")
        self.register_config(base_width=base_width, num_stages=num_stages, patch_size=patch_size, max_fill=max_fill, max_layer=max_layer)
        self.num_stages, self.patch_size, self.max_fill, self.max_layer = num_stages, patch_size, max_fill, max_layer
        n_cond = len(DENSITY_CLASSES)
        self.coarse = _LayerStage(1 + 1 + n_cond, base_width)
        # The refinement also sees the coarse layer and the coarse composite.
        self.refine = _LayerStage(1 + 1 + n_cond + 2, base_width) if num_stages == 2 else None

    def forward(self, image: torch.Tensor, mask: torch.Tensor, density: torch.Tensor | Sequence[str | int]) -> LayerOutput:
        if image.ndim != 4 or image.shape[1] != 1:
            raise ValueError(f"image must be (B, 1, P, P), got {tuple(image.shape)}")
        if mask.shape != image.shape:
            raise ValueError(f"mask must be (B, 1, P, P) matching image {tuple(image.shape)}, got {tuple(mask.shape)}")
        if image.shape[-1] % 4 or image.shape[-2] % 4:
            raise ValueError(f"patch height and width must be multiples of 4, got {tuple(image.shape[-2:])}")
        B, _, H, W = image.shape
        mask = mask.to(image.dtype)
        cond = density_planes(density, B, image.device).to(image.dtype)[:, :, None, None].expand(B, -1, H, W)
        x = image * 2 - 1
        coarse = self._layer(self.coarse(torch.cat([x, mask, cond], 1)), mask)
        if self.refine is None:
            return LayerOutput(coarse, coarse)
        scaled = coarse / self.max_layer * 2 - 1
        fine = self._layer(self.refine(torch.cat([x, mask, cond, scaled, x + 2 * coarse], 1)), mask)
        return LayerOutput(coarse, fine)

    def _layer(self, raw: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.max_layer * torch.sigmoid(raw) * mask
