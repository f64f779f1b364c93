"""Image-quality table (paper Tables I and II) on held-out SimCXR nodule patches.

Rows are texture inpainters saved with ``save_pretrained`` (the trained ``runs/.../model``
directories: gated-conv ``TextureGenerator`` or ``PartialConvUNet``) plus, optionally, the
classical paste-and-blend baseline. Every row is scored on the same held-out nodules, cut the
way inference cuts them (``extract_patches``, no jitter) with the row's own patch size, fill
ratio and hole type; the masked-region metrics use the hole's bounding box, which is the same
for a nodule's shape hole and its box hole (see ``cxr_nodule_aug.eval.quality``).

The real table (the lead's run; the same export and holdout fraction the models trained on)::

    python benchmarks/quality.py --data data/simcxr-train \\
        --model "Ours (two-stage, shape mask)=runs/texture/model" \\
        --model "One-stage, shape mask=runs/texture-1stage/model" \\
        --model "Two-stage, box mask=runs/texture-box/model" \\
        --model "One-stage, box mask=runs/texture-1stage-box/model" \\
        --model "Partial-conv U-Net (Syn&Select)=runs/texture-pconv/model" \\
        --paste-blend

writes ``benchmarks/results/quality.json`` and ``quality.md`` (with this command line).
``--quick`` renders a 12-image SimCXR export, trains tiny versions of all five models for a few
steps and scores them end to end (a smoke test, ~2-3 min on 2 CPU cores); its output goes to a
temporary directory, never to ``benchmarks/results``.

Paste-and-blend draws its nodule residuals (nodule image minus the nodule-free pair) from the
*training* images only and calibrates its contrast strength on them
(``cxr_nodule_aug.baselines.contrast_ratio``); it needs a SimCXR export (or a ``.pt`` holding
``patch_nodule_free``) because a residual needs the pair.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path

import torch

from cxr_nodule_aug.baselines import PartialConvUNet, PasteBlendInpainter, contrast_ratio
from cxr_nodule_aug.eval.quality import FID_LABEL, METRIC_KEYS, PSNR_CAP_DB, fid, quality_metrics, summarize
from cxr_nodule_aug.functional.intensity import to_working
from cxr_nodule_aug.hub import load_model

PASTE_LABEL = "Paste-and-blend (NODE21-style baseline)"
RESULTS = Path(__file__).resolve().parent / "results"


# -- held-out pairs ---------------------------------------------------------------------------
def _box_holes(mask: torch.Tensor) -> torch.Tensor:
    out = torch.zeros_like(mask)
    for i, m in enumerate(mask[:, 0] > 0.5):
        r = torch.nonzero(m.any(1)).flatten()
        c = torch.nonzero(m.any(0)).flatten()
        out[i, 0, int(r[0]) : int(r[-1]) + 1, int(c[0]) : int(c[-1]) + 1] = 1
    return out


class PairSource:
    """Cuts (patch, mask, nodule-free patch) sets for a geometry, from an export or a ``.pt``."""

    def __init__(self, data: str | Path) -> None:
        self.data = Path(data)
        self._cache: dict[tuple, dict[str, torch.Tensor]] = {}
        self.samples = None
        if self.data.suffix == ".pt":
            self.pt = torch.load(self.data, weights_only=True)
        elif self.data.is_dir():
            from cxr_nodule_aug.datasets import SimCXRDataset

            dataset = SimCXRDataset(self.data, subset="nodule", return_pair=True)
            self.samples = [dataset[i] for i in range(len(dataset))]
            self.pt = None
        else:
            raise FileNotFoundError(f"--data {str(data)!r} is neither a SimCXR export directory nor a .pt pairs file")

    def pairs(self, patch_size: int, max_fill: float, mask_type: str) -> dict[str, torch.Tensor]:
        key = (patch_size, max_fill, mask_type)
        if key not in self._cache:
            self._cache[key] = self._cut(*key)
        return self._cache[key]

    def _cut(self, patch_size: int, max_fill: float, mask_type: str) -> dict[str, torch.Tensor]:
        if self.pt is not None:
            pairs = dict(self.pt)
            if pairs["patch"].shape[-1] != patch_size:
                raise ValueError(f"{self.data} holds {pairs['patch'].shape[-1]} px patches; a model needs {patch_size} px: pass a SimCXR export instead")
            if mask_type == "box":
                pairs["mask"] = _box_holes(pairs["mask"])
            return pairs
        from cxr_nodule_aug.train.texture import extract_patches

        nodule = extract_patches(self.samples, patch_size, max_fill, mask_type=mask_type)
        free = extract_patches([(t["image_nodule_free"], {"masks": t["masks"]}) for _, t in self.samples], patch_size, max_fill, mask_type=mask_type)
        # Both are windowed by their own image; express the nodule-free patch in the nodule
        # image's window (the window is affine, so is area resampling) to get exact residuals.
        windows = [(to_working(im.as_subclass(torch.Tensor))[1:], to_working(t["image_nodule_free"].as_subclass(torch.Tensor))[1:]) for im, t in self.samples]
        scale = torch.tensor([(fh - fl) / (nh - nl) for (nl, nh), (fl, fh) in windows])[nodule["image_index"]].view(-1, 1, 1, 1)
        offset = torch.tensor([(fl - nl) / (nh - nl) for (nl, nh), (fl, fh) in windows])[nodule["image_index"]].view(-1, 1, 1, 1)
        nodule["patch_nodule_free"] = (free["patch"] * scale + offset).clamp(0, 1)
        return nodule


def split(pairs: dict[str, torch.Tensor], holdout_fraction: float, max_pairs: int | None) -> tuple[dict, dict]:
    from cxr_nodule_aug.train.texture import split_by_image

    train, held = split_by_image(pairs, holdout_fraction) if holdout_fraction > 0 else (pairs, pairs)
    if max_pairs is not None:
        held = {k: v[:max_pairs] for k, v in held.items()}
    if len(held["patch"]) < 2:
        raise ValueError(f"only {len(held['patch'])} held-out nodule patches: FID needs at least 2 (raise --holdout-fraction or use more images)")
    return train, held


# -- scoring ----------------------------------------------------------------------------------
@torch.inference_mode()
def run_model(model: torch.nn.Module, patch: torch.Tensor, mask: torch.Tensor, batch_size: int, device: torch.device) -> torch.Tensor:
    outs = []
    for s in range(0, len(patch), batch_size):
        outs.append(model(patch[s : s + batch_size].to(device), mask[s : s + batch_size].to(device)).fine.float().cpu())
    return torch.cat(outs)


def score(label: str, model: torch.nn.Module, held: dict[str, torch.Tensor], args, device: torch.device, extra: dict) -> dict:
    patch, mask = held["patch"].float(), held["mask"].float()
    t0 = time.perf_counter()
    pred = run_model(model, patch, mask, args.batch_size, device)
    seconds = time.perf_counter() - t0
    per = quality_metrics(pred, patch, mask)
    comp = pred * mask + patch * (1 - mask)
    row = {"label": label, "n_patches": len(patch), **summarize(per), "fid_lite0": fid(patch, comp, device=device), "ms_per_patch": 1000 * seconds / len(patch), **extra}
    print(f"  {label}: " + ", ".join(f"{k}={row[k]:.4f}" for k in (*METRIC_KEYS, "fid_lite0")), flush=True)
    return row


def paste_blend_row(source: PairSource, geometry: tuple[int, float], args, device: torch.device) -> dict:
    pairs = source.pairs(geometry[0], geometry[1], "shape")
    if "patch_nodule_free" not in pairs:
        raise ValueError(f"{args.data}: paste-and-blend needs nodule-free pairs (a SimCXR export, or a .pt with 'patch_nodule_free')")
    train, held = split(pairs, args.holdout_fraction, args.max_pairs)
    if len(train["patch"]) == 0:
        raise ValueError("no training images left to draw paste-and-blend residuals from")
    strength = contrast_ratio(train["patch"], train["patch_nodule_free"], train["mask"])
    residuals = (train["patch"] - train["patch_nodule_free"]) * train["mask"]
    model = PasteBlendInpainter(residuals, train["mask"], patch_size=geometry[0], max_fill=geometry[1], strength=strength, mode="seamless").to(device)
    return score(PASTE_LABEL, model, held, args, device, {"model": "paste_and_blend", "patch_size": geometry[0], "mask_type": "shape", "num_stages": None, "contrast_strength": strength, "residual_bank": len(residuals), "mode": "seamless"})


def build_table(args) -> dict:
    device = torch.device(args.device)
    source = PairSource(args.data)
    rows, geometry = [], None
    for spec in args.model:
        label, _, path = spec.partition("=")
        if not path:
            raise ValueError(f"--model {spec!r}: expected LABEL=DIR")
        model = load_model(path).to(device).eval()
        geometry = geometry or (model.patch_size, model.max_fill)
        _, held = split(source.pairs(model.patch_size, model.max_fill, model.mask_type), args.holdout_fraction, args.max_pairs)
        rows.append(score(label, model, held, args, device, {"model": type(model).__name__, "dir": path, "patch_size": model.patch_size, "mask_type": model.mask_type, "num_stages": model.num_stages}))
    if args.paste_blend:
        rows.append(paste_blend_row(source, geometry or (args.patch_size, args.max_fill), args, device))
    if not rows:
        raise ValueError("nothing to score: give --model LABEL=DIR and/or --paste-blend")
    return {
        "table": "Image quality of synthesised nodule patches (paper Tables I and II)",
        "data": str(args.data),
        "holdout_fraction": args.holdout_fraction,
        "masked_region": "hole bounding box (grown to >= 11 px), prediction composited into the ground truth outside the hole",
        "psnr_cap_db": PSNR_CAP_DB,
        "fid": FID_LABEL,
        "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
        "preset": "quick" if args.quick else "full",
        "environment": {"torch": torch.__version__, "device": str(device), "python": platform.python_version()},
        "rows": rows,
    }


def to_markdown(result: dict) -> str:
    lines = [
        f"# {result['table']}",
        "",
        f"Produced by: `{result['command']}`",
        "",
        f"Held-out nodule patches from `{result['data']}` (holdout fraction {result['holdout_fraction']}, split by image). "
        f"Masked region: {result['masked_region']}. PSNR per patch capped at {result['psnr_cap_db']:g} dB, averaged. "
        f"FID column: **{result['fid']}** (fewer patches than 1280 feature dimensions biases it upward: compare rows only).",
        "",
    ]
    if result["preset"] == "quick":
        lines += ["**Quick preset: tiny models trained for a few steps. A smoke test, not results.**", ""]
    head = ["Method", "N", "MAE", "PSNR", "SSIM", "MAE (mask)", "PSNR (mask)", "SSIM (mask)", "FID (Lite0, not Inception)", "ms/patch"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in result["rows"]:
        vals = [r["label"], str(r["n_patches"]), f"{r['full_mae']:.4f}", f"{r['full_psnr']:.2f}", f"{r['full_ssim']:.4f}", f"{r['masked_mae']:.4f}", f"{r['masked_psnr']:.2f}", f"{r['masked_ssim']:.4f}", f"{r['fid_lite0']:.2f}", f"{r['ms_per_patch']:.1f}"]
        lines.append("| " + " | ".join(vals) + " |")
    return "\n".join(lines) + "\n"


# -- the quick preset -------------------------------------------------------------------------
@contextlib.contextmanager
def _generator_class(cls):
    """Train ``cls`` with ``train.texture.train``. The trainer has no generator switch yet
    (``TextureConfig.generator``); until it does, swap the class it builds for the duration."""
    import cxr_nodule_aug.train.texture as trainer

    saved = trainer.TextureGenerator
    trainer.TextureGenerator = cls
    try:
        yield
    finally:
        trainer.TextureGenerator = saved


def quick(args) -> None:
    from cxr_nodule_aug.sim.export import export
    from cxr_nodule_aug.train.texture import TextureConfig, train

    work = Path(args.work_dir or tempfile.mkdtemp(prefix="quality-quick-"))
    sim = work / "sim"
    t0 = time.perf_counter()
    export(sim, normal=0, nodule=12, seed=0, size=256, progress=False)
    print(f"quick: SimCXR export ({time.perf_counter() - t0:.1f} s) in {sim}", flush=True)
    source = PairSource(sim)
    rows = [
        ("Ours (two-stage, shape mask)", dict(num_stages=2, mask_type="shape"), None),
        ("One-stage, shape mask", dict(num_stages=1, mask_type="shape"), None),
        ("Two-stage, box mask", dict(num_stages=2, mask_type="box"), None),
        ("One-stage, box mask", dict(num_stages=1, mask_type="box"), None),
        ("Partial-conv U-Net (Syn&Select)", dict(num_stages=1, mask_type="shape"), PartialConvUNet),
    ]
    args.model = []
    for i, (label, over, cls) in enumerate(rows):
        pairs = source.pairs(args.patch_size, args.max_fill, over["mask_type"])
        pairs = {k: v for k, v in pairs.items() if k != "patch_nodule_free"}
        cfg = TextureConfig(out=str(work / f"row{i}"), steps=args.quick_steps, lr_drop_step=args.quick_steps, batch_size=4, base_width=4, d_width=4, patch_size=args.patch_size, max_fill=args.max_fill, holdout_fraction=args.holdout_fraction, log_every=args.quick_steps, sample_every=args.quick_steps, checkpoint_every=args.quick_steps, device=args.device, **over)
        if cls is not None and "generator" in {f.name for f in dataclasses.fields(TextureConfig)}:
            cfg.generator = "partial_conv"  # the trainer's switch, once it has one
            cls = None
        t1 = time.perf_counter()
        with _generator_class(cls) if cls is not None else contextlib.nullcontext():
            model_dir = train(cfg, pairs=pairs)
        print(f"quick: trained {label} for {args.quick_steps} steps ({time.perf_counter() - t1:.1f} s)", flush=True)
        args.model.append(f"{label}={model_dir}")
    args.data = str(sim)
    args.paste_blend = True
    result = build_table(args)
    write(result, Path(args.out_dir) if args.out_dir else work)
    print(f"quick: end to end {time.perf_counter() - t0:.1f} s", flush=True)


def write(result: dict, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "quality.json").write_text(json.dumps(result, indent=2) + "\n")
    (out_dir / "quality.md").write_text(to_markdown(result))
    print(f"wrote {out_dir / 'quality.json'} and {out_dir / 'quality.md'}", flush=True)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="SimCXR export directory (nodule images + pairs) or a .pt pairs file from extract_patches")
    p.add_argument("--model", action="append", default=[], metavar="LABEL=DIR", help="a table row: label and saved model directory (repeatable, in table order)")
    p.add_argument("--paste-blend", action="store_true", help="add the paste-and-blend row (needs nodule-free pairs)")
    p.add_argument("--holdout-fraction", type=float, default=0.1, help="the trainer's holdout: the last images, split by image (0 = score all)")
    p.add_argument("--max-pairs", type=int, default=None, help="score at most this many held-out patches")
    p.add_argument("--patch-size", type=int, default=32, help="paste-and-blend/quick patch size when no model sets it")
    p.add_argument("--max-fill", type=float, default=0.5)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out-dir", default=None, help=f"where quality.json/.md go (default {RESULTS}; --quick: a temporary directory)")
    p.add_argument("--quick", action="store_true", help="tiny end-to-end smoke run (writes to a temporary directory)")
    p.add_argument("--quick-steps", type=int, default=3)
    p.add_argument("--work-dir", default=None, help="--quick: where the export and runs go (default: a new temporary directory)")
    args = p.parse_args(argv)
    if args.quick:
        if args.out_dir and Path(args.out_dir).resolve() == RESULTS:
            p.error("--quick numbers are a smoke test: they must not be written to benchmarks/results")
        if args.holdout_fraction == 0.1:
            args.holdout_fraction = 0.25  # 12 images: 3 held out, enough patches for FID
    elif not args.data:
        p.error("--data is required (or --quick)")
    return args


def main(argv=None) -> int:
    torch.set_num_threads(min(torch.get_num_threads(), 2))
    args = parse_args(argv)
    if args.quick:
        quick(args)
    else:
        write(build_table(args), Path(args.out_dir) if args.out_dir else RESULTS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
