"""Nodule extraction from a box: background under the nodule, residual, pseudo shape mask.

The public nodule datasets (NODE21, ChestX-ray14, VinDr-CXR, JSRT) give boxes, not contours.
For each box this module

1. estimates the **background** the nodule lies on: a Coons patch (transfinite interpolation)
   of the four grey-level profiles just outside the box. Each profile is the median, across a
   strip of ``strip`` pixels beyond a ``gap`` pixel gap, of the working image; inside the box the
   background is the sum of the left-right and top-bottom linear interpolations of the profiles
   minus the bilinear interpolation of the four corners. It equals the profiles on the box's
   edges, carries a rib or a vessel that crosses the box straight through it, and needs no model
   (``benchmarks/box_only.py`` measures it against the nodule-free SimCXR render);
2. takes the **residual** = working image - background (the working domain of
   :func:`~cxr_nodule_aug.functional.intensity.to_working`: the image's 0.1-99.9 % window mapped to
   [0, 1]);
3. derives the **pseudo mask**, the rule: smooth the residual with a Gaussian of sigma
   ``smooth`` x the box's shorter side (at least 0.5 px); its peak is the largest smoothed value in
   the box's inscribed ellipse; keep the pixels of the box at or above ``level`` x peak; of their
   4-connected components keep the one with the largest residual sum; fill its holes. SimCXR
   labels a nodule where its chord is at least 20 % of its largest chord, hence the default
   ``level=0.2`` on a residual that is about proportional to the chord.

   The box itself is a strong shape prior (annotators draw it tight around the nodule), and on
   SimCXR the residual alone is noisy (the background estimate's error inside the box is of the
   order of a faint nodule's contrast). With ``prior`` = a in [0, 1] the pixels kept are those
   where ``(1 - a) (s / peak - level) + a (1 - rho^2) >= 0``, ``s`` the smoothed residual and
   ``rho`` the pixel's radius in units of the inscribed ellipse: a = 0 is the residual threshold
   alone, a = 1 the inscribed ellipse. The default a = 0.5 was chosen on a SimCXR export
   (``benchmarks/results/box_only.md`` gives the measurements for a = 0, 0.5, 0.7 and 1).

   The **fallback** is the ellipse inscribed in the box, flagged (``fallback=True`` and a
   ``reason``) when the peak is not above ``min_snr`` times the noise (the robust spread of the
   smoothed residual in the box's corners outside the inscribed ellipse), or the component covers
   less than ``min_fill`` of the ellipse's area (the box holds no nodule-like blob).

The mask never leaves its box; every box gets a non-empty mask (a label always has a nodule).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from cxr_nodule_aug.functional.intensity import check_image, to_working

DEFAULT_LEVEL = 0.2
DEFAULT_PRIOR = 0.5

__all__ = ["DEFAULT_LEVEL", "DEFAULT_PRIOR", "NoduleExtraction", "box_window", "coons_background", "extract_nodules", "inscribed_ellipse", "labelled_mask"]


@dataclass
class NoduleExtraction:
    """One box's extraction; arrays cover the box window ``window_xyxy`` (integer pixels)."""

    window_xyxy: tuple[int, int, int, int]
    """(x0, y0, x1, y1), x1/y1 exclusive: the box rounded outwards and clipped to the image."""
    background: torch.Tensor
    """(h, w) float32, working domain: the estimated image without the nodule."""
    residual: torch.Tensor
    """(h, w) float32, working domain: image - background (the nodule's additive layer)."""
    mask: torch.Tensor
    """(h, w) bool, non-empty: the pseudo shape mask (the inscribed ellipse when ``fallback``)."""
    fallback: bool
    """True when ``mask`` is the inscribed ellipse, not a residual component."""
    reason: str
    """Why the fallback was taken ('' when it was not)."""
    contrast: float
    """Mean residual inside the mask, working units (fractions of the image's window)."""
    snr: float
    """Residual peak / noise (see the module rule); ``inf`` when the noise is 0."""
    fill: float
    """Mask area / window area."""

    def full_mask(self, height: int, width: int) -> torch.Tensor:
        """The mask pasted into an (H, W) bool canvas."""
        out = torch.zeros(height, width, dtype=torch.bool)
        x0, y0, x1, y1 = self.window_xyxy
        out[y0:y1, x0:x1] = self.mask
        return out


def box_window(box_xyxy, height: int, width: int) -> tuple[int, int, int, int]:
    """The integer window of a float box (x1/y1 exclusive): rounded outwards, clipped to the
    image; a ``ValueError`` naming the box when nothing of it lies in the image."""
    x0, y0, x1, y1 = (float(v) for v in box_xyxy)
    if not all(math.isfinite(v) for v in (x0, y0, x1, y1)) or x1 <= x0 or y1 <= y0:
        raise ValueError(f"box {[x0, y0, x1, y1]} must be finite XYXY with x1 > x0 and y1 > y0")
    wx0, wy0 = max(0, math.floor(x0)), max(0, math.floor(y0))
    wx1, wy1 = min(width, math.ceil(x1)), min(height, math.ceil(y1))
    if wx1 - wx0 < 1 or wy1 - wy0 < 1:
        raise ValueError(f"box {[x0, y0, x1, y1]} lies outside the {height}x{width} image")
    return wx0, wy0, wx1, wy1


