"""Contract tests for NoduleInpaint / InsertNodules, in the style of torchvision's check_transform."""

from __future__ import annotations

import copy
import pickle

import numpy as np
import PIL.Image
import pytest
import torch
from conftest import EllipseShapeGenerator, make_image, make_target, tiny_texture
from torch.utils.data import DataLoader, Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from cxr_nodule_aug import HEMSampler, InsertNodules, NoduleInpaint, NoduleRecord, PlacementError
from cxr_nodule_aug.models import LungSegmenter


def make_tf(**kw):
    kw.setdefault("shape_model", EllipseShapeGenerator())
    kw.setdefault("texture_model", tiny_texture())
    kw.setdefault("p", 1.0)
    kw.setdefault("diameters", (6.0, 14.0))
    kw.setdefault("lung_model", False)
    kw.setdefault("generator", torch.Generator().manual_seed(0))
    return NoduleInpaint(**kw)


def check_insertion(image_in, target_in, image_out, target_out, n_new):
    n_old = len(target_in["boxes"])
    assert type(image_out) is type(image_in)
    img_in = TF.pil_to_tensor(image_in) if isinstance(image_in, PIL.Image.Image) else image_in
    img_out = TF.pil_to_tensor(image_out) if isinstance(image_out, PIL.Image.Image) else image_out
    assert img_out.dtype == img_in.dtype and img_out.shape == img_in.shape and img_out.device == img_in.device
    boxes = target_out["boxes"]
    assert isinstance(boxes, tv_tensors.BoundingBoxes)
    assert boxes.format == target_in["boxes"].format and boxes.canvas_size == target_in["boxes"].canvas_size
    assert len(boxes) == len(target_out["labels"]) == n_old + n_new
    assert torch.equal(boxes[:n_old].as_subclass(torch.Tensor), target_in["boxes"].as_subclass(torch.Tensor))
    records = target_out["nodules"]
    assert len(records) == n_new
    xyxy = TF.convert_bounding_box_format(boxes.as_subclass(torch.Tensor), old_format=boxes.format, new_format=tv_tensors.BoundingBoxFormat.XYXY)
    changed = (img_out.float() - img_in.float()).abs().amax(0) > 0
    for i, rec in enumerate(records):
        x1, y1, x2, y2 = [int(v) for v in xyxy[n_old + i].tolist()]
        assert rec.box_xyxy == (x1, y1, x2, y2)
        # The image really has the nodule where the label says, and nowhere else.
        assert changed[y1:y2, x1:x2].any(), "a labelled nodule must change the image"
        lung = target_in.get("lung_mask")
        if lung is not None:
            assert torch.as_tensor(lung)[y1:y2, x1:x2].all(), "the whole nodule lies inside the lung"
    if "masks" in target_out:
        masks = target_out["masks"]
        assert isinstance(masks, tv_tensors.Mask) and len(masks) == n_old + n_new
        union = masks[n_old:].bool().any(0) if n_new else torch.zeros_like(changed)
        assert not (changed & ~union).any(), "pixels changed outside the nodule masks"


@pytest.mark.parametrize("dtype", [torch.uint8, torch.uint16, torch.float32])
@pytest.mark.parametrize("channels", [1, 3])
def test_dtype_range_channels_preserved(dtype, channels):
    image = tv_tensors.Image(make_image(dtype, channels))
    target = make_target(masks=True)
    image_before, target_before = image.clone(), copy.deepcopy(target)
    out_image, out_target = make_tf(num_nodules=2)(image, target)
    check_insertion(image, target, out_image, out_target, 2)
    if dtype == torch.float32:
        assert 0 <= float(out_image.min()) and float(out_image.max()) <= 1
    if channels == 3:
        assert torch.equal(out_image[0], out_image[1]) and torch.equal(out_image[1], out_image[2])
    # inputs never modified in place
    assert torch.equal(image, image_before)
    for k in target:
        assert torch.equal(torch.as_tensor(target[k]), torch.as_tensor(target_before[k]))


@pytest.mark.parametrize("fmt", ["XYXY", "XYWH", "CXCYWH"])
def test_boxes_appended_in_input_format(fmt):
    image = tv_tensors.Image(make_image())
    target = make_target(fmt=fmt, boxes=((20.0, 20.0, 30.0, 32.0), (80.0, 60.0, 90.0, 75.0)))
    out_image, out_target = make_tf()(image, target)
    check_insertion(image, target, out_image, out_target, 1)


