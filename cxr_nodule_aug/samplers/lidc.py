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
    #: The columns :meth:`sample_rows` gives besides the diameter (``attribute``).
    ROW_COLUMNS = ("lidc_nodule_id", "lidc_split", "n_readers")

    def __init__(self, split: str = "train", kind: str = "coronal", range_mm: tuple[float, float] = (3.0, 60.0),
                 min_readers: int = 1) -> None:
        from cxr_nodule_aug.lidc import RATINGS, nodule_table

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
        self.attribute = "diameter_mm"
        self._rows = [{"diameter_mm": float(r[column]), "lidc_nodule_id": r["nodule_id"], "lidc_split": r["split"],
                       "n_readers": int(r["n_readers"]), **{k: float(r[k]) for k in RATINGS}} for r in rows]

    def __call__(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.values[torch.randint(len(self.values), (n,), generator=generator)]

    def sample_rows(self, n: int, generator: torch.Generator | None = None) -> list[dict]:
        """The nodules drawn (the same draw as :meth:`__call__` with the same generator): per
        nodule ``diameter_mm`` (the drawn value), ``lidc_nodule_id``, ``lidc_split``,
        ``n_readers`` and the readers' median ratings (:data:`cxr_nodule_aug.lidc.RATINGS`).
        ``NoduleInpaint`` puts them in each record's ``attributes``."""
        idx = torch.randint(len(self.values), (n,), generator=generator)
        return [dict(self._rows[i]) for i in idx.tolist()]

    def __len__(self) -> int:
        return len(self.values)

    def __repr__(self) -> str:
        return (f"LIDCDiameters(split={self.split!r}, kind={self.kind!r}, range_mm={self.range_mm}, "
                f"{len(self)} nodules)")


#: Strings :func:`resolve_sampler` accepts for ``diameters``: ``"lidc"`` (the train split) or
#: ``"lidc:SPLIT"``.
NAMED_DIAMETERS = ("lidc", "lidc:train", "lidc:val", "lidc:test")


def resolve_sampler(spec, name: str, *, unit: str | None = None):
    """A named sampler from a string, else ``spec`` unchanged (numbers, ranges, sequences and
    callables are :func:`~cxr_nodule_aug.samplers.as_sampler`'s to convert).

    ``"lidc"`` / ``"lidc:SPLIT"`` -> :class:`LIDCDiameters` of that split (default train): real
    LIDC-IDRI nodule sizes in mm, so ``unit`` must be ``None`` or ``"mm"``. Only ``diameters``
    takes a name. Raises ``ValueError`` naming ``name`` for an unknown string.
    """
    if not isinstance(spec, str):
        return spec
    if name != "diameters" or spec not in NAMED_DIAMETERS:
        accepted = f"one of {NAMED_DIAMETERS}" if name == "diameters" else "no name"
        raise ValueError(f"{name}={spec!r}: {name} accepts {accepted} as a string "
                         "(or a number, a (min, max) tuple, a sequence, a sampler)")
    if unit not in (None, "mm"):
        raise ValueError(f"{name}={spec!r} draws LIDC-IDRI diameters in mm, but unit={unit!r}; use unit='mm' or leave it out")
    split = spec.split(":", 1)[1] if ":" in spec else "train"
    return LIDCDiameters(split=split)

