"""Baselines: partial-conv U-Net (shapes, hole semantics, save/load, insert_nodules) and
paste-and-blend (outside untouched, Poisson property, contrast matching)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cxr_nodule_aug.baselines import PartialConv2d, PartialConvUNet, PasteBlendInpainter, contrast_ratio, paste_and_blend, poisson_blend
from cxr_nodule_aug.hub import WeightsError, load_model
from cxr_nodule_aug.models import TextureOutput


def disk_mask(b=3, p=32, r=7, cy=16, cx=15):
    yy, xx = torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij")
    return (((yy - cy) ** 2 + (xx - cx) ** 2) <= r * r).float()[None, None].repeat(b, 1, 1, 1)


def test_partial_conv_ignores_hole_and_renormalises():
    torch.manual_seed(0)
    conv = PartialConv2d(2, 3, 3)
    x = torch.rand(1, 2, 8, 8)
    valid = torch.ones(1, 1, 8, 8)
    valid[..., 2:6, 2:6] = 0
    y, new_valid = conv(x, valid)
    x2 = x.clone()
    x2[..., 2:6, 2:6] = 100.0
    assert torch.equal(conv(x2, valid)[0], y)
    assert new_valid[0, 0, 3:5, 3:5].eq(0).all() and new_valid[0, 0, 2, 2] == 1  # the hole shrinks by one
    # the corner window holds 4 of 9 pixels per channel: renormalised by 9/4, bias not scaled
    plain = conv.conv(x)
    assert torch.allclose(y[..., 7:, 7:], plain[..., 7:, 7:] * (18 / 8) - conv.conv.bias.view(1, -1, 1, 1) * (18 / 8 - 1), atol=1e-5)


@pytest.mark.parametrize("patch_size,depth", [(32, None), (64, 3)])
def test_pconv_unet_contract(patch_size, depth):
    torch.manual_seed(0)
    model = PartialConvUNet(base_width=4, patch_size=patch_size, depth=depth).eval()
    x = torch.rand(2, 1, patch_size, patch_size)
    mask = disk_mask(2, patch_size, r=patch_size // 5, cy=patch_size // 2, cx=patch_size // 2)
    out = model(x, mask)
    assert isinstance(out, TextureOutput) and out.fine.shape == x.shape and out.coarse is out.fine
    assert out.fine.min() >= 0 and out.fine.max() <= 1
    x2 = torch.where(mask.bool(), torch.rand_like(x), x)  # different content under the hole
    assert torch.equal(model(x2, mask).fine, out.fine)
    assert not torch.equal(model(torch.rand_like(x), mask).fine, out.fine)  # the context matters


def test_pconv_unet_bad_arguments():
    with pytest.raises(ValueError, match="num_stages"):
        PartialConvUNet(num_stages=2)
    with pytest.raises(ValueError, match="mask_type"):
        PartialConvUNet(mask_type="circle")
    with pytest.raises(ValueError, match="multiple of"):
        PartialConvUNet(patch_size=36)
    model = PartialConvUNet(base_width=4, patch_size=32)
    with pytest.raises(ValueError, match="mask must be"):
        model(torch.rand(1, 1, 32, 32), torch.rand(1, 2, 32, 32))


def test_pconv_unet_save_load(tmp_path):
    torch.manual_seed(0)
    model = PartialConvUNet(base_width=4, patch_size=32, mask_type="box", max_fill=0.4).eval()
    model.save_pretrained(tmp_path / "pconv")
    loaded = load_model(tmp_path / "pconv")
    assert type(loaded) is PartialConvUNet and loaded.mask_type == "box" and loaded.max_fill == 0.4 and loaded.depth == model.depth
    x, mask = torch.rand(1, 1, 32, 32), disk_mask(1)
    assert torch.equal(loaded(x, mask).fine, model(x, mask).fine)
    with pytest.raises(WeightsError):
        from cxr_nodule_aug.models import TextureGenerator

        TextureGenerator.from_pretrained(tmp_path / "pconv")


def test_pconv_unet_in_insert_nodules():
    from conftest import EllipseShapeGenerator, make_image

    from cxr_nodule_aug.functional.insertion import insert_nodules
    from cxr_nodule_aug.records import NoduleRecord

    image = make_image(torch.uint16, size=96, seed=1)
    rec = NoduleRecord(center_xy=(48, 48), diameter_px=10.0, seed=3, contrast=1.0)
    res = insert_nodules(image, [rec], EllipseShapeGenerator(), PartialConvUNet(base_width=4, patch_size=32).eval())
    assert res.image.shape == image.shape and res.image.dtype == image.dtype
    assert torch.equal(res.image[:, ~res.masks[0]], image[:, ~res.masks[0]])


def test_poisson_reproduces_harmonic_and_guided_solutions():
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    target = (0.2 + 0.01 * xx + 0.005 * yy)[None, None].repeat(3, 1, 1, 1)
    mask = disk_mask()
    # A linear function is harmonic: a zero guide gives it back from its boundary values.
    assert (poisson_blend(target, mask, torch.zeros_like(target)) - target).abs().max() < 1e-4
    # The discrete Laplacian of (result - guide) vanishes on the hole.
    guide = 0.3 * torch.exp(-((yy - 16) ** 2 + (xx - 15) ** 2) / 30)[None, None].repeat(3, 1, 1, 1)
    out = poisson_blend(target, mask, guide, tol=1e-7)
    lap = lambda f: F.conv2d(f, torch.tensor([[0.0, 1, 0], [1, -4, 1], [0, 1, 0]]).view(1, 1, 3, 3))  # noqa: E731
    interior = mask[..., 1:-1, 1:-1].bool()
    assert (lap(out - guide)[interior]).abs().max() < 1e-4
    assert torch.equal(out[~mask.bool()], target[~mask.bool()])
    with pytest.raises(ValueError, match="whole image"):
        poisson_blend(target, torch.ones_like(target), guide)


def test_paste_and_blend_outside_untouched_and_seamless():
    torch.manual_seed(0)
    image = 0.3 + 0.4 * torch.rand(3, 1, 32, 32)
    mask = disk_mask()
    yy, xx = torch.meshgrid(torch.arange(20.0), torch.arange(20.0), indexing="ij")
    source = torch.exp(-((yy - 10) ** 2 + (xx - 10) ** 2) / 12)[None, None]
    out = paste_and_blend(image, mask, source)
    outside = ~mask.bool()
    assert torch.equal(out[outside], image[outside])
    # the nodule is brighter at its centre than on average over the hole's rim
    rim = (F.max_pool2d(mask, 3, 1, 1) - mask).bool()
    assert (out[:, 0, 16, 15] > (image * rim).sum((1, 2, 3)) / rim.sum((1, 2, 3))).all()
    # seamless mode never reads the hole's content; "add" keeps it
    changed = torch.where(mask.bool(), torch.rand_like(image), image)
    assert torch.allclose(paste_and_blend(changed, mask, source), out, atol=1e-5)
    added = paste_and_blend(image, mask, source, mode="add", contrast=None)
    assert torch.equal(added[outside], image[outside])
    assert not torch.allclose(paste_and_blend(changed, mask, source, mode="add"), paste_and_blend(image, mask, source, mode="add"))
    with pytest.raises(ValueError, match="source_patch"):
        paste_and_blend(image, mask, torch.rand(2, 1, 8, 8))


def test_paste_and_blend_add_mode_equals_addition_when_residual_vanishes_at_rim():
    image = torch.full((1, 1, 32, 32), 0.4)
    mask = disk_mask(1, r=9)
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    residual = (0.2 * torch.clamp(1 - ((yy - 16) ** 2 + (xx - 15) ** 2) / 49.0, min=0))[None, None] * mask
    out = paste_and_blend(image, mask, residual, source_mask=mask, mode="add", contrast=None, tol=1e-7)
    assert torch.allclose(out, image + residual, atol=2e-3)


def test_contrast_ratio_and_inpainter_wrapper():
    torch.manual_seed(0)
    free = 0.4 + 0.2 * torch.rand(4, 1, 32, 32)
    mask = disk_mask(4)
    patch = free + 0.1 * mask
    ratio = contrast_ratio(patch, free, mask)
    assert 0.1 / 0.2 * 0.8 < ratio < 0.1 / 0.2 * 1.4  # peak 0.1 over a ~0.18 5-95 % spread
    model = PasteBlendInpainter((patch - free) * mask, mask, patch_size=32, strength=ratio)
    out = model(free, mask)
    assert isinstance(out, TextureOutput) and out.fine.shape == free.shape
    assert torch.equal(model(free, mask).fine, out.fine)  # deterministic choice of source
