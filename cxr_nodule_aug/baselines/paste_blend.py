"""Classical paste-and-blend nodule insertion (the NODE21 generation baseline's approach).

A nodule *residual* from a CT-to-CXR source (for SimCXR: the nodule image minus the nodule-free
image at the same pose, i.e. exactly the projected nodule) is resized to the hole's bounding
box, its contrast is matched to the target location, and it is Poisson-blended (Pérez et al.
2003, seamless cloning) into the target inside the mask.

The Poisson equation is solved per sample on the mask's pixels, matrix-free with a batched
conjugate-gradient solver in torch (any device, no OpenCV): for every hole pixel p,
``sum_{q in N(p)} (f_p - f_q) = sum_{q in N(p)} (g_p - g_q)`` with ``f = target`` outside the hole
(Dirichlet) and the image border as a Neumann edge. ``g`` is the guide:

* ``mode="seamless"`` (default): ``g`` = the scaled residual alone. The hole becomes the
  membrane interpolating the target's boundary plus the nodule; the content under the hole is
  never read, as with the inpainters, so it is scored on the same (patch, mask) pairs.
* ``mode="add"``: ``g`` = target + residual. The anatomy under the hole is kept and the nodule
  added (what an additive X-ray insertion gives); the seam is still exact.
"""

from __future__ import annotations

import zlib
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from cxr_nodule_aug.models.texture import MASK_TYPES, TextureOutput

_CROSS = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]).view(1, 1, 3, 3)


def _neighbour_sum(x: torch.Tensor) -> torch.Tensor:
    return F.conv2d(x, _CROSS.to(x), padding=1)  # zero padding: outside the image counts 0


