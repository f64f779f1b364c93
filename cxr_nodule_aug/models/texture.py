"""Texture inpainter (paper section III-C): coarse-to-fine gated-convolution generator and
the spectral-normalised PatchGAN discriminator."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from cxr_nodule_aug.hub import PretrainedMixin

MASK_TYPES = ("shape", "box")


class GatedConv2d(nn.Module):
    """``IN(LeakyReLU(W_f * x  ⊙  sigmoid(W_g * x)))`` (paper eq. 3).

    Feature and gate kernels share one convolution with ``2 * out_channels`` outputs, which is
    the same function as two convolutions and one kernel launch instead of two.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1, dilation: int = 1) -> None:
        super().__init__()
        padding = dilation * (kernel_size - 1) // 2
        self.conv = nn.Conv2d(in_channels, 2 * out_channels, kernel_size, stride, padding, dilation=dilation)
        self.norm = nn.InstanceNorm2d(out_channels, affine=True)
        self.act = nn.LeakyReLU(0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # glu(z) = z[:, :C] * sigmoid(z[:, C:]) = feature * sigmoid(gate) in one kernel; a group
        # norm with one channel per group is this instance norm, without instance_norm's
        # reshape-and-repeat through batch_norm (same parameters, same values to ~1e-6).
        y = self.act(F.glu(self.conv(x), dim=1))
        return F.group_norm(y, y.shape[1], self.norm.weight, self.norm.bias, self.norm.eps)


class _Stage(nn.Module):
    """Encoder (two downsamplings) -> dilated bottleneck {2,4,8,16} -> decoder (nearest up)."""

    def __init__(self, in_channels: int, out_channels: int, width: int) -> None:
        super().__init__()
        w1, w2, w4 = width, 2 * width, 4 * width
        self.encoder = nn.Sequential(
            GatedConv2d(in_channels, w1, 5),
            GatedConv2d(w1, w2, 3, stride=2),
            GatedConv2d(w2, w2, 3),
            GatedConv2d(w2, w4, 3, stride=2),
        )
        self.bottleneck = nn.Sequential(
            GatedConv2d(w4, w4, 3),
            GatedConv2d(w4, w4, 3),
            *[GatedConv2d(w4, w4, 3, dilation=d) for d in (2, 4, 8, 16)],
            GatedConv2d(w4, w4, 3),
            GatedConv2d(w4, w4, 3),
        )
        self.decoder1 = nn.Sequential(GatedConv2d(w4, w2, 3), GatedConv2d(w2, w2, 3))
        self.decoder2 = nn.Sequential(GatedConv2d(w2, w1, 3), GatedConv2d(w1, max(w1 // 2, 1), 3))
        self.to_image = nn.Conv2d(max(w1 // 2, 1), out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bottleneck(self.encoder(x))
        x = self.decoder1(F.interpolate(x, scale_factor=2.0, mode="nearest"))
        x = self.decoder2(F.interpolate(x, scale_factor=2.0, mode="nearest"))
        return torch.tanh(self.to_image(x))


_MIN_CONTEXT_STD = 0.02  # a flat context is not stretched into noise


def context_moments(image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std (B, 1, 1, 1) of each patch's context: the pixels of ``image`` (B, C, P, P)
    outside the hole ``mask`` (B, 1, P, P), over every channel."""
    keep = 1 - mask.to(image.dtype)
    n = keep.sum((1, 2, 3), keepdim=True).clamp(min=1) * image.shape[1]
    mu = (image * keep).sum((1, 2, 3), keepdim=True) / n
    sd = (((image - mu) ** 2 * keep).sum((1, 2, 3), keepdim=True) / n).sqrt()
    return mu, sd


class TextureOutput(NamedTuple):
    coarse: torch.Tensor
    """Stage-1 output (B, C, P, P) in [0, 1]."""
    fine: torch.Tensor
    """Final output (B, C, P, P) in [0, 1]; equals ``coarse`` for a one-stage model."""


class TextureGenerator(PretrainedMixin, nn.Module):
    """Coarse-to-fine gated-convolution inpainter ``G_t``.

    Input: ``image`` (B, C, P, P) float in [0, 1] (the patch with the real content) and
    ``mask`` (B, 1, P, P) in {0, 1} (1 = hole to synthesise). The hole is set to the top of
    the range before the network sees it, as in the paper, so the content under the mask never
    leaks in. P must be a multiple of 4.

    Args:
        image_channels: C (1 for radiographs; the paper used 3).
        base_width: width of the first layer (paper-sized: 32-48; CPU-sized: 8-16).
        num_stages: 2 (coarse + refinement, the paper) or 1 (the ablation).
        patch_size: the patch side the model was trained on; inference resamples to it.
        mask_type: ``"shape"`` (the paper) or ``"box"`` (the ablation): what hole it was
            trained to fill. Inference builds the hole the same way.
        max_fill: the largest nodule diameter / patch side the model should see. Inference
            works on a region of side ``max(patch_size, diameter / max_fill)`` resampled to
            ``patch_size``, so large nodules keep the context they were trained with.
        context_norm: ``(mean, std)`` or ``None``. When set, each patch's grey levels are mapped
            by an affine map that gives its context (the pixels outside the hole) this mean and
            std before the network runs, and the output is mapped back. The network then sees
            every radiograph's lungs at the grey level and contrast it was trained on, whatever
            the image's windowing, and the synthesised nodule scales with the local contrast.
            Set it to the training patches' median context statistics.
    """

    def __init__(self, image_channels: int = 1, base_width: int = 32, num_stages: int = 2, patch_size: int = 256, mask_type: str = "shape", max_fill: float = 0.5,
                 context_norm: tuple[float, float] | list[float] | None = None) -> None:
        super().__init__()
        if num_stages not in (1, 2):
            raise ValueError(f"num_stages must be 1 or 2, got {num_stages}")
        if patch_size % 4 or patch_size < 16:
            raise ValueError(f"patch_size must be a multiple of 4 and >= 16, got {patch_size}")
        if mask_type not in MASK_TYPES:
            raise ValueError(f"mask_type must be one of {MASK_TYPES}, got {mask_type!r}")
        if not 0 < max_fill <= 1:
            raise ValueError(f"max_fill must be in (0, 1], got {max_fill}")
        if context_norm is not None:
            if len(context_norm) != 2 or not 0 <= context_norm[0] <= 1 or not 0 < context_norm[1] <= 1:
                raise ValueError(f"context_norm must be (mean in [0, 1], std in (0, 1]) or None, got {context_norm!r}")
            context_norm = [float(context_norm[0]), float(context_norm[1])]
        config = dict(image_channels=image_channels, base_width=base_width, num_stages=num_stages, patch_size=patch_size, mask_type=mask_type, max_fill=max_fill)
        if context_norm is not None:  # configs without it stay as they were
            config["context_norm"] = context_norm
        self.register_config(**config)
        self.context_norm = context_norm
        self.max_fill = max_fill
        self.image_channels = image_channels
        self.num_stages = num_stages
        self.patch_size = patch_size
        self.mask_type = mask_type
        self.coarse = _Stage(image_channels + 1, image_channels, base_width)
        self.refine = _Stage(image_channels + 1, image_channels, base_width) if num_stages == 2 else None

    def forward(self, image: torch.Tensor, mask: torch.Tensor) -> TextureOutput:
        if image.ndim != 4 or image.shape[1] != self.image_channels:
            raise ValueError(f"image must be (B, {self.image_channels}, P, P), got {tuple(image.shape)}")
        if mask.shape != (image.shape[0], 1, *image.shape[2:]):
            raise ValueError(f"mask must be (B, 1, P, P) matching image {tuple(image.shape)}, got {tuple(mask.shape)}")
        if image.shape[-1] % 4 or image.shape[-2] % 4:
            raise ValueError(f"patch height and width must be multiples of 4, got {tuple(image.shape[-2:])}")
        mask = mask.to(image.dtype)
        if self.context_norm is not None:
            mu, sd = context_moments(image, mask)
            sd = sd.clamp(min=_MIN_CONTEXT_STD)
            target_mean, target_std = self.context_norm
            out = self._run(((image - mu) / sd * target_std + target_mean).clamp(0, 1), mask)
            back = lambda y: ((y - target_mean) / target_std * sd + mu).clamp(0, 1)  # noqa: E731
            return TextureOutput(back(out.coarse), back(out.fine))
        return self._run(image, mask)

    def _run(self, image: torch.Tensor, mask: torch.Tensor) -> TextureOutput:
        x = image * 2 - 1
        holed = x * (1 - mask) + mask
        coarse = self.coarse(torch.cat([holed, mask], dim=1))
        if self.refine is None:
            fine = coarse
        else:
            composed = coarse * mask + x * (1 - mask)
            fine = self.refine(torch.cat([composed, mask], dim=1))
        return TextureOutput((coarse + 1) / 2, (fine + 1) / 2)


class PatchDiscriminator(PretrainedMixin, nn.Module):
    """Six-layer spectral-normalised PatchGAN ``D_t``: (mask, image) -> (B, 1, P/32, P/32)."""

    def __init__(self, image_channels: int = 1, base_width: int = 64) -> None:
        super().__init__()
        self.register_config(image_channels=image_channels, base_width=base_width)
        widths = [base_width, 2 * base_width, 4 * base_width, 4 * base_width, 4 * base_width]
        layers: list[nn.Module] = []
        in_ch = image_channels + 1
        for w in widths:  # five stride-2 layers: 1/32
            layers += [spectral_norm(nn.Conv2d(in_ch, w, 5, 2, 2)), nn.LeakyReLU(0.2)]
            in_ch = w
        layers += [spectral_norm(nn.Conv2d(in_ch, 1, 3, 1, 1))]  # sixth layer: one map
        self.net = nn.Sequential(*layers)

    def forward(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([mask.to(image.dtype), image], dim=1))
