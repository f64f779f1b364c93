"""The record of one inserted nodule: enough to reproduce it exactly."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

# The layer model's classes (cxr_nodule_aug.models.layer.DENSITY_CLASSES; not imported: records
# stay free of torch). tests/test_layer.py checks the two agree.
_DENSITY_CLASSES = ("ground_glass", "part_solid", "solid", "calcified")


@dataclass(frozen=True)
class NoduleRecord:
    """One nodule: what to insert (the first four fields) and what came out (the rest).

    ``InsertNodules([record, ...])`` with the same models on the same device reproduces the
    insertion exactly from ``center_xy``, ``diameter_px``, ``seed`` and ``contrast``.

    Attributes:
        center_xy: (x, y) integer pixel of the nodule's bounding-box anchor: the box spans
            rows ``[y - h // 2, y - h // 2 + h)`` and columns ``[x - w // 2, x - w // 2 + w)``
            of the image the nodule was inserted into.
        diameter_px: requested equivalent diameter (mean ellipse axis), pixels.
        seed: seeds the shape latent ``z`` (drawn on the CPU, so it is device-independent).
        contrast: scale of the synthesised change of intensity (1 = as the texture model made
            it; 0.5 = half as conspicuous).
        label: class label given to the box.
        diameter_mm: ``diameter_px`` times the pixel spacing, when the spacing was known.
        box_xyxy: the inserted nodule's box, absolute pixels, x2/y2 exclusive.
        measured_diameter_px: equivalent diameter of the inserted mask.
        density: the density class an additive (layer) model inserted it with, one of
            ``cxr_nodule_aug.models.layer.DENSITY_CLASSES`` (``None``: an inpainter, which
            takes none; an additive replay of a record without one uses ``"solid"``).
        composition: the composition mode that inserted it (``"replace"``, ``"additive"``;
            ``None`` for a hand-made record). ``InsertNodules`` replays a record only in its own
            mode: it picks that mode when none is named and refuses another one.
        attributes: the row the diameter sampler drew, for samplers that draw whole rows
            (``diameters="lidc"``: the LIDC-IDRI nodule id, split and ratings;
            :class:`~cxr_nodule_aug.HEMSampler`: every mined column); ``None`` otherwise.
            Provenance only: a replay does not use it.
    """

    center_xy: tuple[int, int]
    diameter_px: float
    seed: int
    contrast: float = 1.0
    label: int = 1
    diameter_mm: float | None = None
    box_xyxy: tuple[float, float, float, float] | None = None
    measured_diameter_px: float | None = None
    density: str | None = None
    composition: str | None = None
    attributes: dict[str, Any] | None = dataclasses.field(default=None, hash=False)

    def __post_init__(self) -> None:
        if self.density is not None and self.density not in _DENSITY_CLASSES:
            raise ValueError(f"density must be one of {_DENSITY_CLASSES} or None, got {self.density!r}")
        if self.composition is not None and not isinstance(self.composition, str):
            raise TypeError(f"composition must be a composition mode's name or None, got {type(self.composition).__name__}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NoduleRecord:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown NoduleRecord fields: {sorted(unknown)}")
        data = dict(data)
        data["center_xy"] = tuple(int(v) for v in data["center_xy"])
        if data.get("box_xyxy") is not None:
            data["box_xyxy"] = tuple(float(v) for v in data["box_xyxy"])
        return cls(**data)

    def replace(self, **changes: Any) -> NoduleRecord:
        return dataclasses.replace(self, **changes)
