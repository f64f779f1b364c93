"""Where a nodule may go: inside the lungs, clear of existing boxes."""

from __future__ import annotations

import torch


class PlacementError(ValueError):
    """No position satisfies the placement constraints (never a silent skip)."""


def mask_integral(lung_mask: torch.Tensor) -> torch.Tensor:
    """Integral image of an (H, W) bool mask, (H + 1, W + 1) with a zero first row and column:
    the count over rows ``[r0, r1)`` and columns ``[c0, c1)`` is
    ``ii[r1, c1] - ii[r0, c1] - ii[r1, c0] + ii[r0, c0]``.

    Exact: float32 holds every count below 2**24 pixels, float64 beyond. Both cumulative sums
    run along contiguous rows (a cumsum down the columns of a row-major tensor is ~10x slower
    on the CPU), with a transpose in between.
    """
    if lung_mask.ndim != 2:
        raise ValueError(f"lung_mask must be (H, W), got {tuple(lung_mask.shape)}")
    H, W = lung_mask.shape
    dtype = torch.float32 if H * W < 2**24 else torch.float64
    ii = torch.zeros(H + 1, W + 1, dtype=dtype, device=lung_mask.device)
    rows = lung_mask.to(dtype).cumsum(1)  # (H, W): running count along each row
    ii[1:, 1:] = rows.t().contiguous().cumsum(1).t()
    return ii


def valid_centres(
    lung_mask: torch.Tensor,
    footprint_hw: tuple[int, int],
    occupied_xyxy: torch.Tensor | None = None,
    gap_px: int = 0,
    integral: torch.Tensor | None = None,
) -> torch.Tensor:
    """Map of the top-left-anchored centres where a ``footprint_hw`` box fits.

    A centre ``(cy, cx)`` places the footprint on rows ``[cy - h // 2, cy - h // 2 + h)`` and
    columns ``[cx - w // 2, cx - w // 2 + w)``. It is valid when every pixel of that box lies
    in ``lung_mask`` (so the whole nodule, whatever its shape, is inside the lung) and the box,
    grown by ``gap_px``, meets none of ``occupied_xyxy``. Box sums come from an integral image:
    one pass, any footprint size.

    Args:
        lung_mask: (H, W) bool.
        footprint_hw: (h, w) of the nodule's bounding box in pixels.
        occupied_xyxy: (K, 4) float boxes, absolute XYXY pixels (x2, y2 exclusive), or None.
        gap_px: extra clearance around occupied boxes.
        integral: ``mask_integral(lung_mask)`` when the caller already has it (placing
            several nodules in one image computes it once).

    Returns:
        (H, W) bool map of valid centres.
    """
    if lung_mask.ndim != 2:
        raise ValueError(f"lung_mask must be (H, W), got {tuple(lung_mask.shape)}")
    H, W = lung_mask.shape
    h, w = int(footprint_hw[0]), int(footprint_hw[1])
    if h < 1 or w < 1:
        raise ValueError(f"footprint_hw must be positive, got {footprint_hw}")
    valid = torch.zeros(H, W, dtype=torch.bool, device=lung_mask.device)
    if h > H or w > W:
        return valid
    if integral is None:
        integral = mask_integral(lung_mask)
    elif tuple(integral.shape) != (H + 1, W + 1):
        raise ValueError(f"integral must be mask_integral(lung_mask), shape {(H + 1, W + 1)}, got {tuple(integral.shape)}")
    ii = integral
    sums = ii[h:, w:] - ii[:-h, w:] - ii[h:, :-w] + ii[:-h, :-w]  # (H-h+1, W-w+1), top-left anchored
    top, left = h // 2, w // 2
    valid[top : top + H - h + 1, left : left + W - w + 1] = sums == h * w
    if occupied_xyxy is not None and len(occupied_xyxy):
        rows = torch.arange(H, device=lung_mask.device, dtype=torch.float32)
        cols = torch.arange(W, device=lung_mask.device, dtype=torch.float32)
        for x1, y1, x2, y2 in occupied_xyxy.to(device=lung_mask.device, dtype=torch.float32).tolist():
            # Footprint rows [cy - top, cy - top + h) meet [y1 - gap, y2 + gap) iff ...
            row_hit = (rows - top < y2 + gap_px) & (rows - top + h > y1 - gap_px)
            col_hit = (cols - left < x2 + gap_px) & (cols - left + w > x1 - gap_px)
            valid &= ~(row_hit[:, None] & col_hit[None, :])
    return valid


def sample_centre(valid: torch.Tensor, generator: torch.Generator | None = None) -> tuple[int, int]:
    """One ``(cy, cx)`` uniformly among the ``True`` pixels of ``valid``.

    Raises :class:`PlacementError` when there is none.
    """
    candidates = torch.nonzero(valid.flatten()).flatten()
    if candidates.numel() == 0:
        raise PlacementError("no valid position")
    idx = torch.randint(candidates.numel(), (1,), generator=generator, device=generator.device if generator is not None else "cpu")
    flat = int(candidates[int(idx)])
    return divmod(flat, valid.shape[1])


def footprint_box(centre_yx: tuple[int, int], footprint_hw: tuple[int, int]) -> tuple[int, int, int, int]:
    """The (x1, y1, x2, y2) box a footprint occupies when placed at ``centre_yx``."""
    cy, cx = centre_yx
    h, w = footprint_hw
    y1, x1 = cy - h // 2, cx - w // 2
    return x1, y1, x1 + w, y1 + h
