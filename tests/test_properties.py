"""Property-based tests of the library's first promise: no label without a nodule in the pixels.

Hypothesis generates samples over layouts (``(image, target)``, flat dict, nested dicts, lists
and tuples) x image kinds (``tv_tensors.Image``, plain tensor, PIL) x dtypes (uint8, uint16,
int16, int32, float16, float32, float64) and value ranges x channels (1, 3) x box formats
(XYXY, XYWH, CXCYWH) and dtypes x contrasts x sizes (odd ones too), with and without instance
masks, and checks on every result:

- the input is unchanged;
- the image keeps its kind, dtype, shape and device;
- boxes, labels, masks and records grow by the same number, the old ones kept as they were;
- every appended box and mask has changed pixels under it, and its record's box is that box;
- no pixel changed outside the new nodules' masks (bit for bit), and the output stays in the
  dtype's range (floats: [0, 1] when the input lies in it, else the input's own range);
- the records replay (``InsertNodules``) to the same pixels and boxes.

A sample the library cannot augment must raise :class:`InsertionError` (no room, a contrast no
pixel can show), or pass unchanged with ``on_failure="skip"``; invalid samples must raise a
``ValueError``/``TypeError`` and never come back labelled.

Profiles (tests/conftest.py): ``ci`` (default) and ``long`` (``HYPOTHESIS_PROFILE=long``).
Tiny models built here (the shapes of tests/conftest.py, a 4-channel texture network), images of
24-56 px.
"""

from __future__ import annotations

import copy

import numpy as np
import PIL.Image
import pytest
import torch
from conftest import EllipseShapeGenerator, tiny_texture
from hypothesis import HealthCheck, given, settings, strategies as st
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as TF

import cxr_nodule_aug
from cxr_nodule_aug import InsertNodules, NoduleInpaint

# getattr: the suite also runs against versions before InsertionError, to show what it finds.
InsertionError = getattr(cxr_nodule_aug, "InsertionError", cxr_nodule_aug.PlacementError)

DTYPES = [torch.uint8, torch.uint16, torch.int16, torch.int32, torch.float16, torch.float32, torch.float64]
PIL_OK = {(torch.uint8, 1), (torch.uint8, 3), (torch.uint16, 1), (torch.int32, 1), (torch.float32, 1)}
LAYOUTS = ["tuple", "flat", "flat_image_last", "nested_dict", "nested_list", "nested_tuple", "target_first"]

_MODELS: dict[str, torch.nn.Module] = {}


def models() -> tuple[torch.nn.Module, torch.nn.Module]:
    if not _MODELS:
        _MODELS["shape"] = EllipseShapeGenerator().eval()
        _MODELS["texture"] = tiny_texture(patch_size=16, num_stages=1)  # 16 px patches: 9 px nodules use a resampled region
    return _MODELS["shape"], _MODELS["texture"]


# --- building samples ---------------------------------------------------------------------------
def _pixels(H: int, W: int, channels: int, seed: int, dtype: torch.dtype, kind: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, H, dtype=torch.float64), torch.linspace(-1, 1, W, dtype=torch.float64), indexing="ij")
    base = (0.35 + 0.3 * (xx**2 + yy**2))[None] + 0.08 * torch.rand(channels, H, W, generator=g, dtype=torch.float64)
    base = base.clamp(0, 1)
    if dtype.is_floating_point:
        lo, hi = {"unit": (0.0, 1.0), "narrow": (0.1, 0.4), "hu": (-1024.0, 3071.0), "signed": (-1.0, 1.0)}[kind]
        return (lo + (hi - lo) * base).to(dtype)
    info = torch.iinfo(dtype)
    lo, hi = {
        "full": (info.min, info.max),
        "12bit": (max(info.min, 0), min(info.max, 4095)),
        "low": (max(info.min, 0), min(info.max, 60)),
        "signed": (max(info.min, -3000), min(info.max, 3000)),
    }[kind]
    return (lo + (hi - lo) * base).round().clamp(info.min, info.max).to(dtype)