def test_structures_plain_tensor_dict_nested_and_pil():
    tf = make_tf()
    image = make_image()
    # plain tensor image in a tuple
    out = tf(image, make_target())
    assert type(out) is tuple and type(out[0]) is torch.Tensor
    check_insertion(image, make_target(), out[0], out[1], 1)
    # flat dict sample
    sample = {"image": tv_tensors.Image(image), **make_target(), "extra": "kept"}
    out = tf(sample)
    assert set(out) == set(sample) | {"nodules"} and out["extra"] == "kept"
    assert len(out["boxes"]) == 2
    # nested structure as a single argument
    sample = [{"img": tv_tensors.Image(image), "meta": (1, 2)}, {"target": make_target()}]
    out = tf(sample)
    assert type(out) is list and out[0]["meta"] == (1, 2) and len(out[1]["target"]["boxes"]) == 2
    # PIL image (8-bit greyscale)
    pil = PIL.Image.fromarray(make_image(torch.uint8)[0].numpy())
    out = tf(pil, make_target())
    check_insertion(pil, make_target(), out[0], out[1], 1)


def test_replay_reproduces_exactly_and_same_seed_same_nodules():
    image = tv_tensors.Image(make_image())
    target = make_target(masks=True)
    a_img, a_tgt = make_tf(num_nodules=3, generator=torch.Generator().manual_seed(5))(image, target)
    b_img, b_tgt = make_tf(num_nodules=3, generator=torch.Generator().manual_seed(5))(image, target)
    assert torch.equal(a_img, b_img) and a_tgt["nodules"] == b_tgt["nodules"]
    # InsertNodules from the records (also after a JSON-style round trip) gives the same pixels.
    records = [NoduleRecord.from_dict(r.to_dict()) for r in a_tgt["nodules"]]
    r_img, r_tgt = InsertNodules(records, shape_model=EllipseShapeGenerator(), texture_model=tiny_texture())(image, target)
    assert torch.equal(r_img, a_img)
    assert torch.equal(r_tgt["boxes"], a_tgt["boxes"]) and torch.equal(r_tgt["masks"], a_tgt["masks"])
    assert r_tgt["nodules"] == a_tgt["nodules"]
    c_img, _ = make_tf(num_nodules=3, generator=torch.Generator().manual_seed(6))(image, target)
    assert not torch.equal(c_img, a_img)


def test_global_rng_when_no_generator():
    image, target = tv_tensors.Image(make_image()), make_target()
    torch.manual_seed(1)
    a = make_tf(generator=None)(image, target)
    torch.manual_seed(1)
    b = make_tf(generator=None)(image, target)
    assert torch.equal(a[0], b[0])


def test_compose_with_sanitize_and_geometric_transforms():
    pipeline = v2.Compose([make_tf(num_nodules=2), v2.RandomHorizontalFlip(p=1.0), v2.SanitizeBoundingBoxes()])
    image, target = tv_tensors.Image(make_image()), make_target(masks=True)
    out_image, out_target = pipeline(image, target)
    assert len(out_target["boxes"]) == len(out_target["labels"]) == len(out_target["masks"]) == 3
    assert out_target["lung_mask"].shape == (128, 128)  # semantic mask untouched by Sanitize
    # Flipped boxes still frame the nodules' masks.
    for box, mask in zip(out_target["boxes"][1:], out_target["masks"][1:]):
        ys, xs = torch.nonzero(mask, as_tuple=True)
        assert box.tolist() == [xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1]


def test_pickle_round_trip_keeps_behaviour():
    tf = make_tf(generator=torch.Generator().manual_seed(9))
    clone = pickle.loads(pickle.dumps(tf))
    image, target = tv_tensors.Image(make_image()), make_target()
    assert torch.equal(tf(image, target)[0], clone(image, target)[0])


def test_p_zero_is_identity_with_empty_records_and_p_one_always():
    image, target = tv_tensors.Image(make_image()), make_target()
    out_image, out_target = make_tf(p=0.0)(image, target)
    assert torch.equal(out_image, image) and out_target["nodules"] == [] and len(out_target["boxes"]) == 1
    tf = make_tf(p=0.5, generator=torch.Generator().manual_seed(0))
    applied = [len(tf(image, target)[1]["nodules"]) for _ in range(40)]
    assert 8 < sum(applied) < 32


def test_records_accumulate_over_two_transforms():
    tf = v2.Compose([make_tf(), make_tf(generator=torch.Generator().manual_seed(1))])
    _, target = tf(tv_tensors.Image(make_image()), make_target())
    assert len(target["nodules"]) == 2 and len(target["boxes"]) == 3


