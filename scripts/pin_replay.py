"""Regenerate the pinned replay of tests/test_pinned_output.py after a change of shipped weights.

    python scripts/pin_replay.py            # prints BOXES and HASHES, writes the crops

Replays the test's RECORDS with the shipped weights (InsertNodules, CPU) on RG1_UNCR.dcm for
each dtype of the test, and writes ``tests/fixtures/pinned_replay_rg1.npz`` (output - input per
nodule box: the fallback on CPU families whose hash is not recorded). Paste the printed BOXES
and HASHES into the test: the hashes are this CPU family's only (the test's docstring says
which families are recorded). Run it only when the shipped outputs are meant to change.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import importlib.util
import json
import platform
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's library and weights, not an installed copy


def main() -> int:
    spec = importlib.util.spec_from_file_location("pinned", ROOT / "tests" / "test_pinned_output.py")
    pinned = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pinned)
    from cxr_nodule_aug import InsertNodules
    from cxr_nodule_aug.io import read_image

    radiograph = read_image(importlib.resources.files("data_store") / "data" / "RG1_UNCR.dcm").to_tensor().as_subclass(torch.Tensor)
    replay = InsertNodules(pinned.RECORDS, composition="replace")  # the pinned mode (the default is additive)
    hashes, crops, boxes = {}, {}, None
    for dtype in sorted(pinned.HASHES):
        image, out, out_target = pinned.replay_as(replay, radiograph, dtype)
        got = out_target["boxes"].tolist()
        if boxes is not None and got != boxes:
            raise SystemExit(f"{dtype}: boxes {got} differ from the other dtypes' {boxes}")
        boxes = got
        hashes[dtype] = hashlib.sha256(out.numpy().tobytes()).hexdigest()
        for i, (x0, y0, x1, y1) in enumerate(boxes):
            sl = (..., slice(int(y0), int(y1)), slice(int(x0), int(x1)))
            diff = out[sl].double() - image[sl].double()
            crops[f"{dtype}_{i}"] = diff.numpy().astype(np.float32 if dtype == "float32" else np.int32)
    np.savez_compressed(pinned.CROPS, **crops)
    print(json.dumps({"cpu": platform.processor() or platform.machine(), "BOXES": boxes, "HASHES": hashes}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
