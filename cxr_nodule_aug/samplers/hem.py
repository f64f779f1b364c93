"""Hard-example mining (paper section III-D): sample nodule attributes from the nodules a
detector misses."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

STATE_VERSION = 1


def _unit_of(attribute: str) -> str | None:
    for suffix in ("mm", "px"):
        if attribute.endswith("_" + suffix):
            return suffix
    return None


def _from_mining(name: str):
    """``cxr_nodule_aug.detection.mining.<name>``, imported on the first call: its signature and
    documentation stay in one place."""

    def call(*args: Any, **kwargs: Any) -> Any:
        from cxr_nodule_aug.detection import mining

        return getattr(mining, name)(*args, **kwargs)

    call.__name__ = call.__qualname__ = name
    call.__doc__ = f":func:`cxr_nodule_aug.detection.mining.{name}` (imported when called)."
    return call


class HEMSampler:
    """Draws nodule attributes uniformly from the nodules a detector missed.

    The paper draws diameters uniformly from the missed nodules' diameters. The sampler keeps a
    table of every mined attribute (one row per missed nodule) and draws whole rows, so
    attributes beyond the diameter (location, contrast, ...) can be sampled jointly later
    with :meth:`sample`; called as ``sampler(n, generator=...)`` it returns the column named
    by ``attribute``, which is what ``NoduleInpaint(diameters=sampler)`` asks for.

    Args:
        attributes: column name -> one value per missed nodule (all the same length >= 1).
        attribute: the column ``__call__`` returns (default ``"diameter_mm"`` if present, else
            ``"diameter_px"``); its ``_mm`` / ``_px`` suffix sets :attr:`unit`.
        bandwidth: Gaussian kernel width in the attribute's unit (0 = the paper's plain
            resampling); draws that fall to or below 0 are redrawn.

    Example:
        >>> sampler = HEMSampler.from_missed([6.0, 8.5, 12.0])
        >>> sampler(4, generator=torch.Generator().manual_seed(0)).tolist()
        [12.0, 6.0, 12.0, 6.0]
    """

    def __init__(self, attributes: Mapping[str, Sequence[float] | torch.Tensor], attribute: str | None = None, bandwidth: float = 0.0) -> None:
        if not attributes:
            raise ValueError("attributes must hold at least one column, e.g. {'diameter_mm': [...]}")
        table = {str(k): torch.as_tensor(v, dtype=torch.float64).flatten() for k, v in attributes.items()}
        lengths = {k: len(v) for k, v in table.items()}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"attributes columns must have equal lengths, got {lengths}")
        if next(iter(lengths.values())) == 0:
            raise ValueError("attributes are empty: HEMSampler needs at least one missed nodule")
        if attribute is None:
            attribute = "diameter_mm" if "diameter_mm" in table else "diameter_px" if "diameter_px" in table else next(iter(table))
        if attribute not in table:
            raise ValueError(f"attribute {attribute!r} is not one of the columns {sorted(table)}")
        values = table[attribute]
        if not torch.isfinite(values).all() or (values <= 0).any():
            raise ValueError(f"attribute {attribute!r} must be positive and finite for every missed nodule")
        if not math.isfinite(bandwidth) or bandwidth < 0:
            raise ValueError(f"bandwidth must be >= 0, got {bandwidth}")
        self.table = table
        self.attribute = attribute
        self.bandwidth = float(bandwidth)
        self.unit = _unit_of(attribute)

    def __len__(self) -> int:
        return len(self.table[self.attribute])

    def __repr__(self) -> str:
        v = self.table[self.attribute]
        return f"HEMSampler({len(self)} missed nodules, {self.attribute} in [{float(v.min()):g}, {float(v.max()):g}], bandwidth={self.bandwidth})"

    # -- drawing --------------------------------------------------------------------------
    def sample(self, n: int, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """``n`` rows drawn uniformly with replacement; every column, jointly."""
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        rows = torch.randint(len(self), (n,), generator=generator)
        out = {k: v[rows] for k, v in self.table.items()}
        if self.bandwidth > 0 and n:
            values = out[self.attribute].clone()
            todo = torch.ones(n, dtype=torch.bool)
            base = values.clone()
            for _ in range(100):
                noise = torch.randn(int(todo.sum()), generator=generator, dtype=torch.float64) * self.bandwidth
                values[todo] = base[todo] + noise
                todo = values <= 0
                if not todo.any():
                    break
            values[todo] = base[todo]  # pathological bandwidths: keep the mined value
            out[self.attribute] = values
        return out

    def __call__(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.sample(n, generator)[self.attribute]

    def sample_rows(self, n: int, generator: torch.Generator | None = None) -> list[dict[str, float]]:
        """:meth:`sample` as one dict per drawn nodule (every column): what
        ``NoduleInpaint`` puts in each record's ``attributes``. Same draw as ``__call__``."""
        cols = self.sample(n, generator)
        return [{k: float(v[i]) for k, v in cols.items()} for i in range(n)]

    # -- building -------------------------------------------------------------------------
    @classmethod
    def from_missed(cls, diameters: Sequence[float] | torch.Tensor, unit: str = "mm", bandwidth: float = 0.0) -> HEMSampler:
        """From the diameters of the missed nodules, in ``unit`` ("mm" or "px")."""
        if unit not in ("mm", "px"):
            raise ValueError(f"unit must be 'mm' or 'px', got {unit!r}")
        return cls({f"diameter_{unit}": diameters}, bandwidth=bandwidth)

    # The mining itself lives in cxr_nodule_aug.detection.mining (one definition of "detected",
    # eval's matcher); these are its functions, imported when called (detection imports torchvision).
    nodule_outcomes = staticmethod(_from_mining("nodule_outcomes"))
    find_missed = staticmethod(_from_mining("find_missed"))

    @classmethod
    def from_detections(
        cls,
        predictions: Sequence[Mapping[str, Any]],
        targets: Sequence[Mapping[str, Any]],
        iou_threshold: float = 0.2,
        score_threshold: float = 0.5,
        pixel_spacing_mm: float | Sequence[float | None] | None = None,
        bandwidth: float = 0.0,
        attribute: str | None = None,
    ) -> HEMSampler:
        """A sampler over the nodules a detector missed (:meth:`find_missed`), with the
        LIDC-IDRI ratings of each (:func:`lidc_rating_columns`) when the targets carry them, as
        SimCXR exports' LIDC nodules do: hard examples can then be drawn by more than diameter
        (``attribute=``, :meth:`sample`) and records carry the drawn row.

        ``predictions`` and ``targets`` as :func:`cxr_nodule_aug.detection.predict_dataset`
        returns them: the targets of :class:`~cxr_nodule_aug.detection.ToDetectorInput` carry the
        original image size and the rescaled spacing, so the diameters come out in the dataset's
        own images (mm when every target has ``pixel_spacing_mm``, else px), whatever size the
        detector ran at. ``pixel_spacing_mm``: the original images' spacing, only for targets that
        carry none.
        """
        table = cls.nodule_outcomes(predictions, targets, iou_threshold, score_threshold, pixel_spacing_mm)
        table.update(lidc_rating_columns(targets))
        is_missed = table.pop("detected") == 0
        missed = {k: v[is_missed] for k, v in table.items()}
        if len(missed["diameter_px"]) == 0:
            raise ValueError(
                f"the detector missed no nodule at score_threshold={score_threshold}, iou_threshold={iou_threshold}: "
                "there is nothing to mine (raise score_threshold, or sample diameters another way)"
            )
        return cls(missed, attribute=attribute, bandwidth=bandwidth)

    # -- persistence ----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "attribute": self.attribute,
            "bandwidth": self.bandwidth,
            "attributes": {k: v.tolist() for k, v in self.table.items()},
        }

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any]) -> HEMSampler:
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"unsupported HEMSampler state version {state.get('version')!r} (expected {STATE_VERSION})")
        return cls(state["attributes"], attribute=state["attribute"], bandwidth=state["bandwidth"])

    def save(self, path: str | os.PathLike) -> Path:
        """Write the mined distribution as JSON."""
        path = Path(path)
        path.write_text(json.dumps(self.state_dict(), indent=1) + "\n")
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> HEMSampler:
        try:
            state = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"{path} is not a readable HEMSampler JSON file: {err}") from err
        return cls.from_state_dict(state)


