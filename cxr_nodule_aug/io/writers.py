"""Writing outputs that survive a killed process: every file appears whole or not at all.

:func:`atomic_write` writes to a temporary file in the same folder and ``os.replace``-s it
into place, so a reader (or a resumed run) never sees a half-written file. A process killed
mid-write leaves only its temporary file, named ``.<name>.<pid>.tmp``; a resumed job calls
:func:`remove_temp_files` once its output is complete, so the finished folder holds exactly
what an uninterrupted run writes.
"""

from __future__ import annotations

import io
import os
import re
from pathlib import Path

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
