"""Attributes end to end: diameters="lidc", records carrying the drawn row, HEM with LIDC ratings."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import EllipseShapeGenerator, make_image, make_target, tiny_texture
from torchvision import tv_tensors

from cxr_nodule_aug import HEMSampler, InsertNodules, NoduleInpaint, NoduleRecord
from cxr_nodule_aug.samplers import LIDCDiameters, draw_with_attributes, resolve_sampler
from cxr_nodule_aug.samplers.base import draw
from cxr_nodule_aug.samplers.hem import lidc_rating_columns

from cxr_nodule_aug.lidc import RATINGS


def make_tf(**kw):
    kw.setdefault("shape_model", EllipseShapeGenerator())
    kw.setdefault("texture_model", tiny_texture())
    kw.setdefault("p", 1.0)
    kw.setdefault("lung_model", False)
    kw.setdefault("generator", torch.Generator().manual_seed(0))
    return NoduleInpaint(**kw)


def test_diameters_lidc_string_resolves_to_the_lidc_sampler():
    tf = make_tf(diameters="lidc:test", unit="mm")
    assert isinstance(tf.diameters, LIDCDiameters) and tf.diameters.split == "test" and tf.unit == "mm"
    assert make_tf(diameters="lidc:val").unit == "mm"  # the sampler's unit, without unit=
    assert resolve_sampler("lidc", "diameters").split == "train"
    assert resolve_sampler((4.0, 9.0), "diameters") == (4.0, 9.0)  # anything else: unchanged
    with pytest.raises(ValueError, match="unit='px'"):
        make_tf(diameters="lidc:test", unit="px")
    with pytest.raises(ValueError, match="diameters='lidc:dev'"):
        make_tf(diameters="lidc:dev")
    with pytest.raises(ValueError, match="contrast='lidc'"):
        resolve_sampler("lidc", "contrast")


def test_row_samplers_draw_what_they_return_and_records_carry_the_row():
    lidc = LIDCDiameters(split="test", range_mm=(4.0, 9.0))
    for sampler in (lidc, HEMSampler({"diameter_mm": [5.0, 6.5, 8.0], "contrast": [0.1, 0.2, 0.3]})):
        values, rows = draw_with_attributes(sampler, 6, torch.Generator().manual_seed(3), "diameters")
        # the same draw as the sampler's __call__: replacing draw() changed no existing result
        torch.testing.assert_close(values, draw(sampler, 6, torch.Generator().manual_seed(3), "diameters"))
        assert [r["diameter_mm"] for r in rows] == values.tolist()
    assert draw_with_attributes(lambda n, generator=None: torch.full((n,), 5.0), 2, None, "diameters")[1] is None

    tf = make_tf(diameters=lidc)
    _, target = tf(tv_tensors.Image(make_image()), make_target(spacing=(0.5, 0.5)))
    rec = target["nodules"][0]
    att = rec.attributes
    assert att["lidc_split"] == "test" and att["lidc_nodule_id"] in lidc.nodule_ids
    assert rec.diameter_mm == pytest.approx(att["diameter_mm"], abs=1e-3)
    assert set(RATINGS) <= set(att)
    again = NoduleRecord.from_dict(json.loads(json.dumps(rec.to_dict())))
    assert again == rec
    # provenance only: the records replay to the same image
    image = tv_tensors.Image(make_image())
    tf.generator = torch.Generator().manual_seed(0)
    out, target = tf(image, make_target(spacing=(0.5, 0.5)))
    replay = InsertNodules(target["nodules"], shape_model=tf.shape_model, texture_model=tf.texture_model)
    again, _ = replay(image, make_target(spacing=(0.5, 0.5)))
    assert torch.equal(out, again)


def _sim_target(boxes, ratings):
    return {"boxes": torch.tensor(boxes, dtype=torch.float32),
            "sim_nodules": [{"params": {"shape": "lidc", "lidc_ratings": r}} for r in ratings]}


def test_hem_table_takes_lidc_ratings_when_the_targets_have_them():
    r1 = {k: 1.0 + i for i, k in enumerate(RATINGS)}
    r2 = {k: 5.0 for k in RATINGS}
    r3 = {k: 2.0 for k in RATINGS}
    targets = [_sim_target([[10, 10, 20, 20], [40, 40, 56, 56]], [r1, r2]), {"boxes": torch.zeros(0, 4), "sim_nodules": []},
               _sim_target([[5, 5, 13, 13]], [r3])]
    predictions = [{"boxes": torch.tensor([[10.0, 10, 20, 20]]), "scores": torch.tensor([0.9])},
                   {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0)},
                   {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0)}]
    cols = lidc_rating_columns(targets)
    assert cols["lidc_texture"].tolist() == [r1["texture"], 5.0, 2.0]
    sampler = HEMSampler.from_detections(predictions, targets, pixel_spacing_mm=0.5)
    # the second nodule of image 0 and the one of image 2 were missed; their ratings came along
    assert sampler.table["lidc_malignancy"].tolist() == [5.0, 2.0]
    assert sorted(sampler.table["diameter_mm"].tolist()) == [4.0, 8.0]
    by_texture = HEMSampler(sampler.table, attribute="lidc_texture")
    assert set(by_texture(8, generator=torch.Generator().manual_seed(0)).tolist()) <= {5.0, 2.0}
    rows = sampler.sample_rows(3, generator=torch.Generator().manual_seed(0))
    assert all({"diameter_mm", "lidc_texture"} <= set(r) for r in rows)
    # no ratings (procedural nodules, a real dataset, a box added since): no rating columns
    assert lidc_rating_columns([{"boxes": torch.ones(1, 4)}]) == {}
    procedural = _sim_target([[10, 10, 20, 20]], [None])
    assert lidc_rating_columns([procedural]) == {}
    extra_box = _sim_target([[10, 10, 20, 20], [30, 30, 40, 40]], [r1])
    assert lidc_rating_columns([extra_box]) == {}
    plain = HEMSampler.from_detections(predictions, [{"boxes": t["boxes"]} for t in targets], pixel_spacing_mm=0.5)
    assert not any(k.startswith("lidc_") for k in plain.table)
