"""Image-quality metrics for inpainted nodule patches (paper Tables I and II).

All functions take batches of patches ``pred``, ``gt`` (B, 1, P, P) float in [0, 1] and the
hole ``mask`` (B, 1, P, P) in {0, 1} (1 = synthesised).

* **Full patch**: MAE, PSNR, SSIM over the whole P x P patch.
* **Masked region**: the same metrics over the hole's *bounding box*, not over the mask's
  pixels. One region definition serves all three metrics (SSIM needs a rectangle), and a shape
  hole and the box hole of the same nodule are scored on the same pixels, so the shape-mask and
  box-mask rows of Table I are comparable. Boxes smaller than SSIM's 11-px window are grown
  around their centre to 11 px (clipped to the patch).
* By default ``pred`` is first composited, ``pred * mask + gt * (1 - mask)``, as insertion
  pastes only the hole (``composite=False`` scores the raw output).
* PSNR uses ``data_range = 1``; identical patches have infinite PSNR, which is capped at
  :data:`PSNR_CAP_DB` = 100 dB per patch (MSE 1e-10) so that means stay finite.
* Per-patch values are averaged over the batch (mean of per-patch PSNR, as the paper's tables).
* **FID** is computed with torchmetrics' ``FrechetInceptionDistance`` on a custom feature
  module: the ImageNet EfficientNet-Lite0's 1280-d pooled features (the only ImageNet weights
  available offline here). It is *not* Inception FID and is labelled :data:`FID_LABEL`
  everywhere; :func:`fid` takes ``features="inception"`` when torch-fidelity and its Inception
  weights are present locally.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

PSNR_CAP_DB = 100.0
SSIM_MIN_SIDE = 11
FID_LABEL = "FID (EfficientNet-Lite0 features, not Inception)"
FID_INCEPTION_LABEL = "FID (Inception-v3, torch-fidelity weights)"
INCEPTION_WEIGHTS_NAME = "weights-inception-2015-12-05-6726825d.pth"
METRIC_KEYS = ("full_mae", "full_psnr", "full_ssim", "masked_mae", "masked_psnr", "masked_ssim")


def _check(pred: torch.Tensor, gt: torch.Tensor, mask: torch.Tensor | None = None) -> None:
    if pred.ndim != 4 or pred.shape[1] != 1:
        raise ValueError(f"pred must be (B, 1, P, P), got {tuple(pred.shape)}")
    if gt.shape != pred.shape:
        raise ValueError(f"gt must match pred {tuple(pred.shape)}, got {tuple(gt.shape)}")
    if mask is not None and mask.shape != pred.shape:
        raise ValueError(f"mask must match pred {tuple(pred.shape)}, got {tuple(mask.shape)}")


def hole_boxes(mask: torch.Tensor, min_side: int = SSIM_MIN_SIDE) -> list[tuple[int, int, int, int]]:
    """(y0, x0, y1, x1) per patch (exclusive ends): each hole's bounding box, grown to at least
    ``min_side`` around its centre and clipped to the patch. Raises on an empty mask."""
    boxes = []
    H, W = mask.shape[-2:]
    for i, m in enumerate(mask[:, 0] > 0.5):
        if not m.any():
            raise ValueError(f"mask {i} is empty: the masked-region metrics need a hole")
        rows = torch.nonzero(m.any(1)).flatten()
        cols = torch.nonzero(m.any(0)).flatten()
        y0, y1, x0, x1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
        y0, y1 = _grow(y0, y1, min(min_side, H), H)
        x0, x1 = _grow(x0, x1, min(min_side, W), W)
        boxes.append((y0, x0, y1, x1))
    return boxes


def _grow(lo: int, hi: int, side: int, limit: int) -> tuple[int, int]:
    if hi - lo >= side:
        return lo, hi
    lo = max(0, (lo + hi) // 2 - side // 2)
    hi = min(limit, lo + side)
    return hi - side, hi


def mae(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """Per-patch mean absolute error (B,)."""
    return (pred.float() - gt.float()).abs().flatten(1).mean(1)


def psnr(pred: torch.Tensor, gt: torch.Tensor, cap_db: float = PSNR_CAP_DB) -> torch.Tensor:
    """Per-patch PSNR in dB (B,), data range 1, capped at ``cap_db`` (identical -> cap)."""
    from torchmetrics.functional.image import peak_signal_noise_ratio

    out = peak_signal_noise_ratio(pred.float(), gt.float(), data_range=1.0, reduction="none", dim=(1, 2, 3))
    return out.nan_to_num(posinf=cap_db).clamp(max=cap_db)


def ssim(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """Per-patch SSIM (B,) with torchmetrics' defaults (Gaussian 11 x 11, sigma 1.5), data range 1."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    if min(pred.shape[-2:]) < SSIM_MIN_SIDE:
        raise ValueError(f"SSIM needs patches of at least {SSIM_MIN_SIDE} px, got {tuple(pred.shape[-2:])}")
    return structural_similarity_index_measure(pred.float(), gt.float(), data_range=1.0, reduction="none").reshape(-1)


