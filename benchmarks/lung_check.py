"""Does the lung model keep its mask inside the thorax on a *real* radiograph?

The real radiograph in ``pydicom-data`` (``RG1_UNCR.dcm``, 1841 x 1955, MONOCHROME1) has no lung
labels, so its anatomy was read off the image by eye (see ``RG1_ANATOMY`` below, checked on an
overlay at full resolution). For each ``--weights NAME=DIR`` and each post-processing
(``old``: threshold + the two largest components, the library before ``clean_lung_mask``;
``new``: ``LungSegmenter.predict_mask``) it prints, per lung:

* ``area_fraction``: the lung's share of the image's pixels;
* ``top_row`` against the apex row read off the image (``top_minus_apex`` < 0: above the apex);
* ``bottom_row`` against the costophrenic angle's row (``bottom_minus_diaphragm`` < 0: short of it);
* the number of 8-connected components and the share of mask pixels outside the thorax polygon;

and, with ``--simcxr DIR`` (a SimCXR export the weights were not trained on), the mean Dice
against its lung labels at the export's resolution. It draws ``--out`` (the radiograph, the thorax
polygon in yellow, each row's mask outline).

    python benchmarks/lung_check.py --weights "before=/work/wt/base/weights/lung" \\
        --weights "shipped=weights/lung" --simcxr data/simcxr_test --out docs/lung_check_rg1.png
"""

from __future__ import annotations

import argparse
import importlib.resources
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from scipy import ndimage

from cxr_nodule_aug.functional.intensity import to_working
from cxr_nodule_aug.models import LungSegmenter
from cxr_nodule_aug.models.lung import largest_components

# Read by eye off RG1_UNCR at full resolution (x = column, y = row, px; the patient's right
# lung is on the viewer's left). Apices: the top of each lung dome under the first rib. The
# diaphragm: the lowest point of each lung field, the lateral costophrenic angle. The thorax
# polygon runs a little outside the rib cage, across the apex row (120, above both apices), and
# along the diaphragm domes (right dome top ~1400 px at x ~450, left ~1445 px at x ~1450): a
# nodule outside it lies in the neck, the shoulders, the soft tissue outside the ribs or the
# abdomen.
RG1_ANATOMY = {
    "apex_row": {"right": 135, "left": 128},
    "costophrenic_row": {"right": 1570, "left": 1585},
    "thorax_polygon_xy": [(450, 120), (1350, 120), (1560, 250), (1680, 400), (1720, 700), (1725, 1200), (1700, 1600),
                          (1600, 1540), (1450, 1455), (1000, 1460), (640, 1420), (450, 1400), (300, 1440), (200, 1510),
                          (110, 1600), (100, 1200), (105, 700), (150, 400), (260, 250)],
}


def rg1_image() -> torch.Tensor:
    """RG1_UNCR as a (1, H, W) uint16 tensor (needs the ``dicom`` extra)."""
    from cxr_nodule_aug.io import read_image

    return read_image(importlib.resources.files("data_store") / "data" / "RG1_UNCR.dcm").to_tensor().as_subclass(torch.Tensor)


def thorax_region(shape: tuple[int, int]) -> np.ndarray:
    """(H, W) bool: the hand-drawn thorax polygon of ``RG1_ANATOMY`` rasterised."""
    canvas = Image.new("1", (shape[1], shape[0]), 0)
    ImageDraw.Draw(canvas).polygon(RG1_ANATOMY["thorax_polygon_xy"], fill=1)
    return np.array(canvas, dtype=bool)


def masks(model: LungSegmenter, gray: torch.Tensor, **clean: float) -> dict[str, torch.Tensor]:
    """The ``old`` and ``new`` post-processing of one (H, W) working image in [0, 1]; ``clean``:
    keyword arguments of ``predict_mask`` (default: its defaults)."""
    x = gray.clamp(0, 1)[None, None]
    h, w = gray.shape
    with torch.inference_mode():
        raw = model._probability_at_input_size(x)[0, 0] > 0.5
    old = largest_components(raw, keep=2, min_fraction=0.1)
    old = F.interpolate(old[None, None].float(), size=(h, w), mode="bilinear", align_corners=False)[0, 0] >= 0.5
    return {"old": old, "new": model.predict_mask(x, **clean)[0]}


