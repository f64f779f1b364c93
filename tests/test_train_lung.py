"""Lung model training: augmented pairs, a few steps, holdout Dice logged, weights exported."""

from __future__ import annotations

import json

import torch
from conftest import lung_mask, make_image
from torchvision import tv_tensors

from cxr_nodule_aug import LungSegmenter
from cxr_nodule_aug.train.common import resolve_config
from cxr_nodule_aug.train.lung import LungConfig, LungPairs, prepare_pairs, train


def samples(n=4):
    return [(tv_tensors.Image(make_image(torch.uint16, seed=i)), {"lung_mask": tv_tensors.Mask(lung_mask())}) for i in range(n)]


def test_augmented_pairs_keep_image_and_mask_aligned():
    images, masks = prepare_pairs(samples(1), size=32)
    assert images.shape == masks.shape == (1, 1, 64, 64)
    torch.manual_seed(0)
    x, y = LungPairs(images, masks, 32)[0]
    assert x.shape == y.shape == (1, 32, 32) and set(y.unique().tolist()) <= {0.0, 1.0}
    assert 0 <= float(x.min()) and float(x.max()) <= 1


def test_train_few_steps(tmp_path):
    cfg = resolve_config(LungConfig, None, [f"out={tmp_path}", "steps=2", "batch_size=2", "base_width=4", "depth=2", "input_size=32", "log_every=1", "sample_every=2", "checkpoint_every=1"])
    model_dir = train(cfg, samples=samples())
    m = LungSegmenter.from_pretrained(model_dir)
    assert m.input_size == 32
    rows = [json.loads(r) for r in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 2 and 0 <= rows[-1]["holdout_dice"] <= 1


def test_opacity_and_neck_augmentations_keep_the_labels_honest():
    from cxr_nodule_aug.train.lung import _Neck, _Opacities

    images, masks = prepare_pairs(samples(1), size=32)
    image, mask = images[0], masks[0]
    torch.manual_seed(0)
    # Opacities brighten the image (masses, habitus) and never touch the label.
    brighter = [_Opacities(p=1.0)(image, mask) for _ in range(8)]
    assert all(b.shape == image.shape and 0 <= float(b.min()) and float(b.max()) <= 1 for b in brighter)
    assert any(not torch.equal(b, image) for b in brighter)
    assert torch.equal(_Opacities(p=0.0)(image, mask), image)
    # The neck: rows added at the top are not lung; the rest is the image and mask shifted down.
    first_row = int(torch.nonzero(mask[0].sum(1))[0])
    for _ in range(8):
        x, y = _Neck(p=1.0)(image, mask)
        h = int(torch.nonzero(y[0].sum(1))[0]) - first_row  # how far it moved down
        assert 64 * 0.05 - 1 <= h <= 64 * 0.3
        assert torch.equal(y[0, h:], mask[0, : 64 - h]) and not y[0, :h].any()
        assert torch.equal(x[0, h + 2 :], image[0, 2 : 64 - h])  # two blended rows, then the image
        assert 0 <= float(x.min()) and float(x.max()) <= 1
    x, y = _Neck(p=0.0)(image, mask)
    assert torch.equal(x, image) and torch.equal(y, mask)
    # Switched on in the training pairs: still aligned, binary and in range.
    x, y = LungPairs(images, masks, 32, opacity_p=1.0, neck_p=1.0)[0]
    assert x.shape == y.shape == (1, 32, 32) and set(y.unique().tolist()) <= {0.0, 1.0}
    assert 0 <= float(x.min()) and float(x.max()) <= 1
