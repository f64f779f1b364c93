"""The insertion engine: deterministic public stages, batched = one by one, the trainer's cut,
composition modes by name, thin transforms on a shared engine (short repr, pickling)."""

from __future__ import annotations

import pickle

import pytest
import torch
from conftest import EllipseShapeGenerator, lung_mask, make_image, make_target, tiny_texture
from torchvision import tv_tensors
from torchvision.transforms import v2

from cxr_nodule_aug import InsertNodules, NoduleInpaint, NoduleRecord, NoduleSynthesizer
from cxr_nodule_aug.functional.insertion import region_side
from cxr_nodule_aug.models import LungSegmenter
from cxr_nodule_aug.synthesizer import COMPOSITIONS, CompositionMode
from cxr_nodule_aug.train.texture import extract_patches

RECORDS = [NoduleRecord((40, 50), 9.0, 1), NoduleRecord((85, 70), 11.0, 2, contrast=1.5), NoduleRecord((62, 100), 21.0, 3)]


class BoxLungs(LungSegmenter):
    """The conftest lung mask, whatever the image: a lung model with a known answer."""

    def predict_mask(self, image, **kw):
        return lung_mask(image.shape[-1])[None].to(image.device)


def engine(**kw) -> NoduleSynthesizer:
    torch.manual_seed(0)
    return NoduleSynthesizer(EllipseShapeGenerator().eval(), tiny_texture(**kw), BoxLungs(base_width=2, depth=1, input_size=16).eval())


def test_every_stage_is_deterministic_and_leaves_its_input_alone():
    synth = engine()
    image = make_image(torch.uint16, size=128, seed=1)
    before = image.clone()
    runs = []
    for _ in range(2):
        working = synth.working(image)
        lung = synth.lung_mask(image, working=working)
        fps = synth.footprints(RECORDS)
        cut = synth.cut(image, RECORDS, footprints=fps, working=working)
        (changes,) = synth.compose([cut], [RECORDS])
        result = synth.paste(cut, RECORDS, changes)
        runs.append((lung, fps, cut, changes, result))
    (l1, f1, c1, ch1, r1), (l2, f2, c2, ch2, r2) = runs
    assert torch.equal(l1, lung_mask(128)) and torch.equal(l1, l2)
    assert all(torch.equal(a, b) for a, b in zip(f1 + c1.regions + ch1, f2 + c2.regions + ch2))
    assert torch.equal(c1.patches, c2.patches) and torch.equal(c1.holes, c2.holes)
    assert torch.equal(r1.image, r2.image) and r1.records == r2.records
    assert torch.equal(image, before)
    # The stages are what insert runs (footprints from the seeds when not given).
    (whole,) = synth.insert([image], [RECORDS])
    assert torch.equal(whole.image, r1.image) and torch.equal(whole.masks, r1.masks) and whole.records == r1.records
    # footprints(seeds, diameters) is footprints(records) before the nodules have a place.
    by_seed = synth.footprints([r.seed for r in RECORDS], [r.diameter_px for r in RECORDS])
    assert all(torch.equal(a, b) for a, b in zip(by_seed, f1))


@pytest.mark.parametrize("dtype", [torch.float32, torch.uint16])
def test_batched_insert_equals_one_by_one(dtype):
    synth = engine()
    images = [make_image(dtype, size=128, seed=s) for s in range(3)]
    records = [RECORDS, [], [NoduleRecord((30, 30), 12.0, 7), NoduleRecord((95, 95), 16.0, 8)]]
    batched = synth.insert(images, records)
    for image, recs, got in zip(images, records, batched):
        (alone,) = synth.insert([image], [recs])
        assert got.records == alone.records and torch.equal(got.masks, alone.masks) and torch.equal(got.boxes_xyxy, alone.boxes_xyxy)
        # One convolution over the batch may round differently from one per image.
        step = 1 if dtype == torch.uint16 else 1e-5
        assert (got.image.double() - alone.image.double()).abs().max() <= step
    assert torch.equal(batched[1].image, images[1]) and batched[1].records == []


@pytest.mark.parametrize("mask_type", ["shape", "box"])
def test_the_engines_cut_is_the_texture_trainers_cut(mask_type):
    """Same nodules (centre, diameter, shape), same image: ``synth.cut`` gives the trainer's
    training pairs bit for bit, for shape and box holes, cut as is (9, 11 px) and resampled (21 px)."""
    synth = engine(mask_type=mask_type)
    image = make_image(torch.uint16, size=128, seed=1)
    # The nodules' shape masks in the image, from a shape-mask engine (same footprints and places).
    inserted = engine().insert([image], [RECORDS])[0]
    assert [region_side(r.measured_diameter_px, 32, 0.5) for r in inserted.records] == [region_side(r.diameter_px, 32, 0.5) for r in RECORDS] == [32, 32, 44]
    pairs = extract_patches([(image, {"masks": inserted.masks})], patch_size=32, max_fill=0.5, mask_type=mask_type)
    cut = synth.cut(image, RECORDS)
    assert torch.equal(cut.patches, pairs["patch"]) and torch.equal(cut.holes, pairs["mask"])


