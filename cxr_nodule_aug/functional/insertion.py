"""Deterministic nodule insertion: shapes from seeds, size modulation, texture, paste-back.

Everything random is decided before these functions run (see ``NoduleInpaint``); given the
same records, models and device they give the same pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cxr_nodule_aug.functional.composition import composition_of, nodule_change, run_model
from cxr_nodule_aug.functional.intensity import check_image, from_working, to_working, value_limits
from cxr_nodule_aug.functional.placement import InsertionError, PlacementError, check_diameters_fit, footprint_box, sample_centre, valid_centres
from cxr_nodule_aug.functional.size import equivalent_diameter, modulate_size
from cxr_nodule_aug.models.layer import DEFAULT_DENSITY
from cxr_nodule_aug.models.shape import ShapeGenerator
from cxr_nodule_aug.models.texture import TextureGenerator
from cxr_nodule_aug.records import NoduleRecord


def region_side(diameter_px: float, patch_size: int, max_fill: float) -> int:
    """Side (px, multiple of 4) of the image region the texture model sees for one nodule."""
    return max(patch_size, 4 * math.ceil(diameter_px / max_fill / 4))


def nodule_footprints(shapes: torch.Tensor, diameters_px: list[float], patch_size: int, max_fill: float) -> list[torch.Tensor]:
    """Size-modulated masks, one (R, R) bool canvas per nodule, R from :func:`region_side`."""
    return [modulate_size(shape, d, canvas=region_side(d, patch_size, max_fill)) for shape, d in zip(shapes, diameters_px)]


def _bbox_hw(mask: torch.Tensor) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a non-empty (R, R) mask."""
    rows = torch.nonzero(mask.any(1)).flatten()
    cols = torch.nonzero(mask.any(0)).flatten()
    top, left = int(rows[0]), int(cols[0])
    return top, left, int(rows[-1]) + 1 - top, int(cols[-1]) + 1 - left


def place_nodules(
    lung_mask: torch.Tensor,
    footprints: list[torch.Tensor],
    occupied_xyxy: torch.Tensor | None = None,
    *,
    gap_px: int = 2,
    generator: torch.Generator | None = None,
) -> list[tuple[int, int]]:
    """Sample one ``(x, y)`` anchor per footprint, inside the lungs and clear of each other.

    Footprints are placed one after the other, each avoiding ``occupied_xyxy`` and the ones
    placed before it. Raises :class:`PlacementError` naming the nodule that does not fit.
    """
    occupied = torch.zeros(0, 4) if occupied_xyxy is None else occupied_xyxy.detach().to("cpu", torch.float32).reshape(-1, 4)
    centres: list[tuple[int, int]] = []
    # A footprint lies wholly inside the lungs, so every valid centre lies in the lung mask's
    # bounding box: search that crop only (about half the radiograph). Row-major order, and
    # hence the sampled centre for a given generator state, is the same as on the full mask.
    if lung_mask.any():
        y0, x0, lung_h, lung_w = _bbox_hw(lung_mask)
    else:
        y0, x0, lung_h, lung_w = 0, 0, *lung_mask.shape
    lung_crop = lung_mask[y0 : y0 + lung_h, x0 : x0 + lung_w]
    shift = torch.tensor([x0, y0, x0, y0], dtype=torch.float32)
    for i, fp in enumerate(footprints):
        _, _, h, w = _bbox_hw(fp)
        valid = valid_centres(lung_crop, (h, w), occupied - shift, gap_px=gap_px)
        try:
            cy, cx = sample_centre(valid, generator)
            cy, cx = cy + y0, cx + x0
        except PlacementError:
            raise PlacementError(
                f"no position inside the lung mask fits nodule {i} (footprint {h}x{w} px, "
                f"lung area {int(lung_mask.sum())} px) without overlapping the {len(occupied)} existing boxes; "
                "use a smaller diameter, fewer nodules, or check the lung mask"
            ) from None
        centres.append((cx, cy))
        occupied = torch.cat([occupied, torch.tensor([footprint_box((cy, cx), (h, w))], dtype=torch.float32)])
    return centres


