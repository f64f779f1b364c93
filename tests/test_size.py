"""Size modulation against scikit-image's regionprops as the oracle."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from skimage.measure import label, regionprops

from cxr_nodule_aug.functional import ellipse_axes, equivalent_diameter, modulate_size


def oracle_diameter(mask: torch.Tensor) -> float:
    props = regionprops(mask.numpy().astype(np.uint8))
    assert len(props) == 1
    return (props[0].axis_major_length + props[0].axis_minor_length) / 2


def blob(a: float, b: float, angle: float, lobes: int, amp: float, size: int = 128) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(size, dtype=torch.float64) - size / 2, torch.arange(size, dtype=torch.float64) - size / 2, indexing="ij")
    u = xx * math.cos(angle) + yy * math.sin(angle)
    v = -xx * math.sin(angle) + yy * math.cos(angle)
    r = torch.sqrt((u / a) ** 2 + (v / b) ** 2)
    return r <= 1 + amp * torch.cos(lobes * torch.atan2(v, u))


blobs = st.builds(
    blob,
    a=st.floats(15, 55),
    b=st.floats(15, 55),
    angle=st.floats(0, math.pi),
    lobes=st.integers(2, 7),
    amp=st.floats(0, 0.2),
)


@settings(max_examples=40, deadline=None)
@given(mask=blobs)
def test_equivalent_diameter_matches_regionprops(mask):
    major, minor = ellipse_axes(mask)
    props = regionprops(mask.numpy().astype(np.uint8))[0]
    assert float(major) == pytest.approx(props.axis_major_length, rel=1e-6, abs=1e-6)
    assert float(minor) == pytest.approx(props.axis_minor_length, rel=1e-6, abs=1e-6)


@settings(max_examples=60, deadline=None)
@given(mask=blobs.filter(lambda m: m.any()), diameter=st.floats(4, 200))
def test_modulated_diameter_within_tolerance(mask, diameter):
    # Shapes at most 1.4:1 elongated so a 200 px request fits the 256 canvas.
    a, b = ellipse_axes(mask)
    if float(a) / float(b) > 1.4:
        return
    out = modulate_size(mask, diameter, canvas=256)
    assert out.shape == (256, 256) and out.dtype == torch.bool
    assert len(regionprops(label(out.numpy().astype(np.uint8)))) == 1, "the nodule stays one piece"
    measured = oracle_diameter(out)
    assert abs(measured - diameter) <= max(1.0, 0.05 * diameter), (measured, diameter)


@settings(max_examples=30, deadline=None)
@given(mask=blobs, diameter=st.floats(6, 100))
def test_modulated_shape_is_centred(mask, diameter):
    out = modulate_size(mask, diameter, canvas=256)
    rows = torch.nonzero(out.any(1)).flatten()
    cols = torch.nonzero(out.any(0)).flatten()
    h, w = int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1)
    assert int(rows[0]) == (256 - h) // 2 and int(cols[0]) == (256 - w) // 2


def test_input_not_modified_and_float_masks_accepted():
    mask = blob(30, 20, 0.3, 3, 0.1).float()
    before = mask.clone()
    out = modulate_size(mask, 40.0, canvas=128)
    assert torch.equal(mask, before)
    assert abs(oracle_diameter(out) - 40.0) <= 2.0


def test_too_large_for_canvas_is_an_error():
    with pytest.raises(ValueError, match="does not fit canvas=64"):
        modulate_size(blob(30, 30, 0, 3, 0), 80.0, canvas=64)


@pytest.mark.parametrize("diameter", [0, -3.0, float("nan"), float("inf")])
def test_bad_diameter_is_an_error(diameter):
    with pytest.raises(ValueError, match="diameter_px"):
        modulate_size(blob(30, 30, 0, 3, 0), diameter)


def test_empty_mask_is_an_error():
    with pytest.raises(ValueError, match="empty"):
        modulate_size(torch.zeros(32, 32, dtype=torch.bool), 10.0)
    with pytest.raises(ValueError, match="empty"):
        equivalent_diameter(torch.zeros(8, 8))


def test_batched_equivalent_diameter():
    masks = torch.stack([blob(20, 20, 0, 2, 0), blob(40, 25, 1.0, 4, 0.1)])
    d = equivalent_diameter(masks)
    assert d.shape == (2,)
    assert float(d[1]) == pytest.approx(oracle_diameter(masks[1]), rel=1e-6)