def test_diameters_in_mm_with_spacing_and_hem_sampler():
    sampler = HEMSampler.from_missed([5.0, 6.0])  # mm
    tf = make_tf(diameters=sampler)
    assert tf.unit == "mm"
    _, target = tf(tv_tensors.Image(make_image()), make_target(spacing=(0.5, 0.5)))
    rec = target["nodules"][0]
    assert rec.diameter_mm in (5.0, 6.0) and rec.diameter_px == pytest.approx(rec.diameter_mm / 0.5)
    assert abs(rec.measured_diameter_px - rec.diameter_px) <= max(1.0, 0.05 * rec.diameter_px)
    with pytest.raises(ValueError, match="pixel spacing is unknown"):
        tf(tv_tensors.Image(make_image()), make_target())
    # the transform's default spacing is used when the target has none
    _, target = make_tf(diameters=sampler, pixel_spacing_mm=0.5)(tv_tensors.Image(make_image()), make_target())
    assert target["nodules"][0].diameter_mm in (5.0, 6.0)


def test_large_nodule_uses_a_resampled_region():
    # 40 px > patch 32 * max_fill 0.5: the model sees a downsampled 80 px region.
    image, target = tv_tensors.Image(make_image(size=256)), make_target(size=256, boxes=())
    _, out = make_tf(diameters=40.0)(image, target)
    rec = out["nodules"][0]
    assert abs(rec.measured_diameter_px - 40.0) <= 2.0


def test_lung_model_used_when_no_lung_mask():
    seg = LungSegmenter(base_width=4, depth=2, input_size=32).eval()
    with torch.no_grad():  # a "lung model" that says: everything is lung
        seg.head.weight.zero_()
        seg.head.bias.fill_(10.0)
    tf = make_tf(lung_model=seg)
    _, target = tf(tv_tensors.Image(make_image()), make_target(lung=False))
    assert len(target["nodules"]) == 1


class _Samples(Dataset):
    def __init__(self, transform):
        self.transform = transform

    def __len__(self):
        return 4

    def __getitem__(self, i):
        # float32: torch 2.14 cannot send uint16 tensors between DataLoader processes
        # (a torch limitation, unrelated to this library), so the loader test uses floats.
        return self.transform(tv_tensors.Image(make_image(torch.float32, seed=0)), make_target())


def _collect(transform, seed):
    loader = DataLoader(_Samples(transform), batch_size=1, num_workers=2, collate_fn=lambda b: b[0], generator=torch.Generator().manual_seed(seed))
    return [tuple(target["nodules"][0].center_xy) + (target["nodules"][0].seed,) for _, target in loader]


@pytest.mark.parametrize("with_generator", [True, False])
def test_dataloader_two_workers_differ_and_repeat(with_generator):
    tf = make_tf(generator=torch.Generator().manual_seed(0) if with_generator else None)
    run1 = _collect(tf, seed=123)
    run2 = _collect(tf, seed=123)
    assert run1 == run2, "same seeds, same nodules"
    # Items 0 and 1 go to different workers, as their first items: they must not be copies.
    assert run1[0] != run1[1]
    assert len(set(run1)) == 4


# --- bad input: clear errors naming the argument ------------------------------------------------
def test_constructor_errors():
    with pytest.raises(ValueError, match="p must be a probability"):
        make_tf(p=1.5)
    with pytest.raises(ValueError, match="diameters must be positive"):
        make_tf(diameters=0)
    with pytest.raises(ValueError, match="diameters must be positive"):
        make_tf(diameters=(-1.0, 3.0))
    with pytest.raises(ValueError, match="min <= max"):
        make_tf(diameters=(9.0, 3.0))
    with pytest.raises(ValueError, match="must not be empty"):
        make_tf(diameters=[])
    with pytest.raises(ValueError, match="unit must be"):
        make_tf(unit="cm")
    with pytest.raises(TypeError, match="generator must be"):
        make_tf(generator=3)


def test_no_weights_is_a_clear_error(monkeypatch, tmp_path):
    import cxr_nodule_aug.synthesizer as synthesizer

    monkeypatch.setattr(synthesizer, "default_weights_dir", lambda: None)
    with pytest.raises(ValueError, match="no shipped weights were found"):
        NoduleInpaint()