@dataclass
class InsertionResult:
    image: torch.Tensor
    """The image with the nodules, same shape, dtype and device as the input."""
    masks: torch.Tensor
    """(N, H, W) bool, each nodule's mask: the only pixels it may change (and it changes at
    least one of them, else :class:`InsertionError`)."""
    boxes_xyxy: torch.Tensor
    """(N, 4) float32 absolute XYXY, x2/y2 exclusive."""
    records: list[NoduleRecord]
    """The input records with ``box_xyxy`` and ``measured_diameter_px`` filled in."""


def _index(start: int, size: int, limit: int, device: torch.device) -> torch.Tensor:
    # Replicate padding by clamping indices: regions may reach past the image border.
    return (torch.arange(start, start + size, device=device)).clamp_(0, limit - 1)


@dataclass
class _Cut:
    """One image's patches, cut and ready for the texture model."""

    image: torch.Tensor
    records: list[NoduleRecord]
    gray: torch.Tensor
    lo: float
    hi: float
    patches: torch.Tensor  # (N, 1, P, P)
    holes: torch.Tensor  # (N, 1, P, P)
    regions: list[tuple[int, int, int, torch.Tensor, torch.Tensor]]  # (oy, ox, R, footprint, region)


@dataclass
class PatchCut:
    """One nodule's texture-model input, as :func:`cut_patch` cuts it."""

    patch: torch.Tensor
    """(1, 1, P, P) float32 in [0, 1]: the working image around the nodule, area-resampled to P."""
    hole: torch.Tensor
    """(1, 1, P, P) float32 {0, 1}: the footprint (boxed for ``mask_type="box"``), resampled to P."""
    footprint: torch.Tensor
    """(R, R) bool: the footprint on its canvas, boxed for ``mask_type="box"``."""
    region: torch.Tensor
    """(R, R) float32: the working image under the canvas (not clamped, not resampled)."""
    origin_yx: tuple[int, int]
    """The canvas' top-left pixel in the image (may lie outside it: border pixels repeat)."""


def cut_patch(gray: torch.Tensor, center_xy: tuple[int, int], footprint: torch.Tensor, patch_size: int, mask_type: str = "shape") -> PatchCut:
    """Cut one nodule's (patch, hole) pair: the one cut both inference and the texture trainer use.

    Args:
        gray: (H, W) working image (``to_working(image)[0]``).
        center_xy: the nodule's centre; the footprint's bounding box is placed with its top-left
            at ``(x - w // 2, y - h // 2)`` (``w``, ``h`` its width and height), as inference does.
        footprint: (R, R) bool, the nodule's mask on its canvas (see :func:`nodule_footprints`).
        patch_size: P, the texture model's input side; the R x R region is area-resampled to it.
        mask_type: ``"shape"`` (the hole is the footprint) or ``"box"`` (its bounding box,
            taken on the R x R canvas before resampling).
    """
    if mask_type not in ("shape", "box"):
        raise ValueError(f"mask_type must be 'shape' or 'box', got {mask_type!r}")
    if footprint.ndim != 2 or footprint.shape[0] != footprint.shape[1] or not footprint.any():
        raise ValueError(f"footprint must be a non-empty square (R, R) mask, got shape {tuple(footprint.shape)} with {int(footprint.sum())} pixels set")
    H, W = gray.shape
    R = footprint.shape[0]
    fp = footprint
    if mask_type == "box":
        top, left, h, w = _bbox_hw(fp)
        fp = torch.zeros_like(fp)
        fp[top : top + h, left : left + w] = True
    top, left, h, w = _bbox_hw(fp)
    cx, cy = center_xy
    oy, ox = cy - h // 2 - top, cx - w // 2 - left  # canvas origin in the image
    rows, cols = _index(oy, R, H, gray.device), _index(ox, R, W, gray.device)
    region = gray[rows][:, cols]
    patch = region[None, None].clamp(0, 1)
    hole = fp[None, None].float()
    if R != patch_size:
        patch = F.interpolate(patch, size=(patch_size, patch_size), mode="area")
        hole = (F.interpolate(hole, size=(patch_size, patch_size), mode="area") > 0).float()
    return PatchCut(patch, hole, fp, region, (oy, ox))


Working = tuple[torch.Tensor, float, float]
"""``to_working(image)``'s result: (H, W) float32 grey level and its (lo, hi) window."""


