"""Shape GAN check: geometry of generated vs real (normalised) nodule masks.

    python benchmarks/shape_stats.py --model weights/shape --data data/simcxr_train/masks \
        --pattern '*_nodules.png' --n 1000 --out benchmarks/results/shape_stats.json

Both sets are measured with scikit-image regionprops after the same normalisation (size
modulation to the training diameter, resize to the model's image size): solidity, eccentricity,
circularity 4*pi*area/perimeter^2, and the number of connected components. Reported: mean, std
and the 1-D Wasserstein distance between real and generated for each, plus the same distance
between two halves of the real set (the noise floor). Diversity: mean pairwise IoU of
generated masks against the same of real masks (lower = more diverse).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from scipy.stats import wasserstein_distance
from skimage.measure import label, regionprops

from cxr_nodule_aug import ShapeGenerator
from cxr_nodule_aug.train.shape import MaskFolder


def measure(masks: np.ndarray) -> dict[str, np.ndarray]:
    rows = {"solidity": [], "eccentricity": [], "circularity": [], "components": []}
    for m in masks:
        lab = label(m)
        rows["components"].append(lab.max())
        p = max(regionprops(lab), key=lambda r: r.area)
        rows["solidity"].append(p.solidity)
        rows["eccentricity"].append(p.eccentricity)
        rows["circularity"].append(4 * np.pi * p.area / max(p.perimeter, 1) ** 2)
    return {k: np.asarray(v, dtype=float) for k, v in rows.items()}


def mean_pairwise_iou(masks: np.ndarray, n: int = 200, seed: int = 0) -> float:
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(masks), size=(n, 2))
    ious = []
    for a, b in idx:
        if a == b:
            continue
        inter = np.logical_and(masks[a], masks[b]).sum()
        union = np.logical_or(masks[a], masks[b]).sum()
        ious.append(inter / max(union, 1))
    return float(np.mean(ious))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--pattern", default="*.png")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    g = ShapeGenerator.from_pretrained(args.model)
    real = MaskFolder(args.data, g.image_size, pattern=args.pattern, augment=False).masks[:, 0].numpy().astype(bool)
    fake = g.generate(list(range(args.n))).numpy()
    mr, mf = measure(real), measure(fake)
    half = len(real) // 2
    out = {"real_masks": len(real), "generated_masks": len(fake), "command": " ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])])}
    for k in mr:
        out[k] = {
            "real_mean": float(mr[k].mean()), "real_std": float(mr[k].std()),
            "generated_mean": float(mf[k].mean()), "generated_std": float(mf[k].std()),
            "wasserstein_real_vs_generated": float(wasserstein_distance(mr[k], mf[k])),
            "wasserstein_real_half_vs_half": float(wasserstein_distance(mr[k][:half], mr[k][half:])),
        }
    out["mean_pairwise_iou"] = {"real": mean_pairwise_iou(real), "generated": mean_pairwise_iou(fake)}
    text = json.dumps(out, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
