"""Check the README's "Box-only data" and "Hard-example mining" sections end to end on a NODE21-layout
copy at 1024 px without pixel spacing: do the box-only commands run, and are the nodules inserted
with the mined diameters, in the images' own pixels?

1. ``--sim EXPORT``: a ``cxr-nodule-aug sim`` export is converted to NODE21 layout (``images/*.png``
   upsampled to ``--size`` px, ``metadata.csv`` with the boxes scaled alike, no spacing), unless
   ``--data`` already holds ``metadata.csv``.
2. The "Box-only data" section's commands (masks, train shape / texture on them, export,
   synthesize with the box-only models), then the HEM section's bash commands and its Python
   block, then those of "Evaluate a detector"
   (predict -> eval with the same detector), are read from README.md and run verbatim
   in ``--work`` with ``DIR`` replaced by ``--data`` (a command whose ``out=`` / ``--out`` already
   exists is skipped, so a rerun resumes).
3. Measured: each missed nodule's mined diameter against its box in ``metadata.csv`` (the
   original frame), and each inserted nodule's asked and measured diameter
   (``records.jsonl``) against the mined ones; for the box-only part, the masks' count and
   fallbacks, and the nodules synthesize inserted with the box-only models.

    python benchmarks/hem_check.py --sim /work/data/data/sim512 --data /work/data/data/node21_1024 \\
        --work /work/runs/data/hem_check
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def make_node21_copy(sim: Path, data: Path, size: int) -> None:
    import numpy as np
    import torch
    from PIL import Image

    from cxr_nodule_aug.datasets import SimCXRDataset

    ds = SimCXRDataset(sim)
    (data / "images").mkdir(parents=True, exist_ok=True)
    rows = [["img_name", "x", "y", "width", "height", "label"]]
    for i in range(len(ds)):
        image, target = ds[i]
        h, w = image.shape[-2:]
        up = torch.nn.functional.interpolate(image.as_subclass(torch.Tensor)[None].float(), size=(size, size), mode="bilinear",
                                             align_corners=False, antialias=False)[0, 0]
        pixels = up.round().clamp(0, 65535).to(torch.int32).numpy().astype(np.uint16)
        name = f"{target['image_id']}.png"
        Image.fromarray(pixels).save(data / "images" / name)
        sx, sy = size / w, size / h
        boxes = target["boxes"].as_subclass(torch.Tensor).tolist()
        if not boxes:
            rows.append([name, 0, 0, 0, 0, 0])
        for x0, y0, x1, y1 in boxes:
            rows.append([name, round(x0 * sx, 3), round(y0 * sy, 3), round((x1 - x0) * sx, 3), round((y1 - y0) * sy, 3), 1])
    with open(data / "metadata.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)


def readme_section(title: str) -> tuple[list[str], list[str]]:
    """The bash command lines and Python blocks of README section ``title``."""
    text = (REPO / "README.md").read_text()
    start = text.index(f"## {title}\n")
    end = text.find("\n## ", start + 4)
    section = text[start:end if end > 0 else None]
    bash, python = [], []
    for lang, body in re.findall(r"```(\w+)\n(.*?)```", section, flags=re.S):
        if lang == "bash":
            bash += [ln for ln in body.replace("\\\n", " ").splitlines() if ln.strip() and not ln.startswith("#")]
        elif lang == "python":
            python.append(body)
    return bash, python


def _out_of(command: str) -> str | None:
    words = shlex.split(command)
    for k, word in enumerate(words):
        if word.startswith("out="):
            return word[4:]
        if word == "--out" and k + 1 < len(words):
            return words[k + 1]
    return None


def run_section(data: Path, work: Path, title: str) -> None:
    bash, python = readme_section(title)
    env = {**os.environ, "PYTHONPATH": str(REPO), "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
    for line in bash:
        command = line.replace("DIR", str(data))
        out = _out_of(command)
        if out is not None and (work / out).exists() and "synthesize" not in command:  # synthesize resumes by itself
            print(f"[hem_check] skip (exists: {out}): {command}", flush=True)
            continue
        print(f"[hem_check] $ {command}", flush=True)
        subprocess.run(command, shell=True, cwd=work, env=env, check=True)
    for block in python:
        code = block.replace('"DIR"', repr(str(data)))
        print(f"[hem_check] python:\n{code}", flush=True)
        subprocess.run([sys.executable, "-c", code], cwd=work, env=env, check=True)


def measure(data: Path, work: Path) -> dict:
    truth: dict[str, list[tuple[float, float, float]]] = {}
    with open(data / "metadata.csv") as f:
        for row in csv.DictReader(f):
            if row["label"] == "1":
                x, y, w, h = (float(row[k]) for k in ("x", "y", "width", "height"))
                truth.setdefault(Path(row["img_name"]).stem, []).append((x + w / 2, y + h / 2, (w + h) / 2))
    mined = []
    with open(work / "runs/hem/nodules.csv") as f:
        for row in csv.DictReader(f):
            if float(row["detected"]) == 0:
                cx, cy, d = float(row["center_x_px"]), float(row["center_y_px"]), float(row["diameter_px"])
                tx, ty, td = min(truth[row["image_id"]], key=lambda t: (t[0] - cx) ** 2 + (t[1] - cy) ** 2)
                mined.append({"image_id": row["image_id"], "mined_px": d, "box_px": td})
    sampler = json.loads((work / "runs/hem/hem_sampler.json").read_text())
    pool = sampler["attributes"]["diameter_px"]
    inserted = []
    for line in (work / "runs/synth_hem/records.jsonl").read_text().splitlines():
        record = json.loads(line)["record"]
        asked, measured = record["diameter_px"], record["measured_diameter_px"]
        nearest = min(pool, key=lambda d: abs(d - asked))
        inserted.append({"asked_px": asked, "measured_px": measured, "nearest_mined_px": nearest,
                         "relative_error": abs(measured - nearest) / nearest})
    errors = [r["relative_error"] for r in inserted]
    return {
        "data": str(data), "sampler_attribute": sampler["attribute"],
        "missed": len(mined), "mined_diameter_px_range": [min(pool), max(pool)],
        "mined_vs_box_max_abs_px": max(abs(m["mined_px"] - m["box_px"]) for m in mined),
        "truth_diameter_px_range": [min(t[2] for ts in truth.values() for t in ts), max(t[2] for ts in truth.values() for t in ts)],
        "inserted": len(inserted), "inserted_asked_in_mined_pool": sum(abs(r["asked_px"] - r["nearest_mined_px"]) < 1e-3 for r in inserted),
        "inserted_within_10_percent": sum(e <= 0.10 for e in errors), "inserted_max_relative_error": max(errors),
        "inserted_median_relative_error": sorted(errors)[len(errors) // 2],
        "inserted_measured_px_range": [min(r["measured_px"] for r in inserted), max(r["measured_px"] for r in inserted)],
    }


def measure_box_only(work: Path) -> dict:
    """What the README's box-only commands produced in ``work``."""
    with open(work / "runs/masks/nodules.csv") as f:
        rows = list(csv.DictReader(f))
    records = [json.loads(line)["record"] for line in (work / "runs/synth_box/records.jsonl").read_text().splitlines()]
    errors = [abs(r["measured_diameter_px"] - r["diameter_px"]) / r["diameter_px"] for r in records]
    return {
        "mask_files": len(list((work / "runs/masks/masks").glob("*.png"))), "nodules": len(rows),
        "fallbacks": sum(int(r["fallback"]) for r in rows),
        "shape_model": json.loads((work / "runs/weights_box/shape/config.json").read_text())["metadata"],
        "texture_model": json.loads((work / "runs/weights_box/texture/config.json").read_text())["metadata"],
        "synth_images": len(list((work / "runs/synth_box/images").iterdir())), "synth_nodules": len(records),
        "synth_median_relative_diameter_error": sorted(errors)[len(errors) // 2] if errors else None,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sim", type=Path, default=None, help="SimCXR export to convert (when --data has no metadata.csv)")
    parser.add_argument("--data", type=Path, required=True, help="NODE21-layout folder (made from --sim if absent)")
    parser.add_argument("--size", type=int, default=1024, help="image size of the NODE21 copy (default 1024)")
    parser.add_argument("--work", type=Path, required=True, help="working directory the README commands run in")
    args = parser.parse_args()
    if not (args.data / "metadata.csv").is_file():
        if args.sim is None:
            parser.error("--data holds no metadata.csv: give --sim to make it")
        make_node21_copy(args.sim, args.data, args.size)
    args.work.mkdir(parents=True, exist_ok=True)
    run_section(args.data.resolve(), args.work, "Box-only data")
    run_section(args.data.resolve(), args.work, "Hard-example mining")
    run_section(args.data.resolve(), args.work, "Evaluate a detector")  # predict -> eval on the same detector
    result = measure(args.data.resolve(), args.work)
    result["box_only"] = measure_box_only(args.work)
    metrics = args.work / "runs/eval/metrics.json"
    if metrics.is_file():
        m = json.loads(metrics.read_text())
        result["eval"] = {k: m[k] for k in ("auc", "sensitivity_at_target_fp", "node21_score") if k in m}
    (args.work / "hem_check.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    ok = result["inserted_within_10_percent"] == result["inserted"] and result["inserted_asked_in_mined_pool"] == result["inserted"]
    print("PASS: every inserted nodule has a mined diameter within 10 %" if ok else "FAIL: see above")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