def _cut(
    image: torch.Tensor,
    records: list[NoduleRecord],
    shape_model: ShapeGenerator,
    texture_model: TextureGenerator,
    footprints: list[torch.Tensor] | None,
    working: Working | None = None,
) -> _Cut:
    check_image(image)
    device = image.device
    _, H, W = image.shape
    P, max_fill = texture_model.patch_size, texture_model.max_fill
    if footprints is None:
        check_diameters_fit([r.diameter_px for r in records], H, W, "the image")
        shapes = shape_model.generate([r.seed for r in records], device=device)
        footprints = nodule_footprints(shapes, [r.diameter_px for r in records], P, max_fill)
    # The window is an image-wide percentile: reuse it when the caller (the lung model) has it.
    gray, lo, hi = to_working(image) if working is None else working
    if gray.shape != (H, W) or gray.device != device:
        raise ValueError(f"working image must be ({H}, {W}) on {device} like the image, got {tuple(gray.shape)} on {gray.device}")
    patches, holes, regions = [], [], []
    for rec, fp in zip(records, footprints):
        c = cut_patch(gray, rec.center_xy, fp, P, texture_model.mask_type)
        regions.append((c.origin_yx[0], c.origin_yx[1], fp.shape[0], c.footprint, c.region))
        patches.append(c.patch)
        holes.append(c.hole)
    empty = torch.zeros(0, 1, P, P, device=device)
    return _Cut(image, records, gray, lo, hi, torch.cat(patches) if patches else empty, torch.cat(holes) if holes else empty, regions)


def run_texture(texture_model: TextureGenerator, patches: torch.Tensor, holes: torch.Tensor, densities: list[str] | None = None) -> torch.Tensor:
    """One texture-model call: (N, 1, P, P) patches and holes -> (N, 1, P, P) float32 output
    (the inpainted patch, or the layer of an additive model; see :func:`composition.run_model`)."""
    return run_model(texture_model, patches, holes, densities)


def record_densities(texture_model: torch.nn.Module, records: list[NoduleRecord]) -> list[str] | None:
    """Each record's density class for an additive model (``DEFAULT_DENSITY`` where a record
    has none); ``None`` for an inpainter, which takes no density."""
    if composition_of(texture_model) != "additive":
        return None
    return [DEFAULT_DENSITY if r.density is None else r.density for r in records]


def _paste(cut: _Cut, fine: torch.Tensor, patch_size: int, composition: str = "replace", densities: list[str] | None = None) -> InsertionResult:
    image, records = cut.image, cut.records
    device = image.device
    _, H, W = image.shape
    n = len(records)
    masks = torch.zeros(n, H, W, dtype=torch.bool, device=device)
    # Only the footprints' pixels change: the intensity change lives on the union of their
    # boxes (clipped to the image), not on a whole-radiograph buffer.
    boxes = []
    for i, (rec, (oy, ox, R, fp, _)) in enumerate(zip(records, cut.regions)):
        top, left, h, w = _bbox_hw(fp)
        box = (ox + left, oy + top, ox + left + w, oy + top + h)
        if box[0] < 0 or box[1] < 0 or box[2] > W or box[3] > H:
            raise PlacementError(f"nodule {i} at center_xy={rec.center_xy} does not lie inside the {H}x{W} image")
        boxes.append(box)
    if n:
        uy0, ux0 = min(b[1] for b in boxes), min(b[0] for b in boxes)
        uy1, ux1 = max(b[3] for b in boxes), max(b[2] for b in boxes)
        delta = torch.zeros(uy1 - uy0, ux1 - ux0, device=device)
    out_records = []
    for i, (rec, (oy, ox, R, fp, region), box) in enumerate(zip(records, cut.regions, boxes)):
        gen = fine[i : i + 1]
        if R != patch_size:
            gen = F.interpolate(gen, size=(R, R), mode="bilinear", align_corners=False)
        change = nodule_change(composition, gen[0, 0], region, fp, rec.contrast)
        x0, y0, x1, y1 = box
        delta[y0 - uy0 : y1 - uy0, x0 - ux0 : x1 - ux0] += change[y0 - oy : y1 - oy, x0 - ox : x1 - ox]
        masks[i, y0:y1, x0:x1] = fp[y0 - oy : y1 - oy, x0 - ox : x1 - ox]
        done = rec.replace(box_xyxy=tuple(map(float, box)), measured_diameter_px=round(float(equivalent_diameter(fp)), 3))
        if densities is not None:  # the density the layer was made with (a default filled in)
            done = done.replace(density=densities[i])
        out_records.append(done)
    out = image.clone()
    if n:
        # Only pixels inside the new nodules' masks are written: everything else keeps its bits,
        # whatever the dtype and value range. The clamp range is the whole image's.
        crop = image[:, uy0:uy1, ux0:ux1]
        inside = masks[:, uy0:uy1, ux0:ux1].any(0)
        new = from_working(crop, delta, cut.lo, cut.hi, limits=value_limits(image))
        out[:, uy0:uy1, ux0:ux1] = torch.where(inside, new, crop)
        changed = (new != crop).any(0) & inside
        for i, (rec, box) in enumerate(zip(records, boxes)):
            x0, y0, x1, y1 = box
            if not changed[y0 - uy0 : y1 - uy0, x0 - ux0 : x1 - ux0][masks[i, y0:y1, x0:x1]].any():
                dtype = str(image.dtype).removeprefix("torch.")
                raise InsertionError(
                    f"nodule {i} (contrast={rec.contrast:g}, diameter {rec.diameter_px:g} px at center_xy={rec.center_xy}) changed no pixel "
                    f"of this {dtype} image: the synthesised change is below the {dtype} resolution of the image's window "
                    f"[{cut.lo:g}, {cut.hi:g}] or lies beyond its value range {value_limits(image)}; a box there would label "
                    "nothing, so use a larger contrast"
                )
    return InsertionResult(out, masks, torch.tensor(boxes, dtype=torch.float32, device=device).reshape(-1, 4), out_records)


