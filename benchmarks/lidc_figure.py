"""Figure of LIDC-shaped nodules in a SimCXR export: crops around each inserted nodule, the
difference to its nodule-free pair (the nodule's own projection), and the LIDC nodule's
coronal silhouette, all at the same scale in mm.

    python benchmarks/lidc_figure.py --export /work/runs/lidc/fig_export --out docs/simcxr_lidc.png

Renders the export first (resumes it when it exists: ``cxr-nodule-aug sim --nodule N --size 512
--seed S --lidc-split train --diameter-mm 10 30``), so the figure is reproducible from the seed.
Real sizes of 10-30 mm: most LIDC nodules are 4-9 mm, too small to see in a figure this size.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--export", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=Path("docs/simcxr_lidc.png"))
    ap.add_argument("--images", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--crop-mm", type=float, default=40.0)
    ap.add_argument("--diameter-mm", type=float, nargs=2, default=(10.0, 30.0))
    ap.add_argument("--columns", type=int, default=8)
    args = ap.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    from cxr_nodule_aug.lidc import LIDCDatabase
    from cxr_nodule_aug.sim.export import export

    export(args.export, normal=0, nodule=args.images, seed=args.seed, size=args.size, progress=False,
           config_overrides={"nodule_source": "lidc", "lidc_split": "train",
                             "nodule_diameter_mm": list(args.diameter_mm)})
    db = LIDCDatabase()
    items = []
    for rec_path in sorted((args.export / "records").glob("*.json")):
        rec = json.loads(rec_path.read_text())
        img = np.array(Image.open(args.export / "images" / rec["img_name"])).astype(np.float32) / 65535
        pair = np.array(Image.open(args.export / "pairs" / rec["img_name"])).astype(np.float32) / 65535
        du = rec["pixel_spacing_mm"][0]
        for nd in rec["nodules"]:
            items.append((img, pair, du, nd))
    items = items[: args.columns]
    fig, axes = plt.subplots(3, len(items), figsize=(1.9 * len(items), 6.2))
    for c, (img, pair, du, nd) in enumerate(items):
        half = int(round(args.crop_mm / du / 2))
        cx, cy = (int(round(v)) for v in nd["center_px"])
        y0, x0 = max(cy - half, 0), max(cx - half, 0)
        crop = img[y0:cy + half, x0:cx + half]
        lo, hi = np.percentile(crop, [1, 99])
        axes[0, c].imshow(crop, cmap="gray", vmin=lo, vmax=hi)
        diff = crop - pair[y0:cy + half, x0:cx + half]
        axes[1, c].imshow(diff, cmap="gray", vmin=0, vmax=max(float(diff.max()), 1e-6))
        p = nd["params"]
        nod = db.nodule(p["lidc_id"])
        sil = nod.silhouette(spacing_mm=0.25)
        canvas = np.zeros((int(args.crop_mm / 0.25),) * 2, bool)
        h, w = min(sil.shape[0], canvas.shape[0]), min(sil.shape[1], canvas.shape[1])
        oy, ox = (canvas.shape[0] - h) // 2, (canvas.shape[1] - w) // 2
        canvas[oy:oy + h, ox:ox + w] = sil[:h, :w]
        axes[2, c].imshow(canvas, cmap="gray")
        r = p["lidc_ratings"]
        axes[0, c].set_title(f"{p['lidc_id'].split('/')[0][-4:]}/{p['lidc_id'].split('/')[-1]}\n"
                             f"{p['diameter_mm']:.1f} mm, {p['density'].replace('_', '-')}"
                             + (f", calc. {p['calcification']}" if p["calcification"] != "none" else ""),
                             fontsize=7)
        axes[2, c].set_xlabel(f"texture {r['texture']:g}, spic. {r['spiculation']:g}", fontsize=7)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0, 0].set_ylabel("SimCXR", fontsize=8)
    axes[1, 0].set_ylabel("minus nodule-free pair", fontsize=8)
    axes[2, 0].set_ylabel("LIDC silhouette", fontsize=8)
    fig.suptitle(f"Real LIDC-IDRI nodule shapes in SimCXR ({args.crop_mm:g} mm crops; export seed {args.seed})", fontsize=9)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out} ({len(items)} nodules from {args.export})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
