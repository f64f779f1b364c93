"""Realism of synthesised nodules: additive layer vs replace (inpainting) vs paste-and-blend (issue 13).

On a held-out SimCXR export every nodule has a physically inserted (CT-to-CXR projection)
version, the *reference*, and the nodule-free render at the same pose. Each method inserts a
nodule with the reference's mask into the nodule-free image, exactly as the engine does
(``cut_patch`` -> model -> :func:`~cxr_nodule_aug.functional.composition.nodule_change`), in
the working grey level of the nodule-free image:

* ``additive``: :class:`~cxr_nodule_aug.models.layer.LayerGenerator` (context intact, mask,
  the nodule's own density class), output = context + layer;
* ``replace``: the shipped texture inpainter (the paper): the hole is filled;
* ``paste_blend``: NODE21-style seamless paste of a *training* nodule's residual, contrast
  matched (strength calibrated on the training pairs);
* ``partial_conv``: the Syn&Select partial-conv U-Net, when ``--partial-conv DIR`` is given.

Measured:

1. paired (same pose, same mask), on crops around each nodule (side 1.5 x the nodule, at least
   32 px, resampled to ``--crop`` px): masked-region (the nodule's box) and full-crop
   MAE / PSNR / SSIM (:mod:`cxr_nodule_aug.eval.quality`, torchmetrics), and the Fréchet
   distance of each method's crops to the reference crops on EfficientNet-Lite0 features
   (:func:`cxr_nodule_aug.eval.quality.fid`, labelled :data:`~cxr_nodule_aug.eval.quality.FID_LABEL`:
   *not* Inception FID; crops clamped to the working window 0..1, resized to 224 px);
2. a classifier two-sample test: the test images are split at random into two halves; crops of
   the reference nodules of one half (class 0) against crops of a method's nodules inserted
   into the other half's nodule-free images (class 1), so no image gives both classes; a small
   CNN, 5-fold cross-validation grouped by image; accuracy mean +- std over folds
   (0.5 = indistinguishable);
3. on the real radiograph (pydicom-data ``RG1_UNCR.dcm``, resized to 1024 px): nodules of
   40-100 px at the same places for every method (lung model, shape model); the fine detail
   kept behind the nodule (Pearson correlation of the high-pass detail, image minus a sigma-2
   blur, before vs after, inside the mask eroded by 3 px), the share of nodules that add
   brightness, and the edge profile (mean change by distance from the mask's edge);
4. density control: the additive model's mean layer inside the mask, per density condition,
   on every benchmark nodule (and the SimCXR reference layer per true class);
5. a figure: the same nodules under every method.

    cxr-nodule-aug sim --nodule 1200 --seed 11 --lidc-split train --size 512 --workers 1 --out data/lidc_train512
    cxr-nodule-aug sim --nodule 200 --seed 12 --lidc-split test --size 512 --workers 1 --out data/lidc_test512
    # paste-and-blend's residual bank: the layer trainer's cut of the *training* export
    python -c "import torch; from cxr_nodule_aug.train.layer import load_layer_pairs as f; \\
        torch.save(f('data/lidc_train512', 32, 0.5, jitter=0.125, seed=0), 'data/lidc_train512_layer_pairs32.pt')"
    # the Syn&Select row: a PartialConvUNet trained on the training export (none is shipped)
    cxr-nodule-aug train texture --config texture-cpu data=data/lidc_train512 out=runs/pconv_lidc steps=5000 \\
        generator=partial_conv num_stages=1 base_width=32
    python benchmarks/realism.py --data data/lidc_test512 --train-pairs data/lidc_train512_layer_pairs32.pt \\
        --additive weights/layer --replace weights/texture --partial-conv runs/pconv_lidc/model

writes ``benchmarks/results/realism.json``, ``realism.md`` and ``realism.png``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from cxr_nodule_aug.baselines import PasteBlendInpainter, contrast_ratio
from cxr_nodule_aug.eval.quality import FID_LABEL, Lite0PooledFeatures, fid, quality_metrics, summarize
from cxr_nodule_aug.functional.insertion import cut_nodules, insert_nodules, nodule_footprints, place_nodules, region_side
from cxr_nodule_aug.functional.intensity import to_working
from cxr_nodule_aug.functional.size import equivalent_diameter
from cxr_nodule_aug.hub import CONFIG_NAME, load_model, read_config
from cxr_nodule_aug.models.layer import DENSITY_CLASSES, density_of_sim_nodule
from cxr_nodule_aug.records import NoduleRecord
from cxr_nodule_aug.synthesizer import composition_function

RESULTS = Path(__file__).resolve().parent / "results"
LABELS = {"additive": "Additive layer (ours, issue 13)", "replace": "Replace: texture inpainter (the paper)",
          "paste_blend": "Paste-and-blend (NODE21-style)", "partial_conv": "Partial-conv U-Net (Syn&Select)"}


# -- one nodule, one method ------------------------------------------------------------------------
def method_change(model: torch.nn.Module, composition: str, gray: torch.Tensor, mask: torch.Tensor, density: str) -> torch.Tensor:
    """(H, W) working-space change ``model`` makes when it inserts the nodule ``mask`` (H, W)
    into ``gray`` with the engine's ``composition`` mode: the engine's cut
    (:func:`cut_nodules`) and composition function, pasted (contrast 1) as
    :func:`paste_nodules` pastes, but kept in the working domain."""
    ys, xs = torch.nonzero(mask, as_tuple=True)
    y0, x0 = int(ys.min()), int(xs.min())
    h, w = int(ys.max()) + 1 - y0, int(xs.max()) + 1 - x0
    d = float(equivalent_diameter(mask))
    R = region_side(max(d, h, w), model.patch_size, model.max_fill)
    fp = torch.zeros(R, R, dtype=torch.bool)
    top, left = (R - h) // 2, (R - w) // 2
    fp[top : top + h, left : left + w] = mask[y0 : y0 + h, x0 : x0 + w]
    centre = (x0 + w // 2, y0 + h // 2)
    cut = cut_nodules(gray[None], [centre], [fp], model.patch_size, model.mask_type, working=(gray, 0.0, 1.0))
    record = NoduleRecord(center_xy=centre, diameter_px=d, seed=0, density=density if composition == "additive" else None)
    ((change,),) = composition_function(composition)(model, [cut], [[record]])
    change = change * cut.footprints[0]
    out = torch.zeros_like(gray)
    oy, ox = cut.origins_yx[0]
    out[y0:y0 + h, x0:x0 + w] = change[y0 - oy : y0 - oy + h, x0 - ox : x0 - ox + w]
    return out


def mode_of(name: str) -> str:
    """The engine's composition mode of a benchmark row."""
    return "additive" if name == "additive" else "replace"


