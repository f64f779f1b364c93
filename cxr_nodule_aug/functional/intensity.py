"""Image dtypes and value ranges: in = out.

The texture model works on a float grey-level patch in [0, 1]. An image is mapped there with
an intensity window taken from the image itself (0.1 / 99.9 percentiles), so 8-bit, 12-bit in
uint16, full 16-bit and float radiographs all look alike to the model; the synthesised change
is mapped back with the same window and added to every channel.
"""

from __future__ import annotations

import torch

from cxr_nodule_aug.functional.placement import InsertionError

INTEGER_DTYPES = (torch.uint8, torch.int16, torch.uint16, torch.int32)
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_WINDOW_QUANTILES = (0.001, 0.999)
_WINDOW_SAMPLE = 2**18  # percentiles from a regular grid of at most ~this many pixels


def check_image(image: torch.Tensor, name: str = "image") -> None:
    """Raise a clear error unless ``image`` is a (C, H, W) radiograph this library handles."""
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or tv_tensors.Image, got {type(image).__name__}")
    if image.ndim != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"{name} must have shape (C, H, W) with C = 1 or 3, got {tuple(image.shape)}")
    if image.dtype not in INTEGER_DTYPES + FLOAT_DTYPES:
        raise TypeError(f"{name} dtype must be one of uint8, int16, uint16, int32 or a float type, got {image.dtype}")
    if min(image.shape[-2:]) < 8:
        raise ValueError(f"{name} is too small for nodule insertion: {tuple(image.shape)}")
    # One sum is finite iff every value is, unless it overflowed: only then look element-wise.
    if image.is_floating_point() and not torch.isfinite(image.sum()) and not torch.isfinite(image).all():
        raise ValueError(f"{name} contains NaN or infinite values")


def value_limits(image: torch.Tensor) -> tuple[float, float]:
    """The range the output must stay in: the dtype's range for integers; for floats [0, 1]
    when the image lies in it, else the image's own min and max (a float image has no range
    of its own: a nodule never brightens past the brightest pixel already there)."""
    if not image.is_floating_point():
        info = torch.iinfo(image.dtype)
        return float(info.min), float(info.max)
    lo, hi = float(image.min()), float(image.max())
    if lo >= 0 and hi <= 1:
        return 0.0, 1.0
    return lo, hi


def to_working(image: torch.Tensor) -> tuple[torch.Tensor, float, float]:
    """Grey level (H, W) float32 mapped by the image's window to ~[0, 1], and the window."""
    # One channel: the plane itself (a view for float32, no copy); the mean of one value is it.
    gray = image[0].float() if image.shape[0] == 1 else image.float().mean(0)
    # Every step-th pixel in both directions: a 1024^2 radiograph gives 262,144 samples. The
    # 99.9th percentile moves by ~0.4 % of the range against all pixels; the sort is 4x cheaper.
    step = max(1, round((gray.numel() / _WINDOW_SAMPLE) ** 0.5))
    sample = gray[::step, ::step].flatten()
    q = torch.quantile(sample, torch.tensor(_WINDOW_QUANTILES, device=sample.device))
    lo, hi = float(q[0]), float(q[1])
    if hi - lo <= 1e-6 * max(abs(hi), 1.0):
        lo, hi = float(gray.min()), float(gray.max())
        if hi - lo <= 1e-6 * max(abs(hi), 1.0):
            raise InsertionError("image is constant: there is no anatomy to insert a nodule into")
    return gray.sub(lo).div_(hi - lo), lo, hi  # a new tensor: the input is never written


def compute_dtype(image: torch.Tensor) -> torch.dtype:
    """The float type that holds every value of ``image`` exactly: float64 for float64 and
    int32 (whose values float32 rounds beyond 2^24), else float32."""
    return torch.float64 if image.dtype in (torch.float64, torch.int32) else torch.float32


def from_working(image: torch.Tensor, delta: torch.Tensor, lo: float, hi: float, limits: tuple[float, float] | None = None) -> torch.Tensor:
    """``image`` plus a working-space change ``delta`` (H, W), in the image's dtype and range.

    ``limits``: the clamp range, default :func:`value_limits` of ``image``; pass the whole
    image's when ``image`` is a crop of it. Where ``delta`` is 0 the result equals ``image``
    bit for bit (the sum is computed in a float type that holds every input value).
    """
    vmin, vmax = value_limits(image) if limits is None else limits
    work = compute_dtype(image)
    out = image.to(work) + (delta.to(work) * (hi - lo))[None]
    out = out.clamp(vmin, vmax)
    if not image.is_floating_point():
        out = out.round()
    return out.to(image.dtype)