@pytest.mark.parametrize(
    "mutate, error, match",
    [
        (lambda i, t: (i.to(torch.int64), t), TypeError, "dtype"),
        (lambda i, t: (i[None], t), ValueError, r"\(C, H, W\)"),
        (lambda i, t: (i.expand(2, -1, -1), t), ValueError, r"C = 1 or 3"),
        (lambda i, t: (i.float().index_put((torch.tensor([0]), torch.tensor([3]), torch.tensor([4])), torch.tensor(float("nan"))), t), ValueError, "NaN"),
        (lambda i, t: (i, {**t, "lung_mask": tv_tensors.Mask(torch.zeros(128, 128, dtype=torch.bool))}), ValueError, "lung_mask.*empty"),
        (lambda i, t: (i, {**t, "lung_mask": tv_tensors.Mask(torch.ones(64, 64, dtype=torch.bool))}), ValueError, "lung_mask.*must be"),
        (lambda i, t: (i, {k: v for k, v in t.items() if k != "lung_mask"}), ValueError, "no lung mask"),
        (lambda i, t: (i, {**t, "boxes": tv_tensors.BoundingBoxes([[100.0, 100.0, 140.0, 120.0]], format="XYXY", canvas_size=(128, 128), clamping_mode=None)}), ValueError, "outside"),
        (lambda i, t: (i, {**t, "boxes": tv_tensors.BoundingBoxes([[1.0, 1.0, 4.0, 4.0]], format="XYXY", canvas_size=(64, 64))}), ValueError, "canvas_size"),
        (lambda i, t: (i, {k: v for k, v in t.items() if k != "labels"}), ValueError, "'labels'"),
        (lambda i, t: (i, {**t, "labels": torch.tensor([1, 1])}), ValueError, "one label per box"),
        (lambda i, t: (i, {"labels": t["labels"]}), ValueError, "BoundingBoxes"),
        (lambda i, t: (i, {**t, "pixel_spacing_mm": -1.0}), ValueError, "pixel_spacing_mm"),
    ],
)
def test_bad_sample_errors(mutate, error, match):
    image, target = mutate(make_image(), make_target())
    with pytest.raises(error, match=match):
        make_tf()(image, target)


def test_diameter_larger_than_the_lungs_is_an_error():
    with pytest.raises(PlacementError, match="no position inside the lung mask"):
        make_tf(diameters=60.0)(tv_tensors.Image(make_image()), make_target())


def test_sampler_returning_bad_values_is_an_error():
    with pytest.raises(ValueError, match="diameters must be positive"):
        make_tf(diameters=lambda n, generator=None: torch.full((n,), -2.0))(tv_tensors.Image(make_image()), make_target())


def test_insert_nodules_validates_records():
    with pytest.raises(ValueError, match="diameter_px must be positive"):
        InsertNodules([NoduleRecord((10, 10), 0.0, 1)], shape_model=EllipseShapeGenerator(), texture_model=tiny_texture())
    tf = InsertNodules([{"center_xy": (500, 10), "diameter_px": 8.0, "seed": 1}], shape_model=EllipseShapeGenerator(), texture_model=tiny_texture())
    with pytest.raises(ValueError, match="outside the 128x128 image"):
        tf(make_image(), make_target())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_image_stays_on_cuda_and_matches_cpu_geometry():
    image = tv_tensors.Image(make_image().cuda())
    target = make_target()
    target = {k: (v.cuda() if isinstance(v, torch.Tensor) else v) for k, v in target.items()}
    out_image, out_target = make_tf()(image, target)
    assert out_image.is_cuda and out_target["boxes"].is_cuda
    cpu_image, cpu_target = make_tf()(tv_tensors.Image(make_image()), make_target())
    assert out_target["nodules"][0].center_xy == cpu_target["nodules"][0].center_xy
    assert (out_image.cpu().float() - cpu_image.float()).abs().max() <= 2


def test_batch_path_matches_the_per_sample_path():
    samples = [(tv_tensors.Image(make_image(torch.uint16, seed=i)), make_target(masks=True)) for i in range(3)]
    samples.append({"image": tv_tensors.Image(make_image(torch.float32, seed=9)), **make_target()})
    per_sample_tf = make_tf(num_nodules=(0, 3), p=0.8, generator=torch.Generator().manual_seed(4))
    batch_tf = make_tf(num_nodules=(0, 3), p=0.8, generator=torch.Generator().manual_seed(4))
    expected = [per_sample_tf(s) if isinstance(s, dict) else per_sample_tf(*s) for s in samples]
    got = batch_tf.batch(samples)
    assert len(got) == len(expected)
    for e, g in zip(expected, got):
        e_img, e_tgt = (e["image"], e) if isinstance(e, dict) else e
        g_img, g_tgt = (g["image"], g) if isinstance(g, dict) else g
        assert type(g_img) is type(e_img) and g_img.dtype == e_img.dtype
        assert (g_img.float() - e_img.float()).abs().max() <= (1 if not e_img.is_floating_point() else 1e-4)
        assert torch.equal(g_tgt["boxes"], e_tgt["boxes"]) and torch.equal(g_tgt["labels"], e_tgt["labels"])
        assert g_tgt["nodules"] == e_tgt["nodules"]
    assert sum(len(t["nodules"]) for t in (x if isinstance(x, dict) else x[1] for x in got)) > 0


