"""``InsertNodules``: the deterministic replay of recorded nodules."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from cxr_nodule_aug.records import NoduleRecord
from cxr_nodule_aug.synthesizer import ModelSpec, NoduleSynthesizer
from cxr_nodule_aug.transforms._base import NoduleTransformBase, build_synthesizer


class InsertNodules(NoduleTransformBase):
    """Insert exactly the given nodules (no randomness).

    ``InsertNodules(sample_out["nodules"])`` applied to the same input sample, with the same
    models on the same device, reproduces what ``NoduleInpaint`` did, pixel for pixel. Also
    the way to place nodules by hand: ``NoduleRecord(center_xy=(x, y), diameter_px=20,
    seed=7)``. Records only need ``center_xy``, ``diameter_px``, ``seed`` (and optionally
    ``contrast``, ``label``); output fields are recomputed.

    The lung mask is not consulted: the record says where the nodule goes. Boxes, labels,
    masks and records are appended to the target as ``NoduleInpaint`` does. Pass the same
    ``compile_texture`` as the transform that made the records for a bit-exact replay.

    A replay uses the composition mode that made the records: each record names it
    (``NoduleRecord.composition``), and with ``composition=None`` (and no ``synthesizer``) the
    records' own mode is used, so ``InsertNodules(out["nodules"])`` replays records of either
    mode. Hand-made records (``composition=None``) take ``composition=`` or the default,
    ``"additive"`` like ``NoduleInpaint``'s. Records of two modes in one call, a record
    whose mode differs from ``composition=`` or from the shared ``synthesizer``'s, and records
    carrying a density (the additive mode's condition) replayed with ``"replace"`` are refused:
    any of them would insert a nodule other than the recorded one. In the additive mode a
    record's ``density`` is the layer model's condition (``"solid"`` where it is ``None``).

    Records the input target already lists under ``nodules`` are in its pixels already and are
    not inserted again: ``out["nodules"]`` holds the input's earlier records followed by the new
    ones, and ``InsertNodules(out["nodules"])`` applied to that same input inserts only the new
    ones, so it reproduces ``out`` whether or not the input had records. (Records are matched
    on ``center_xy``, ``diameter_px``, ``seed``, ``contrast`` and ``label``, each earlier
    record once.) Every other record given is inserted, all in one pass: records made by a
    chain of transforms replay bit for bit link by link, while in one pass a later nodule's
    texture sees a context without the earlier ones.

    ``synthesizer=`` shares an engine (e.g. the ``NoduleInpaint``'s: ``InsertNodules(records,
    synthesizer=inpaint.synthesizer)``); otherwise one is loaded from ``weights`` and the model
    arguments (no lung model: a replay does not need one).
    """

    def __init__(
        self,
        records: Sequence[NoduleRecord | Mapping[str, Any]],
        *,
        weights: str | os.PathLike | None = None,
        shape_model: ModelSpec = None,
        texture_model: ModelSpec = None,
        device: Any = None,
        compile_texture: bool = False,
        composition: str | None = None,
        synthesizer: NoduleSynthesizer | None = None,
        **keys: str,
    ) -> None:
        parsed = []
        for i, r in enumerate(records):
            if isinstance(r, Mapping):
                r = NoduleRecord.from_dict(dict(r))
            if not isinstance(r, NoduleRecord):
                raise TypeError(f"records[{i}] must be a NoduleRecord or a dict, got {type(r).__name__}")
            if not r.diameter_px > 0:
                raise ValueError(f"records[{i}].diameter_px must be positive, got {r.diameter_px}")
            parsed.append(r.replace(box_xyxy=None, measured_diameter_px=None))
        modes = sorted({r.composition for r in parsed if r.composition is not None})
        if len(modes) > 1:
            first = {m: next(i for i, r in enumerate(parsed) if r.composition == m) for m in modes}
            raise ValueError(f"records mix composition modes ({', '.join(f'records[{i}]: {m!r}' for m, i in first.items())}): "
                             "replay each mode's records with its own InsertNodules")
        if modes and composition is None and synthesizer is None:
            composition = modes[0]  # the records' own mode
        # A replay needs no lung model: none is loaded (a given synthesizer may hold one, unused).
        synthesizer = build_synthesizer(synthesizer, weights=weights, shape_model=shape_model, texture_model=texture_model,
                                        lung_model=False if synthesizer is None else None,
                                        device=device, compile_texture=compile_texture, composition=composition)
        other = [i for i, r in enumerate(parsed) if r.composition not in (None, synthesizer.composition)]
        if other:
            source = "the given synthesizer's" if composition is None else "composition="
            raise ValueError(
                f"records{other} were made by composition={parsed[other[0]].composition!r}, {source} is {synthesizer.composition!r}: "
                f"replaying them there would insert other nodules; pass composition={parsed[other[0]].composition!r} "
                "(or composition=None to use the records' own mode)"
            )
        if synthesizer.composition == "replace":
            dense = [i for i, r in enumerate(parsed) if r.density is not None]
            if dense:
                raise ValueError(
                    f"records{dense} carry a density ({parsed[dense[0]].density!r}...): they were made by composition='additive', "
                    "this replay's composition is 'replace'; replay them with composition='additive' (the default)"
                )
        super().__init__(synthesizer=synthesizer, **keys)
        self.records = [r.replace(composition=synthesizer.composition) for r in parsed]

    def extra_repr(self) -> str:
        return f"{len(self.records)} records"

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        image, target = flat_inputs
        H, W = image.shape[-2:]
        for i, r in enumerate(self.records):
            x, y = r.center_xy
            if not (0 <= x < W and 0 <= y < H):
                raise ValueError(f"records[{i}].center_xy={r.center_xy} lies outside the {W}x{H} image")
        present = Counter(_key(r) for r in target.get(self.records_key) or [])
        todo = []
        for r in self.records:
            if present[_key(r)] > 0:
                present[_key(r)] -= 1  # already in the input's pixels
            else:
                todo.append(r)
        return {"records": todo}


def _key(record: NoduleRecord | Mapping[str, Any]) -> tuple:
    if isinstance(record, Mapping):
        record = NoduleRecord.from_dict(dict(record))
    if not isinstance(record, NoduleRecord):
        raise TypeError(f"the target's records must be NoduleRecord or dicts, got {type(record).__name__}")
    return (tuple(record.center_xy), float(record.diameter_px), int(record.seed), float(record.contrast), int(record.label))
