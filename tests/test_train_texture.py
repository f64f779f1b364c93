"""Texture inpainter training: patch cutting, split, a few steps, resume, box-mask variant."""

from __future__ import annotations

import pytest
import torch
from conftest import EllipseShapeGenerator, make_image, tiny_texture
from torchvision import tv_tensors

from cxr_nodule_aug import NoduleRecord, TextureGenerator
from cxr_nodule_aug.functional.insertion import cut_patch, insert_nodules, region_side
from cxr_nodule_aug.train.common import resolve_config
from cxr_nodule_aug.train.texture import TextureConfig, extract_patches, split_by_image, train


def samples(n=6, size=96):
    out = []
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    for i in range(n):
        image = make_image(torch.uint16, size=size, seed=i)
        r = 4 + i
        m = ((yy - 48) ** 2 + (xx - 40) ** 2) <= r * r
        image = (image.int() + 400 * m).to(torch.uint16)  # a bright blob: the "nodule"
        out.append((tv_tensors.Image(image), {"masks": tv_tensors.Mask(m[None])}))
    return out


def test_extract_patches_cuts_like_inference():
    pairs = extract_patches(samples(), patch_size=32, max_fill=0.5)
    assert pairs["patch"].shape == pairs["mask"].shape == (6, 1, 32, 32)
    assert pairs["mask"].sum((1, 2, 3)).min() > 0
    # the nodule is brighter than its surroundings in every patch
    inside = (pairs["patch"] * pairs["mask"]).sum((1, 2, 3)) / pairs["mask"].sum((1, 2, 3))
    outside = (pairs["patch"] * (1 - pairs["mask"])).sum((1, 2, 3)) / (1 - pairs["mask"]).sum((1, 2, 3))
    assert (inside > outside).all()
    box = extract_patches(samples(), patch_size=32, max_fill=0.5, mask_type="box")
    assert (box["mask"].sum((1, 2, 3)) >= pairs["mask"].sum((1, 2, 3))).all()
    train_part, held = split_by_image(pairs, 0.2)
    assert set(train_part["image_index"].tolist()).isdisjoint(held["image_index"].tolist())


@pytest.mark.parametrize("mask_type", ["shape", "box"])
def test_training_pairs_are_the_inference_cut_bit_for_bit(mask_type):
    """For the same nodules (centre, diameter, shape mask, image), the trainer's patches and holes
    are exactly what the texture model is fed at inference."""
    image = make_image(torch.uint16, size=128, seed=1)
    texture = tiny_texture(mask_type=mask_type)  # patch_size 32, max_fill 0.5
    fed = []
    texture.register_forward_hook(lambda module, args, out: fed.append((args[0].clone(), args[1].clone())))
    # 9 and 11 px: a 32 px region, cut as is; 21 px: a 44 px region, area-resampled to 32.
    records = [NoduleRecord((40, 50), 9.0, 1), NoduleRecord((85, 70), 11.0, 2), NoduleRecord((62, 100), 21.0, 3)]
    insert_nodules(image, records, EllipseShapeGenerator(), texture)
    (patches, holes), = fed
    # The nodules' shape masks in the image (a box-mask model inserts boxes: take the shapes
    # from a shape-mask model; same records, same footprints and positions).
    shapes = insert_nodules(image, records, EllipseShapeGenerator(), tiny_texture())
    sides = [region_side(r.measured_diameter_px, 32, 0.5) for r in shapes.records]
    assert sides == [region_side(r.diameter_px, 32, 0.5) for r in records] == [32, 32, 44]
    pairs = extract_patches([(image, {"masks": shapes.masks})], patch_size=32, max_fill=0.5, mask_type=mask_type)
    assert pairs["patch"].shape == patches.shape == (3, 1, 32, 32)
    assert torch.equal(pairs["mask"], holes)
    assert torch.equal(pairs["patch"], patches)


def test_train_few_steps_and_resume(tmp_path):
    pairs = extract_patches(samples(), patch_size=32, max_fill=0.5)
    over = [f"out={tmp_path}", "steps=2", "batch_size=2", "base_width=4", "d_width=4", "patch_size=32", "log_every=1", "sample_every=2", "checkpoint_every=1", "lr_drop_step=1"]
    cfg = resolve_config(TextureConfig, None, over)
    model_dir = train(cfg, pairs=pairs)
    g = TextureGenerator.from_pretrained(model_dir)
    assert g.patch_size == 32 and g.num_stages == 2
    # context_norm=auto: the saved model carries the training patches' median context statistics.
    keep = pairs["mask"] < 0.5
    means = torch.stack([p[k].mean() for p, k in zip(pairs["patch"], keep)])
    assert g.context_norm[0] == pytest.approx(float(means.median()), abs=2e-3) and 0 < g.context_norm[1] < 1
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert state["step"] == 2 and state["schedulers"]["G"]["last_epoch"] == 2
    cfg = resolve_config(TextureConfig, None, [*over[:1], "steps=3", *over[2:]])
    train(cfg, pairs=pairs)
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["step"] == 3
    assert (tmp_path / "samples" / "step000002.png").exists()


def test_cut_patch_rejects_bad_arguments():
    gray, fp = torch.rand(64, 64), torch.zeros(32, 32, dtype=torch.bool)
    with pytest.raises(ValueError, match="non-empty square"):
        cut_patch(gray, (30, 30), fp, 32)
    fp[10:14, 12:15] = True
    with pytest.raises(ValueError, match="mask_type"):
        cut_patch(gray, (30, 30), fp, 32, "ellipse")
    c = cut_patch(gray, (30, 30), fp, 32, "shape")
    assert c.origin_yx == (30 - 2 - 10, 30 - 1 - 12) and torch.equal(c.region, gray[18:50, 17:49])
