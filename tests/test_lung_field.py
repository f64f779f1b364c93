"""``clean_lung_mask``, the lung model's anatomical post-processing, on synthetic masks.

The check on the real radiograph (every README Quickstart nodule inside the thorax) is in
tests/test_lungs.py.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cxr_nodule_aug.models import LungSegmenter
from cxr_nodule_aug.models.lung import clean_lung_mask


def two_lungs(size: int = 128) -> torch.Tensor:
    """Two broad rectangles, one per half, rows 30-109."""
    m = torch.zeros(size, size, dtype=torch.bool)
    m[30:110, 12:56] = True
    m[30:110, 72:116] = True
    return m


def test_a_thin_spike_into_the_neck_is_cut():
    m = two_lungs()
    m[0:30, 30:35] = True  # 5 px wide, up from the right lung's top to the image edge
    out = clean_lung_mask(m)  # opening radius round(0.03 * 128) = 4 px: cuts anything under 9 px
    assert not out[:28].any()  # a stub of at most 2 rows stays where the spike met the lung
    lung = two_lungs()
    assert (out & lung).sum() >= 0.95 * lung.sum()  # the lungs themselves lose only their corners
    assert (out & ~lung).sum() <= 6


def test_a_thin_recess_below_the_lung_centre_stays():
    """Costophrenic recesses are thin by anatomy: only thin parts above a lung's centre go."""
    m = two_lungs()
    m[110:125, 12:16] = True  # 4 px wide, down from the right lung's lateral base
    m[5:30, 100:104] = True  # 4 px wide, up from the left lung's top
    m[26:30, 80:83] = True  # a 4 x 3 px bump on its top: thin but short, not a spike
    out = clean_lung_mask(m)
    assert out[110:125, 12:16].all()
    assert not out[5:28, 100:104].any()
    assert out[27:30, 81].all()


def test_one_lung_per_side_and_strays_dropped():
    m = two_lungs()
    m[0:12, 0:12] = True  # a blob in the shoulder, left half, separate from the lung
    m[60:64, 60:66] = True  # a speck in the mediastinum
    m[0:10, 118:128] = True  # a blob in the right-hand corner
    out = clean_lung_mask(m)
    assert torch.equal(out, clean_lung_mask(two_lungs()))
    assert out[70, 30] and out[70, 90]


def test_holes_over_masses_are_filled_and_an_isthmus_keeps_its_lower_zone():
    m = two_lungs()
    m[60:80, 25:45] = False  # a mass inside the right lung
    m[70:72, 80:110] = False  # the left lung nearly cut in two ...
    m[70:72, 72:74] = True  # ... joined by a 2 px isthmus the opening removes
    out = clean_lung_mask(m)
    assert out[70, 35]  # the hole is lung field
    assert out[100, 90] and out[40, 90]  # both halves of the left lung stay


def test_a_single_lung_and_a_far_smaller_other_side():
    one = torch.zeros(128, 128, dtype=torch.bool)
    one[30:110, 12:56] = True
    assert torch.equal(clean_lung_mask(one), clean_lung_mask(one, min_fraction=0.0))
    assert clean_lung_mask(one)[30:110, 12:56].float().mean() > 0.95
    tiny = one.clone()
    tiny[50:60, 90:100] = True  # 100 px against 3,520: under min_fraction=0.1 of the lung
    assert not clean_lung_mask(tiny)[:, 64:].any()
    assert clean_lung_mask(tiny, min_fraction=0.01)[55, 95]
    assert not clean_lung_mask(torch.zeros(16, 16, dtype=torch.bool)).any()


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="mask must be an"):
        clean_lung_mask(torch.zeros(1, 8, 8, dtype=torch.bool))
    with pytest.raises(ValueError, match="mask must be an"):
        clean_lung_mask(torch.zeros(8, 8))
    with pytest.raises(ValueError, match="open_fraction"):
        clean_lung_mask(two_lungs(), open_fraction=0.5)
    with pytest.raises(ValueError, match="min_fraction"):
        clean_lung_mask(two_lungs(), min_fraction=1.5)


def test_predict_mask_cleans_at_the_model_resolution(monkeypatch):
    model = LungSegmenter(base_width=2, depth=1, input_size=32).eval()
    spiky = torch.zeros(32, 32)
    spiky[8:30, 3:14] = spiky[8:30, 18:30] = 1.0  # two lungs from row 8
    spiky[0:8, 8] = 1.0  # 1 px wide at 32 px (opening radius 1 there): 8 px wide at 256 px
    monkeypatch.setattr(model, "_probability_at_input_size", lambda image: spiky[None, None].expand(len(image), 1, 32, 32))
    out = model.predict_mask(torch.rand(2, 1, 256, 256))
    assert out.shape == (2, 256, 256) and out.dtype == torch.bool
    expected = F.interpolate(clean_lung_mask(spiky > 0.5)[None, None].float(), size=(256, 256), mode="bilinear", align_corners=False)[0, 0] >= 0.5
    assert torch.equal(out[0], expected) and torch.equal(out[1], expected)
    assert not out[:, :52].any() and out[:, 64:].any()  # the spike is gone (a 1 px stub may stay), the lungs are not
