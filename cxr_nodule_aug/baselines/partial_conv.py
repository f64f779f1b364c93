"""Partial-convolution U-Net inpainter (Liu et al., ECCV 2018): the Syn&Select generator of the
paper's Table I, built to the same call contract as :class:`TextureGenerator`.

A partial convolution sees only valid (non-hole) pixels: the input is multiplied by the
validity mask, the result is rescaled by ``window size / valid count`` and the mask is
updated (a pixel becomes valid once its window held any valid pixel). So the content under the
hole never reaches the network, by construction rather than by overwriting it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from cxr_nodule_aug.hub import PretrainedMixin
from cxr_nodule_aug.models.texture import MASK_TYPES, TextureOutput


class PartialConv2d(nn.Module):
    """``W^T (X ⊙ M) · sum(1) / sum(M) + b`` where ``sum(M) > 0``, else 0 (Liu et al. eq. 1).

    ``forward(x (B, C, H, W), valid (B, 1 or C, H, W) in {0, 1})`` returns
    ``(y (B, out, H', W'), valid' (B, 1, H', W'))``. A one-channel ``valid`` applies to every
    input channel; a C-channel one (the decoder's concatenated skips) per channel.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, bias: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2, bias=bias)
        self.in_channels = in_channels
        self.register_buffer("ones", torch.ones(1, 1, kernel_size, kernel_size), persistent=False)
        self.window = float(in_channels * kernel_size * kernel_size)

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        valid = valid.to(x.dtype)
        with torch.no_grad():
            per_pixel = valid * self.in_channels if valid.shape[1] == 1 else valid.sum(1, keepdim=True)
            count = F.conv2d(per_pixel, self.ones.to(x.dtype), stride=self.conv.stride, padding=self.conv.padding)
            new_valid = (count > 0).to(x.dtype)
            scale = self.window / count.clamp_min(1.0) * new_valid
        out = F.conv2d(x * valid, self.conv.weight, None, self.conv.stride, self.conv.padding)
        out = out * scale
        if self.conv.bias is not None:
            out = out + self.conv.bias.view(1, -1, 1, 1) * new_valid
        return out, new_valid


class _PBlock(nn.Module):
    """Partial conv -> (BatchNorm) -> activation."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int, norm: bool, act: nn.Module | None) -> None:
        super().__init__()
        self.pconv = PartialConv2d(in_channels, out_channels, kernel_size, stride, bias=not norm)
        self.norm = nn.BatchNorm2d(out_channels) if norm else nn.Identity()
        self.act = act if act is not None else nn.Identity()

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, valid = self.pconv(x, valid)
        return self.act(self.norm(x)), valid


def _auto_depth(patch_size: int) -> int:
    # Liu et al. use 8 stride-2 layers on 512 px (bottleneck 2x2); stop at a 4x4 bottleneck on
    # smaller patches, which is also where a half-patch hole is filled for every kernel schedule.
    return max(2, min(8, int(math.log2(patch_size)) - 2))


class PartialConvUNet(PretrainedMixin, nn.Module):
    """Partial-convolution U-Net inpainter, one stage.

    Input: ``image`` (B, C, P, P) float in [0, 1] and ``mask`` (B, 1, P, P) in {0, 1} (1 = hole).
    Output: :class:`TextureOutput` with ``coarse`` is ``fine``, (B, C, P, P) in [0, 1].
    P must be a multiple of ``2 ** depth``.

    Architecture (Liu et al. 2018, scaled by ``base_width`` and ``depth``): encoder of ``depth``
    stride-2 partial convs, kernels 7, 5, 5, 3, ..., widths w, 2w, 4w, 8w, 8w, ... with BatchNorm
    (not on the first) and ReLU; decoder of nearest x2 upsampling, concatenation with the
    encoder skip (image and mask at the last level) and a 3x3 partial conv with BatchNorm and
    LeakyReLU(0.2); the last layer has neither and ends in tanh.

    Args:
        image_channels, base_width, patch_size, mask_type, max_fill: as :class:`TextureGenerator`
            (``patch_size`` / ``mask_type`` / ``max_fill`` tell ``insert_nodules`` and the trainer
            how to cut patches and holes).
        num_stages: accepted for the trainer's positional call; must be 1.
        depth: number of stride-2 levels; ``None`` picks ``clamp(log2(P) - 2, 2, 8)``.
    """

    def __init__(self, image_channels: int = 1, base_width: int = 64, num_stages: int = 1, patch_size: int = 256, mask_type: str = "shape", max_fill: float = 0.5, depth: int | None = None) -> None:
        super().__init__()
        if num_stages != 1:
            raise ValueError(f"PartialConvUNet is a one-stage inpainter: num_stages must be 1, got {num_stages}")
        if mask_type not in MASK_TYPES:
            raise ValueError(f"mask_type must be one of {MASK_TYPES}, got {mask_type!r}")
        if not 0 < max_fill <= 1:
            raise ValueError(f"max_fill must be in (0, 1], got {max_fill}")
        if depth is None:
            depth = _auto_depth(patch_size)
        if not 1 <= depth <= 8:
            raise ValueError(f"depth must be in 1..8, got {depth}")
        if patch_size % (2**depth) or patch_size < 16:
            raise ValueError(f"patch_size must be >= 16 and a multiple of 2**depth = {2 ** depth}, got {patch_size}")
        self.register_config(image_channels=image_channels, base_width=base_width, num_stages=num_stages, patch_size=patch_size, mask_type=mask_type, max_fill=max_fill, depth=depth)
        self.image_channels = image_channels
        self.num_stages = 1
        self.patch_size = patch_size
        self.mask_type = mask_type
        self.max_fill = max_fill
        self.depth = depth

        widths = [base_width * min(2**i, 8) for i in range(depth)]
        kernels = [7, 5, 5] + [3] * max(0, depth - 3)
        self.encoder = nn.ModuleList()
        in_ch = image_channels
        for i, (w, k) in enumerate(zip(widths, kernels)):
            self.encoder.append(_PBlock(in_ch, w, k, 2, norm=i > 0, act=nn.ReLU()))
            in_ch = w
        self.decoder = nn.ModuleList()
        skips = [image_channels] + widths[:-1]
        for i in reversed(range(depth)):
            last = i == 0
            out_ch = image_channels if last else skips[i]
            self.decoder.append(_PBlock(in_ch + skips[i], out_ch, 3, 1, norm=not last, act=None if last else nn.LeakyReLU(0.2)))
            in_ch = out_ch

    def forward(self, image: torch.Tensor, mask: torch.Tensor) -> TextureOutput:
        if image.ndim != 4 or image.shape[1] != self.image_channels:
            raise ValueError(f"image must be (B, {self.image_channels}, P, P), got {tuple(image.shape)}")
        if mask.shape != (image.shape[0], 1, *image.shape[2:]):
            raise ValueError(f"mask must be (B, 1, P, P) matching image {tuple(image.shape)}, got {tuple(mask.shape)}")
        step = 2**self.depth
        if image.shape[-1] % step or image.shape[-2] % step:
            raise ValueError(f"patch height and width must be multiples of 2**depth = {step}, got {tuple(image.shape[-2:])}")
        valid = 1 - mask.to(image.dtype)
        x = image * 2 - 1
        feats, valids = [x], [valid]
        for block in self.encoder:
            x, valid = block(x, valid)
            feats.append(x)
            valids.append(valid)
        for block, skip, skip_valid in zip(self.decoder, reversed(feats[:-1]), reversed(valids[:-1])):
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
            valid = F.interpolate(valid, scale_factor=2.0, mode="nearest")
            both = torch.cat([valid.expand(-1, x.shape[1], -1, -1), skip_valid.expand(-1, skip.shape[1], -1, -1)], dim=1)
            x, valid = block(torch.cat([x, skip], dim=1), both)
        out = (torch.tanh(x) + 1) / 2
        return TextureOutput(out, out)
