"""Shape GAN check: geometry of generated vs real nodule silhouettes.

    # against LIDC-IDRI test-split coronal silhouettes (the reference), LIDC train as the floor
    python benchmarks/shape_stats.py --model shipped=weights/shape --model lidc=runs/lidc/shape/model \
        --data lidc:test --train-data lidc:train --n 1000 --out benchmarks/results/shape_stats.json
    # against a folder of masks (e.g. a SimCXR export's)
    python benchmarks/shape_stats.py --model weights/shape --data data/simcxr_train/masks --pattern '*_nodules.png'

Real and generated masks go through the same normalisation. A generated mask is a model-size
(e.g. 64 x 64) mask, so it is size-modulated to the training diameter and resized to the
model's image size (``train shape``'s normalisation) from that model-size mask. The reference
and training masks are first brought to the model's format (the masks the generator is trained
on: ``train shape``'s normalisation from the source silhouettes) and then take the very same
second step. Before this (``--reference-path direct``, the definition of the last session's
numbers) the reference was normalised once, from the high-resolution silhouettes, and the
generated masks twice: the second size modulation (a 4x upsampling with a one-source-pixel
blur, then a resize back) alone moves the LIDC training masks to a KS distance of 0.21
(circularity, roughness) from the test masks, so no 64 px model could get under that. Then scikit-image
regionprops of the largest component: solidity, eccentricity, circularity 4*pi*area/perimeter^2
and boundary roughness perimeter / convex-hull perimeter (1 = convex; higher = more lobulated
or spiculated), plus the number of connected components. Reported per statistic: means, stds,
the two-sample Kolmogorov-Smirnov distance real vs generated, and the same between the
training set and the reference (``--train-data``: the floor a model trained on it can reach).
Memorisation: for each generated mask and each reference mask, the IoU with its nearest
training mask (up to 8 rotations / flips); generated shapes far closer to training shapes than
the reference's are copies.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from scipy.stats import ks_2samp, wasserstein_distance
from skimage.measure import label, perimeter, regionprops

from cxr_nodule_aug import ShapeGenerator
from cxr_nodule_aug.train.shape import ShapeConfig, normalise_masks, open_shape_data

STATS = ("solidity", "eccentricity", "circularity", "roughness", "components")


def measure(masks: np.ndarray) -> dict[str, np.ndarray]:
    rows = {k: [] for k in STATS}
    for m in masks:
        lab = label(m)
        rows["components"].append(lab.max())
        p = max(regionprops(lab), key=lambda r: r.area)
        rows["solidity"].append(p.solidity)
        rows["eccentricity"].append(p.eccentricity)
        rows["circularity"].append(4 * np.pi * p.area / max(p.perimeter, 1) ** 2)
        rows["roughness"].append(p.perimeter / max(perimeter(p.image_convex), 1))
    return {k: np.asarray(v, dtype=float) for k, v in rows.items()}


def nearest_iou(queries: np.ndarray, bank: np.ndarray) -> np.ndarray:
    """For each query mask, the largest IoU with any bank mask under the 8 rotations / flips."""
    q = torch.from_numpy(queries.reshape(len(queries), -1)).float()
    best = torch.zeros(len(queries))
    for k in range(4):
        for flip in (False, True):
            b = torch.rot90(torch.from_numpy(bank), k, dims=(1, 2))
            b = b.flip(2) if flip else b
            bf = b.reshape(len(bank), -1).float()
            inter = q @ bf.T
            union = q.sum(1, keepdim=True) + bf.sum(1)[None] - inter
            best = torch.maximum(best, (inter / union.clamp(min=1)).max(1).values)
    return best.numpy()


REFERENCE_PATHS = ("model", "direct")


def as_generated(masks: torch.Tensor | np.ndarray, image_size: int, source: str) -> np.ndarray:
    """Model-size masks (N, S, S) -> the normalisation every generated mask gets before it is
    measured (size modulation to the training diameter, resize to ``image_size``)."""
    norm = ShapeConfig()
    masks = torch.as_tensor(masks)
    return normalise_masks(((f"{source}[{i}]", m) for i, m in enumerate(masks)), image_size, norm.norm_diameter_px,
                           norm.norm_canvas, source)[:, 0].numpy().astype(bool)


def load_masks(data: str, image_size: int, pattern: str, limit: int | None = None, reference_path: str = "model") -> np.ndarray:
    """Masks of ``data`` as they are compared with generated ones (see the module docstring):
    ``reference_path="model"``: in the model's training format, then :func:`as_generated`;
    ``"direct"``: the training format only (the old, asymmetric comparison)."""
    if reference_path not in REFERENCE_PATHS:
        raise ValueError(f"reference_path={reference_path!r}: expected one of {REFERENCE_PATHS}")
    cfg = ShapeConfig(data=data, image_size=image_size, pattern=pattern, augment=False)
    masks = open_shape_data(cfg, augment=False).masks[:, 0].numpy().astype(bool)
    masks = masks[:limit] if limit else masks
    return as_generated(masks, image_size, data) if reference_path == "model" else masks


def compare(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    return {k: {"ks": float(ks_2samp(a[k], b[k]).statistic), "wasserstein": float(wasserstein_distance(a[k], b[k]))}
            for k in STATS}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", action="append", required=True, help="NAME=DIR or DIR (repeatable)")
    ap.add_argument("--data", required=True, help="reference masks: a folder, or lidc:SPLIT")
    ap.add_argument("--train-data", default=None, help="training masks (floor and memorisation), e.g. lidc:train")
    ap.add_argument("--pattern", default="*.png")
    ap.add_argument("--n", type=int, default=1000, help="generated masks per model")
    ap.add_argument("--reference-path", choices=REFERENCE_PATHS, default="model",
                    help="model (default): reference and training masks take the generated masks' normalisation "
                         "from the model's format; direct: the old asymmetric comparison")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    models = dict(m.split("=", 1) if "=" in m else (m, m) for m in args.model)
    gens = {name: ShapeGenerator.from_pretrained(path).eval() for name, path in models.items()}
    sizes = {g.image_size for g in gens.values()}
    if len(sizes) != 1:
        raise SystemExit(f"--model: the models have different image sizes {sorted(sizes)}; compare one size at a time")
    size = sizes.pop()
    real = load_masks(args.data, size, args.pattern, reference_path=args.reference_path)
    mr = measure(real)
    out: dict = {"command": " ".join(["python benchmarks/shape_stats.py", *(argv if argv is not None else sys.argv[1:])]),
                 "reference": args.data, "reference_masks": len(real), "image_size": size,
                 "reference_path": args.reference_path,
                 "reference_stats": {k: {"mean": float(v.mean()), "std": float(v.std())} for k, v in mr.items()}}
    train = None
    if args.train_data:
        train = load_masks(args.train_data, size, args.pattern, reference_path=args.reference_path)
        mt = measure(train)
        out["train_data"], out["train_masks"] = args.train_data, len(train)
        out["floor_train_vs_reference"] = compare(mt, mr)
        ref_nn = nearest_iou(real, train)
        out["memorisation"] = {"reference_nearest_train_iou_mean": float(ref_nn.mean()),
                               "reference_nearest_train_iou_p95": float(np.percentile(ref_nn, 95))}
    out["models"] = {}
    for name, g in gens.items():
        with torch.no_grad():
            raw = g.generate(list(range(args.n))).cpu()
        fake = as_generated(raw, size, f"model {name}")
        mf = measure(fake)
        row = {"path": models[name], "generated_masks": len(fake),
               "stats": {k: {"mean": float(v.mean()), "std": float(v.std())} for k, v in mf.items()},
               "vs_reference": compare(mf, mr)}
        row["worst_ks"] = max(row["vs_reference"][k]["ks"] for k in ("solidity", "eccentricity", "circularity", "roughness"))
        if train is not None:
            nn = nearest_iou(fake, train)
            row["memorisation"] = {"generated_nearest_train_iou_mean": float(nn.mean()),
                                   "generated_nearest_train_iou_p95": float(np.percentile(nn, 95))}
        out["models"][name] = row
    text = json.dumps(out, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
