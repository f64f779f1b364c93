"""Placement: whole nodule inside the lung, clear of existing boxes, clear error when impossible."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cxr_nodule_aug.functional import PlacementError, place_nodules, valid_centres
from cxr_nodule_aug.functional.placement import box_fits, footprint_box


@settings(max_examples=50, deadline=None)
@given(
    lung_box=st.tuples(st.integers(0, 40), st.integers(0, 40), st.integers(20, 60), st.integers(20, 60)),
    h=st.integers(1, 20),
    w=st.integers(1, 20),
    occupied=st.lists(st.tuples(st.integers(0, 90), st.integers(0, 90), st.integers(1, 20), st.integers(1, 20)), max_size=3),
    seed=st.integers(0, 2**31),
)
def test_sampled_footprint_inside_lung_and_clear(lung_box, h, w, occupied, seed):
    y0, x0, lh, lw = lung_box
    lung = torch.zeros(100, 100, dtype=torch.bool)
    lung[y0 : y0 + lh, x0 : x0 + lw] = True
    occ = torch.tensor([[x, y, x + bw, y + bh] for x, y, bw, bh in occupied], dtype=torch.float32).reshape(-1, 4)
    valid = valid_centres(lung, (h, w), occ, gap_px=1)
    # Brute force over every centre: the integral-image map must agree exactly.
    for cy in range(0, 100, 7):
        for cx in range(0, 100, 7):
            x1, y1, x2, y2 = footprint_box((cy, cx), (h, w))
            inside = 0 <= y1 and 0 <= x1 and y2 <= 100 and x2 <= 100 and bool(lung[max(y1, 0) : y2, max(x1, 0) : x2].all())
            clear = all(not (x1 < ox2 + 1 and x2 > ox1 - 1 and y1 < oy2 + 1 and y2 > oy1 - 1) for ox1, oy1, ox2, oy2 in occ.tolist())
            assert bool(valid[cy, cx]) == (inside and clear), (cy, cx)


def test_place_several_nodules_without_overlap():
    lung = torch.zeros(64, 64, dtype=torch.bool)
    lung[4:60, 4:60] = True
    fps = []
    for _ in range(4):
        fp = torch.zeros(32, 32, dtype=torch.bool)
        fp[11:21, 11:21] = True
        fps.append(fp)
    centres = place_nodules(lung, fps, generator=torch.Generator().manual_seed(0), gap_px=0)
    boxes = [footprint_box((cy, cx), (10, 10)) for cx, cy in centres]
    for i, a in enumerate(boxes):
        assert lung[a[1] : a[3], a[0] : a[2]].all()
        for b in boxes[i + 1 :]:
            assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1]


def test_no_valid_place_is_an_error_not_a_loop():
    lung = torch.zeros(64, 64, dtype=torch.bool)
    lung[10:20, 10:20] = True
    fp = torch.zeros(32, 32, dtype=torch.bool)
    fp[5:25, 5:25] = True
    with pytest.raises(PlacementError, match="footprint 20x20"):
        place_nodules(lung, [fp], generator=torch.Generator().manual_seed(0))


def test_same_seed_same_places():
    lung = torch.ones(64, 64, dtype=torch.bool)
    fp = torch.zeros(16, 16, dtype=torch.bool)
    fp[4:12, 4:12] = True
    a = place_nodules(lung, [fp, fp], generator=torch.Generator().manual_seed(3))
    b = place_nodules(lung, [fp, fp], generator=torch.Generator().manual_seed(3))
    assert a == b


@settings(max_examples=60, deadline=None)
@given(H=st.integers(1, 40), W=st.integers(1, 40), density=st.floats(0.0, 1.0), seed=st.integers(0, 2**31), data=st.data())
def test_box_fits_is_brute_force_all(H, W, density, seed, data):
    h, w = data.draw(st.integers(1, H)), data.draw(st.integers(1, W))
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(H, W, generator=g) < density
    fits = box_fits(mask, h, w)
    ref = torch.tensor([[bool(mask[r : r + h, c : c + w].all()) for c in range(W - w + 1)] for r in range(H - h + 1)]).reshape(H - h + 1, W - w + 1)
    assert torch.equal(fits, ref)


def test_box_fits_large_mask_and_bad_arguments():
    mask = torch.ones(3000, 2000, dtype=torch.bool)
    mask[1500, 1999] = False
    fits = box_fits(mask, 2999, 1000)
    assert fits.shape == (2, 1001) and not fits[:, 1000].any() and fits[:, :1000].all()
    with pytest.raises(ValueError, match="bool"):
        box_fits(mask.float(), 3, 3)
    with pytest.raises(ValueError, match="fit the mask"):
        box_fits(mask, 3001, 3)


def test_check_image_finite_check_survives_an_overflowing_sum():
    from cxr_nodule_aug.functional import check_image

    big = torch.full((1, 64, 64), 60000.0, dtype=torch.float16)  # finite; its float16 sum is inf
    assert not torch.isfinite(big.sum())
    check_image(big)
    for bad in (float("inf"), float("-inf"), float("nan")):
        image = big.clone()
        image[0, 5, 7] = bad
        with pytest.raises(ValueError, match="NaN or infinite"):
            check_image(image)


@settings(max_examples=40, deadline=None)
@given(
    h=st.integers(1, 12), w=st.integers(1, 12), gap=st.integers(0, 3),
    box=st.tuples(st.floats(-5, 45), st.floats(-5, 45), st.floats(0.01, 15), st.floats(0.01, 15)),
)
def test_occupied_fractional_boxes_exclude_exactly_the_overlapping_centres(h, w, gap, box):
    x1, y1, bw, bh = box
    occ = torch.tensor([[x1, y1, x1 + bw, y1 + bh]], dtype=torch.float64)
    lung = torch.ones(40, 40, dtype=torch.bool)
    valid = valid_centres(lung, (h, w), occ, gap_px=gap)
    free = valid_centres(lung, (h, w))
    ox1, oy1, ox2, oy2 = occ[0].tolist()
    for cy in range(40):
        for cx in range(40):
            fx1, fy1, fx2, fy2 = footprint_box((cy, cx), (h, w))
            hit = fx1 < ox2 + gap and fx2 > ox1 - gap and fy1 < oy2 + gap and fy2 > oy1 - gap
            assert bool(valid[cy, cx]) == (bool(free[cy, cx]) and not hit), (cy, cx)
