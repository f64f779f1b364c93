"""Size Modulation (paper section III-B): measure a shape's diameter and rescale it to order."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import functional as TF


def _check_mask(mask: torch.Tensor, name: str = "mask") -> torch.Tensor:
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(mask).__name__}")
    if mask.ndim < 2:
        raise ValueError(f"{name} must have shape (..., H, W), got {tuple(mask.shape)}")
    if mask.is_floating_point() and torch.isnan(mask).any():
        raise ValueError(f"{name} contains NaN")
    return mask > 0.5 if mask.is_floating_point() else mask.bool()


def ellipse_axes(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Major and minor axis lengths (px) of the equal-second-moment ellipse of a binary mask.

    Same definition as ``skimage.measure.regionprops``' ``axis_major_length`` /
    ``axis_minor_length`` (4 * sqrt of the eigenvalues of the pixel-centre covariance).
    ``mask``: (..., H, W), bool or {0, 1}; returns two (...) float64 tensors. An empty mask
    raises ``ValueError``.
    """
    m = _check_mask(mask).to(torch.float64)
    h, w = m.shape[-2:]
    area = m.sum((-2, -1))
    if (area == 0).any():
        raise ValueError("mask is empty: the diameter of an empty shape is undefined")
    rows = torch.arange(h, dtype=torch.float64, device=m.device)
    cols = torch.arange(w, dtype=torch.float64, device=m.device)
    row_mass, col_mass = m.sum(-1), m.sum(-2)
    mr = (row_mass * rows).sum(-1) / area
    mc = (col_mass * cols).sum(-1) / area
    var_r = (row_mass * rows**2).sum(-1) / area - mr**2
    var_c = (col_mass * cols**2).sum(-1) / area - mc**2
    cov = (m * rows[:, None] * cols[None, :]).sum((-2, -1)) / area - mr * mc
    half_trace = (var_r + var_c) / 2
    root = torch.sqrt(((var_r - var_c) / 2) ** 2 + cov**2)
    major = 4 * torch.sqrt((half_trace + root).clamp_min(0))
    minor = 4 * torch.sqrt((half_trace - root).clamp_min(0))
    return major, minor


def equivalent_diameter(mask: torch.Tensor) -> torch.Tensor:
    """The paper's d: mean of the major and minor axis of the equal-second-moment ellipse (px).

    ``mask``: (..., H, W) bool or {0, 1}; returns a (...) float64 tensor.
    """
    major, minor = ellipse_axes(mask)
    return (major + minor) / 2