def _dst1(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Type-I discrete sine transform along ``dim`` via a real FFT of the odd extension."""
    x = x.movedim(dim, -1)
    n = x.shape[-1]
    zero = torch.zeros(*x.shape[:-1], 1, dtype=x.dtype, device=x.device)
    ext = torch.cat([zero, x, zero, -x.flip(-1)], dim=-1)
    return (-torch.fft.rfft(ext, dim=-1).imag[..., 1 : n + 1]).movedim(-1, dim)


def _rect_poisson_inverse(r: torch.Tensor) -> torch.Tensor:
    """Exact inverse of the 5-point Laplacian on the (H, W) rectangle, zero outside (DST-I)."""
    H, W = r.shape[-2:]
    ky = torch.arange(1, H + 1, dtype=r.dtype, device=r.device)
    kx = torch.arange(1, W + 1, dtype=r.dtype, device=r.device)
    eig = (2 - 2 * torch.cos(torch.pi * ky / (H + 1)))[:, None] + (2 - 2 * torch.cos(torch.pi * kx / (W + 1)))[None, :]
    spec = _dst1(_dst1(r, -1), -2) / eig
    return _dst1(_dst1(spec, -1), -2) * (4.0 / ((H + 1) * (W + 1)))


def _bbox(mask2d: torch.Tensor) -> tuple[int, int, int, int]:
    rows = torch.nonzero(mask2d.any(1)).flatten()
    cols = torch.nonzero(mask2d.any(0)).flatten()
    return int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1


def poisson_blend(target: torch.Tensor, mask: torch.Tensor, guide: torch.Tensor, *, tol: float = 1e-5, max_iter: int | None = None) -> torch.Tensor:
    """Solve the Poisson blending equation inside ``mask``; ``target`` outside it.

    Preconditioned conjugate gradients, batched; the preconditioner is the exact rectangular
    Poisson inverse (DST-I) on the holes' bounding box, so box holes converge in one or two
    iterations and shaped ones in a few tens, independent of the hole's size.

    Args:
        target: (B, 1, H, W) float, the image to blend into (values outside the mask are the
            boundary condition; values inside are never read).
        mask: (B, 1, H, W) in {0, 1}, 1 = pixels to solve for. Must not cover a whole image.
        guide: (B, 1, H, W) float, the image whose Laplacian the result takes inside the mask.
        tol: relative residual ``||b - A f|| / ||b||`` at which conjugate gradients stop.
        max_iter: CG iteration cap (default ``H + W``; convergence usually takes far fewer).

    Returns (B, 1, H, W) float32: the blended image. Empty masks return ``target`` unchanged.
    """
    if target.ndim != 4 or target.shape[1] != 1:
        raise ValueError(f"target must be (B, 1, H, W), got {tuple(target.shape)}")
    if mask.shape != target.shape or guide.shape != target.shape:
        raise ValueError(f"mask {tuple(mask.shape)} and guide {tuple(guide.shape)} must match target {tuple(target.shape)}")
    t = target.float()
    m = (mask > 0.5).float()
    if not m.any():
        return t.clone()
    if (m.flatten(1).amin(1) > 0).any():
        raise ValueError("mask covers a whole image: the Poisson problem has no boundary to blend to")
    H, W = t.shape[-2:]
    deg = _neighbour_sum(torch.ones(1, 1, H, W, device=t.device))
    # Work on the union bounding box of the holes plus a one-pixel ring: outside it A f = 0.
    y0, x0, y1, x1 = _bbox(m.amax((0, 1)))
    y0, x0, y1, x1 = max(y0 - 1, 0), max(x0 - 1, 0), min(y1 + 1, H), min(x1 + 1, W)
    crop = (..., slice(y0, y1), slice(x0, x1))
    tc, mc, gc, degc = t[crop], m[crop], guide.float()[crop], deg[crop]
    # The crop's zero padding only ever touches pixels outside the hole (the ring) or the true
    # image border, where the full-image degree already says the neighbour does not exist.

    def apply_a(u: torch.Tensor) -> torch.Tensor:
        return mc * (degc * u - _neighbour_sum(u * mc))

    b = mc * (degc * gc - _neighbour_sum(gc) + _neighbour_sum(tc * (1 - mc)))
    # Start from the guide shifted to the boundary's mean level: independent of the hole's content.
    ring = (_neighbour_sum(mc) > 0).float() * (1 - mc)
    shift = ((tc - gc) * ring).sum((2, 3), keepdim=True) / ring.sum((2, 3), keepdim=True).clamp_min(1)
    u = mc * (gc + shift)
    def precondition(v: torch.Tensor) -> torch.Tensor:
        return mc * _rect_poisson_inverse(mc * v)

    def dot(a: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return (a * c).sum((1, 2, 3), keepdim=True)

    r = b - apply_a(u)
    z = precondition(r)
    p = z
    rz = dot(r, z)
    b_norm = dot(b, b).sqrt().clamp_min(1e-12)
    for _ in range(max_iter if max_iter is not None else H + W):
        if ((dot(r, r).sqrt() / b_norm) <= tol).all():
            break
        ap = apply_a(p)
        alpha = rz / dot(p, ap).clamp_min(1e-30)
        u = u + alpha * p
        r = r - alpha * ap
        z = precondition(r)
        rz_new = dot(r, z)
        p = z + (rz_new / rz.clamp_min(1e-30)) * p
        rz = rz_new
    out = t.clone()
    out[crop] = tc * (1 - mc) + u * mc
    return out


def _support_bbox(residual: torch.Tensor, source_mask: torch.Tensor | None, rel_threshold: float) -> tuple[int, int, int, int]:
    if source_mask is not None and source_mask.any():
        return _bbox(source_mask > 0.5)
    a = residual.abs()
    peak = float(a.max())
    if peak <= 0:
        raise ValueError("source_patch is all zero: there is no nodule residual to paste")
    return _bbox(a >= rel_threshold * peak)


def _local_range(image2d: torch.Tensor, hole2d: torch.Tensor, box: tuple[int, int, int, int]) -> float:
    """5-95 percentile spread of the target outside the hole, in the box grown by half its size."""
    y0, x0, y1, x1 = box
    gy, gx = max(1, (y1 - y0) // 2), max(1, (x1 - x0) // 2)
    H, W = image2d.shape
    ys, xs = slice(max(0, y0 - gy), min(H, y1 + gy)), slice(max(0, x0 - gx), min(W, x1 + gx))
    values = image2d[ys, xs][~hole2d[ys, xs]]
    if values.numel() < 4:
        values = image2d[~hole2d]
    q = torch.quantile(values.float(), torch.tensor([0.05, 0.95], device=values.device))
    return float(q[1] - q[0])


def contrast_ratio(patch: torch.Tensor, patch_nodule_free: torch.Tensor, mask: torch.Tensor) -> float:
    """Median over nodules of ``residual peak / local range``: the ``strength`` that makes
    ``contrast="match"`` reproduce a set of real (training) nodules' conspicuity.

    Args: (N, 1, P, P) tensors: nodule patches, the same patches without the nodule, the masks.
    """
    ratios = []
    for x, free, m in zip(patch, patch_nodule_free, mask):
        hole = m[0] > 0.5
        if not hole.any():
            continue
        residual = (x[0] - free[0]) * hole
        peak = float(residual.max())
        spread = _local_range(free[0], hole, _bbox(hole))
        if spread > 0 and peak > 0:
            ratios.append(peak / spread)
    if not ratios:
        raise ValueError("no nodule with a positive residual and a non-flat surrounding to calibrate the contrast on")
    return float(torch.tensor(ratios).median())


def paste_and_blend(
    image: torch.Tensor,
    mask: torch.Tensor,
    source_patch: torch.Tensor,
    *,
    source_mask: torch.Tensor | None = None,
    contrast: Literal["match"] | float | None = "match",
    strength: float = 0.5,
    mode: Literal["seamless", "add"] = "seamless",
    support_threshold: float = 0.05,
    tol: float = 1e-5,
    max_iter: int | None = None,
) -> torch.Tensor:
    """Paste a nodule residual into each patch inside its mask and Poisson-blend it.

    Args:
        image: (B, 1, P, P) float in [0, 1], the target patches (working intensity space).
        mask: (B, 1, P, P) in {0, 1}, 1 = where the nodule goes (the hole).
        source_patch: (B or 1, 1, S, S) float, nodule residuals (nodule image minus nodule-free
            image) in the same intensity units; positive = brighter. Its support (``source_mask``,
            else ``|residual| >= support_threshold * peak``) is resized to the hole's bounding box.
        source_mask: optional (B or 1, 1, S, S) footprint of each source nodule.
        contrast: ``"match"``: the residual's peak is set to ``strength`` x the 5-95 percentile
            spread of the target around the hole (NODE21 scales its nodule to the local range and
            averages it with the background: ``strength = 0.5``; :func:`contrast_ratio` calibrates
            it on training pairs). A float: the peak in intensity units. ``None``: keep the
            source's amplitude.
        mode: ``"seamless"`` (the hole's content is not used) or ``"add"`` (it is kept); see the
            module docstring.

    Returns (B, 1, P, P) float32 in [0, 1]; pixels outside ``mask`` are ``image``'s exactly.
    """
    if image.ndim != 4 or image.shape[1] != 1:
        raise ValueError(f"image must be (B, 1, P, P), got {tuple(image.shape)}")
    if mask.shape != image.shape:
        raise ValueError(f"mask must match image {tuple(image.shape)}, got {tuple(mask.shape)}")
    B = image.shape[0]
    if source_patch.ndim != 4 or source_patch.shape[1] != 1 or source_patch.shape[0] not in (1, B):
        raise ValueError(f"source_patch must be (B or 1, 1, S, S) with B = {B}, got {tuple(source_patch.shape)}")
    if source_mask is not None and source_mask.shape != source_patch.shape:
        raise ValueError(f"source_mask must match source_patch {tuple(source_patch.shape)}, got {tuple(source_mask.shape)}")
    if mode not in ("seamless", "add"):
        raise ValueError(f"mode must be 'seamless' or 'add', got {mode!r}")
    if not (contrast is None or contrast == "match" or isinstance(contrast, (int, float))):
        raise ValueError(f"contrast must be 'match', a number or None, got {contrast!r}")
    x = image.float()
    m = (mask > 0.5).float()
    placed = torch.zeros_like(x)
    for i in range(B):
        hole = m[i, 0] > 0.5
        if not hole.any():
            continue
        j = i if source_patch.shape[0] == B else 0
        res = source_patch[j, 0].float().to(x.device)
        sy0, sx0, sy1, sx1 = _support_bbox(res, None if source_mask is None else source_mask[j, 0].to(x.device), support_threshold)
        box = _bbox(hole)
        h, w = box[2] - box[0], box[3] - box[1]
        piece = F.interpolate(res[None, None, sy0:sy1, sx0:sx1], size=(h, w), mode="bilinear", align_corners=False, antialias=True)[0, 0]
        peak = float(piece.abs().max())
        if contrast is not None and peak > 0:
            wanted = strength * _local_range(x[i, 0], hole, box) if contrast == "match" else float(contrast)
            piece = piece * (wanted / peak)
        placed[i, 0, box[0] : box[2], box[1] : box[3]] = piece
    guide = placed if mode == "seamless" else x + placed
    return poisson_blend(x, m, guide, tol=tol, max_iter=max_iter).clamp_(0, 1)


class PasteBlendInpainter(nn.Module):
    """Paste-and-blend behind the inpainters' call contract, drawing from a residual bank.

    ``forward(image (B, 1, P, P), mask (B, 1, P, P)) -> TextureOutput`` like
    :class:`TextureGenerator`, so :func:`cxr_nodule_aug.functional.insertion.insert_nodules`
    and the quality benchmark can run it. The bank entry for a hole is chosen from a CRC of the
    hole's pixels, so a given nodule record always gets the same source (replayable).

    Args:
        residuals: (N, 1, S, S) nodule residuals; ``residual_masks`` their footprints (optional).
        patch_size, mask_type, max_fill: how ``insert_nodules`` cuts the region around a nodule.
        contrast, strength, mode: as :func:`paste_and_blend`.
    """

    def __init__(self, residuals: torch.Tensor, residual_masks: torch.Tensor | None = None, *, patch_size: int = 64, mask_type: str = "shape", max_fill: float = 0.5, contrast: Literal["match"] | float | None = "match", strength: float = 0.5, mode: Literal["seamless", "add"] = "seamless") -> None:
        super().__init__()
        if residuals.ndim != 4 or residuals.shape[1] != 1 or len(residuals) == 0:
            raise ValueError(f"residuals must be a non-empty (N, 1, S, S) tensor, got {tuple(residuals.shape)}")
        if mask_type not in MASK_TYPES:
            raise ValueError(f"mask_type must be one of {MASK_TYPES}, got {mask_type!r}")
        self.register_buffer("residuals", residuals.float())
        self.register_buffer("residual_masks", None if residual_masks is None else residual_masks.float())
        # insert_nodules reads the model dtype from its parameters: one empty, frozen parameter.
        self._dtype_anchor = nn.Parameter(torch.zeros(0), requires_grad=False)
        self.image_channels, self.num_stages = 1, 1
        self.patch_size, self.mask_type, self.max_fill = patch_size, mask_type, max_fill
        self.contrast, self.strength, self.mode = contrast, strength, mode

    def choose(self, mask: torch.Tensor) -> torch.Tensor:
        """Bank index per hole (B,): a CRC32 of the hole's bytes, modulo the bank size."""
        codes = [zlib.crc32((m > 0.5).cpu().numpy().tobytes()) % len(self.residuals) for m in mask]
        return torch.tensor(codes, dtype=torch.long, device=self.residuals.device)

    def forward(self, image: torch.Tensor, mask: torch.Tensor) -> TextureOutput:
        idx = self.choose(mask)
        src_mask = None if self.residual_masks is None else self.residual_masks[idx]
        out = paste_and_blend(image.float(), mask.float(), self.residuals[idx], source_mask=src_mask, contrast=self.contrast, strength=self.strength, mode=self.mode).to(image.dtype)
        return TextureOutput(out, out)
