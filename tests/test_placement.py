"""Placement: whole nodule inside the lung, clear of existing boxes, clear error when impossible."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cxr_nodule_aug.functional import PlacementError, place_nodules, valid_centres
from cxr_nodule_aug.functional.placement import footprint_box


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