def describe(mask: np.ndarray, thorax: np.ndarray) -> dict[str, object]:
    H, W = mask.shape
    out: dict[str, object] = {"components": int(ndimage.label(mask, structure=np.ones((3, 3)))[1]),
                              "outside_thorax_fraction": round(float((mask & ~thorax).sum() / max(mask.sum(), 1)), 4)}
    for side, cols in (("right", slice(0, W // 2)), ("left", slice(W // 2, W))):
        half = np.zeros_like(mask)
        half[:, cols] = mask[:, cols]
        rows = np.flatnonzero(half.any(1))
        top, bottom = (int(rows[0]), int(rows[-1])) if len(rows) else (None, None)
        out[side] = {
            "area_fraction": round(float(half.sum() / mask.size), 4),
            "top_row": top, "apex_row": RG1_ANATOMY["apex_row"][side],
            "top_minus_apex": None if top is None else top - RG1_ANATOMY["apex_row"][side],
            "bottom_row": bottom, "costophrenic_row": RG1_ANATOMY["costophrenic_row"][side],
            "bottom_minus_diaphragm": None if bottom is None else bottom - RG1_ANATOMY["costophrenic_row"][side],
        }
    return out


def simcxr_dice(model: LungSegmenter, root: Path, **clean: float) -> dict[str, float]:
    from cxr_nodule_aug.datasets import SimCXRDataset

    ds = SimCXRDataset(root)
    scores: dict[str, list[float]] = {"old": [], "new": []}
    for i in range(len(ds)):
        image, target = ds[i]
        truth = target["lung_mask"].as_subclass(torch.Tensor).bool()
        gray = to_working(image.as_subclass(torch.Tensor))[0]
        for key, m in masks(model, gray, **clean).items():
            scores[key].append(float(2 * (m & truth).sum() / (m.sum() + truth.sum()).clamp(min=1)))
    return {f"dice_{k}": round(float(np.mean(v)), 4) for k, v in scores.items()} | {"images": len(ds), "dice_new_min": round(min(scores["new"]), 4)}


def outline(mask: np.ndarray, width: int) -> np.ndarray:
    return ndimage.binary_dilation(mask & ~ndimage.binary_erosion(mask), iterations=width)


def draw(gray: np.ndarray, rows: list[tuple[str, np.ndarray]], thorax: np.ndarray, path: Path, scale: float = 0.35) -> None:
    """One panel per row: the radiograph, the thorax polygon (yellow), the mask outline (green)."""
    panels = []
    for title, mask in rows:
        rgb = np.repeat((gray * 255).astype(np.uint8)[..., None], 3, axis=2)
        rgb[outline(thorax, 2)] = (230, 200, 0)
        rgb[outline(mask, 3)] = (0, 220, 0)
        im = Image.fromarray(rgb).resize((int(gray.shape[1] * scale), int(gray.shape[0] * scale)), Image.BILINEAR)
        ImageDraw.Draw(im).text((8, 8), title, fill=(255, 0, 0))
        panels.append(np.array(im))
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate(panels, axis=1)).save(path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--weights", action="append", default=None, help="NAME=DIR of a LungSegmenter (repeatable); default shipped=weights/lung")
    ap.add_argument("--simcxr", type=Path, help="a SimCXR export for Dice (not the training export)")
    ap.add_argument("--out", type=Path, default=Path("docs/lung_check_rg1.png"))
    ap.add_argument("--panels", default="", help="comma-separated NAME:old|new panels to draw (default: every row)")
    ap.add_argument("--json", type=Path, help="also write the numbers here")
    ap.add_argument("--open-fraction", type=float, help="predict_mask's open_fraction for the new rows (default: its default)")
    args = ap.parse_args(argv)
    torch.set_num_threads(max(1, min(torch.get_num_threads(), 2)))
    image = rg1_image()
    gray = to_working(image)[0].clamp(0, 1)
    thorax = thorax_region(tuple(gray.shape))
    clean = {} if args.open_fraction is None else {"open_fraction": args.open_fraction}
    result, drawn = {}, []
    for spec in args.weights or ["shipped=weights/lung"]:
        name, _, directory = spec.partition("=")
        model = LungSegmenter.from_pretrained(directory).eval()
        for post, m in masks(model, gray, **clean).items():
            key = f"{name}:{post}"
            result[key] = describe(m.numpy(), thorax)
            drawn.append((key, m.numpy()))
        if args.simcxr:
            result[name] = simcxr_dice(model, args.simcxr, **clean)
    wanted = [p for p in args.panels.split(",") if p]
    draw(gray.numpy(), [(k, m) for k, m in drawn if not wanted or k in wanted], thorax, args.out)
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