def _bbox(mask: torch.Tensor) -> tuple[int, int, int, int]:
    rows = torch.nonzero(mask.any(1)).flatten()
    cols = torch.nonzero(mask.any(0)).flatten()
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def _rescale(crop: torch.Tensor, scale: float) -> torch.Tensor:
    """Rescale a bbox-cropped binary shape by ``scale``; returns the result cropped to its bbox
    (possibly empty)."""
    h, w = crop.shape
    if scale > 2:
        # Bilinear upsampling of a binary mask leaves a polygon with pixel-sized steps at the
        # source resolution; a blur of about one source pixel turns them into a smooth edge.
        # One source pixel of empty margin lets the blur round the shape's extreme points too.
        src = F.pad(crop[None, None].float(), (1, 1, 1, 1))
        out = F.interpolate(src, size=(round((h + 2) * scale), round((w + 2) * scale)), mode="bilinear", align_corners=False)
        sigma = 1.0 * scale
        k = 2 * int(math.ceil(2 * sigma)) + 1
        out = TF.gaussian_blur(F.pad(out, (k // 2,) * 4), kernel_size=[k, k], sigma=[sigma, sigma])[..., k // 2 : -(k // 2), k // 2 : -(k // 2)]
        mask = out[0, 0] >= 0.5
    else:
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
        if size == (h, w):
            mask = crop.bool()
        else:
            mask = F.interpolate(crop[None, None].float(), size=size, mode="bilinear", align_corners=False, antialias=scale < 1)[0, 0] >= 0.5
    if not mask.any():
        return mask
    r0, r1, c0, c1 = _bbox(mask)
    return mask[r0:r1, c0:c1]


def modulate_size(mask: torch.Tensor, diameter_px: float, canvas: int = 256, *, refine_steps: int = 4) -> torch.Tensor:
    """Rescale a shape so that its :func:`equivalent_diameter` is ``diameter_px``; centre it.

    As in the paper: crop the shape's bounding box, scale it by ``diameter_px / d_init`` and
    paste it centred on an empty ``canvas`` x ``canvas`` grid. Bilinear resampling thresholded
    at 0.5 keeps the edge smooth at any scale; because a digitised shape's measured diameter
    drifts from the requested one at small sizes, the scale is refined by up to
    ``refine_steps`` secant steps on the measured diameter and the closest result is kept.

    Args:
        mask: (H, W) bool or {0, 1}; any size (the shape generator gives image_size x image_size: 64 shipped, 128 at the paper's size).
        diameter_px: requested equivalent diameter in pixels, > 0.
        canvas: side of the output grid in pixels.

    Returns:
        (canvas, canvas) bool mask with the shape centred (bounding-box centre at the canvas
        centre, rounded down).

    Raises:
        ValueError: ``diameter_px`` not positive or finite, an empty ``mask``, a rescaled
            shape that does not fit in ``canvas``, or one whose measured diameter misses the
            request by more than max(1 px, 10 %).
    """
    if not (isinstance(diameter_px, (int, float)) or (isinstance(diameter_px, torch.Tensor) and diameter_px.numel() == 1)):
        raise TypeError(f"diameter_px must be a number, got {type(diameter_px).__name__}")
    diameter_px = float(diameter_px)
    if not math.isfinite(diameter_px) or diameter_px <= 0:
        raise ValueError(f"diameter_px must be a positive finite number of pixels, got {diameter_px}")
    if canvas < 1:
        raise ValueError(f"canvas must be a positive size, got {canvas}")
    m = _check_mask(mask)
    if m.ndim != 2:
        raise ValueError(f"mask must be (H, W), got {tuple(mask.shape)}")
    if not m.any():
        raise ValueError("mask is empty: there is no shape to modulate")
    r0, r1, c0, c1 = _bbox(m)
    crop = m[r0:r1, c0:c1]
    d_init = float(equivalent_diameter(crop))
    if d_init == 0:  # a single pixel: treat it as a 1-px disc
        d_init = 1.0
    scale = diameter_px / d_init
    best, best_err = None, math.inf
    tried: list[tuple[float, float]] = []
    for _ in range(refine_steps + 1):
        out = _rescale(crop, scale)
        if out.any():
            measured = float(equivalent_diameter(out))
            err = abs(measured - diameter_px)
            if err < best_err:
                best, best_err = out, err
            tried.append((scale, measured))
            if err <= 0.01 * diameter_px:
                break
            if len(tried) >= 2 and tried[-1][1] != tried[-2][1]:
                (s0, d0), (s1, d1) = tried[-2], tried[-1]
                new_scale = s1 + (diameter_px - d1) * (s1 - s0) / (d1 - d0)
            else:
                new_scale = scale * diameter_px / max(measured, 1e-6)
            # Secant steps can overshoot on a staircase function: stay within a factor of 2.
            scale = min(max(new_scale, scale / 2), scale * 2)
        else:
            scale *= 1.5
        if max(crop.shape) * scale > 2 * canvas:
            break
    if best is None:
        raise ValueError(f"diameter_px={diameter_px} is too small: the rescaled shape has no pixels")
    if best_err > max(1.0, 0.1 * diameter_px):
        # Never hand back a shape whose size is not the one asked for (fragmented masks can
        # lose pixels when rescaled).
        raise ValueError(
            f"could not modulate this shape to diameter_px={diameter_px:g}: the closest result measures "
            f"{float(equivalent_diameter(best)):.2f} px (is the mask one solid blob?)"
        )
    h, w = best.shape
    if h > canvas or w > canvas:
        raise ValueError(
            f"diameter_px={diameter_px:g} does not fit canvas={canvas}: the rescaled shape is {h}x{w} px "
            f"(use a larger canvas or a smaller diameter)"
        )
    out = torch.zeros(canvas, canvas, dtype=torch.bool, device=m.device)
    top, left = (canvas - h) // 2, (canvas - w) // 2
    out[top : top + h, left : left + w] = best
    return out
