#!/usr/bin/env bash
# Trains the ablation rows of the image-quality table (paper Tables I/II) at the same budget as
# the "ours" row they are compared with, then scores every row on the held-out SimCXR nodules.
#
#   bash benchmarks/train_quality_rows.sh DATA OURS_RUN STEPS [PAIRS]
#
# PAIRS (optional): the main run's pairs.pt, reused by the shape-mask rows (the same cut with
# the same seed; saves re-reading the export).
# DATA: the SimCXR export the shipped texture model trained on; OURS_RUN: a run directory whose
# model/ is the two-stage shape-mask model after STEPS steps. Every row uses texture-cpu.yaml
# with only the ablated switch changed (and the same seed, data, holdout split and schedule).
# The partial-conv U-Net gets base_width=32 (1.13 M parameters, near the gated model's 1.45 M).
set -euo pipefail
DATA=${1:-data/simcxr_train}
OURS=${2:-runs/texture_interim}
STEPS=${3:-1750}
PAIRS=${4:-}
CLI=${CLI:-cxr-nodule-aug}
run() {  # name overrides...
    local name=$1; shift
    if [ ! -f "runs/quality/$name/model/config.json" ]; then
        $CLI train texture --config texture-cpu "data=$DATA" "out=runs/quality/$name" "steps=$STEPS" "$@"
    fi
}
mkdir -p runs/quality
# Shape-mask rows share the pairs of the main run (same cut, same seed).
if [ -n "$PAIRS" ]; then
    for name in one-stage pconv; do
        mkdir -p "runs/quality/$name"
        [ -f "runs/quality/$name/pairs.pt" ] || cp "$PAIRS" "runs/quality/$name/pairs.pt"
    done
fi
run one-stage num_stages=1
run two-stage-box mask_type=box
run one-stage-box num_stages=1 mask_type=box
run pconv generator=partial_conv num_stages=1 base_width=32
python benchmarks/quality.py --data "$DATA" \
    --model "Ours (two-stage, shape mask)=$OURS/model" \
    --model "One-stage, shape mask=runs/quality/one-stage/model" \
    --model "Two-stage, box mask=runs/quality/two-stage-box/model" \
    --model "One-stage, box mask=runs/quality/one-stage-box/model" \
    --model "Partial-conv U-Net (Syn&Select)=runs/quality/pconv/model" \
    --paste-blend
