"""The speed work keeps outputs: cached shapes, cropped placement, cropped paste-back, the shared
working image; and the throughput benchmark's quick preset runs end to end."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import lung_mask, make_image, tiny_texture
from hypothesis import given, settings
from hypothesis import strategies as st

from cxr_nodule_aug.functional import PlacementError, insert_nodules, insert_nodules_batch, nodule_footprints, place_nodules, valid_centres
from cxr_nodule_aug.functional.intensity import to_working
from cxr_nodule_aug.functional.placement import footprint_box, sample_centre
from cxr_nodule_aug.models import ShapeGenerator
from cxr_nodule_aug.records import NoduleRecord

ROOT = Path(__file__).resolve().parents[1]


def test_shape_cache_returns_what_the_network_gives_and_forgets_on_weight_change():
    torch.manual_seed(0)
    g = ShapeGenerator(latent_dim=8, base_width=16, image_size=32).eval()
    g.cache_size = 0
    reference = g.generate([3, 1, 4, 1, 5])
    g.cache_size = 4
    assert torch.equal(g.generate([3, 1, 4, 1, 5]), reference)
    assert len(g._shape_cache) == 4  # LRU bound; seed 1 asked twice is one entry
    assert torch.equal(g.generate([5, 3]), reference[[4, 0]])
    assert len(pickle.loads(pickle.dumps(g))._shape_cache) == 0  # DataLoader workers get no cache
    with torch.no_grad():
        g.net[0].weight.mul_(-1)
    g.cache_size = 0
    changed = g.generate([3, 1])
    g.cache_size = 4
    assert torch.equal(g.generate([3, 1]), changed)
    g.train()
    assert g.generate([]).shape == (0, 32, 32)


def _place_on_full_mask(lung, footprints, occupied, gap_px, generator):
    """The reference: valid_centres on the whole (H, W) mask."""
    centres = []
    for fp in footprints:
        rows, cols = torch.nonzero(fp.any(1)).flatten(), torch.nonzero(fp.any(0)).flatten()
        h, w = int(rows[-1] - rows[0]) + 1, int(cols[-1] - cols[0]) + 1
        cy, cx = sample_centre(valid_centres(lung, (h, w), occupied, gap_px=gap_px), generator)
        centres.append((cx, cy))
        occupied = torch.cat([occupied, torch.tensor([footprint_box((cy, cx), (h, w))], dtype=torch.float32)])
    return centres


@settings(max_examples=30, deadline=None)
@given(
    lung_box=st.tuples(st.integers(0, 30), st.integers(0, 30), st.integers(30, 60), st.integers(30, 60)),
    sides=st.lists(st.tuples(st.integers(1, 12), st.integers(1, 12)), min_size=1, max_size=3),
    occupied=st.lists(st.tuples(st.integers(0, 90), st.integers(0, 90), st.integers(1, 20), st.integers(1, 20)), max_size=3),
    seed=st.integers(0, 2**31),
)
def test_placement_on_the_lung_crop_equals_the_full_mask(lung_box, sides, occupied, seed):
    y0, x0, lh, lw = lung_box
    lung = torch.zeros(96, 100, dtype=torch.bool)
    lung[y0 : y0 + lh, x0 : x0 + lw] = True
    lung[y0 + lh // 2, x0 : x0 + lw] = False  # not a plain rectangle
    footprints = []
    for h, w in sides:
        fp = torch.zeros(16, 16, dtype=torch.bool)
        fp[2 : 2 + h, 3 : 3 + w] = True
        footprints.append(fp)
    occ = torch.tensor([[x, y, x + bw, y + bh] for x, y, bw, bh in occupied], dtype=torch.float32).reshape(-1, 4)
    try:
        expected = _place_on_full_mask(lung, footprints, occ, 1, torch.Generator().manual_seed(seed))
    except PlacementError:
        with pytest.raises(PlacementError):
            place_nodules(lung, footprints, occ, gap_px=1, generator=torch.Generator().manual_seed(seed))
        return
    assert place_nodules(lung, footprints, occ, gap_px=1, generator=torch.Generator().manual_seed(seed)) == expected


@pytest.mark.parametrize("dtype", [torch.uint16, torch.float32])
def test_cropped_paste_back_and_shared_working_image(shape_model, dtype):
    texture = tiny_texture()
    image = make_image(dtype, size=128, seed=1)
    records = [NoduleRecord(center_xy=(35, 40), diameter_px=12.0, seed=1, contrast=3.0), NoduleRecord(center_xy=(92, 80), diameter_px=20.0, seed=2, contrast=3.0)]
    out = insert_nodules(image, records, shape_model, texture)
    shared = insert_nodules_batch([image], [records], shape_model, texture, working=[to_working(image)])[0]
    assert torch.equal(shared.image, out.image)
    changed = out.image.float() != image.float()
    assert changed.any() and not (changed[0] & ~out.masks.any(0)).any()  # only nodule pixels move
    if dtype == torch.float32:  # outside [0, 1] the clamp range is the image's own: whole-image path
        wide = image * 2 - 0.5
        scaled = insert_nodules(wide, records, shape_model, texture)
        moved = scaled.image != wide
        assert moved.any() and not (moved[0] & ~scaled.masks.any(0)).any()
        assert scaled.image.min() >= wide.min() and scaled.image.max() <= wide.max()
    with pytest.raises(ValueError, match="working image"):
        insert_nodules_batch([image], [records], shape_model, texture, working=[(torch.zeros(4, 4), 0.0, 1.0)])
    fps = nodule_footprints(shape_model.generate([1]), [30.0], texture.patch_size, texture.max_fill)
    with pytest.raises(PlacementError, match="inside the"):
        insert_nodules(image, [NoduleRecord(center_xy=(2, 2), diameter_px=30.0, seed=1)], shape_model, texture, footprints=fps)


def test_lung_model_working_image_is_reused(shape_model, texture_model, monkeypatch):
    import cxr_nodule_aug.functional.insertion as insertion
    from cxr_nodule_aug import NoduleInpaint
    from cxr_nodule_aug.models import LungSegmenter
    from torchvision import tv_tensors

    class BoxLungs(LungSegmenter):
        def predict_mask(self, image, keep_components=2, min_fraction=0.1):
            return lung_mask(image.shape[-1])[None]

    calls = []
    monkeypatch.setattr(insertion, "to_working", lambda im: calls.append(1) or to_working(im))
    tf = NoduleInpaint(diameters=10.0, p=1.0, shape_model=shape_model, texture_model=texture_model, lung_model=BoxLungs(base_width=2, depth=1, input_size=16), generator=torch.Generator().manual_seed(0))
    image = tv_tensors.Image(make_image(torch.uint16))
    target = {"boxes": tv_tensors.BoundingBoxes(torch.zeros(0, 4), format="XYXY", canvas_size=(128, 128)), "labels": torch.zeros(0, dtype=torch.int64)}
    out, _ = tf(image, target)
    assert calls == [] and (out != image).any()


def test_quick_benchmark_end_to_end(tmp_path):
    out = tmp_path / "throughput.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "throughput.py"), "--quick", "--out", str(out)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["preset"] == "quick" and {r["method"] for r in result["rows"]} == {"ours", "peer"}
    # issue 13 item 5: the additive default's rows next to replace's, and the target comparing them
    assert {r.get("composition") for r in result["rows"] if r["method"] == "ours"} == {"additive", "replace"}
    assert any(t["name"].startswith("additive nodules/s >= replace's") for t in result["targets"])
    for r in result["rows"]:
        assert r["nodules_per_s"] > 0 and r["peak_rss_mb"] > 0 and 0 < r["matmul_fraction"]
        assert set(r["stages_ms_per_image"]) == {"lung", "shape", "size", "placement", "cut", "texture", "paste", "other"}
    assert result["dataloader"]["step_s_with"] > 0 and "overhead" in result["dataloader"]
    assert len(result["targets"]) >= 5 and "Targets" in out.with_suffix(".md").read_text()
    assert "Targets:" in proc.stdout
    with pytest.raises(subprocess.CalledProcessError):
        subprocess.run([sys.executable, str(ROOT / "benchmarks" / "throughput.py"), "--quick", "--out", str(ROOT / "benchmarks" / "results" / "x.json")], check=True, capture_output=True, timeout=60)


def _mark_worker(worker_id: int) -> None:
    import os

    os.environ["CXR_TEST_WORKER_ID"] = str(worker_id)


def test_low_priority_workers_lower_only_the_workers_priority():
    import os

    from torch.utils.data import DataLoader, Dataset

    from cxr_nodule_aug.datasets import LowPriorityWorkers

    class Niceness(Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return torch.tensor([os.nice(0), int(os.environ.get("CXR_TEST_WORKER_ID", "-1"))])

    before = os.nice(0)
    out = torch.cat(list(DataLoader(Niceness(), num_workers=2, batch_size=1, worker_init_fn=LowPriorityWorkers(7, then=_mark_worker))))
    assert (out[:, 0] == min(before + 7, 19)).all()
    assert sorted(set(out[:, 1].tolist())) == [0, 1]  # the chained worker_init_fn ran in each worker
    assert os.nice(0) == before  # the main process keeps its priority
    with pytest.raises(ValueError, match="niceness"):
        LowPriorityWorkers(0)
    with pytest.raises(TypeError, match="then"):
        LowPriorityWorkers(5, then=3)


def test_compile_texture_matches_eager_and_is_never_pickled():
    from torchvision import tv_tensors

    from cxr_nodule_aug import InsertNodules, NoduleInpaint
    from conftest import make_target

    torch.manual_seed(0)
    shape = ShapeGenerator(latent_dim=8, base_width=16, image_size=32).eval()
    texture = tiny_texture().eval()
    image = tv_tensors.Image(make_image(torch.float32, size=128))
    target = make_target(size=128)
    common = dict(diameters=(10.0, 20.0), num_nodules=2, p=1.0, shape_model=shape, texture_model=texture, lung_model=False)
    eager = NoduleInpaint(generator=torch.Generator().manual_seed(3), **common)
    compiled = NoduleInpaint(generator=torch.Generator().manual_seed(3), compile_texture=True, **common)
    out_e, tgt_e = eager(image, target)
    out_c, tgt_c = compiled(image, target)
    assert compiled.texture_for_call() is compiled.texture_for_call()  # built once per process
    assert "_compiled_texture" not in pickle.loads(pickle.dumps(compiled)).__dict__
    assert not any("_compiled" in k for k in compiled.state_dict())
    assert [r.center_xy for r in tgt_c["nodules"]] == [r.center_xy for r in tgt_e["nodules"]]
    torch.testing.assert_close(out_c, out_e, atol=1e-4, rtol=0)
    replay = InsertNodules(tgt_c["nodules"], shape_model=shape, texture_model=texture, compile_texture=True)
    torch.testing.assert_close(replay(image, make_target(size=128))[0], out_c, atol=0, rtol=0)
    with pytest.raises(TypeError, match="compile_texture"):
        NoduleInpaint(compile_texture="yes", **common)