def inscribed_ellipse(h: int, w: int) -> torch.Tensor:
    """(h, w) bool: the ellipse inscribed in an h x w box (pixel centres inside it; never empty)."""
    ys = (torch.arange(h, dtype=torch.float64) + 0.5 - h / 2) / (h / 2)
    xs = (torch.arange(w, dtype=torch.float64) + 0.5 - w / 2) / (w / 2)
    m = ys[:, None] ** 2 + xs[None, :] ** 2 <= 1.0
    if not m.any():
        m[h // 2, w // 2] = True
    return m


def _strip_median(gray: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, dim: int) -> torch.Tensor:
    # Indices clamped into the image: beyond a border the border pixels repeat.
    H, W = gray.shape
    block = gray[rows.clamp(0, H - 1)][:, cols.clamp(0, W - 1)]
    return block.median(dim=dim).values


def coons_background(gray: torch.Tensor, window: tuple[int, int, int, int], gap: int = 1, strip: int | None = None) -> torch.Tensor:
    """The Coons-patch background (h, w) of ``gray`` (H, W) inside ``window`` (see the module).

    ``strip``: rows/columns per edge profile, default max(2, 15 % of the box's longer side).
    """
    x0, y0, x1, y1 = window
    h, w = y1 - y0, x1 - x0
    t = strip if strip is not None else max(2, round(0.15 * max(h, w)))
    dev = gray.device
    xs = torch.arange(x0, x1, device=dev)
    ys = torch.arange(y0, y1, device=dev)
    top = _strip_median(gray, torch.arange(y0 - gap - t, y0 - gap, device=dev), xs, 0)
    bottom = _strip_median(gray, torch.arange(y1 + gap, y1 + gap + t, device=dev), xs, 0)
    left = _strip_median(gray, ys, torch.arange(x0 - gap - t, x0 - gap, device=dev), 1)
    right = _strip_median(gray, ys, torch.arange(x1 + gap, x1 + gap + t, device=dev), 1)
    def corner(r0: int, c0: int) -> torch.Tensor:
        rows, cols = torch.arange(r0, r0 + t, device=dev), torch.arange(c0, c0 + t, device=dev)
        return gray[rows.clamp(0, gray.shape[0] - 1)][:, cols.clamp(0, gray.shape[1] - 1)].median()

    c00, c01 = corner(y0 - gap - t, x0 - gap - t), corner(y0 - gap - t, x1 + gap)
    c10, c11 = corner(y1 + gap, x0 - gap - t), corner(y1 + gap, x1 + gap)
    # Parameters: 0 at the centre line of the near strip, 1 at that of the far one.
    span_x, span_y = w + 2 * gap + t, h + 2 * gap + t
    u = ((torch.arange(w, device=dev, dtype=torch.float32) + gap + (t + 1) / 2) / span_x)[None, :]
    v = ((torch.arange(h, device=dev, dtype=torch.float32) + gap + (t + 1) / 2) / span_y)[:, None]
    across = (1 - u) * left[:, None] + u * right[:, None]
    down = (1 - v) * top[None, :] + v * bottom[None, :]
    corners = (1 - u) * (1 - v) * c00 + u * (1 - v) * c01 + (1 - u) * v * c10 + u * v * c11
    return (across + down - corners).float()


def _main_component(smoothed: np.ndarray, residual: np.ndarray, level: float, peak: float, prior: float) -> np.ndarray:
    from scipy import ndimage

    h, w = smoothed.shape
    ys = (np.arange(h) + 0.5 - h / 2) / (h / 2)
    xs = (np.arange(w) + 0.5 - w / 2) / (w / 2)
    inside = 1.0 - (ys[:, None] ** 2 + xs[None, :] ** 2)  # > 0 inside the inscribed ellipse
    labels, n = ndimage.label((1 - prior) * (smoothed / peak - level) + prior * inside >= 0)  # 4-connected
    if n == 0:
        return np.zeros_like(smoothed, dtype=bool)
    sums = ndimage.sum(np.clip(residual, 0, None), labels, index=np.arange(1, n + 1))
    return ndimage.binary_fill_holes(labels == int(np.argmax(sums)) + 1)


def _extract_one(gray: torch.Tensor, window, level: float, smooth: float, min_snr: float, min_fill: float, gap: int, prior: float) -> NoduleExtraction:
    from scipy import ndimage

    x0, y0, x1, y1 = window
    h, w = y1 - y0, x1 - x0
    background = coons_background(gray, window, gap=gap)
    residual = (gray[y0:y1, x0:x1] - background).float()
    res = residual.cpu().numpy().astype(np.float64)
    smoothed = ndimage.gaussian_filter(res, sigma=max(0.5, smooth * min(h, w)), mode="nearest")
    ellipse = inscribed_ellipse(h, w).numpy()
    peak = float(smoothed[ellipse].max())
    corners = smoothed[~ellipse]
    if corners.size >= 4:
        noise = 1.4826 * float(np.median(np.abs(corners - np.median(corners))))
    else:  # a box too small for corners: the noise of the whole smoothed box
        noise = float(smoothed.std())
    snr = peak / noise if noise > 0 else (math.inf if peak > 0 else 0.0)
    reason = ""
    mask = None
    if peak <= 0:
        reason = "no brighter blob in the box (residual peak <= 0)"
    elif snr < min_snr:
        reason = f"residual peak {peak:.4f} is {snr:.2f} x the noise, below {min_snr:g}"
    else:
        comp = _main_component(smoothed, res, level, peak, prior)
        if comp.sum() < min_fill * ellipse.sum():
            reason = f"main component covers {comp.sum() / ellipse.sum():.2f} of the inscribed ellipse, below {min_fill:g}"
        else:
            mask = comp
    fallback = mask is None
    if fallback:
        mask = ellipse
    mask_t = torch.from_numpy(np.ascontiguousarray(mask)).bool()
    contrast = float(res[mask].mean())
    return NoduleExtraction(window, background.cpu(), residual.cpu(), mask_t, fallback, reason, contrast, snr, float(mask.sum()) / (h * w))


def extract_nodules(
    image: torch.Tensor,
    boxes_xyxy,
    *,
    level: float = DEFAULT_LEVEL,
    smooth: float = 0.05,
    min_snr: float = 2.0,
    min_fill: float = 0.2,
    gap: int = 1,
    prior: float = DEFAULT_PRIOR,
) -> list[NoduleExtraction]:
    """Background, residual and pseudo mask for every box of ``image`` (rule: see the module).

    Args:
        image: (C, H, W) radiograph, any dtype :func:`~cxr_nodule_aug.functional.check_image`
            accepts (not modified).
        boxes_xyxy: (N, 4) absolute XYXY boxes (x1/y1 exclusive), one per nodule.
        level: the mask keeps the smoothed residual at or above ``level`` x its peak, in (0, 1).
        smooth: Gaussian sigma as a fraction of the box's shorter side.
        min_snr: below this peak / noise ratio the mask is the inscribed ellipse (flagged).
        min_fill: a component smaller than this fraction of the inscribed ellipse falls back too.
        gap: pixels between the box and the strips the background profiles come from.
        prior: weight of the box's inscribed ellipse against the residual (see the module).

    Deterministic: no random choice is made.
    """
    check_image(image)
    if not 0 <= prior <= 1:
        raise ValueError(f"prior must be in [0, 1], got {prior}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if smooth < 0 or min_snr < 0 or not 0 <= min_fill <= 1 or gap < 0:
        raise ValueError(f"smooth, min_snr and gap must be >= 0 and min_fill in [0, 1], got {smooth}, {min_snr}, {gap}, {min_fill}")
    boxes = torch.as_tensor(boxes_xyxy, dtype=torch.float64).reshape(-1, 4)
    if len(boxes) == 0:
        return []
    _, H, W = image.shape
    gray, _, _ = to_working(image.as_subclass(torch.Tensor))
    return [_extract_one(gray, box_window(b.tolist(), H, W), level, smooth, min_snr, min_fill, gap, prior) for b in boxes]


def labelled_mask(extractions: list[NoduleExtraction], height: int, width: int) -> np.ndarray:
    """(H, W) uint8: 0 background, k + 1 where nodule k's mask is (the layout SimCXR's
    ``masks/*_nodules.png`` and ``train shape`` read). Where masks overlap, the pixel goes to the
    nodule with the larger residual there; a mask left empty by that raises ``ValueError``."""
    if len(extractions) > 255:
        raise ValueError(f"{len(extractions)} nodules in one image: a uint8 labelled mask holds at most 255")
    out = np.zeros((height, width), np.uint8)
    best = np.full((height, width), -np.inf, np.float32)
    for k, e in enumerate(extractions):
        x0, y0, x1, y1 = e.window_xyxy
        m = e.mask.numpy()
        r = e.residual.numpy()
        win_best = best[y0:y1, x0:x1]
        take = m & (r > win_best)
        out[y0:y1, x0:x1][take] = k + 1
        win_best[take] = r[take]
    for k in range(len(extractions)):
        if not (out == k + 1).any():
            raise ValueError(f"nodule {k}'s mask lies wholly under another nodule's: boxes {extractions[k].window_xyxy} overlap too much to label both")
    return out
