"""Dataset over a ``cxr-nodule-aug sim`` export."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from cxr_nodule_aug.datasets._common import make_sample


def _without_none(value):
    """``value`` with the dict entries whose value is None (JSON null: "not set") left out, at any
    depth, so that a sample passes torch's default collate, which refuses None."""
    if isinstance(value, dict):
        return {k: _without_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_none(v) for v in value]
    return value


class SimCXRDataset(torch.utils.data.Dataset):
    """Samples ``(tv_tensors.Image (1,H,W) uint16, target)`` from a SimCXR export.

    Target: ``boxes`` (XYXY, exclusive max), ``labels`` (1), ``masks`` (N,H,W) nodule masks,
    ``lung_mask``, ``heart_mask``, ``pixel_spacing_mm``, ``image_id``, ``sim_nodules`` (the
    simulator's :class:`~cxr_nodule_aug.sim.SimNodule` dicts: 3-D parameters, contrast, ...;
    entries that are null in the JSON, i.e. not set, are left out; not ``nodules``, the key
    :class:`~cxr_nodule_aug.NoduleInpaint` appends its replayable
    :class:`~cxr_nodule_aug.NoduleRecord` s to, so ``InsertNodules(out["nodules"])`` replays),
    and with ``return_pair=True`` ``image_nodule_free`` (Image; nodule images only, else the
    image itself).

    Args:
        root: the export directory.
        subset: "all", "nodule" or "normal".
        allow_incomplete: read an export whose manifest is not complete (only finished images).
    """

    def __init__(self, root: str | Path, transforms: Callable | None = None, subset: str = "all",
                 return_pair: bool = False, allow_incomplete: bool = False):
        self.root = Path(root)
        mpath = self.root / "manifest.json"
        if not mpath.is_file():
            raise FileNotFoundError(f"{self.root} is not a SimCXR export: {mpath} missing")
        self.manifest = json.loads(mpath.read_text())
        if not self.manifest.get("complete") and not allow_incomplete:
            raise ValueError(
                f"{self.root}: the SimCXR export is incomplete (interrupted or other shards missing); "
                "rerun the same 'cxr-nodule-aug sim' command to finish it, or pass allow_incomplete=True"
            )
        if subset not in ("all", "nodule", "normal"):
            raise ValueError(f"subset={subset!r}: expected 'all', 'nodule' or 'normal'")
        records = []
        for path in sorted((self.root / "records").glob("simcxr_*.json")):
            r = json.loads(path.read_text())
            if subset == "all" or (subset == "nodule") == bool(r["nodules"]):
                records.append(r)
        self.records = records
        self.transforms = transforms
        self.return_pair = return_pair

    def __len__(self) -> int:
        return len(self.records)

    def image_name(self, idx: int) -> str:
        """Image ``idx``'s file name, as the export's ``metadata.csv`` names it."""
        return self.records[idx]["img_name"]

    def _png(self, path: Path) -> np.ndarray:
        from PIL import Image

        if not path.is_file():
            raise FileNotFoundError(f"SimCXR export file missing: {path}")
        return np.array(Image.open(path))

    def _image(self, path: Path):
        from cxr_nodule_aug.io import read_png

        return read_png(path).to_tensor()

    def __getitem__(self, idx: int):
        r = self.records[idx]
        stem = r["img_name"][:-4]
        image = self._image(self.root / "images" / r["img_name"])
        inst = self._png(self.root / "masks" / f"{stem}_nodules.png")
        n = len(r["nodules"])
        masks = np.stack([inst == k + 1 for k in range(n)]) if n else np.zeros((0, *inst.shape), bool)
        extra = {
            "heart_mask": None,
            "sim_nodules": [_without_none(nd) for nd in r["nodules"]],
        }
        from torchvision import tv_tensors

        extra["heart_mask"] = tv_tensors.Mask(torch.from_numpy(self._png(self.root / "masks" / f"{stem}_heart.png") > 0))
        if self.return_pair:
            pair = self.root / "pairs" / r["img_name"]
            extra["image_nodule_free"] = self._image(pair) if n else image.clone()
        sample = make_sample(
            image, [nd["box_xyxy"] for nd in r["nodules"]], stem, tuple(r["pixel_spacing_mm"]),
            lung_mask=self._png(self.root / "masks" / f"{stem}_lung.png") > 0, masks=masks, extra=extra,
        )
        return self.transforms(*sample) if self.transforms is not None else sample