def lidc_rating_columns(targets: Sequence[Mapping[str, Any]], key: str = "sim_nodules") -> dict[str, torch.Tensor]:
    """The LIDC-IDRI ratings of every ground-truth nodule, one row per box in the order of
    :meth:`HEMSampler.nodule_outcomes` (image by image, box by box): columns
    ``lidc_<rating>`` (:data:`cxr_nodule_aug.lidc.RATINGS`, the readers' medians).

    Read from ``target[key]``: per box, the simulator's nodule dict whose ``params`` hold
    ``lidc_ratings`` (:class:`~cxr_nodule_aug.datasets.SimCXRDataset` targets of an export with
    LIDC nodules). Returns ``{}`` unless every target with boxes has exactly one such entry per
    box (procedural SimCXR nodules, real datasets, or boxes added since: no ratings to use).
    """
    from cxr_nodule_aug.lidc import RATINGS

    rows: list[list[float]] = []
    for target in targets:
        boxes = target.get("boxes")
        n_boxes = 0 if boxes is None else len(boxes)
        if n_boxes == 0:
            continue
        entries = target.get(key)
        if entries is None or len(entries) != n_boxes:
            return {}
        for entry in entries:
            ratings = (entry.get("params") or {}).get("lidc_ratings") if isinstance(entry, Mapping) else None
            if not ratings or any(ratings.get(r) is None for r in RATINGS):
                return {}
            rows.append([float(ratings[r]) for r in RATINGS])
    if not rows:
        return {}
    table = torch.tensor(rows, dtype=torch.float64)
    return {f"lidc_{r}": table[:, j] for j, r in enumerate(RATINGS)}