def insert_nodules(
    image: torch.Tensor,
    records: list[NoduleRecord],
    shape_model: ShapeGenerator,
    texture_model: TextureGenerator,
    *,
    footprints: list[torch.Tensor] | None = None,
) -> InsertionResult:
    """Insert one nodule per record into ``image``; the input is not modified.

    Args:
        image: (C, H, W), C in {1, 3}; uint8, int16, uint16, int32 or float, any device.
        records: where, how large, which shape (seed) and how conspicuous.
        shape_model, texture_model: the generators (on ``image.device``).
        footprints: precomputed :func:`nodule_footprints` for these records (saves a second
            shape generation when the caller already placed them).

    All texture patches of the image go through the texture model in one batch.
    """
    return insert_nodules_batch([image], [records], shape_model, texture_model, footprints=None if footprints is None else [footprints])[0]


def insert_nodules_batch(
    images: list[torch.Tensor],
    records: list[list[NoduleRecord]],
    shape_model: ShapeGenerator,
    texture_model: TextureGenerator,
    *,
    footprints: list[list[torch.Tensor] | None] | None = None,
    working: list[Working | None] | None = None,
) -> list[InsertionResult]:
    """:func:`insert_nodules` for several images with one texture-model call for all their
    nodules (the way to keep a GPU busy); each image's result is the per-image one.

    ``working``: per image, ``to_working(image)`` if the caller already computed it (the lung
    model needs it too), else ``None``.
    """
    if len(images) != len(records):
        raise ValueError(f"images and records must pair up, got {len(images)} and {len(records)}")
    footprints = footprints or [None] * len(images)
    working = working or [None] * len(images)
    cuts = [_cut(img, recs, shape_model, texture_model, fps, wk) for img, recs, fps, wk in zip(images, records, footprints, working)]
    devices = {c.patches.device for c in cuts if len(c.patches)}
    if len(devices) > 1:
        raise ValueError(f"all images of a batch must be on one device, got {sorted(map(str, devices))}")
    composition = composition_of(texture_model)
    densities = [record_densities(texture_model, c.records) for c in cuts]
    all_densities = None if composition != "additive" else [d for ds in densities for d in ds]
    fine = run_texture(texture_model, torch.cat([c.patches for c in cuts]), torch.cat([c.holes for c in cuts]), all_densities) if devices else None
    results, start = [], 0
    for c, ds in zip(cuts, densities):
        n = len(c.records)
        results.append(_paste(c, fine[start : start + n] if fine is not None else c.patches, texture_model.patch_size, composition, ds))
        start += n
    return results