def crop(img: torch.Tensor, cy: int, cx: int, side: int, size: int, mode: str = "bilinear") -> torch.Tensor:
    """(size, size) crop of ``img`` (H, W) centred at (cy, cx), border pixels repeated."""
    H, W = img.shape
    rows = torch.arange(cy - side // 2, cy - side // 2 + side).clamp(0, H - 1)
    cols = torch.arange(cx - side // 2, cx - side // 2 + side).clamp(0, W - 1)
    c = img[rows][:, cols].float()[None, None]
    if side != size:
        c = F.interpolate(c, size=(size, size), mode=mode, **({"align_corners": False, "antialias": True} if mode == "bilinear" else {}))
    return c[0, 0]


def fid_to_reference(crops: dict, names: list[str], features: torch.nn.Module | None = None) -> dict[str, float]:
    """Per method: the Fréchet distance (:func:`~cxr_nodule_aug.eval.quality.fid`) of its crops
    ``crops[f"m_{name}"]`` to ``crops["reference"]`` on ``features`` (default: EfficientNet-Lite0
    pooled features, reported as :data:`~cxr_nodule_aug.eval.quality.FID_LABEL`); every method
    against the same reference set at the same N, so the rows compare."""
    features = Lite0PooledFeatures() if features is None else features
    return {n: fid(crops["reference"], crops[f"m_{n}"], features=features) for n in names}


def dilate(mask: torch.Tensor, px: int) -> torch.Tensor:
    return F.max_pool2d(mask.float()[None, None], 2 * px + 1, stride=1, padding=px)[0, 0] > 0


def collect(data: Path, models: dict[str, torch.nn.Module], crop_px: int, limit: int | None, additive: torch.nn.Module | None) -> dict:
    """``models``: name -> model; the name ``"additive"`` is composed additively, every other
    (an inpainter) by replacement."""
    """Per nodule of the export: reference / nodule-free / per-method crops, mask crop,
    density, image index; and the additive model's mean layer per density condition."""
    from cxr_nodule_aug.datasets import SimCXRDataset

    ds = SimCXRDataset(data, subset="nodule", return_pair=True)
    n_img = len(ds) if limit is None else min(limit, len(ds))
    out: dict[str, list] = {"reference": [], "free": [], "mask": [], "density": [], "image": [], "diameter_px": [],
                            "true_layer_mean": [], "layer_by_condition": [], **{f"m_{k}": [] for k in models}}
    for i in range(n_img):
        image, target = ds[i]
        free = target["image_nodule_free"].as_subclass(torch.Tensor)
        gray_free, lo, hi = to_working(free)
        gray_nod = (image.as_subclass(torch.Tensor)[0].float() - lo) / (hi - lo)
        masks = target["masks"].as_subclass(torch.Tensor).bool()
        for k, (m, nd) in enumerate(zip(masks, target["sim_nodules"])):
            if not m.any():
                continue
            others = torch.zeros_like(m)
            for j, mj in enumerate(masks):
                if j != k:
                    others |= dilate(mj, 3)
            near = dilate(m, 3) & ~others
            # The reference: this nodule alone, as the CT-to-CXR projection put it (its blur
            # and processing halo included), on the nodule-free image.
            ref = gray_free + (gray_nod - gray_free) * near
            ys, xs = torch.nonzero(m, as_tuple=True)
            cy, cx = (int(ys.min()) + int(ys.max())) // 2, (int(xs.min()) + int(xs.max())) // 2
            size = max(int(ys.max() - ys.min()), int(xs.max() - xs.min())) + 1
            side = 4 * math.ceil(max(32, 1.5 * size) / 4)
            density = density_of_sim_nodule(nd["params"])
            out["reference"].append(crop(ref, cy, cx, side, crop_px))
            out["free"].append(crop(gray_free, cy, cx, side, crop_px))
            out["mask"].append(crop(m.float(), cy, cx, side, crop_px) > 0.5)
            for name, model in models.items():
                out[f"m_{name}"].append(crop(gray_free + method_change(model, mode_of(name), gray_free, m, density), cy, cx, side, crop_px))
            out["density"].append(DENSITY_CLASSES.index(density))
            out["image"].append(i)
            out["diameter_px"].append(float(equivalent_diameter(m)))
            out["true_layer_mean"].append(float((gray_nod - gray_free)[m].mean()))
            if additive is not None:
                out["layer_by_condition"].append([float(method_change(additive, "additive", gray_free, m, c)[m].mean()) for c in DENSITY_CLASSES])
        print(f"\r  {i + 1}/{n_img} images, {len(out['image'])} nodules", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    res = {k: (torch.stack(v)[:, None] if k in ("reference", "free", "mask") or k.startswith("m_") else torch.tensor(v)) for k, v in out.items() if v}
    return res


# -- two-sample test ----------------------------------------------------------------------------------
class SmallCNN(torch.nn.Module):
    """Four conv blocks (conv, batch norm, ReLU, max-pool), global average pool, linear: a
    two-sample critic with ~25 k parameters."""

    def __init__(self, in_channels: int = 2, width: int = 16) -> None:
        super().__init__()
        layers, c = [], in_channels
        for w in (width, 2 * width, 2 * width, 4 * width):
            layers += [torch.nn.Conv2d(c, w, 3, padding=1), torch.nn.BatchNorm2d(w), torch.nn.ReLU(), torch.nn.MaxPool2d(2)]
            c = w
        self.net = torch.nn.Sequential(*layers, torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(c, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)[:, 0]


def _features(x: torch.Tensor) -> torch.Tensor:
    """(B, 2, S, S): each crop minus its mean (the surroundings' grey level differs between
    images and says nothing about the nodule) and its fine detail (crop minus a 5 x 5 box blur),
    where texture that was erased or invented shows."""
    x = x.float()
    x = x - x.mean((1, 2, 3), keepdim=True)
    blur = F.avg_pool2d(F.pad(x, (2, 2, 2, 2), mode="replicate"), 5, stride=1)
    return torch.cat([x, x - blur], 1)


def two_sample_test(real: torch.Tensor, fake: torch.Tensor, groups_real: np.ndarray, groups_fake: np.ndarray, *, folds: int = 5, epochs: int = 25,
                    seed: int = 0, critic_px: int = 32, width: int = 12) -> dict:
    """Balanced accuracy of a small CNN telling ``real`` (class 0) from ``fake`` (class 1)
    crops, ``folds``-fold cross-validated with every image's crops in one fold. The critic sees
    the crops area-resampled to ``critic_px`` (most crops are 32 px around the nodule anyway:
    the median nodule is ~12 px)."""
    from sklearn.model_selection import StratifiedGroupKFold

    both = torch.cat([real, fake]).float()
    if both.shape[-1] != critic_px:
        both = F.interpolate(both, size=(critic_px, critic_px), mode="area")
    x = _features(both)
    y = torch.cat([torch.zeros(len(real)), torch.ones(len(fake))])
    groups = np.concatenate([groups_real, groups_fake])
    accs = []
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    for f, (tr, te) in enumerate(splitter.split(np.zeros(len(y)), y.numpy(), groups)):
        g = torch.Generator().manual_seed(seed * 100 + f)
        torch.manual_seed(seed * 100 + f)
        net = SmallCNN(x.shape[1], width)
        opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e-4)
        xtr, ytr = x[tr], y[tr]
        scale = xtr.std((0, 2, 3), keepdim=True).clamp_min(1e-8)  # per channel, training folds only
        pos = float(ytr.mean())
        weight = torch.tensor([(1 - pos) / max(pos, 1e-6)])  # balance the classes
        net.train()
        for _ in range(epochs):
            perm = torch.randperm(len(xtr), generator=g)
            for b in range(0, len(perm) - 1, 32):
                idx = perm[b : b + 32]
                xb = xtr[idx] / scale
                k = int(torch.randint(4, (1,), generator=g))  # the 8 flips/rotations of the square
                xb = torch.rot90(xb, k, (-2, -1))
                if torch.rand(1, generator=g) < 0.5:
                    xb = xb.flip(-1)
                loss = F.binary_cross_entropy_with_logits(net(xb), ytr[idx], pos_weight=weight)
                opt.zero_grad()
                loss.backward()
                opt.step()
        net.eval()
        with torch.no_grad():
            pred = (net(x[te] / scale) > 0).float()
        yt = y[te]
        # Balanced accuracy: the mean of the two classes' recalls (0.5 = chance whatever the mix).
        acc = 0.5 * (float((pred[yt == 0] == 0).float().mean()) + float((pred[yt == 1] == 1).float().mean()))
        accs.append(acc)
    return {"accuracy_mean": float(np.mean(accs)), "accuracy_std": float(np.std(accs)), "folds": accs, "n_real": len(real), "n_fake": len(fake),
            "metric": "balanced accuracy (mean of per-class recall)", "critic": f"SmallCNN(width {width}) on (crop - mean, crop - 5x5 box blur) at {critic_px} px, AdamW, {epochs} epochs, flips/rotations"}


# -- the real radiograph ---------------------------------------------------------------------------
def real_radiograph_1024() -> torch.Tensor:
    from cxr_nodule_aug.cli.demo import real_radiograph

    image = real_radiograph().to_tensor().as_subclass(torch.Tensor)
    h, w = image.shape[-2:]
    s = 1024 / max(h, w)
    out = F.interpolate(image.float()[None], size=(round(h * s), round(w * s)), mode="bilinear", align_corners=False, antialias=True)[0]
    if not image.is_floating_point():
        out = out.round().clamp(torch.iinfo(image.dtype).min, torch.iinfo(image.dtype).max)
    return out.to(image.dtype)


def kept_detail(models: dict[str, torch.nn.Module], weights: Path, n: int, diameters: tuple[float, float], seed: int) -> tuple[dict, dict]:
    from cxr_nodule_aug.models.lung import LungSegmenter
    from cxr_nodule_aug.models.shape import ShapeGenerator

    image = real_radiograph_1024()
    shape_model = ShapeGenerator.from_pretrained(weights / "shape")
    lung_model = LungSegmenter.from_pretrained(weights / "lung")
    gray, lo, hi = to_working(image)
    lung = lung_model.predict_mask(gray.clamp(0, 1)[None, None])[0]
    g = torch.Generator().manual_seed(seed)
    diam = (torch.rand(n, generator=g) * (diameters[1] - diameters[0]) + diameters[0]).tolist()
    seeds = torch.randint(0, 2**31, (n,), generator=g).tolist()
    ref_model = next(iter(models.values()))
    shapes = shape_model.generate(seeds)
    fps = nodule_footprints(shapes, diam, ref_model.patch_size, ref_model.max_fill)
    records = []
    for i, (fp, d, s) in enumerate(zip(fps, diam, seeds)):  # one at a time, each on the original
        (c,) = place_nodules(lung, [fp], None, generator=g)
        records.append(NoduleRecord(center_xy=c, diameter_px=round(d, 4), seed=s, density="solid"))
    before = gray.numpy()
    hp_before = before - ndimage.gaussian_filter(before, 2.0)
    rows, shots = {}, {}
    for name, model in models.items():
        per = []
        shots[name] = []
        for r in records:
            mode = mode_of(name)
            res = insert_nodules(image, [r.replace(density=r.density if mode == "additive" else None)], shape_model, model,
                                 composition=composition_function(mode))
            after = ((res.image.as_subclass(torch.Tensor)[0].float() - lo) / (hi - lo)).numpy()
            mask = res.masks[0].numpy()
            core = ndimage.binary_erosion(mask, iterations=3)
            hp_after = after - ndimage.gaussian_filter(after, 2.0)
            corr = float(np.corrcoef(hp_before[core], hp_after[core])[0, 1])
            change = after - before
            dist = ndimage.distance_transform_edt(mask)
            profile = {f"{a}-{b}px": float(change[(dist > a) & (dist <= b)].mean()) if ((dist > a) & (dist <= b)).any() else None
                       for a, b in ((0, 2), (2, 4), (4, 8), (8, 16), (16, 1e9))}
            per.append({"diameter_px": float(r.diameter_px), "detail_correlation": corr, "mean_change": float(change[mask].mean()), "edge_profile": profile})
            if len(shots[name]) < 4:
                y0, x0, y1, x1 = (int(v) for v in (res.records[0].box_xyxy[1], res.records[0].box_xyxy[0], res.records[0].box_xyxy[3], res.records[0].box_xyxy[2]))
                pad = (y1 - y0) // 2
                sl = (slice(max(0, y0 - pad), y1 + pad), slice(max(0, x0 - pad), x1 + pad))
                shots[name].append((before[sl], after[sl]))
        profile_mean = {k: float(np.mean([p["edge_profile"][k] for p in per if p["edge_profile"][k] is not None])) for k in per[0]["edge_profile"]}
        rows[name] = {"detail_correlation_mean": float(np.mean([p["detail_correlation"] for p in per])),
                      "detail_correlation_median": float(np.median([p["detail_correlation"] for p in per])),
                      "adds_brightness_share": float(np.mean([p["mean_change"] > 0 for p in per])),
                      "mean_change": float(np.mean([p["mean_change"] for p in per])),
                      "edge_profile_mean_change": profile_mean, "per_nodule": per}
    return rows, shots


# -- figure --------------------------------------------------------------------------------------------
def figure(crops: dict, names: list[str], shots: dict, path: Path, per_class: int = 2) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pick = []
    for c in range(len(DENSITY_CLASSES)):
        idx = torch.nonzero(crops["density"] == c).flatten()
        if len(idx):  # the largest nodules of each class: visible at this size
            order = crops["diameter_px"][idx].argsort(descending=True)
            pick += idx[order[:per_class]].tolist()
    rows = [("nodule-free", crops["free"]), ("reference (CT-to-CXR)", crops["reference"])] + [(LABELS[n].split(" (")[0].split(":")[0], crops[f"m_{n}"]) for n in names]
    n_real = max((len(v) for v in shots.values()), default=0)
    fig, axes = plt.subplots(len(rows) + (2 if n_real else 0), max(len(pick), 2 * n_real, 1), figsize=(1.4 * max(len(pick), 2 * n_real), 1.5 * (len(rows) + 2)), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for r, (label, x) in enumerate(rows):
        for c, i in enumerate(pick):
            ref = crops["reference"][i, 0]
            vmin, vmax = float(ref.min()), float(ref.max())
            axes[r, c].imshow(x[i, 0].numpy(), cmap="gray", vmin=vmin, vmax=vmax)
            if r == 0:
                axes[r, c].set_title(DENSITY_CLASSES[int(crops["density"][i])], fontsize=7)
        axes[r, 0].text(-0.1, 0.5, label, transform=axes[r, 0].transAxes, ha="right", va="center", fontsize=7)
    if n_real:
        for r, name in enumerate(("additive", "replace")):
            if name not in shots:
                continue
            for c, (b, a) in enumerate(shots[name]):
                lo, hi = float(np.percentile(b, 1)), float(np.percentile(b, 99.5))
                axes[len(rows) + r, 2 * c].imshow(b, cmap="gray", vmin=lo, vmax=hi)
                axes[len(rows) + r, 2 * c + 1].imshow(a, cmap="gray", vmin=lo, vmax=hi)
            axes[len(rows) + r, 0].text(-0.1, 0.5, f"RG1_UNCR before/after:\n{name}", transform=axes[len(rows) + r, 0].transAxes, ha="right", va="center", fontsize=7)
    fig.suptitle("Same nodules, every method (SimCXR test export; bottom: the real radiograph)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


# -- the --crops cache: what produced it ---------------------------------------------------------------
CROPS_FORMAT = "realism-crops/2"
PACKAGE = Path(__file__).resolve().parents[1] / "cxr_nodule_aug"


def _sha256_files(paths: list[Path], root: Path) -> str:
    """SHA-256 over the files' paths (relative to ``root``) and bytes, in sorted order."""
    h = hashlib.sha256()
    for f in sorted(paths):
        h.update(str(f.relative_to(root)).encode() + b"\0")
        h.update(f.read_bytes())
        h.update(b"\0")
    return h.hexdigest()


def path_hash(path: Path) -> str:
    """SHA-256 of a file, or of every file under a directory (a saved model: weights, config)."""
    path = Path(path)
    if path.is_dir():
        return _sha256_files([f for f in path.rglob("*") if f.is_file()], path)
    if path.is_file():
        return _sha256_files([path], path.parent)
    raise FileNotFoundError(f"{path} does not exist")


def data_hash(data: Path) -> str:
    """SHA-256 of a SimCXR export's ``manifest.json`` and of its file listing (relative path and
    size of every file): a different, regenerated-differently or still-growing export differs."""
    data = Path(data)
    manifest = data / "manifest.json"
    if not manifest.is_file():
        raise FileNotFoundError(f"--data {data}: no manifest.json (not a SimCXR export)")
    h = hashlib.sha256(manifest.read_bytes())
    for f in sorted(f for f in data.rglob("*") if f.is_file() and f != manifest):
        h.update(f"{f.relative_to(data)}\0{f.stat().st_size}\0".encode())
    return h.hexdigest()


def code_hash(package: Path = PACKAGE) -> str:
    """SHA-256 of the code the crops run through: this script and every module of the library."""
    files = [f for f in package.rglob("*.py") if "__pycache__" not in f.parts]
    return _sha256_files([*files, Path(__file__).resolve()], package.parent)


def crops_provenance(data: Path, model_paths: dict[str, Path], crop_px: int, limit: int | None) -> dict[str, str]:
    """What a crops cache depends on: the data, each method's weights (the paste-and-blend row:
    its training pairs), the code, and the collection settings; every value a string."""
    from cxr_nodule_aug import __version__

    prov = {"format": CROPS_FORMAT, "data": data_hash(data), "code": code_hash(), "library_version": __version__,
            "crop": str(crop_px), "limit_images": str(limit)}
    prov.update({f"model:{name}": path_hash(path) for name, path in sorted(model_paths.items())})
    return prov


def save_crops(path: Path, crops: dict, provenance: dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"format": CROPS_FORMAT, "provenance": provenance, "crops": crops}, tmp)
    tmp.replace(path)


def load_crops(path: Path, provenance: dict[str, str]) -> dict:
    """The crops cached at ``path`` if they were produced by exactly ``provenance``; otherwise a
    ``ValueError`` naming what differs (a stale cache would silently give wrong numbers)."""
    saved = torch.load(path, weights_only=True)
    if not isinstance(saved, dict) or saved.get("format") != CROPS_FORMAT or "provenance" not in saved:
        raise ValueError(f"--crops {path}: written without a record of what produced it (an older version of this script); "
                         "delete it or pass another path to recollect the crops")
    old = saved["provenance"]
    differ = sorted(k for k in set(old) | set(provenance) if old.get(k) != provenance.get(k))
    if differ:
        detail = "; ".join(f"{k}: cache {str(old.get(k))[:12]} vs now {str(provenance.get(k))[:12]}" for k in differ)
        raise ValueError(f"--crops {path} is stale: produced by different {', '.join(differ)} ({detail}); "
                         "delete it or pass another path to recollect the crops")
    return saved["crops"]


# -- main ------------------------------------------------------------------------------------------------
def model_metadata(path: Path) -> dict:
    """What a saved model's ``config.json`` says trained it (its ``metadata``: data, steps...);
    for a file (the paste-and-blend pairs) nothing but its path."""
    config = Path(path) / CONFIG_NAME
    if not config.is_file():
        return {}
    saved = read_config(config)
    meta = saved.get("metadata", {})
    return {"model_type": saved.get("model_type"), **{k: meta[k] for k in ("data", "trained_steps", "train_pairs") if k in meta}}


def paste_blend_model(train_pairs: Path) -> tuple[torch.nn.Module, float]:
    pairs = torch.load(train_pairs, weights_only=True)
    strength = contrast_ratio(pairs["nodule"].float(), pairs["context"].float(), pairs["mask"].float())
    return PasteBlendInpainter(pairs["layer"].float(), pairs["mask"].float(), patch_size=64, max_fill=0.5, strength=strength), strength


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, required=True, help="held-out SimCXR export (nodule images with pairs/)")
    p.add_argument("--train-pairs", type=Path, required=True, help=".pt layer pairs of the *training* export (paste-and-blend's residual bank)")
    p.add_argument("--additive", type=Path, default=Path("weights/layer"))
    p.add_argument("--replace", type=Path, default=Path("weights/texture"))
    p.add_argument("--partial-conv", type=Path, default=None, help="trained PartialConvUNet directory (none is shipped)")
    p.add_argument("--weights", type=Path, default=Path("weights"), help="shape/ and lung/ for the real radiograph")
    p.add_argument("--crop", type=int, default=48)
    p.add_argument("--limit-images", type=int, default=None)
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--epochs", type=int, default=25)
    p.add_argument("--real-nodules", type=int, default=18)
    p.add_argument("--two-sample-only", nargs="*", default=None, help="run the two-sample test for these methods only (trials)")
    p.add_argument("--skip-real", action="store_true", help="skip the real radiograph (trials)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=RESULTS / "realism")
    p.add_argument("--crops", type=Path, default=None,
                   help=".pt cache of the collected crops: written with hashes of the data, weights and code; read if it exists and they match, else exit 2 naming what differs")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    models: dict[str, torch.nn.Module] = {"additive": load_model(args.additive), "replace": load_model(args.replace)}
    pb, strength = paste_blend_model(args.train_pairs)
    models["paste_blend"] = pb
    notes = {"paste_blend_strength": strength}
    model_paths = {"additive": args.additive, "replace": args.replace, "paste_blend": args.train_pairs}
    if args.partial_conv is not None:
        models["partial_conv"] = load_model(args.partial_conv)
        model_paths["partial_conv"] = args.partial_conv
    else:
        notes["partial_conv"] = "not run: no trained partial-conv weights are shipped (pass --partial-conv DIR)"
    for m in models.values():
        m.eval()
    notes["weights"] = {n: {"path": str(path), **model_metadata(path)} for n, path in model_paths.items()}
    names = list(models)
    print("collecting nodules", file=sys.stderr)
    provenance = crops_provenance(args.data, model_paths, args.crop, args.limit_images) if args.crops is not None else None
    if args.crops is not None and args.crops.exists():
        try:
            crops = load_crops(args.crops, provenance)
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        notes["crops"] = (f"the SimCXR crops (paired metrics, FID, two-sample test, density control) were read from the cache {args.crops}, "
                          "collected by an earlier run of this script with the same data, weights, code and settings (checked by hash); "
                          "the real radiograph is recomputed")
    else:
        crops = collect(args.data, models, args.crop, args.limit_images, models["additive"])
        if args.crops is not None:
            save_crops(args.crops, crops, provenance)
    result: dict = {"command": "python benchmarks/realism.py " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv)),
                    "data": str(args.data), "folds": args.folds, "nodules": int(len(crops["image"])), "images": int(len(set(crops["image"].tolist()))),
                    "machine": f"{platform.machine()}, torch {torch.__version__}, 1 thread, shared 2-core CPU", "notes": notes, "methods": {}}
    # paired metrics
    for n in names:
        q = summarize(quality_metrics(crops[f"m_{n}"], crops["reference"], crops["mask"].float(), composite=False))
        result["methods"][n] = {"label": LABELS[n], "paired": q}
    print("FID (Lite0 features)", file=sys.stderr)
    for n, v in fid_to_reference(crops, names).items():
        result["methods"][n]["fid_lite0"] = v
    result["fid_label"] = FID_LABEL + ": method crops vs reference crops, all nodules"
    # two-sample test: one random half of the images gives the real crops, the other the synthesised
    images = sorted(set(crops["image"].tolist()))
    perm = np.random.default_rng(args.seed).permutation(images)
    half_real = set(perm[: len(perm) // 2].tolist())
    is_real = torch.tensor([i in half_real for i in crops["image"].tolist()])
    groups = crops["image"].numpy()
    only = set(names if args.two_sample_only is None else args.two_sample_only)
    for n in names:
        if n not in only:
            continue
        print(f"two-sample test: {n}", file=sys.stderr)
        result["methods"][n]["two_sample"] = two_sample_test(crops["reference"][is_real], crops[f"m_{n}"][~is_real], groups[is_real.numpy()], groups[~is_real.numpy()],
                                                             folds=args.folds, epochs=args.epochs, seed=args.seed)
    # sanity row: reference vs reference (the test's floor on this data)
    result["reference_vs_reference"] = two_sample_test(crops["reference"][is_real], crops["reference"][~is_real], groups[is_real.numpy()], groups[~is_real.numpy()],
                                                       folds=args.folds, epochs=args.epochs, seed=args.seed)
    # density control
    by_cond = crops["layer_by_condition"]
    result["density"] = {
        "additive_mean_layer_by_condition": dict(zip(DENSITY_CLASSES, by_cond.mean(0).tolist())),
        "ordered": bool((by_cond.mean(0).diff() > 0).all()),
        "share_of_nodules_ordered": float((by_cond.diff(dim=1) > 0).all(1).float().mean()),
        "reference_mean_layer_by_true_class": {c: float(crops["true_layer_mean"][crops["density"] == i].mean()) for i, c in enumerate(DENSITY_CLASSES) if (crops["density"] == i).any()},
        "nodules_by_true_class": {c: int((crops["density"] == i).sum()) for i, c in enumerate(DENSITY_CLASSES)},
        "units": "working grey level (the nodule-free image's 0.1-99.9 percentile window = 0..1), mean over the nodule's mask",
    }
    print("real radiograph", file=sys.stderr)
    real_models = {k: v for k, v in models.items() if k != "paste_blend"}
    rows, shots = kept_detail(real_models, args.weights, args.real_nodules, (40.0, 100.0), args.seed) if not args.skip_real else ({}, {})
    for n, row in rows.items():
        result["methods"][n]["real_radiograph"] = row
    result["seconds"] = round(time.perf_counter() - t0, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    figure(crops, names, shots, args.out.with_suffix(".png"))
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    args.out.with_suffix(".md").write_text(markdown(result, names))
    print(markdown(result, names))
    return 0


def markdown(r: dict, names: list[str]) -> str:
    lines = [f"# Realism benchmark ({r['nodules']} nodules, {r['images']} held-out SimCXR images)", "", f"`{r['command']}`", "",
             f"Machine: {r['machine']}; {r['seconds']} s.", "",
             f"| method | two-sample acc ({r['folds']}-fold) | kept detail RG1_UNCR | adds brightness | masked MAE | masked PSNR | masked SSIM | full MAE | full PSNR | full SSIM | {FID_LABEL} |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for n in names:
        m = r["methods"][n]
        q, t = m["paired"], m.get("two_sample")
        rr = m.get("real_radiograph")
        kd = f"{rr['detail_correlation_mean']:.3f}" if rr else "n/a"
        ab = f"{rr['adds_brightness_share']:.2f}" if rr else "n/a"
        ts = f"{t['accuracy_mean']:.3f} ± {t['accuracy_std']:.3f}" if t else "n/a"
        fd = f"{m['fid_lite0']:.2f}" if "fid_lite0" in m else "n/a"
        lines.append(f"| {m['label']} | {ts} | {kd} | {ab} | {q['masked_mae']:.4f} | {q['masked_psnr']:.2f} | {q['masked_ssim']:.3f} | "
                     f"{q['full_mae']:.4f} | {q['full_psnr']:.2f} | {q['full_ssim']:.3f} | {fd} |")
    rr = r["reference_vs_reference"]
    if "fid_label" in r:
        lines += ["", f"{r['fid_label']} ({r['nodules']} crops per set; lower = closer; not Inception FID, not comparable to published FIDs)."]
    lines += ["", f"Reference vs reference (the test's floor here): {rr['accuracy_mean']:.3f} ± {rr['accuracy_std']:.3f}.", ""]
    d = r["density"]
    lines += ["Density control (additive model, every benchmark nodule under each condition; mean layer inside the mask, working grey level):", "",
              "| condition | " + " | ".join(DENSITY_CLASSES) + " |", "|---|" + "---|" * len(DENSITY_CLASSES),
              "| additive model | " + " | ".join(f"{d['additive_mean_layer_by_condition'][c]:.4f}" for c in DENSITY_CLASSES) + " |",
              "| SimCXR reference (true class) | " + " | ".join(f"{d['reference_mean_layer_by_true_class'].get(c, float('nan')):.4f}" for c in DENSITY_CLASSES) + " |",
              "| nodules (true class) | " + " | ".join(str(d["nodules_by_true_class"][c]) for c in DENSITY_CLASSES) + " |", "",
              f"Ordered ground-glass < part-solid < solid < calcified: {d['ordered']} (per nodule: {d['share_of_nodules_ordered']:.2f}).", ""]
    for k, v in r["notes"].items():
        if isinstance(v, dict):  # e.g. the weights of each method: one line each
            lines.append(f"- {k}:")
            lines += [f"  - {n}: " + (", ".join(f"{a}={b}" for a, b in w.items()) if isinstance(w, dict) else str(w)) for n, w in v.items()]
        else:
            lines.append(f"- {k}: {v}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