# --- issue #15 / #16: one way to find image and target; no label without changed pixels -------
def _changed(a, b):
    a = TF.pil_to_tensor(a) if isinstance(a, PIL.Image.Image) else a
    b = TF.pil_to_tensor(b) if isinstance(b, PIL.Image.Image) else b
    return (a.as_subclass(torch.Tensor) != b.as_subclass(torch.Tensor)).any(0)


def _new_box_has_changed_pixels(image_in, image_out, target_in, target_out):
    n_old = len(target_in["boxes"])
    boxes = target_out["boxes"]
    xyxy = TF.convert_bounding_box_format(boxes.as_subclass(torch.Tensor).double(), old_format=boxes.format, new_format="XYXY")
    changed = _changed(image_in, image_out)
    assert len(xyxy) > n_old
    for (x1, y1, x2, y2), rec in zip(xyxy[n_old:].int().tolist(), target_out["nodules"][-(len(xyxy) - n_old) :]):
        assert changed[y1:y2, x1:x2].any(), "a new box with no changed pixel under it"
        assert rec.box_xyxy == (x1, y1, x2, y2)


def test_issue_repro_flat_dict_gets_the_nodule_it_is_labelled_with():
    H = W = 128
    image = tv_tensors.Image((torch.rand(1, H, W, generator=torch.Generator().manual_seed(0)) * 200 + 20).to(torch.uint8))
    lung = torch.zeros(H, W, dtype=torch.bool)
    lung[20:110, 10:60] = True
    lung[20:110, 68:118] = True
    base = {"boxes": tv_tensors.BoundingBoxes(torch.zeros(0, 4), format="XYXY", canvas_size=(H, W)),
            "labels": torch.zeros(0, dtype=torch.int64), "lung_mask": tv_tensors.Mask(lung)}
    out = make_tf(diameters=15.0, generator=torch.Generator().manual_seed(0))({"image": image, **base})
    assert len(out["boxes"]) == 1 and type(out["image"]) is tv_tensors.Image
    _new_box_has_changed_pixels(image, out["image"], base, out)


@pytest.mark.parametrize(
    "layout",
    ["tuple", "flat", "flat_image_last", "nested_dict", "nested_list", "nested_tuple_plain", "flat_plain", "flat_plain_image_last", "nested_plain_target_first"],
)
def test_every_layout_labels_only_what_it_inserted(layout):
    image = make_image(torch.uint16)
    tgt = make_target(masks=True)
    img = image if "plain" in layout else tv_tensors.Image(image)
    sample = {
        "tuple": (img, tgt),
        "flat": {"image": img, **tgt},
        "flat_image_last": {**tgt, "image": img},
        "nested_dict": {"image": img, "target": tgt, "meta": {"id": 3}},
        "nested_list": [{"img": img}, {"target": tgt}],
        "nested_tuple_plain": ({"x": img}, [tgt]),
        "flat_plain": {"image": img, **tgt},
        "flat_plain_image_last": {**tgt, "image": img},
        "nested_plain_target_first": {"target": tgt, "image": img},
    }[layout]
    out = make_tf()(sample) if layout != "tuple" else make_tf()(*sample)
    leaves_in = [x for x in (sample if layout == "tuple" else [sample])]
    assert leaves_in  # the input is untouched:
    assert torch.equal(torch.as_tensor(img), image)
    out_img = {
        "tuple": lambda o: o[0], "flat": lambda o: o["image"], "flat_image_last": lambda o: o["image"],
        "nested_dict": lambda o: o["image"], "nested_list": lambda o: o[0]["img"], "nested_tuple_plain": lambda o: o[0]["x"],
        "flat_plain": lambda o: o["image"], "flat_plain_image_last": lambda o: o["image"], "nested_plain_target_first": lambda o: o["image"],
    }[layout](out)
    out_tgt = {
        "tuple": lambda o: o[1], "nested_dict": lambda o: o["target"], "nested_list": lambda o: o[1]["target"],
        "nested_tuple_plain": lambda o: o[1][0], "nested_plain_target_first": lambda o: o["target"],
    }.get(layout, lambda o: o)(out)
    assert type(out_img) is type(img)
    _new_box_has_changed_pixels(image, out_img, tgt, out_tgt)
    check_insertion(image, tgt, out_img.as_subclass(torch.Tensor), out_tgt, 1)


