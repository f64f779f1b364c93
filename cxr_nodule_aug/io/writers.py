"""Writing outputs that survive a killed process: every file appears whole or not at all.

:func:`atomic_write` writes to a temporary file in the same folder and ``os.replace``-s it
into place, so a reader (or a resumed run) never sees a half-written file. A process killed
mid-write leaves only its temporary file, named ``.<name>.<pid>.tmp``; a resumed job calls
:func:`remove_temp_files` once its output is complete, so the finished folder holds exactly
what an uninterrupted run writes.

A resumable output folder (``sim``, ``synthesize``) starts with :func:`check_or_write_manifest`:
``manifest.json`` holds what decides the output's bytes, and a rerun resumes only a folder made
with the same. Item ``i`` of such an output draws from :func:`image_seed`, so its bytes depend on
``(seed, i)`` alone, not on how the work was split, sharded or resumed.
"""

from __future__ import annotations

import io
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

_TEMP = re.compile(r"^\..+\.\d+\.tmp$")


def temp_path(path: Path) -> Path:
    """The temporary name :func:`atomic_write` uses for ``path`` in this process."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def atomic_write(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file + ``os.replace``), creating no parents."""
    path = Path(path)
    tmp = temp_path(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def remove_temp_files(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files of :func:`atomic_write` under ``folder`` (recursively) and
    return them. Call it only when no other process is writing into ``folder``."""
    removed = []
    for p in Path(folder).rglob(".*.tmp"):
        if p.is_file() and _TEMP.match(p.name):
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def png_bytes(arr: np.ndarray) -> bytes:
    """(H, W) uint8 or uint16 array -> PNG bytes (values kept; fast compression)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def image_seed(seed: int, index: int, *stream: int) -> int:
    """The seed of item ``index`` of an output made with ``seed``: a 32-bit draw of NumPy's
    ``SeedSequence([seed, index, *stream])``, independent of every other item. ``stream``
    keeps one output's per-item seeds apart from other draws it seeds with ``[seed, k]``."""
    return int(np.random.SeedSequence([int(seed), int(index), *(int(s) for s in stream)]).generate_state(1)[0])


class OutputConflict(ValueError):
    """The output folder holds something other than (a resumable part of) the run writing to
    it. The command line asked for it, so the CLI reports it as a usage error (exit 2)."""


def _differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """Keys whose values differ, ``outer.inner`` inside mappings."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out += [f"{key}.{k}" for k in _differences(a, b)]
        elif a != b:
            out.append(key)
    return out


def check_or_write_manifest(out: str | os.PathLike, manifest: Mapping[str, Any], what: str, argument: str = "--out") -> bool:
    """Start or resume the output folder ``out``; returns whether it is already complete.

    A new or empty ``out`` gets ``manifest.json`` = ``manifest`` + ``"complete": false`` (the
    job sets it true at the end). An ``out`` holding a manifest must hold this one (``complete``
    aside; compared after a JSON round trip, so tuples equal lists): the job resumes there.
    Raises :class:`OutputConflict`, naming ``argument``, for a file, an unreadable manifest, a
    different one (naming the keys that differ), or a non-empty folder without one: outputs of
    two different runs never mix. ``what``: the kind of output, for messages ("a SimCXR export").
    """
    out = Path(out)
    where = f"{argument} {str(out)!r}"
    manifest = json.loads(json.dumps(dict(manifest)))
    path = out / "manifest.json"
    if out.exists() and not out.is_dir():
        raise OutputConflict(f"{where} is a file, not a directory")
    if path.is_file():
        try:
            old = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise OutputConflict(f"{where}: unreadable manifest.json ({err}); use a new {argument}") from None
        old_core = {k: v for k, v in old.items() if k != "complete"} if isinstance(old, dict) else {}
        if old_core != manifest:
            raise OutputConflict(f"{where} already holds {what} made by a different command (different arguments: {', '.join(_differences(old_core, manifest))}); "
                                 f"use a new {argument}, or the same arguments to resume")
        return bool(old.get("complete"))
    if out.is_dir() and any(out.iterdir()):
        raise OutputConflict(f"{where} is not empty and has no manifest.json: refusing to mix outputs; use a new {argument}")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps({**manifest, "complete": False}, indent=1, sort_keys=True).encode())
    return False
