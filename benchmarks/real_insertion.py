"""How inserted nodules sit in a *real* radiograph, where no ground truth exists.

Inserts ``--nodules`` nodules one at a time (random place inside the lung model's field,
diameters uniform in ``--diameters-px``, seeds 0..n-1, the same for every row) into the real
``pydicom-data`` radiograph and measures, in the image's working window:

* ``contrast``: mean inside the nodule minus mean of the ring around it (width d/2). A nodule
  attenuates, so it should be >= 0; ``inverted_fraction`` is the share of nodules below 0.
* ``dark_artefact_fraction``: share of nodule pixels darker than the ring's 2nd percentile
  (values the surroundings do not have: the dark crescents of a badly adapted model).
* ``seam_ratio``: mean gradient magnitude on the nodule's one-pixel boundary over the mean in the
  ring (1 = no visible edge; a hard seam raises it).
* ``texture_ratio``: std of the high-pass (image minus a sigma-2 blur) inside over the ring's
  (1 = as textured as the surrounding lung; a flat disc is near 0), 3 px inside the edge.

    python benchmarks/real_insertion.py --weights "shipped=weights" --weights "v2=/path/w" --out benchmarks/results/real_insertion.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from cxr_nodule_aug import NoduleInpaint
from cxr_nodule_aug.functional.intensity import to_working
from cxr_nodule_aug.cli.demo import real_radiograph


def measure(gray_before: np.ndarray, gray_after: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    d = 2 * np.sqrt(mask.sum() / np.pi)
    ring = ndimage.binary_dilation(mask, iterations=max(int(d / 2), 2)) & ~mask
    inside = gray_after[mask]
    around = gray_after[ring]
    gy, gx = np.gradient(gray_after)
    grad = np.hypot(gx, gy)
    edge = mask & ~ndimage.binary_erosion(mask)
    hp = gray_after - ndimage.gaussian_filter(gray_after, 2.0)
    core = ndimage.binary_erosion(mask, iterations=3)  # away from the nodule's own edge
    core = core if core.sum() >= 9 else mask
    return {
        "diameter_px": float(d),
        "contrast": float(inside.mean() - around.mean()),
        "dark_artefact_fraction": float((inside < np.percentile(around, 2)).mean()),
        "seam_ratio": float(grad[edge].mean() / max(grad[ring].mean(), 1e-6)),
        "texture_ratio": float(hp[core].std() / max(hp[ring].std(), 1e-6)),
    }


def run_row(weights: str, image, target, n: int, diameters: tuple[float, float], composition: str | None = None) -> dict:
    tf = NoduleInpaint(diameters=diameters, unit="px", p=1.0, num_nodules=1, weights=weights, composition=composition)
    rng = torch.Generator().manual_seed(0)
    base = to_working(image.as_subclass(torch.Tensor))
    lo, hi = base[1], base[2]
    rows = []
    for i in range(n):
        tf_gen = torch.Generator().manual_seed(int(torch.randint(0, 2**31, (1,), generator=rng)))
        tf.generator = tf_gen
        out, tgt = tf(image, dict(target))
        mask = tgt["masks"][-1].numpy() if "masks" in tgt else None
        if mask is None:
            raise RuntimeError("NoduleInpaint did not return masks")
        before = ((image.as_subclass(torch.Tensor).float().mean(0) - lo) / (hi - lo)).numpy()
        after = ((out.as_subclass(torch.Tensor).float().mean(0) - lo) / (hi - lo)).numpy()
        rows.append(measure(before, after, mask))
    summary = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
    summary["inverted_fraction"] = float(np.mean([r["contrast"] < 0 for r in rows]))
    return {"weights": weights, "composition": tf.synthesizer.composition, "nodules": n, "mean": summary, "per_nodule": rows}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", action="append", required=True, metavar="LABEL=DIR", help="a row: label and weights directory (shape/, texture/, lung/)")
    p.add_argument("--nodules", type=int, default=60)
    p.add_argument("--diameters-px", type=float, nargs=2, default=(20.0, 100.0))
    p.add_argument("--compositions", nargs="+", default=[None], choices=["additive", "replace"],
                   help="one row per weights and composition (default: the weights' default composition)")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    radiograph = real_radiograph()
    image = radiograph.to_tensor()
    from torchvision import tv_tensors

    h, w = image.shape[-2:]
    target = {"boxes": tv_tensors.BoundingBoxes(torch.zeros(0, 4), format="XYXY", canvas_size=(h, w)), "labels": torch.zeros(0, dtype=torch.int64),
              "masks": tv_tensors.Mask(torch.zeros(0, h, w, dtype=torch.bool))}
    result = {"image": "pydicom-data RG1_UNCR.dcm", "command": " ".join(["python", "benchmarks/real_insertion.py", *sys.argv[1:]]) if argv is None else None, "rows": {}}
    for spec, composition in [(spec, c) for spec in args.weights for c in args.compositions]:
        label, _, path = spec.partition("=")
        label = label if composition is None else f"{label} {composition}"
        t0 = time.perf_counter()
        row = run_row(path, image, target, args.nodules, tuple(args.diameters_px), composition)
        row["seconds"] = round(time.perf_counter() - t0, 1)
        result["rows"][label] = row
        m = row["mean"]
        print(f"{label:>12}: contrast {m['contrast']:+.4f}  inverted {m['inverted_fraction']:.2f}  dark artefacts {m['dark_artefact_fraction']:.3f}  "
              f"seam ratio {m['seam_ratio']:.2f}  texture ratio {m['texture_ratio']:.2f}  ({row['seconds']} s)")
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
