"""Deterministic nodule insertion: shapes from seeds, size modulation, texture, paste-back.

Everything random is decided before these functions run (see ``NoduleInpaint``); given the
same records, models and device they give the same pixels.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cxr_nodule_aug.functional.intensity import check_image, from_working, to_working, value_limits
from cxr_nodule_aug.functional.placement import InsertionError, PlacementError, check_diameters_fit, footprint_box, sample_centre, valid_centres
from cxr_nodule_aug.functional.size import equivalent_diameter, modulate_size
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


def shape_footprints(
    shape_model: ShapeGenerator, seeds: list[int], diameters_px: list[float], patch_size: int, max_fill: float, *, device: torch.device | None = None
) -> list[torch.Tensor]:
    """The shape model's masks for ``seeds``, each size-modulated to its diameter on its canvas
    (:func:`nodule_footprints`): the masks the nodules will have. ``ValueError`` when the model
    gives an empty mask (an untrained model) rather than a nodule of no pixels."""
    if len(seeds) != len(diameters_px):
        raise ValueError(f"seeds and diameters_px must pair up, got {len(seeds)} and {len(diameters_px)}")
    if not seeds:
        return []
    shapes = shape_model.generate(list(seeds), device=device)
    for seed, shape in zip(seeds, shapes):
        if not shape.any():
            raise ValueError(f"the shape model produced an empty mask for seed {seed}; is it trained?")
    return nodule_footprints(shapes, list(diameters_px), patch_size, max_fill)


@dataclass
class NoduleCut:
    """One image's nodules, cut and ready for a composition (the texture model's input)."""

    image: torch.Tensor
    """(C, H, W) the image as given."""
    working: Working
    """The working image (grey level in the image's own window) and the window (lo, hi)."""
    patches: torch.Tensor
    """(N, 1, P, P) float32 in [0, 1]: the working image around each nodule, resampled to P."""
    holes: torch.Tensor
    """(N, 1, P, P) float32 {0, 1}: each footprint (boxed for ``mask_type="box"``), resampled to P."""
    footprints: list[torch.Tensor]
    """N (R, R) bool: each nodule's mask on its canvas, as it will be pasted."""
    regions: list[torch.Tensor]
    """N (R, R) float32: the working image under each canvas (not clamped, not resampled)."""
    origins_yx: list[tuple[int, int]]
    """Each canvas' top-left pixel in the image (may lie outside it: border pixels repeat)."""


def cut_nodules(
    image: torch.Tensor,
    centers_xy: list[tuple[int, int]],
    footprints: list[torch.Tensor],
    patch_size: int,
    mask_type: str = "shape",
    working: Working | None = None,
) -> NoduleCut:
    """Cut every nodule of one image (:func:`cut_patch` each): the cut inference and the
    texture trainer share.

    Args:
        image: (C, H, W), any dtype :func:`check_image` admits, any device.
        centers_xy: one ``(x, y)`` anchor per nodule (``NoduleRecord.center_xy``).
        footprints: one (R, R) bool mask per nodule (:func:`nodule_footprints`).
        patch_size, mask_type: the texture model's ``patch_size`` and ``mask_type``.
        working: ``to_working(image)`` when the caller has it (the window is an image-wide
            percentile), on the image's device; else computed here.
    """
    check_image(image)
    return _cut_checked(image, centers_xy, footprints, patch_size, mask_type, working)


def _cut_checked(image, centers_xy, footprints, patch_size, mask_type, working) -> NoduleCut:
    if len(centers_xy) != len(footprints):
        raise ValueError(f"centers_xy and footprints must pair up, got {len(centers_xy)} and {len(footprints)}")
    device = image.device
    _, H, W = image.shape
    gray, lo, hi = to_working(image) if working is None else working
    if gray.shape != (H, W) or gray.device != device:
        raise ValueError(f"working image must be ({H}, {W}) on {device} like the image, got {tuple(gray.shape)} on {gray.device}")
    cuts = [cut_patch(gray, c, fp, patch_size, mask_type) for c, fp in zip(centers_xy, footprints)]
    empty = torch.zeros(0, 1, patch_size, patch_size, device=device)
    return NoduleCut(
        image=image,
        working=(gray, lo, hi),
        patches=torch.cat([c.patch for c in cuts]) if cuts else empty,
        holes=torch.cat([c.hole for c in cuts]) if cuts else empty,
        footprints=[c.footprint for c in cuts],
        regions=[c.region for c in cuts],
        origins_yx=[c.origin_yx for c in cuts],
    )


def run_texture(texture_model: TextureGenerator, patches: torch.Tensor, holes: torch.Tensor) -> torch.Tensor:
    """One texture-model call: (N, 1, P, P) patches and holes -> (N, 1, P, P) float32 output."""
    if len(patches) == 0:
        return patches.float()
    with torch.inference_mode():
        model_dtype = next(texture_model.parameters()).dtype
        return texture_model(patches.to(model_dtype), holes.to(model_dtype)).fine.float()


Composition = Callable[[torch.nn.Module, list[NoduleCut], list[list[NoduleRecord]]], list[list[torch.Tensor]]]
"""How a nodule's new pixels are made from its cut: ``composition(model, cuts, records)``.

Called once per batch with every image's :class:`NoduleCut` and records (so that one network
call serves all nodules of all images); returns, per image and per nodule, the (R, R) float32
*change* of the working image on the nodule's canvas (R = ``region.shape[-1]``). The paste
(:func:`paste_nodules`) scales it by the record's ``contrast``, keeps it inside the footprint,
adds it to the working image and maps the result back to the image's dtype and range.
"""


def replace_composition(texture_model: torch.nn.Module, cuts: list[NoduleCut], records: list[list[NoduleRecord]]) -> list[list[torch.Tensor]]:
    """The paper's inpainting: the texture model fills the hole, and the nodule's pixels are
    *replaced* by its output (change = output resampled to R - working region)."""
    del records  # the conditions of this mode are the patch and the hole only
    n = sum(len(c.regions) for c in cuts)
    if n == 0:
        return [[] for _ in cuts]
    fine = run_texture(texture_model, torch.cat([c.patches for c in cuts]), torch.cat([c.holes for c in cuts]))
    out, start = [], 0
    for c in cuts:
        P = c.patches.shape[-1]
        changes = []
        for i, region in enumerate(c.regions):
            gen = fine[start + i : start + i + 1]
            R = region.shape[-1]
            if R != P:
                gen = F.interpolate(gen, size=(R, R), mode="bilinear", align_corners=False)
            changes.append(gen[0, 0] - region)
        out.append(changes)
        start += len(c.regions)
    return out


def paste_nodules(cut: NoduleCut, records: list[NoduleRecord], changes: list[torch.Tensor]) -> InsertionResult:
    """Write the composition's working-domain ``changes`` into the image (the footprints'
    pixels only, scaled by each record's ``contrast``): the result in the image's dtype, range
    and device, with masks, boxes and the records' measured fields.

    Raises :class:`PlacementError` for a nodule that does not lie inside the image and
    :class:`InsertionError` for one that changes no pixel (a box there would label nothing).
    """
    image = cut.image
    if not len(records) == len(changes) == len(cut.footprints):
        raise ValueError(f"records, changes and the cut's nodules must pair up, got {len(records)}, {len(changes)} and {len(cut.footprints)}")
    device = image.device
    _, H, W = image.shape
    n = len(records)
    _, lo, hi = cut.working
    masks = torch.zeros(n, H, W, dtype=torch.bool, device=device)
    # Only the footprints' pixels change: the intensity change lives on the union of their
    # boxes (clipped to the image), not on a whole-radiograph buffer.
    boxes = []
    for i, (rec, (oy, ox), fp) in enumerate(zip(records, cut.origins_yx, cut.footprints)):
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
    for i, (rec, (oy, ox), fp, d, box) in enumerate(zip(records, cut.origins_yx, cut.footprints, changes, boxes)):
        change = rec.contrast * d * fp
        x0, y0, x1, y1 = box
        delta[y0 - uy0 : y1 - uy0, x0 - ux0 : x1 - ux0] += change[y0 - oy : y1 - oy, x0 - ox : x1 - ox]
        masks[i, y0:y1, x0:x1] = fp[y0 - oy : y1 - oy, x0 - ox : x1 - ox]
        out_records.append(rec.replace(box_xyxy=tuple(map(float, box)), measured_diameter_px=round(float(equivalent_diameter(fp)), 3)))
    out = image.clone()
    if n:
        # Only pixels inside the new nodules' masks are written: everything else keeps its bits,
        # whatever the dtype and value range. The clamp range is the whole image's.
        crop = image[:, uy0:uy1, ux0:ux1]
        inside = masks[:, uy0:uy1, ux0:ux1].any(0)
        new = from_working(crop, delta, lo, hi, limits=value_limits(image))
        out[:, uy0:uy1, ux0:ux1] = torch.where(inside, new, crop)
        changed = (new != crop).any(0) & inside
        for i, (rec, box) in enumerate(zip(records, boxes)):
            x0, y0, x1, y1 = box
            if not changed[y0 - uy0 : y1 - uy0, x0 - ux0 : x1 - ux0][masks[i, y0:y1, x0:x1]].any():
                dtype = str(image.dtype).removeprefix("torch.")
                raise InsertionError(
                    f"nodule {i} (contrast={rec.contrast:g}, diameter {rec.diameter_px:g} px at center_xy={rec.center_xy}) changed no pixel "
                    f"of this {dtype} image: the synthesised change is below the {dtype} resolution of the image's window "
                    f"[{lo:g}, {hi:g}] or lies beyond its value range {value_limits(image)}; a box there would label "
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
    composition: Composition = replace_composition,
) -> InsertionResult:
    """Insert one nodule per record into ``image``; the input is not modified.

    Args:
        image: (C, H, W), C in {1, 3}; uint8, int16, uint16, int32 or float, any device.
        records: where, how large, which shape (seed) and how conspicuous.
        shape_model, texture_model: the generators (on ``image.device``).
        footprints: precomputed :func:`nodule_footprints` for these records (saves a second
            shape generation when the caller already placed them).
        composition: how the new pixels are made (:data:`Composition`; default the paper's
            inpainting, :func:`replace_composition`).

    All texture patches of the image go through the texture model in one batch. The engine,
    :class:`cxr_nodule_aug.synthesizer.NoduleSynthesizer`, runs this with its models.
    """
    return insert_nodules_batch([image], [records], shape_model, texture_model, footprints=None if footprints is None else [footprints], composition=composition)[0]


def insert_nodules_batch(
    images: list[torch.Tensor],
    records: list[list[NoduleRecord]],
    shape_model: ShapeGenerator,
    texture_model: TextureGenerator,
    *,
    footprints: list[list[torch.Tensor] | None] | None = None,
    working: list[Working | None] | None = None,
    composition: Composition = replace_composition,
) -> list[InsertionResult]:
    """:func:`insert_nodules` for several images with one texture-model call for all their
    nodules (the way to keep a GPU busy); each image's result is the per-image one.

    The pipeline, in order: footprints (:func:`shape_footprints`, unless given) -> cut
    (:func:`cut_nodules`) -> ``composition`` (one call for the batch) -> paste
    (:func:`paste_nodules`).

    ``working``: per image, ``to_working(image)`` if the caller already computed it (the lung
    model needs it too), else ``None``.
    """
    if len(images) != len(records):
        raise ValueError(f"images and records must pair up, got {len(images)} and {len(records)}")
    footprints = footprints or [None] * len(images)
    working = working or [None] * len(images)
    P, max_fill = texture_model.patch_size, texture_model.max_fill
    cuts = []
    for image, recs, fps, wk in zip(images, records, footprints, working):
        check_image(image)
        if fps is None:
            _, H, W = image.shape
            check_diameters_fit([r.diameter_px for r in recs], H, W, "the image")
            fps = shape_footprints(shape_model, [r.seed for r in recs], [r.diameter_px for r in recs], P, max_fill, device=image.device)
        cuts.append(_cut_checked(image, [r.center_xy for r in recs], fps, P, texture_model.mask_type, wk))
    devices = {c.patches.device for c in cuts if len(c.patches)}
    if len(devices) > 1:
        raise ValueError(f"all images of a batch must be on one device, got {sorted(map(str, devices))}")
    changes = composition(texture_model, cuts, records)
    return [paste_nodules(c, recs, ch) for c, recs, ch in zip(cuts, records, changes)]
