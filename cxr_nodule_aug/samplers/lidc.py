"""Nodule diameters drawn from the LIDC-IDRI distribution (the readers' consensus masks)."""

from __future__ import annotations

import torch


class LIDCDiameters:
    """Diameters in mm drawn from the real nodules of one LIDC-IDRI split.

    Each draw picks a nodule uniformly from the split (every nodule annotated by at least
    ``min_readers`` readers, real size within ``range_mm``) and returns its size:

    * ``kind="coronal"`` (default): the diameter of its coronal silhouette, measured as the
      library measures nodules in images (mean of the equivalent ellipse's axes): the size a
      frontal radiograph shows;
    * ``kind="sphere"``: the diameter of the sphere with the consensus mask's volume.

    Reads :func:`cxr_nodule_aug.lidc.nodule_table` (needs ``pip install cxr-nodule-aug[lidc]``):
    the first use builds the table from the database and caches it (about a minute, once).

    Example:
        >>> from cxr_nodule_aug import NoduleInpaint
        >>> tf = NoduleInpaint(diameters=LIDCDiameters(split="train"))   # doctest: +SKIP
        >>> tf.unit                                                        # doctest: +SKIP
        'mm'
    """

    unit = "mm"

    def __init__(self, split: str = "train", kind: str = "coronal", range_mm: tuple[float, float] = (3.0, 60.0),
                 min_readers: int = 1) -> None:
        from cxr_nodule_aug.lidc import nodule_table

        if kind not in ("coronal", "sphere"):
            raise ValueError(f"kind={kind!r}: expected 'coronal' or 'sphere'")
        lo, hi = (float(v) for v in range_mm)
        if not 0 < lo <= hi:
            raise ValueError(f"range_mm={range_mm}: expected 0 < min <= max (mm)")
        column = "coronal_diameter_mm" if kind == "coronal" else "diameter_mm"
        rows = [r for r in nodule_table(split, min_readers) if lo <= r[column] <= hi]
        if not rows:
            raise ValueError(f"no LIDC {split} nodule with {lo} <= {column} <= {hi} and >= {min_readers} readers")
        self.split, self.kind, self.range_mm, self.min_readers = split, kind, (lo, hi), int(min_readers)
        self.nodule_ids = [r["nodule_id"] for r in rows]
        self.values = torch.tensor([r[column] for r in rows], dtype=torch.float64)

    def __call__(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.values[torch.randint(len(self.values), (n,), generator=generator)]

    def __len__(self) -> int:
        return len(self.values)

    def __repr__(self) -> str:
        return (f"LIDCDiameters(split={self.split!r}, kind={self.kind!r}, range_mm={self.range_mm}, "
                f"{len(self)} nodules)")
