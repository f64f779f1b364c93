"""Box-only extraction where the truth is known: pseudo masks from the boxes of a SimCXR export
(its masks hidden from the extractor) against the true masks, by nodule size.

For every nodule of the export's nodule images, ``extract_nodules(image, boxes)`` sees the image and
the boxes only. Measured per nodule: Dice of the pseudo mask with the true mask; the equivalent
diameter (the paper's d, :func:`~cxr_nodule_aug.functional.equivalent_diameter`) of both and its
relative error; whether the inscribed-ellipse fallback was taken; the Dice the ellipse inscribed in
the box alone would give (the no-image baseline); and the background estimate's mean absolute
error inside the box against the export's nodule-free render (``pairs/``), in working units (the
image's 0.1-99.9 % window = 1), with the residual's true peak for scale.

    python benchmarks/box_only.py --data /work/data/boxonly_sim512 --out benchmarks/results/box_only

writes ``OUT.json`` (summary by size bin, the configuration), ``OUT.csv`` (per nodule) and
``OUT.md`` (the table). ``--rg1-figure docs/box_only_rg1.png`` also draws the extraction on the
masses of the real radiograph in ``pydicom-data`` (``RG1_UNCR.dcm``; boxes read off the image by
eye, :data:`RG1_MASSES`): per mass the crop, the background estimate, the residual and the
pseudo mask's outline.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import time
from pathlib import Path

import torch

BINS_MM = ((0.0, 6.0), (6.0, 10.0), (10.0, 20.0), (20.0, 1e9))
# Three round masses of RG1_UNCR (1841 x 1955 px), boxed by eye at full resolution (XYXY): the
# viewer's right mid and lower zones, the viewer's left lower zone.
RG1_MASSES = ((1370, 765, 1550, 960), (1340, 1095, 1560, 1245), (370, 1055, 610, 1275))


def rg1_figure(path: Path, tile: int = 200) -> list[dict]:
    """Draw the extraction on RG1's masses; returns each mass's quality."""
    import numpy as np
    from PIL import Image, ImageDraw
    from scipy import ndimage

    from cxr_nodule_aug.functional import to_working
    from cxr_nodule_aug.functional.extraction import extract_nodules
    from cxr_nodule_aug.io import read_image

    import importlib.resources

    image = read_image(importlib.resources.files("data_store") / "data" / "RG1_UNCR.dcm").to_tensor().as_subclass(torch.Tensor)
    gray, _, _ = to_working(image)
    g = gray.clamp(0, 1).numpy()
    extractions = extract_nodules(image, torch.tensor(RG1_MASSES, dtype=torch.float32))
    sheet = Image.new("RGB", (4 * tile, len(RG1_MASSES) * tile + 20), (0, 0, 0))
    draw = ImageDraw.Draw(sheet)
    for j, title in enumerate(("image", "background", "residual (x2)", "pseudo mask")):
        draw.text((j * tile + 4, 4), title, fill=(255, 255, 0))
    out = []
    for i, e in enumerate(extractions):
        x0, y0, x1, y1 = e.window_xyxy
        crop = g[y0:y1, x0:x1]
        mask = e.mask.numpy()
        edge = mask & ~ndimage.binary_erosion(mask, iterations=2)
        outlined = np.repeat((crop * 255).astype(np.uint8)[..., None], 3, 2)
        outlined[edge] = (255, 220, 0) if e.fallback else (255, 0, 0)
        panels = [crop, e.background.clamp(0, 1).numpy(), (0.5 + 2 * e.residual).clamp(0, 1).numpy()]
        for j, p in enumerate(panels):
            im = Image.fromarray((p * 255).astype(np.uint8)).convert("RGB").resize((tile, tile))
            sheet.paste(im, (j * tile, 20 + i * tile))
        sheet.paste(Image.fromarray(outlined).resize((tile, tile), Image.NEAREST), (3 * tile, 20 + i * tile))
        out.append({"box_xyxy": list(RG1_MASSES[i]), "fallback": e.fallback, "reason": e.reason, "contrast": round(e.contrast, 4),
                    "snr": round(e.snr, 2), "fill": round(e.fill, 3)})
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return out


def dice(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.bool(), b.bool()
    return 2.0 * float((a & b).sum()) / max(1, int(a.sum() + b.sum()))


def measure(data: Path, limit: int | None = None, **options) -> list[dict]:
    from cxr_nodule_aug.datasets import SimCXRDataset
    from cxr_nodule_aug.functional import equivalent_diameter, to_working
    from cxr_nodule_aug.functional.extraction import extract_nodules, inscribed_ellipse

    ds = SimCXRDataset(data, subset="nodule", return_pair=True, allow_incomplete=True)
    rows = []
    for i in range(len(ds) if limit is None else min(limit, len(ds))):
        image, target = ds[i]
        image = image.as_subclass(torch.Tensor)
        H, W = image.shape[-2:]
        boxes = target["boxes"].as_subclass(torch.Tensor)
        spacing = float(target["pixel_spacing_mm"][0])
        _, lo, hi = to_working(image)
        free = (target["image_nodule_free"].as_subclass(torch.Tensor)[0].float() - lo) / (hi - lo)
        for k, e in enumerate(extract_nodules(image, boxes, **options)):
            true = target["masks"][k].as_subclass(torch.Tensor).bool()
            x0, y0, x1, y1 = e.window_xyxy
            pseudo = e.full_mask(H, W)
            d_true = float(equivalent_diameter(true)) * spacing
            d_pseudo = float(equivalent_diameter(pseudo)) * spacing
            ellipse = torch.zeros(H, W, dtype=torch.bool)
            ellipse[y0:y1, x0:x1] = inscribed_ellipse(y1 - y0, x1 - x0)
            true_residual = (image[0].float() - lo) / (hi - lo) - free
            rows.append({
                "image_id": target["image_id"], "nodule": k, "diameter_mm": round(d_true, 3), "pseudo_diameter_mm": round(d_pseudo, 3),
                "diameter_rel_error": round((d_pseudo - d_true) / d_true, 4), "dice": round(dice(pseudo, true), 4),
                "ellipse_dice": round(dice(ellipse, true), 4), "fallback": int(e.fallback), "snr": round(min(e.snr, 1e6), 3),
                "contrast": round(e.contrast, 5),
                "background_mae": round(float((e.background - free[y0:y1, x0:x1]).abs().mean()), 5),
                "true_residual_peak": round(float(true_residual[y0:y1, x0:x1].max()), 5),
            })
    return rows


def texture_background(gray: torch.Tensor, window: tuple[int, int, int, int], model) -> torch.Tensor:
    """The alternative background estimate: the texture inpainter (shipped weights) filling the
    box as a box-shaped hole, cut and pasted as inference cuts (``cut_patch``, mask_type box)."""
    import torch.nn.functional as F

    from cxr_nodule_aug.functional import cut_patch, region_side, run_texture

    x0, y0, x1, y1 = window
    h, w = y1 - y0, x1 - x0
    R = region_side(max(h, w), model.patch_size, model.max_fill)
    top, left = (R - h) // 2, (R - w) // 2
    footprint = torch.zeros(R, R, dtype=torch.bool)
    footprint[top : top + h, left : left + w] = True
    cut = cut_patch(gray, (x0 + w // 2, y0 + h // 2), footprint, model.patch_size, "box")
    fine = F.interpolate(run_texture(model, cut.patch, cut.hole), size=(R, R), mode="bilinear", align_corners=False)[0, 0]
    return fine[top : top + h, left : left + w]


def compare_backgrounds(data: Path, limit: int | None = None) -> dict:
    """Median background MAE in the box against the nodule-free render: the Coons patch (the
    extractor's) vs the shipped texture inpainter in box mode, by size bin."""
    from cxr_nodule_aug import TextureGenerator
    from cxr_nodule_aug.datasets import SimCXRDataset
    from cxr_nodule_aug.functional import equivalent_diameter, to_working
    from cxr_nodule_aug.functional.extraction import box_window, coons_background

    model = TextureGenerator.from_pretrained(str(Path(__file__).resolve().parents[1] / "weights" / "texture")).eval()
    ds = SimCXRDataset(data, subset="nodule", return_pair=True, allow_incomplete=True)
    rows = []
    for i in range(len(ds) if limit is None else min(limit, len(ds))):
        image, target = ds[i]
        image = image.as_subclass(torch.Tensor)
        gray, lo, hi = to_working(image)
        free = (target["image_nodule_free"].as_subclass(torch.Tensor)[0].float() - lo) / (hi - lo)
        for k, box in enumerate(target["boxes"].as_subclass(torch.Tensor).tolist()):
            win = box_window(box, *gray.shape)
            x0, y0, x1, y1 = win
            truth = free[y0:y1, x0:x1]
            d = float(equivalent_diameter(target["masks"][k].as_subclass(torch.Tensor).bool())) * float(target["pixel_spacing_mm"][0])
            rows.append({"diameter_mm": d, "coons": float((coons_background(gray, win) - truth).abs().mean()),
                         "texture_box": float((texture_background(gray, win, model) - truth).abs().mean())})
    out = {}
    for lo_mm, hi_mm in BINS_MM + ((6.0, 1e9),):
        sel = [r for r in rows if lo_mm <= r["diameter_mm"] < hi_mm]
        if sel:
            out[f"{lo_mm:g}-{hi_mm:g}" if hi_mm < 1e9 else f">={lo_mm:g}"] = {
                "nodules": len(sel), "coons_median_mae": round(statistics.median(r["coons"] for r in sel), 4),
                "texture_box_median_mae": round(statistics.median(r["texture_box"] for r in sel), 4)}
    return out


def summarise(rows: list[dict]) -> list[dict]:
    table = []
    for lo, hi in BINS_MM + ((6.0, 1e9),):
        sel = [r for r in rows if lo <= r["diameter_mm"] < hi]
        if not sel:
            continue
        med = lambda key: round(statistics.median(r[key] for r in sel), 4)  # noqa: E731
        table.append({
            "bin_mm": f"{lo:g}-{hi:g}" if hi < 1e9 else f">={lo:g}", "nodules": len(sel), "median_dice": med("dice"),
            "q1_dice": round(statistics.quantiles([r["dice"] for r in sel], n=4)[0], 4) if len(sel) > 1 else sel[0]["dice"],
            "median_abs_diameter_error": round(statistics.median(abs(r["diameter_rel_error"]) for r in sel), 4),
            "median_diameter_error": med("diameter_rel_error"), "fallbacks": sum(r["fallback"] for r in sel),
            "median_ellipse_dice": med("ellipse_dice"), "median_background_mae": med("background_mae"),
            "median_true_residual_peak": med("true_residual_peak"),
        })
    return table


def markdown(table: list[dict]) -> str:
    head = ["prior", "size (mm)", "nodules", "median Dice", "Dice Q1", "median abs d error", "median d error", "fallbacks", "ellipse-only Dice", "background MAE", "true residual peak"]
    keys = ["prior", "bin_mm", "nodules", "median_dice", "q1_dice", "median_abs_diameter_error", "median_diameter_error", "fallbacks", "median_ellipse_dice", "median_background_mae", "median_true_residual_peak"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(t[k]) for k in keys) + " |" for t in table]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="a cxr-nodule-aug sim export (with pairs/)")
    parser.add_argument("--out", type=Path, required=True, help="output stem: OUT.json, OUT.csv, OUT.md")
    parser.add_argument("--limit", type=int, default=None, help="first N nodule images only")
    parser.add_argument("--level", type=float, default=0.2)
    parser.add_argument("--smooth", type=float, default=0.05)
    parser.add_argument("--priors", default="0,0.5,0.7,1", help="ellipse-prior weights to measure (the library default is 0.5)")
    parser.add_argument("--rg1-figure", type=Path, default=None, help="also draw the extraction on RG1_UNCR's masses into this PNG")
    parser.add_argument("--compare-backgrounds", action="store_true", help="also measure the texture inpainter (box mode) as the background estimate")
    args = parser.parse_args()
    backgrounds = compare_backgrounds(args.data, args.limit) if args.compare_backgrounds else None
    if backgrounds is not None:
        print(json.dumps(backgrounds, indent=1))
    if args.rg1_figure is not None:
        print(json.dumps(rg1_figure(args.rg1_figure), indent=1))
    t0 = time.perf_counter()
    rows, tables = [], []
    for prior in (float(p) for p in args.priors.split(",")):
        these = measure(args.data, args.limit, level=args.level, smooth=args.smooth, prior=prior)
        rows += [{"prior": prior, **r} for r in these]
        tables += [{"prior": prior, **t} for t in summarise(these)]
    seconds = time.perf_counter() - t0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out.with_suffix(".csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    summary = {"data": str(args.data), "nodules": len(rows) // len(args.priors.split(",")), "level": args.level, "smooth": args.smooth,
               "seconds": round(seconds, 1), "command": " ".join(["python", *sys.argv]), "by_prior_and_size": tables,
               "background_estimators": backgrounds}
    args.out.with_suffix(".json").write_text(json.dumps(summary, indent=1) + "\n")
    text = markdown(tables)
    if backgrounds is not None:
        text += "\nBackground estimate, median MAE in the box against the nodule-free render (working units):\n\n"
        text += "| size (mm) | nodules | Coons patch (used) | texture inpainter, box hole |\n|---|---|---|---|\n"
        text += "".join(f"| {k} | {v['nodules']} | {v['coons_median_mae']} | {v['texture_box_median_mae']} |\n" for k, v in backgrounds.items())
    args.out.with_suffix(".md").write_text(text)
    print(markdown(tables))
    print(f"{summary['nodules']} nodules, {len(tables)} rows in {seconds:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