def test_ambiguous_or_missing_image_is_a_clear_error():
    tgt = make_target()
    with pytest.raises(ValueError, match="candidates for the image.*wrap the image in tv_tensors.Image"):
        make_tf()({"a": make_image(), "b": make_image(seed=1), **tgt})
    with pytest.raises(TypeError, match="holds no image"):
        make_tf()({"a": "x", **tgt})
    with pytest.raises(ValueError, match="2 tv_tensors.BoundingBoxes"):
        make_tf()(tv_tensors.Image(make_image()), tgt, {"other": tgt["boxes"]})


@pytest.mark.parametrize("mode", ["L", "I;16", "I", "F", "RGB"])
def test_pil_images_of_every_round_trip_mode(mode):
    arr = {
        "L": make_image(torch.uint8)[0].numpy(),
        "I;16": make_image(torch.uint16)[0].numpy(),
        "I": make_image(torch.uint16)[0].numpy().astype(np.int32),
        "F": make_image(torch.float32)[0].numpy(),
        "RGB": make_image(torch.uint8, channels=3).permute(1, 2, 0).numpy(),
    }[mode]
    pil = PIL.Image.fromarray(np.ascontiguousarray(arr))
    assert pil.mode == mode
    tgt = make_target(masks=True)
    out_img, out_tgt = make_tf()(pil, tgt)
    assert isinstance(out_img, PIL.Image.Image) and out_img.mode == mode and out_img.size == pil.size
    _new_box_has_changed_pixels(pil, out_img, tgt, out_tgt)
    with pytest.raises(TypeError, match="mode 'P'"):
        make_tf()(pil.convert("L").convert("P"), tgt)


