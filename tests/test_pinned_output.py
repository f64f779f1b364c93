"""Same records, same pixels: the shipped replace-mode pipeline, pinned bit for bit on the CPU.

The outputs were regenerated with ``scripts/pin_replay.py`` when the shipped shape model became
the fine-tuned LIDC-IDRI-trained one (branch shape; a new shape model legitimately changes every nodule);
any refactor of the insertion pipeline must leave them unchanged.

Floating-point results differ between CPU families (the convolutions take other vector paths),
so one hash per family is recorded: so far only the AMD EPYC's the script ran on (the hashes of
the previous model on two families are gone with it). On a CPU whose hash is not listed, the
pixels inside the nodule boxes are compared with the crops stored in
``fixtures/pinned_replay_rg1.npz`` (computed on the AMD EPYC) to within one step of the dtype,
and every pixel outside the boxes must be the input's.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import warnings
from pathlib import Path

import numpy as np

import pytest
import torch
from torchvision import tv_tensors

from cxr_nodule_aug import InsertNodules, NoduleRecord

pytest.importorskip("pydicom")

RECORDS = [
    NoduleRecord(center_xy=(600, 900), diameter_px=40.0, seed=1),
    NoduleRecord(center_xy=(1300, 1000), diameter_px=95.5, seed=22, contrast=0.7),
    NoduleRecord(center_xy=(700, 1300), diameter_px=18.25, seed=333, contrast=1.5),
    NoduleRecord(center_xy=(1250, 600), diameter_px=160.0, seed=4444),  # resampled region
]
BOXES = [[577.0, 883.0, 624.0, 917.0], [1252.0, 955.0, 1349.0, 1046.0], [690.0, 1291.0, 711.0, 1309.0], [1161.0, 524.0, 1339.0, 677.0]]
HASHES = {
    "uint16": {"8415ecc2bd3fcfa6632b7465af97357e1b5968288e61310e636e0967765a3750"},
    "uint8": {"7b0788c8fc2b5b84796e4ab0f06d99926c3d5b672544589bcbf16e9ebd1843cb"},
    "float32": {"cba6daaefb946606418efcb8dd1623d2cf406435c7e5178b9f2a9ad345389924"},
}
CROPS = Path(__file__).parent / "fixtures" / "pinned_replay_rg1.npz"  # output - input per box
STEP = {"uint16": 1, "uint8": 1, "float32": 1 / 32767}  # one grey level of the source data


@pytest.fixture(scope="module")
def radiograph() -> torch.Tensor:
    from cxr_nodule_aug.io import read_image

    return read_image(importlib.resources.files("data_store") / "data" / "RG1_UNCR.dcm").to_tensor().as_subclass(torch.Tensor)


@pytest.fixture(scope="module")
def replay() -> InsertNodules:
    # The shipped weights in the paper's mode, named: the default is "additive" since issue 13.
    return InsertNodules(RECORDS, composition="replace")


def replay_as(replay: InsertNodules, radiograph: torch.Tensor, dtype: str) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """The pinned input in ``dtype`` (uint16 as read; float32 in [0, 1]; uint8 from that), with an
    empty target, and the replay's ``(output, output target)``. Shared with scripts/pin_replay.py."""
    image = radiograph
    if dtype != "uint16":
        image = image.float() / 32767
        if dtype == "uint8":
            image = (image * 255).round().to(torch.uint8)
    H, W = image.shape[-2:]
    target = {"boxes": tv_tensors.BoundingBoxes(torch.zeros(0, 4), format="XYXY", canvas_size=(H, W)), "labels": torch.zeros(0, dtype=torch.int64)}
    out, out_target = replay(image, target)
    return image, out, out_target


@pytest.mark.parametrize("dtype", sorted(HASHES))
def test_shipped_replay_is_bit_identical_to_the_pinned_output(radiograph, replay, dtype):
    image, out, out_target = replay_as(replay, radiograph, dtype)
    assert out_target["boxes"].tolist() == BOXES
    digest = hashlib.sha256(out.numpy().tobytes()).hexdigest()
    if digest in HASHES[dtype]:
        return
    warnings.warn(f"{dtype}: output hash {digest} is not one recorded for a known CPU; comparing with the stored crops")
    inside = torch.zeros(image.shape[-2:], dtype=torch.bool)
    crops = np.load(CROPS)
    for i, (x0, y0, x1, y1) in enumerate(BOXES):
        inside[int(y0):int(y1), int(x0):int(x1)] = True
        sl = (..., slice(int(y0), int(y1)), slice(int(x0), int(x1)))
        got = (out[sl].double() - image[sl].double()).numpy()
        diff = np.abs(got - crops[f"{dtype}_{i}"].astype(np.float64)).max()
        assert diff <= STEP[dtype] * 1.0001, f"{dtype}: nodule {i} differs from the pinned crop by {diff}"
    assert torch.equal(out[..., ~inside], image[..., ~inside]), f"{dtype}: pixels outside the nodule boxes changed"
