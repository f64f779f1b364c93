"""The shipped weights, end to end: default loading, the README quickstart, the demo command."""

from __future__ import annotations

import importlib.resources
import json

import pytest
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from cxr_nodule_aug import InsertNodules, LungSegmenter, NoduleInpaint, ShapeGenerator, TextureGenerator
from cxr_nodule_aug.functional import equivalent_diameter
from cxr_nodule_aug.hub import default_weights_dir
from cxr_nodule_aug.io import read_image
from cxr_nodule_aug.models import DENSITY_CLASSES, LayerGenerator

RG1 = importlib.resources.files("data_store") / "data" / "RG1_UNCR.dcm"


def test_shipped_weights_load_strictly_with_cards():
    root = default_weights_dir()
    assert root is not None and root.name == "weights"
    for name, cls in (("shape", ShapeGenerator), ("texture", TextureGenerator), ("lung", LungSegmenter), ("layer", LayerGenerator)):
        model = cls.from_pretrained(root / name)
        assert not model.training
        card = (root / name / "README.md").read_text()
        assert "## Training data" in card and "## Limits" in card
    tf = NoduleInpaint()
    assert tf.lung_model is not None


def test_shipped_layer_model_orders_density_and_adds_on_the_real_radiograph():
    """The additive model's mean layer rises ground-glass < part-solid < solid < calcified
    (a synthetic patch: flat lung with noise, a disc), and NoduleInpaint(composition="additive")
    on the real radiograph only adds brightness, inside the mask."""
    layer = LayerGenerator.from_pretrained(default_weights_dir() / "layer")
    g = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.arange(32), torch.arange(32), indexing="ij")
    mask = (((yy - 16) ** 2 + (xx - 16) ** 2) <= 64).float()[None, None].expand(4, 1, 32, 32)
    context = (0.3 + 0.05 * torch.randn(4, 1, 32, 32, generator=g)).clamp(0, 1)
    with torch.no_grad():
        means = [float(layer(context, mask, [c] * 4).fine[mask > 0].mean()) for c in DENSITY_CLASSES]
    assert means == sorted(means) and means[0] > 0, means
    image = read_image(RG1).to_tensor()
    tf = NoduleInpaint(diameters=60.0, p=1.0, composition="additive", density="calcified", generator=torch.Generator().manual_seed(0))
    h, w = image.shape[-2:]
    target = {"boxes": tv_tensors.BoundingBoxes(torch.zeros(0, 4), format="XYXY", canvas_size=(h, w)), "labels": torch.zeros(0, dtype=torch.int64),
              "masks": tv_tensors.Mask(torch.zeros(0, h, w, dtype=torch.bool))}
    out, out_target = tf(image, target)
    inside = out_target["masks"][-1].bool()
    diff = out.as_subclass(torch.Tensor).int() - image.as_subclass(torch.Tensor).int()
    assert (diff[:, ~inside] == 0).all() and (diff[:, inside] >= 0).all() and (diff[:, inside] > 0).any()
    assert out_target["nodules"][-1].density == "calcified"


def test_shipped_shapes_are_solid_single_blobs():
    g = ShapeGenerator.from_pretrained(default_weights_dir() / "shape")
    masks = g.generate(list(range(16)))
    assert masks.any(-1).any(-1).all()
    d = equivalent_diameter(masks)
    # trained on masks normalised to 100 px on a 256 grid
    assert ((d / g.image_size * 256 - 100).abs() < 30).all(), d


def test_readme_quickstart_on_the_real_radiograph():
    image = read_image(RG1).to_tensor()
    H, W = image.shape[-2:]
    target = {
        "boxes": tv_tensors.BoundingBoxes(torch.zeros(0, 4), format="XYXY", canvas_size=(H, W)),
        "labels": torch.zeros(0, dtype=torch.int64),
    }
    tf = NoduleInpaint(diameters=(30.0, 90.0), num_nodules=(1, 3), p=1.0, generator=torch.Generator().manual_seed(0))
    out_image, out_target = v2.Compose([tf, v2.SanitizeBoundingBoxes()])(image, target)
    n = len(out_target["nodules"])
    assert 1 <= n <= 3 and len(out_target["boxes"]) == n and out_image.dtype == torch.uint16
    lung = tf.lung_mask(image.as_subclass(torch.Tensor), target)
    for rec in out_target["nodules"]:
        x1, y1, x2, y2 = (int(v) for v in rec.box_xyxy)
        assert lung[y1:y2, x1:x2].all()
        assert abs(rec.measured_diameter_px - rec.diameter_px) <= max(1.0, 0.05 * rec.diameter_px)
        assert (out_image[0, y1:y2, x1:x2].int() != image[0, y1:y2, x1:x2].int()).any()
    replayed, _ = InsertNodules(out_target["nodules"])(image, target)
    assert torch.equal(replayed, out_image)


@pytest.mark.slow
def test_demo_command_on_the_real_radiograph(tmp_path):
    from cxr_nodule_aug.cli import main

    assert main(["demo", "--out", str(tmp_path), "--no-sim", "--shape-seeds", "1", "2"]) == 0
    assert (tmp_path / "demo_RG1_UNCR.png").stat().st_size > 10_000
    records = json.loads((tmp_path / "records_RG1_UNCR.json").read_text())
    assert len(records["grid"]) == 6 and len(records["overview"]) == 2
    # the default composition is additive: every record carries the demo's density (--density, default solid)
    assert {r["density"] for r in records["grid"] + records["overview"]} == {"solid"}