def brighten(model, cuts, records):
    """A test composition mode: +0.2 of the window under every nodule, no network."""
    return [[torch.full_like(region, 0.2) for region in cut.regions] for cut in cuts]


def test_a_composition_mode_plugs_in_by_name_without_touching_the_transforms(monkeypatch):
    with pytest.raises(ValueError, match=r"composition must be one of \['additive', 'replace'\]"):
        NoduleSynthesizer(composition="overlay")
    monkeypatch.setitem(COMPOSITIONS, "brighten", CompositionMode(f"{__name__}:brighten"))
    synth = NoduleSynthesizer(EllipseShapeGenerator().eval(), tiny_texture(), composition="brighten")
    image = tv_tensors.Image(make_image(torch.float32, size=128))
    tf = NoduleInpaint(diameters=12.0, p=1.0, synthesizer=synth, generator=torch.Generator().manual_seed(0))
    out, target = tf(image, make_target(masks=True))
    mask = target["masks"][-1].bool()
    _, lo, hi = synth.working(image)
    torch.testing.assert_close(out[0][mask], (image[0][mask] + 0.2 * (hi - lo)).clamp(0, 1))
    assert torch.equal(out[0][~mask], image[0][~mask])
    # The replay goes through the same mode, by name, also after pickling (DataLoader workers).
    replay = pickle.loads(pickle.dumps(InsertNodules(target["nodules"], synthesizer=synth)))
    assert replay.synthesizer.composition == "brighten"
    assert torch.equal(replay(image, make_target(masks=True))[0], out)


def test_transforms_share_one_engine_and_print_short():
    synth = engine()
    tf = NoduleInpaint(diameters=(8.0, 16.0), p=1.0, synthesizer=synth, generator=torch.Generator().manual_seed(2))
    text = repr(v2.Compose([tf, InsertNodules(RECORDS, synthesizer=synth)]))
    assert len(text.splitlines()) <= 10, text
    assert "NoduleSynthesizer(composition='replace', shape=EllipseShapeGenerator(" in text and "GatedConv2d" not in text
    assert tf.shape_model is synth.shape_model and tf.texture_model is synth.texture_model and tf.lung_model is synth.lung_model
    image = tv_tensors.Image(make_image(torch.uint16))
    target = make_target(lung=False)  # the engine's lung model places the nodule
    out, out_target = tf(image, target)
    assert torch.equal(tf.lung_mask(image, target), lung_mask(128))
    (again,) = synth.insert([image], [out_target["nodules"]])
    assert torch.equal(again.image, out.as_subclass(torch.Tensor))
    copy = pickle.loads(pickle.dumps(tf))
    copy.generator.manual_seed(2)
    assert torch.equal(copy(image, target)[0], out)
    with pytest.raises(ValueError, match="either synthesizer=... or weights, shape_model"):
        NoduleInpaint(synthesizer=synth, weights="x", shape_model=EllipseShapeGenerator())
    with pytest.raises(ValueError, match="either synthesizer=... or lung_model"):  # never silently ignored
        NoduleInpaint(synthesizer=synth, lung_model=False)
    assert InsertNodules(RECORDS, synthesizer=synth).synthesizer is synth
    with pytest.raises(TypeError, match="synthesizer must be a NoduleSynthesizer"):
        InsertNodules(RECORDS, synthesizer=tiny_texture())


def test_a_lung_only_engine_and_clear_errors_for_what_it_lacks(tmp_path):
    LungSegmenter(base_width=2, depth=1, input_size=16).save_pretrained(tmp_path / "lung")
    loaded = NoduleSynthesizer.from_pretrained(shape_model=False, texture_model=False, lung_model=str(tmp_path / "lung"))
    assert loaded.shape_model is None and loaded.texture_model is None and type(loaded.lung_model) is LungSegmenter
    synth = NoduleSynthesizer.from_pretrained(shape_model=False, texture_model=False, lung_model=BoxLungs(base_width=2, depth=1, input_size=16))
    image = make_image(torch.uint16)
    assert synth.lung_mask(image).shape == (128, 128)
    with pytest.raises(ValueError, match="no texture model"):
        synth.cut(image, RECORDS)
    with pytest.raises(ValueError, match="no texture model"):
        synth.insert([image], [RECORDS])
    with pytest.raises(ValueError, match="no lung model"):
        NoduleSynthesizer(EllipseShapeGenerator(), tiny_texture()).lung_mask(image)
    with pytest.raises(TypeError, match="shape_model must be a ShapeGenerator"):
        NoduleSynthesizer(tiny_texture(), tiny_texture())
    with pytest.raises(TypeError, match="compile_texture must be a bool"):
        NoduleSynthesizer(compile_texture=1)