def quality_metrics(pred: torch.Tensor, gt: torch.Tensor, mask: torch.Tensor, *, composite: bool = True, cap_db: float = PSNR_CAP_DB) -> dict[str, torch.Tensor]:
    """Per-patch metrics (each (B,)) under :data:`METRIC_KEYS`: ``full_*`` over the patch,
    ``masked_*`` over the hole's bounding box (see the module docstring)."""
    _check(pred, gt, mask)
    pred, gt, m = pred.float(), gt.float(), (mask > 0.5).float()
    if composite:
        pred = pred * m + gt * (1 - m)
    out = {"full_mae": mae(pred, gt), "full_psnr": psnr(pred, gt, cap_db), "full_ssim": ssim(pred, gt)}
    per = {"masked_mae": [], "masked_psnr": [], "masked_ssim": []}
    for i, (y0, x0, y1, x1) in enumerate(hole_boxes(m)):
        p, g = pred[i : i + 1, :, y0:y1, x0:x1], gt[i : i + 1, :, y0:y1, x0:x1]
        per["masked_mae"].append(mae(p, g))
        per["masked_psnr"].append(psnr(p, g, cap_db))
        per["masked_ssim"].append(ssim(p, g))
    out.update({k: torch.cat(v) for k, v in per.items()})
    return out


def summarize(per_patch: dict[str, torch.Tensor]) -> dict[str, float]:
    """Means over patches of :func:`quality_metrics`' output."""
    return {k: float(v.float().mean()) for k, v in per_patch.items()}


class Lite0PooledFeatures(nn.Module):
    """FID feature module: EfficientNet-Lite0 (ImageNet) 1280-d pooled features.

    ``forward(x)``: (B, 1 or 3, H, W) float in [0, 1] (or uint8 in [0, 255]) -> (B, 1280)
    float32. Grey patches are repeated to RGB inside the extractor; images are resized to
    ``resize`` px (bilinear, antialiased) first, the network's native input size.
    """

    num_features = 1280

    def __init__(self, resize: int | None = 224) -> None:
        super().__init__()
        from cxr_nodule_aug.eval.features import feature_extractor

        self.extractor = feature_extractor("efficientnet-lite0")
        self.resize = resize

    def train(self, mode: bool = True) -> Lite0PooledFeatures:
        super().train(False)  # frozen: BN statistics never move
        return self

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] not in (1, 3):
            raise ValueError(f"expected (B, 1 or 3, H, W) images, got {tuple(x.shape)}")
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        if x.shape[1] == 3:
            x = x.mean(1, keepdim=True)
        if self.resize is not None and tuple(x.shape[-2:]) != (self.resize, self.resize):
            x = F.interpolate(x, size=(self.resize, self.resize), mode="bilinear", align_corners=False, antialias=True)
        return self.extractor.pooled(x.clamp(0, 1)).float()


def inception_weights_path(weights_path: str | os.PathLike | None = None) -> Path:
    """The local torch-fidelity Inception weights, or a clear error (nothing is downloaded)."""
    try:
        import torch_fidelity  # noqa: F401
    except ImportError as err:
        raise ImportError(f"features='inception' needs the torch-fidelity package (not installed); {FID_LABEL} needs nothing extra") from err
    path = Path(weights_path) if weights_path is not None else Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS_NAME
    if not path.is_file():
        raise FileNotFoundError(f"features='inception' needs torch-fidelity's Inception weights at {path} (no download is attempted); pass weights_path= or use features='efficientnet-lite0'")
    return path


def fid(real: torch.Tensor, fake: torch.Tensor, *, features: str | nn.Module = "efficientnet-lite0", weights_path: str | os.PathLike | None = None, batch_size: int = 64, device: str | torch.device = "cpu") -> float:
    """Fréchet distance between two sets of patches (N, 1, H, W) in [0, 1] with torchmetrics.

    ``features``: ``"efficientnet-lite0"`` (default; report it as :data:`FID_LABEL`), an
    ``nn.Module`` (B, C, H, W) -> (B, D), or ``"inception"`` (torch-fidelity's Inception-v3 with
    local weights only; :data:`FID_INCEPTION_LABEL`). Needs at least 2 patches per set; with
    fewer patches than feature dimensions the covariances are rank-deficient and the value is
    biased upward: compare rows only at equal N.
    """
    from torchmetrics.image.fid import FrechetInceptionDistance

    if len(real) < 2 or len(fake) < 2:
        raise ValueError(f"FID needs at least 2 patches per set, got {len(real)} real and {len(fake)} fake")
    if features == "inception":
        metric = FrechetInceptionDistance(feature=2048, normalize=True, feature_extractor_weights_path=str(inception_weights_path(weights_path)))
        prep = lambda x: x.float().clamp(0, 1).expand(-1, 3, -1, -1)  # noqa: E731
    else:
        module = Lite0PooledFeatures() if features == "efficientnet-lite0" else features
        if not isinstance(module, nn.Module):
            raise ValueError(f"features must be 'efficientnet-lite0', 'inception' or an nn.Module, got {features!r}")
        metric = FrechetInceptionDistance(feature=module, normalize=True)
        prep = lambda x: x.float().clamp(0, 1)  # noqa: E731
    metric = metric.to(device)
    for data, is_real in ((real, True), (fake, False)):
        for start in range(0, len(data), batch_size):
            metric.update(prep(data[start : start + batch_size].to(device)), real=is_real)
    return float(metric.compute())