@pytest.mark.parametrize("dtype, scale, offset", [(torch.float32, 3000.0, -1000.0), (torch.float64, 2.0, -1.0), (torch.float16, 1.0, 0.0), (torch.int32, 2**30, 0), (torch.int16, 20000, -10000)])
def test_nothing_outside_the_new_masks_changes_and_output_in_range(dtype, scale, offset):
    # Full-precision values: float64 noise below float32's resolution, int32 values past 2**24.
    base = make_image(torch.float64, seed=2) + 1e-3 * torch.rand(1, 128, 128, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    image = (base * scale + offset)
    image = (image if dtype.is_floating_point else image.round()).to(dtype)
    tgt = make_target(masks=True)
    out_img, out_tgt = make_tf(num_nodules=2)(tv_tensors.Image(image), tgt)
    union = out_tgt["masks"][1:].bool().any(0)
    changed = _changed(image, out_img)
    assert changed.any() and not (changed & ~union).any(), "pixels changed outside the new nodules"
    assert torch.equal(out_img.as_subclass(torch.Tensor)[:, ~union], image[:, ~union])
    lo, hi = (0.0, 1.0) if dtype.is_floating_point and image.min() >= 0 and image.max() <= 1 else (float(image.min()), float(image.max()))
    if not dtype.is_floating_point:
        lo, hi = torch.iinfo(dtype).min, torch.iinfo(dtype).max
    assert float(out_img.min()) >= lo and float(out_img.max()) <= hi


def test_contrast_too_small_for_the_bit_depth_raises_naming_contrast_and_dtype():
    from cxr_nodule_aug import InsertionError

    with pytest.raises(InsertionError, match=r"contrast=1e-06.*uint8"):
        make_tf(contrast=1e-6)(tv_tensors.Image(make_image(torch.uint8)), make_target())


@pytest.mark.parametrize("layout", ["tuple", "flat", "nested"])
@pytest.mark.parametrize(
    "bad, error, match",
    [
        ({"lung_mask": tv_tensors.Mask(torch.ones(64, 64, dtype=torch.bool))}, ValueError, r"lung_mask.*must be \(H, W\)"),
        ({"lung_mask": tv_tensors.Mask(torch.zeros(128, 128, dtype=torch.bool))}, ValueError, r"lung_mask.*empty"),
        ({"boxes": tv_tensors.BoundingBoxes([[float("nan"), 1.0, 4.0, 4.0]], format="XYXY", canvas_size=(128, 128))}, ValueError, "must be finite"),
        ({"boxes": tv_tensors.BoundingBoxes([[1.0, 1.0, float("inf"), 4.0]], format="XYXY", canvas_size=(128, 128))}, ValueError, "must be finite"),
        ({"boxes": tv_tensors.BoundingBoxes([[10, 10, 4, 4]], format="CXCYWH", canvas_size=(128, 128), dtype=torch.int64)}, ValueError, "CXCYWH.*float"),
    ],
)
@pytest.mark.parametrize("p", [1.0, 0.0])
def test_invalid_target_refused_in_every_layout_whatever_p(layout, bad, error, match, p):
    tgt = {**make_target(), **bad}
    img = tv_tensors.Image(make_image())
    tf = make_tf(p=p)
    with pytest.raises(error, match=match):
        if layout == "tuple":
            tf(img, tgt)
        elif layout == "flat":
            tf({"image": img, **tgt})
        else:
            tf({"sample": [img, {"target": tgt}]})


@pytest.mark.parametrize("p", [1.0, 0.0])
def test_mm_without_spacing_refused_in_every_layout_whatever_p(p):
    tf = make_tf(diameters=(4.0, 6.0), unit="mm", p=p)
    img = tv_tensors.Image(make_image())
    for sample in [(img, make_target()), ({"image": img, **make_target()},), ({"x": [img, {"t": make_target()}]},)]:
        with pytest.raises(ValueError, match="diameters are in mm but the pixel spacing is unknown"):
            tf(*sample)


def test_integer_and_half_precision_boxes_records_equal_appended_boxes():
    for fmt, dtype in [("XYXY", torch.int64), ("XYWH", torch.int32), ("CXCYWH", torch.float32), ("XYWH", torch.float16), ("CXCYWH", torch.float64)]:
        tgt = make_target(fmt=fmt)
        tgt["boxes"] = tv_tensors.wrap(tgt["boxes"].as_subclass(torch.Tensor).to(dtype), like=tgt["boxes"])
        img = tv_tensors.Image(make_image())
        out_img, out_tgt = make_tf()(img, tgt)
        assert out_tgt["boxes"].dtype == dtype and out_tgt["boxes"].format.name == fmt
        _new_box_has_changed_pixels(img, out_img, tgt, out_tgt)


def test_on_failure_skip_leaves_the_sample_unaugmented_counts_and_logs(caplog):
    with pytest.raises(ValueError, match="on_failure must be"):
        make_tf(on_failure="ignore")
    constant = tv_tensors.Image(torch.full((1, 128, 128), 7, dtype=torch.uint16))
    tgt = {**make_target(), "image_id": "case-17"}
    with pytest.raises(ValueError, match="image image_id='case-17': image is constant"):
        make_tf()(constant, tgt)
    with pytest.raises(PlacementError, match=r"image of shape \(1, 128, 128\) uint16: .*nodule 0"):
        make_tf(diameters=60.0)(tv_tensors.Image(make_image()), make_target())
    tf = make_tf(on_failure="skip")
    with caplog.at_level("WARNING", logger="cxr_nodule_aug"):
        out_img, out_tgt = tf(constant, tgt)
    assert out_img is constant and len(out_tgt["boxes"]) == 1 and out_tgt["nodules"] == [] and tf.skipped == 1
    assert "case-17" in caplog.text and "skipped" in caplog.text
    # A nodule that does not fit, and a contrast no pixel can show: skipped too.
    for bad_tf in (make_tf(on_failure="skip", diameters=60.0), make_tf(on_failure="skip", contrast=1e-6)):
        out_img, out_tgt = bad_tf(tv_tensors.Image(make_image(torch.uint8)), make_target())
        assert len(out_tgt["boxes"]) == 1 and out_tgt["nodules"] == [] and bad_tf.skipped == 1
    # batch(): the good samples are augmented, the bad one passes through.
    samples = [(tv_tensors.Image(make_image(seed=1)), make_target()), (constant, tgt), (tv_tensors.Image(make_image(seed=2)), make_target())]
    got = make_tf(on_failure="skip").batch(samples)
    assert [len(t["nodules"]) for _, t in got] == [1, 0, 1]
    # Malformed input is not skipped.
    with pytest.raises(ValueError, match="lung_mask.*must be"):
        tf(tv_tensors.Image(make_image()), {**make_target(), "lung_mask": tv_tensors.Mask(torch.ones(4, 4, dtype=torch.bool))})


def test_nodule_larger_than_the_lungs_is_refused_before_any_work():
    import time

    class NoShapes(EllipseShapeGenerator):
        def generate(self, seeds, device=None):
            raise AssertionError("shapes generated for a nodule that cannot fit")

    image, target = tv_tensors.Image(make_image(size=256)), make_target(size=256, boxes=())
    t0 = time.perf_counter()
    with pytest.raises(PlacementError, match="diameter 3000 px cannot fit the lung mask's bounding box"):
        make_tf(diameters=3000.0, shape_model=NoShapes())(image, target)
    with pytest.raises(PlacementError, match="diameter 3000 px cannot fit the image"):
        InsertNodules([NoduleRecord((128, 128), 3000.0, 1)], shape_model=NoShapes(), texture_model=tiny_texture())(image, target)
    assert time.perf_counter() - t0 < 5


def test_replay_of_out_records_on_an_input_that_already_has_records():
    image, target = tv_tensors.Image(make_image()), make_target(masks=True)
    first = make_tf(generator=torch.Generator().manual_seed(1))
    second = make_tf(generator=torch.Generator().manual_seed(2))
    mid_img, mid_tgt = first(image, target)
    out_img, out_tgt = second(mid_img, mid_tgt)
    assert len(out_tgt["nodules"]) == 2
    replay = InsertNodules(out_tgt["nodules"], shape_model=EllipseShapeGenerator(), texture_model=tiny_texture())
    # On the intermediate sample only the record it lacks is inserted: the output is reproduced.
    r_img, r_tgt = replay(mid_img, mid_tgt)
    assert torch.equal(r_img, out_img) and torch.equal(r_tgt["boxes"], out_tgt["boxes"]) and r_tgt["nodules"] == out_tgt["nodules"]
    # On the original sample both are inserted (in one pass: the second nodule's texture no
    # longer sees the first in its context, so the pixels are not the chained output's).
    r_img, r_tgt = replay(image, target)
    assert len(r_tgt["boxes"]) == 3 and r_tgt["nodules"] == out_tgt["nodules"]
    _new_box_has_changed_pixels(image, r_img, target, r_tgt)


def test_replay_does_not_consult_the_lung_mask_but_checks_its_size():
    records = [NoduleRecord((40, 60), 8.0, 1)]
    tf = InsertNodules(records, shape_model=EllipseShapeGenerator(), texture_model=tiny_texture())
    empty = {**make_target(), "lung_mask": tv_tensors.Mask(torch.zeros(128, 128, dtype=torch.bool))}
    out_img, out_tgt = tf(tv_tensors.Image(make_image()), empty)
    assert len(out_tgt["boxes"]) == 2
    with pytest.raises(ValueError, match="lung_mask.*must be"):
        tf(tv_tensors.Image(make_image()), {**make_target(), "lung_mask": tv_tensors.Mask(torch.ones(3, 3, dtype=torch.bool))})


def test_float64_output_stays_inside_the_input_range_at_the_clamp():
    # [-0.3, 0.1] is not [0, 1]: the input's own range is the clamp range. Neither end is a
    # float32 number, so a clamp computed in float32 lands outside it.
    g = torch.Generator().manual_seed(4)
    image = -0.3 + 0.4 * torch.rand(1, 128, 128, generator=g, dtype=torch.float64)
    image[0, 0, 0], image[0, 0, 1] = -0.3, 0.1
    out_img, out_tgt = make_tf(contrast=60.0, num_nodules=2)(tv_tensors.Image(image), make_target(masks=True))
    assert len(out_tgt["boxes"]) == 3
    assert float(out_img.min()) >= -0.3 and float(out_img.max()) <= 0.1
    assert (out_img == 0.1).any() or (out_img == -0.3).any()  # the clamp was reached


def test_boxes_that_cannot_hold_the_new_box_exactly_are_an_error_not_a_shifted_label():
    # float16 has no half pixels past 1024: a CXCYWH centre of an odd-width box there rounds.
    S = 1100
    image = tv_tensors.Image((torch.rand(1, S, S, generator=torch.Generator().manual_seed(0)) * 200 + 20).to(torch.uint8))
    target = {"boxes": tv_tensors.BoundingBoxes(torch.zeros(0, 4, dtype=torch.float16), format="CXCYWH", canvas_size=(S, S)), "labels": torch.zeros(0, dtype=torch.int64)}
    tf = InsertNodules([NoduleRecord((1050, 500), 9.0, 4)], shape_model=EllipseShapeGenerator(), texture_model=tiny_texture())
    with pytest.raises(ValueError, match="float16 in CXCYWH cannot hold the new nodule boxes.*exactly"):
        tf(image, target)
    # float32 boxes hold it, and the appended box is the record's.
    target["boxes"] = tv_tensors.BoundingBoxes(torch.zeros(0, 4), format="CXCYWH", canvas_size=(S, S))
    out_img, out_tgt = tf(image, target)
    _new_box_has_changed_pixels(image, out_img, target, out_tgt)