@st.composite
def samples(draw):
    dtype = draw(st.sampled_from(DTYPES))
    channels = draw(st.sampled_from([1, 3]))
    H, W = draw(st.integers(24, 56)), draw(st.integers(24, 56))
    kind = draw(st.sampled_from(["unit", "narrow", "hu", "signed"] if dtype.is_floating_point else ["full", "12bit", "low", "signed"]))
    image = _pixels(H, W, channels, draw(st.integers(0, 2**31 - 1)), dtype, kind)
    image_kind = draw(st.sampled_from(["tv", "plain", "pil"] if (dtype, channels) in PIL_OK else ["tv", "plain"]))
    fmt = draw(st.sampled_from(["XYXY", "XYWH", "CXCYWH"]))
    box_dtype = draw(st.sampled_from([torch.float32, torch.float64] if fmt == "CXCYWH" else [torch.float32, torch.int64]))
    # Lungs: two rectangles, as a radiograph's two fields.
    lung = torch.zeros(H, W, dtype=torch.bool)
    top, bottom = draw(st.integers(1, H // 4)), draw(st.integers(3 * H // 4, H - 1))
    mid = W // 2
    lung[top:bottom, 1 : mid - 1] = True
    lung[top:bottom, mid + 1 : W - 1] = True
    n_old = draw(st.integers(0, 2))
    boxes = []
    for _ in range(n_old):
        x1, y1 = draw(st.integers(0, W - 6)), draw(st.integers(0, H - 6))
        boxes.append([x1, y1, x1 + draw(st.integers(2, 5)), y1 + draw(st.integers(2, 5))])
    xyxy = torch.tensor(boxes, dtype=torch.float64).reshape(-1, 4)
    bb = tv_tensors.BoundingBoxes(xyxy, format="XYXY", canvas_size=(H, W))
    bb = TF.convert_bounding_box_format(bb, new_format=fmt)
    bb = tv_tensors.wrap(bb.as_subclass(torch.Tensor).to(box_dtype), like=bb)
    target = {"boxes": bb, "labels": torch.arange(n_old, dtype=torch.int64), "lung_mask": tv_tensors.Mask(lung)}
    if draw(st.booleans()):
        m = torch.zeros(n_old, H, W, dtype=torch.uint8)
        for i, (x1, y1, x2, y2) in enumerate(boxes):
            m[i, y1:y2, x1:x2] = 1
        target["masks"] = tv_tensors.Mask(m)
    if draw(st.booleans()):
        target["image_id"] = f"img-{draw(st.integers(0, 999))}"
    if draw(st.booleans()):
        target["nodules"] = []
    if image_kind == "pil":
        arr = image.permute(1, 2, 0).numpy()
        img = PIL.Image.fromarray(np.ascontiguousarray(arr[..., 0] if channels == 1 else arr))
    elif image_kind == "tv":
        img = tv_tensors.Image(image)
    else:
        img = image
    layout = draw(st.sampled_from(LAYOUTS))
    return {"layout": layout, "image": img, "pixels": image, "target": target, "dtype": dtype, "range_kind": kind}


def pack(layout: str, img, target):
    """(args for the transform, a function that takes the output to (image, target))."""
    if layout == "tuple":
        return (img, target), lambda o: (o[0], o[1])
    if layout == "flat":
        return ({"image": img, **target},), lambda o: (o["image"], o)
    if layout == "flat_image_last":
        return ({**target, "image": img, "extra": 5},), lambda o: (o["image"], o)
    if layout == "nested_dict":
        return ({"image": img, "target": target, "meta": {"k": 1}},), lambda o: (o["image"], o["target"])
    if layout == "nested_list":
        return ([{"img": img}, {"target": target}],), lambda o: (o[0]["img"], o[1]["target"])
    if layout == "nested_tuple":
        return (({"x": [img]}, (target,)),), lambda o: (o[0]["x"][0], o[1][0])
    if layout == "target_first":
        return ({"target": target, "image": img},), lambda o: (o["image"], o["target"])
    raise AssertionError(layout)


def as_tensor(img) -> torch.Tensor:
    return TF.pil_to_tensor(img) if isinstance(img, PIL.Image.Image) else img.as_subclass(torch.Tensor)


def snapshot(obj):
    if isinstance(obj, PIL.Image.Image):
        return ("pil", obj.mode, obj.size, obj.tobytes())
    if isinstance(obj, torch.Tensor):
        return ("t", type(obj), obj.dtype, obj.clone())
    if isinstance(obj, dict):
        return {k: snapshot(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(snapshot(v) for v in obj)
    return copy.deepcopy(obj)


def same(a, b) -> bool:
    if isinstance(a, tuple) and a and a[0] == "t":
        return isinstance(b, tuple) and a[1:3] == b[1:3] and torch.equal(a[3], b[3])
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


def xyxy_of(boxes: tv_tensors.BoundingBoxes) -> torch.Tensor:
    return TF.convert_bounding_box_format(boxes.as_subclass(torch.Tensor).double(), old_format=boxes.format, new_format="XYXY")


def value_range(pixels: torch.Tensor) -> tuple[float, float]:
    if not pixels.is_floating_point():
        info = torch.iinfo(pixels.dtype)
        return info.min, info.max
    lo, hi = float(pixels.min()), float(pixels.max())
    return (0.0, 1.0) if lo >= 0 and hi <= 1 else (lo, hi)


# --- the properties -----------------------------------------------------------------------------
@settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(s=samples(), contrast=st.one_of(st.floats(0.3, 2.0), st.sampled_from([1e-7, 1e-4, 0.02])), n=st.integers(1, 2), seed=st.integers(0, 2**31 - 1),
       diameter=st.floats(3.0, 9.0), skip=st.booleans())
def test_no_label_without_a_nodule_and_nothing_else_changes(s, contrast, n, seed, diameter, skip):
    shape_model, texture_model = models()
    tf = NoduleInpaint(diameters=diameter, num_nodules=n, contrast=contrast, p=1.0, shape_model=shape_model, texture_model=texture_model,
                       lung_model=False, generator=torch.Generator().manual_seed(seed), **({"on_failure": "skip"} if skip else {}))
    target = s["target"]
    args, unpack = pack(s["layout"], s["image"], target)
    before = snapshot(args)
    try:
        out = tf(*args) if len(args) > 1 else tf(args[0])
    except InsertionError as err:
        assert not skip, "on_failure='skip' let an InsertionError through"
        assert "image" in str(err)  # the error names the image
        assert same(before, snapshot(args)), "the input was modified"
        return
    assert same(before, snapshot(args)), "the input was modified"
    img_out, tgt_out = unpack(out)
    pixels, pixels_out = s["pixels"], as_tensor(img_out)
    assert type(img_out) is type(s["image"])
    if isinstance(img_out, PIL.Image.Image):
        assert img_out.mode == s["image"].mode
    assert pixels_out.dtype == pixels.dtype and pixels_out.shape == pixels.shape and pixels_out.device == pixels.device

    n_old = len(target["boxes"])
    boxes = tgt_out["boxes"]
    n_new = len(boxes) - n_old
    assert isinstance(boxes, tv_tensors.BoundingBoxes) and boxes.format == target["boxes"].format and boxes.dtype == target["boxes"].dtype
    assert n_new in (0, n)
    records = list(tgt_out["nodules"])
    assert len(records) == n_new and len(tgt_out["labels"]) == n_old + n_new
    assert torch.equal(boxes[:n_old].as_subclass(torch.Tensor), target["boxes"].as_subclass(torch.Tensor))
    assert torch.equal(tgt_out["labels"][:n_old], target["labels"])
    changed = (pixels_out != pixels).any(0)
    if n_new == 0:  # skipped: passed through unaugmented
        assert skip and tf.skipped == 1 and not changed.any()
        return
    if "masks" in target:
        masks = tgt_out["masks"]
        assert len(masks) == n_old + n_new and torch.equal(masks[:n_old].as_subclass(torch.Tensor), target["masks"].as_subclass(torch.Tensor))
        new_masks = masks[n_old:].as_subclass(torch.Tensor).bool()
    else:
        new_masks = None
    union = torch.zeros_like(changed)
    for i, (box, rec) in enumerate(zip(xyxy_of(boxes)[n_old:].tolist(), records)):
        x1, y1, x2, y2 = box
        assert rec.box_xyxy == (x1, y1, x2, y2), "a record's box differs from the appended box"
        assert all(float(v).is_integer() for v in box)
        x1, y1, x2, y2 = int(x1), int(y1), int(x2), int(y2)
        assert changed[y1:y2, x1:x2].any(), "a box was appended with no changed pixel under it"
        if new_masks is not None:
            m = new_masks[i]
            assert m.any() and not m[:y1].any() and not m[y2:].any() and not m[:, :x1].any() and not m[:, x2:].any(), "mask outside its box"
            assert (changed & m).any(), "a mask was appended with no changed pixel under it"
            union |= m
        else:
            union[y1:y2, x1:x2] = True
    assert not (changed & ~union).any(), "pixels changed outside the new nodules"
    assert torch.equal(pixels_out[:, ~union], pixels[:, ~union])
    lo, hi = value_range(pixels)
    assert float(pixels_out.double().min()) >= lo and float(pixels_out.double().max()) <= hi, "output outside the value range rule"

    # The records replay to the same pixels.
    replay = InsertNodules(records, shape_model=shape_model, texture_model=texture_model)
    r_args, r_unpack = pack(s["layout"], s["image"], target)
    r_img, r_tgt = r_unpack(replay(*r_args) if len(r_args) > 1 else replay(r_args[0]))
    assert torch.equal(as_tensor(r_img), pixels_out), "records do not replay to the same pixels"
    assert torch.equal(r_tgt["boxes"].as_subclass(torch.Tensor), boxes.as_subclass(torch.Tensor))


FAULTS = ["nan_box", "inf_box", "lung_wrong_size", "lung_empty", "mm_no_spacing", "bad_spacing", "labels_mismatch", "int_cxcywh"]


@settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(s=samples(), fault=st.sampled_from(FAULTS), p=st.sampled_from([0.0, 1.0]), skip=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_invalid_samples_raise_a_clear_error_and_are_never_labelled(s, fault, p, skip, seed):
    shape_model, texture_model = models()
    target = dict(s["target"])
    H, W = target["lung_mask"].shape
    kw = {}
    if fault in ("nan_box", "inf_box"):
        bad = float("nan") if fault == "nan_box" else float("inf")
        target["boxes"] = tv_tensors.BoundingBoxes([[1.0, 1.0, bad, 4.0]], format="XYXY", canvas_size=(H, W))
        target["labels"] = torch.ones(1, dtype=torch.int64)
        target.pop("masks", None)
        match = "must be finite"
    elif fault == "lung_wrong_size":
        target["lung_mask"] = tv_tensors.Mask(torch.ones(H + 1, W, dtype=torch.bool))
        match = r"lung_mask.*must be \(H, W\)"
    elif fault == "lung_empty":
        target["lung_mask"] = tv_tensors.Mask(torch.zeros(H, W, dtype=torch.bool))
        match = "lung_mask.*empty"
    elif fault == "mm_no_spacing":
        kw["unit"] = "mm"
        match = "pixel spacing is unknown"
    elif fault == "bad_spacing":
        target["pixel_spacing_mm"] = (0.5, float("nan"))
        match = "pixel_spacing_mm must be"
    elif fault == "labels_mismatch":
        target["labels"] = torch.ones(len(target["boxes"]) + 1, dtype=torch.int64)
        match = "one label per box"
    else:
        target["boxes"] = tv_tensors.BoundingBoxes([[10, 10, 4, 4]], format="CXCYWH", canvas_size=(H, W), dtype=torch.int64)
        target["labels"] = torch.ones(1, dtype=torch.int64)
        target.pop("masks", None)
        match = "CXCYWH"
    tf = NoduleInpaint(diameters=5.0, p=p, shape_model=shape_model, texture_model=texture_model, lung_model=False,
                       generator=torch.Generator().manual_seed(seed), **({"on_failure": "skip"} if skip else {}), **kw)
    args, unpack = pack(s["layout"], s["image"], target)
    if skip and fault == "lung_empty":  # an image with no lung is a hard image: skipped, unlabelled
        img_out, tgt_out = unpack(tf(*args) if len(args) > 1 else tf(args[0]))
        assert len(tgt_out["boxes"]) == len(target["boxes"]) and tf.skipped == 1
        assert torch.equal(as_tensor(img_out), s["pixels"])
        return
    with pytest.raises((ValueError, TypeError), match=match):
        tf(*args) if len(args) > 1 else tf(args[0])


def test_ci_profile_is_the_default():
    # The suite's size is the profile's: `ci` unless HYPOTHESIS_PROFILE says otherwise.
    import os

    assert settings.default.max_examples == settings.get_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci")).max_examples
