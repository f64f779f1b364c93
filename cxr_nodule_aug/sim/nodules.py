"""3-D nodule models: shape (a real LIDC-IDRI nodule, or a procedural sphere, ellipsoid,
lobulated or spiculated one) and density (solid, part-solid, ground-glass, optionally
calcified), evaluated as soft occupancy and HU on arbitrary points in mm.

LIDC nodules (``shape="lidc"``) are the readers' >= 50 % consensus masks from the LIDC-IDRI
annotation database (:mod:`cxr_nodule_aug.lidc`), resampled to isotropic voxels, at real size
(``scale=1``) or scaled; their density follows the readers' median texture rating (<= 2
ground-glass, 2.5-3.5 part-solid, >= 4 solid) and calcification rating, with a smooth random
internal HU variation. What stays simulated: the HU values themselves (LIDC has no CT pixels
here), the part-solid core (the deepest part of the mask) and the calcified region.

``diameter_mm`` is the diameter of the sphere with the same volume as the nodule's core
(spicules excluded). Lobulation is a random low-order spherical-harmonic perturbation of the
radius: a random polynomial of degree <= 4 in the unit direction, which spans exactly the
spherical harmonics of degree <= 4.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from itertools import combinations_with_replacement

import numpy as np

SHAPES = ("lidc", "sphere", "ellipsoid", "lobulated", "spiculated")
DENSITIES = ("solid", "part_solid", "ground_glass")
CALCIFICATIONS = ("none", "core", "whole")
PROCEDURAL_SHAPES = SHAPES[1:]

# Degree 1..4 monomials of the unit direction (degree 0 is the mean radius itself).
_MONOMIALS = [c for d in range(1, 5) for c in combinations_with_replacement(range(3), d)]


def _fibonacci_sphere(n: int = 2000) -> np.ndarray:
    i = np.arange(n) + 0.5
    phi = np.arccos(1 - 2 * i / n)
    theta = np.pi * (1 + 5**0.5) * i
    return np.stack([np.cos(theta) * np.sin(phi), np.sin(theta) * np.sin(phi), np.cos(phi)], 1)


_SPHERE = _fibonacci_sphere()


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    q *= np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] *= -1
    return q


@dataclass
class NoduleParams:
    """Everything that defines one 3-D nodule (replayable: no hidden randomness).

    Lengths in mm; HU in Hounsfield units; ``rotation`` is a row-major 3x3 matrix taking
    world offsets to the nodule frame.
    """

    shape: str
    density: str
    diameter_mm: float
    solid_hu: float
    ground_glass_hu: float = -600.0
    solid_core_fraction: float = 1.0  # radius fraction of the solid core (part-solid)
    axes_ratio: tuple[float, float, float] = (1.0, 1.0, 1.0)  # ellipsoid semi-axes / radius
    lobulation_coef: tuple[float, ...] = ()  # coefficients of _MONOMIALS
    spicules: tuple[tuple[float, float, float, float, float], ...] = ()  # (dx, dy, dz, length_mm, width_mm)
    rotation: tuple[float, ...] = (1, 0, 0, 0, 1, 0, 0, 0, 1)
    center_mm: tuple[float, float, float] | None = None  # world (x, y, z); None: placed at random
    # shape="lidc": the nodule's id, its split and ratings (records), and the factor from its
    # real size (diameter_mm = real equivalent-sphere diameter * lidc_scale).
    lidc_id: str | None = None
    lidc_split: str | None = None
    lidc_ratings: dict | None = None
    lidc_scale: float = 1.0
    calcification: str = "none"  # "core" (a central calcified part) or "whole"
    calcium_hu: float = 600.0
    heterogeneity_hu: float = 0.0  # std of the smooth internal HU variation
    texture_seed: int = 0

    def __post_init__(self) -> None:
        if self.shape not in SHAPES:
            raise ValueError(f"shape={self.shape!r}: expected one of {SHAPES}")
        if self.density not in DENSITIES:
            raise ValueError(f"density={self.density!r}: expected one of {DENSITIES}")
        if not (0.5 <= self.diameter_mm <= 80):
            raise ValueError(f"diameter_mm={self.diameter_mm}: expected 0.5..80 mm")
        if self.calcification not in CALCIFICATIONS:
            raise ValueError(f"calcification={self.calcification!r}: expected one of {CALCIFICATIONS}")
        if self.shape == "lidc" and not self.lidc_id:
            raise ValueError("shape='lidc' needs lidc_id (a nodule id of cxr_nodule_aug.lidc)")
        if not self.lidc_scale > 0:
            raise ValueError(f"lidc_scale={self.lidc_scale}: expected > 0")

    @property
    def radius_mm(self) -> float:
        return self.diameter_mm / 2

    def as_dict(self) -> dict:
        d = asdict(self)
        d["rotation"] = list(self.rotation)
        return d

    def radius_fn(self, directions: np.ndarray) -> np.ndarray:
        """Core radius (mm) along unit ``directions`` (N, 3) given in the nodule frame."""
        r = np.full(len(directions), self.radius_mm, dtype=directions.dtype)
        if self.shape == "ellipsoid":
            a = np.asarray(self.axes_ratio, dtype=directions.dtype)
            r = self.radius_mm / np.sqrt(np.maximum(((directions / a) ** 2).sum(1), 1e-12))
        elif self.shape in ("lobulated", "spiculated") and self.lobulation_coef:
            r = self.radius_mm * (1.0 + _poly(directions, self.lobulation_coef))
        return np.maximum(r, 0.2 * self.radius_mm)

    @property
    def extent_mm(self) -> float:
        """Radius of a sphere that contains the whole nodule, spicules included."""
        if self.shape == "lidc":
            return _lidc_template(self.lidc_id).extent_mm * self.lidc_scale
        core = float(self.radius_fn(_SPHERE).max()) * 1.05  # the point set can miss the peak
        spic = max((core + s[3] for s in self.spicules), default=0.0)
        return max(core, spic)

    def evaluate(self, offsets_mm: np.ndarray, voxel_mm: float) -> tuple[np.ndarray, np.ndarray]:
        """Soft occupancy in [0, 1] and HU at world offsets from the centre.

        Args:
            offsets_mm: (N, 3) float, world-frame offsets from the nodule centre.
            voxel_mm: sampling step; edges are anti-aliased over one step.
        Returns:
            (occupancy (N,) float32, hu (N,) float32).
        """
        q = (np.asarray(offsets_mm, dtype=np.float32) @ np.asarray(self.rotation, np.float32).reshape(3, 3).T)
        if self.shape == "lidc":
            return self._evaluate_lidc(q)
        dist = np.sqrt((q * q).sum(1))
        occ = np.zeros(len(q), np.float32)
        hu = np.zeros(len(q), np.float32)
        # Only points within the bounding sphere need the (costly) radius function.
        near = np.nonzero(dist <= self.extent_mm + voxel_mm)[0]
        qn, dn = q[near], dist[near]
        dirs = qn / np.maximum(dn, 1e-6)[:, None]
        radius = self.radius_fn(dirs).astype(np.float32)
        o = np.clip(0.5 - (dn - radius) / voxel_mm, 0.0, 1.0)
        for dx, dy, dz, length, width in self.spicules:
            v = np.array([dx, dy, dz], np.float32)
            base = float(self.radius_fn(v[None].astype(np.float64))[0])
            t = qn @ v
            cand = np.nonzero((t > 0.5 * base) & (t < base + length))[0]
            if len(cand) == 0:
                continue
            tc = t[cand]
            perp = np.sqrt(np.maximum((qn[cand] ** 2).sum(1) - tc**2, 0.0))
            half_width = 0.5 * width * np.clip((base + length - tc) / length, 0.0, 1.0)
            o[cand] = np.maximum(o[cand], np.clip(0.5 - (perp - half_width) / voxel_mm, 0, 1))
        if self.density == "solid":
            h = np.full(len(qn), self.solid_hu, np.float32)
        elif self.density == "ground_glass":
            h = np.full(len(qn), self.ground_glass_hu, np.float32)
        else:
            core = np.clip(0.5 - (dn - self.solid_core_fraction * radius) / voxel_mm, 0.0, 1.0)
            h = core * self.solid_hu + (1 - core) * self.ground_glass_hu
        occ[near], hu[near] = o, h
        return occ, hu


    def _evaluate_lidc(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        t = _lidc_template(self.lidc_id)
        idx = (q / np.float32(self.lidc_scale * t.voxel_mm) + t.centre_index).T  # (3, N) template voxels
        occ = np.zeros(len(q), np.float32)
        hu = np.zeros(len(q), np.float32)
        near = np.nonzero(np.all((idx > -1) & (idx < np.array(t.occupancy.shape)[:, None]), axis=0))[0]
        if len(near) == 0:
            return occ, hu
        from scipy import ndimage

        at = idx[:, near]
        o = ndimage.map_coordinates(t.occupancy, at, order=1, mode="constant", cval=0.0)
        depth = ndimage.map_coordinates(t.depth, at, order=1, mode="constant", cval=0.0)  # 0 edge .. 1 deepest
        if self.density == "solid":
            h = np.full(len(near), self.solid_hu, np.float32)
        elif self.density == "ground_glass":
            h = np.full(len(near), self.ground_glass_hu, np.float32)
        else:  # the deepest part is solid, with a soft 10 %-of-depth transition
            core = np.clip((depth - (1 - self.solid_core_fraction)) / 0.1 + 0.5, 0.0, 1.0)
            h = core * self.solid_hu + (1 - core) * self.ground_glass_hu
        if self.heterogeneity_hu > 0:
            field_ = _smooth_noise(t.occupancy.shape, self.texture_seed, sigma_vox=1.5 / t.voxel_mm)
            h = h + self.heterogeneity_hu * ndimage.map_coordinates(field_, at, order=1, mode="nearest")
        if self.calcification != "none":
            calc = np.ones(len(near), np.float32) if self.calcification == "whole" else np.clip((depth - 0.5) / 0.1 + 0.5, 0, 1)
            h = calc * self.calcium_hu + (1 - calc) * h
        occ[near], hu[near] = np.clip(o, 0.0, 1.0), h.astype(np.float32)
        return occ, hu


@dataclass
class _LIDCTemplate:
    occupancy: np.ndarray  # (X, Y, Z) float32 in [0, 1], world axes (left, anterior, superior)
    depth: np.ndarray  # same grid: distance to the edge / its maximum, in [0, 1]
    voxel_mm: float
    centre_index: np.ndarray  # (3,) float32, the mask's centroid in template voxels
    extent_mm: float  # at scale 1: radius of a sphere around the centroid holding the mask
    diameter_mm: float  # at scale 1: equivalent-sphere diameter of the consensus mask


_TEMPLATES: dict[str, _LIDCTemplate] = {}
_LIDC_DB = None
#: Isotropic voxel of the LIDC templates (mm): finer than the CT pixel (about 0.5-0.9 mm).
LIDC_TEMPLATE_VOXEL_MM = 0.5


def _lidc_template(nodule_id: str) -> _LIDCTemplate:
    global _LIDC_DB
    if nodule_id not in _TEMPLATES:
        from scipy import ndimage

        from cxr_nodule_aug.lidc import LIDCDatabase

        if _LIDC_DB is None:
            _LIDC_DB = LIDCDatabase()
        nod = _LIDC_DB.nodule(nodule_id)
        iso, h = nod.isotropic_mask(LIDC_TEMPLATE_VOXEL_MM)
        # Mask axes (row = posterior, col = patient's left, slice = superior) -> world (x, y, z).
        occ = np.pad(np.ascontiguousarray(iso.transpose(1, 0, 2)[:, ::-1, :]), 2)
        inside = occ >= 0.5
        depth = ndimage.distance_transform_edt(inside).astype(np.float32)
        depth /= max(float(depth.max()), 1e-6)
        centre = np.argwhere(inside).mean(0).astype(np.float32)
        pts = np.argwhere(occ > 0)
        extent = float(np.sqrt(((pts - centre) ** 2).sum(1)).max() + 1.0) * h
        if len(_TEMPLATES) > 512:
            _TEMPLATES.clear()
        _TEMPLATES[nodule_id] = _LIDCTemplate(occ, depth, h, centre, extent, nod.diameter_mm)
    return _TEMPLATES[nodule_id]


def _smooth_noise(shape, seed: int, sigma_vox: float) -> np.ndarray:
    """Unit-variance Gaussian-smoothed noise on a grid (reproducible from ``seed``)."""
    from scipy import ndimage

    f = ndimage.gaussian_filter(np.random.default_rng(int(seed)).standard_normal(shape).astype(np.float32), sigma_vox)
    return (f / max(float(f.std()), 1e-6)).astype(np.float32)


def _poly(directions: np.ndarray, coef) -> np.ndarray:
    cols = [directions[:, 0], directions[:, 1], directions[:, 2]]
    out = np.zeros(len(directions), dtype=directions.dtype)
    cache: dict[tuple[int, ...], np.ndarray] = {}
    for c, mono in zip(coef, _MONOMIALS):
        # Each monomial extends a shorter one already computed (the list is ordered by degree).
        term = cols[mono[0]] if len(mono) == 1 else cache[mono[:-1]] * cols[mono[-1]]
        cache[mono] = term
        out += c * term
    return out


@dataclass
class NoduleSampler:
    """Draws random procedural :class:`NoduleParams` (sizes like NODE21: 4-30 mm); real shapes
    come from :class:`LIDCNoduleSampler`.

    Attributes:
        diameter_mm: (low, high); drawn log-uniformly.
        shape_probs / density_probs: probabilities in the order of ``PROCEDURAL_SHAPES`` / ``DENSITIES``.
        solid_hu: (low, high) HU of solid tissue (soft tissue is about 0..60 HU).
        ground_glass_hu: (low, high) HU of ground-glass components.
    """

    diameter_mm: tuple[float, float] = (4.0, 30.0)
    shape_probs: tuple[float, ...] = (0.15, 0.25, 0.35, 0.25)
    density_probs: tuple[float, ...] = (0.7, 0.2, 0.1)
    solid_hu: tuple[float, float] = (-60.0, 60.0)
    ground_glass_hu: tuple[float, float] = (-700.0, -350.0)
    lobulation_amplitude: tuple[float, float] = (0.06, 0.18)
    extra: dict = field(default_factory=dict)

    def __call__(self, rng: np.random.Generator, diameter_mm: float | None = None) -> NoduleParams:
        lo, hi = self.diameter_mm
        d = float(np.exp(rng.uniform(np.log(lo), np.log(hi)))) if diameter_mm is None else float(diameter_mm)
        shape = PROCEDURAL_SHAPES[rng.choice(len(PROCEDURAL_SHAPES), p=np.asarray(self.shape_probs) / sum(self.shape_probs))]
        density = DENSITIES[rng.choice(len(DENSITIES), p=np.asarray(self.density_probs) / sum(self.density_probs))]
        axes = (1.0, 1.0, 1.0)
        coef: tuple[float, ...] = ()
        spicules: tuple = ()
        if shape == "ellipsoid":
            a = rng.uniform(0.65, 1.0, 3)
            axes = tuple(float(x) for x in a / np.cbrt(np.prod(a)))  # same volume as the sphere
        if shape in ("lobulated", "spiculated"):
            c = rng.standard_normal(len(_MONOMIALS))
            p = _poly(_SPHERE, c)
            p -= p.mean()
            amp = rng.uniform(*self.lobulation_amplitude) * (0.5 if shape == "spiculated" else 1.0)
            c = c * amp / max(p.std(), 1e-9)
            # Remove the mean so the volume stays close to the nominal sphere's.
            mean = _poly(_SPHERE, c).mean()
            coef = tuple(float(x) for x in c)
            coef = _shift_mean(coef, mean)
        if shape == "spiculated":
            n = int(rng.integers(5, 14))
            dirs = rng.standard_normal((n, 3))
            dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
            r = d / 2
            spicules = tuple(
                (float(v[0]), float(v[1]), float(v[2]), float(rng.uniform(0.3, 0.9) * r),
                 float(np.clip(rng.uniform(0.15, 0.3) * r, 0.6, 2.5)))
                for v in dirs
            )
        solid = float(rng.uniform(*self.solid_hu))
        ggo = float(rng.uniform(*self.ground_glass_hu))
        core = float(rng.uniform(0.3, 0.6)) if density == "part_solid" else (1.0 if density == "solid" else 0.0)
        rot = tuple(float(x) for x in _random_rotation(rng).ravel())
        return NoduleParams(
            shape=shape, density=density, diameter_mm=d, solid_hu=solid, ground_glass_hu=ggo,
            solid_core_fraction=core, axes_ratio=axes, lobulation_coef=coef, spicules=spicules, rotation=rot,
        )


def _shift_mean(coef: tuple[float, ...], mean: float) -> tuple[float, ...]:
    # The even-degree monomials x^2 + y^2 + z^2 sum to 1 on the sphere: subtract the mean there.
    c = list(coef)
    for idx, mono in enumerate(_MONOMIALS):
        if len(mono) == 2 and mono[0] == mono[1]:
            c[idx] -= mean
    return tuple(c)


def density_from_ratings(texture: float) -> str:
    """LIDC texture rating (median across readers) -> density: 1-2 non-solid (ground-glass),
    2.5-3.5 part-solid, 4-5 solid."""
    if texture <= 2:
        return "ground_glass"
    return "part_solid" if texture < 4 else "solid"


def calcification_from_ratings(calcification: float) -> str:
    """LIDC calcification rating -> how much of the nodule is calcified: 6 absent -> "none",
    3 solid -> "whole", 1 popcorn / 2 laminated / 4 non-central / 5 central -> "core"."""
    if calcification > 5.5:
        return "none"
    return "whole" if calcification == 3 else "core"


@dataclass
class LIDCNoduleSampler:
    """Draws real LIDC-IDRI nodules (:class:`NoduleParams` with ``shape="lidc"``) of one split.

    The nodule is drawn uniformly from the split's nodules whose real equivalent-sphere diameter
    is within ``diameter_mm``; it keeps its real size unless the caller asks for a diameter.
    Density and calcification follow the readers' median ratings; HU values are drawn.

    Attributes:
        split: "train", "val" or "test" (exports for training draw from "train" only, so a test
            nodule's shape is never seen in training).
        diameter_mm: (low, high) real sizes to draw from.
        min_readers: only nodules annotated by at least this many readers.
    """

    split: str = "train"
    diameter_mm: tuple[float, float] = (4.0, 30.0)
    min_readers: int = 1
    solid_hu: tuple[float, float] = (-60.0, 60.0)
    ground_glass_hu: tuple[float, float] = (-700.0, -350.0)
    calcium_hu: tuple[float, float] = (300.0, 900.0)
    heterogeneity_hu: tuple[float, float] = (10.0, 60.0)

    def __post_init__(self) -> None:
        from cxr_nodule_aug.lidc import SPLITS

        if self.split not in SPLITS:
            raise ValueError(f"split={self.split!r}: expected one of {SPLITS}")
        lo, hi = self.diameter_mm
        if not 0 < lo <= hi:
            raise ValueError(f"diameter_mm={self.diameter_mm}: expected 0 < low <= high (mm)")

    @property
    def rows(self) -> list[dict]:
        from cxr_nodule_aug.lidc import nodule_table

        lo, hi = self.diameter_mm
        rows = [r for r in nodule_table(self.split, self.min_readers) if lo <= r["diameter_mm"] <= hi]
        if not rows:
            raise ValueError(f"no LIDC {self.split} nodule with {lo} <= diameter_mm <= {hi} "
                             f"and >= {self.min_readers} readers")
        return rows

    def __call__(self, rng: np.random.Generator, diameter_mm: float | None = None) -> NoduleParams:
        rows = self.rows
        row = rows[int(rng.integers(len(rows)))]
        real = float(row["diameter_mm"])
        d = real if diameter_mm is None else float(diameter_mm)
        ratings = {k: row[k] for k in ("subtlety", "internalStructure", "calcification", "sphericity", "margin",
                                       "lobulation", "spiculation", "texture", "malignancy")}
        density = density_from_ratings(ratings["texture"])
        return NoduleParams(
            shape="lidc", density=density, diameter_mm=d, solid_hu=float(rng.uniform(*self.solid_hu)),
            ground_glass_hu=float(rng.uniform(*self.ground_glass_hu)),
            solid_core_fraction=float(rng.uniform(0.3, 0.6)) if density == "part_solid" else (1.0 if density == "solid" else 0.0),
            lidc_id=row["nodule_id"], lidc_split=row["split"], lidc_ratings=ratings, lidc_scale=d / real,
            calcification=calcification_from_ratings(ratings["calcification"]),
            calcium_hu=float(rng.uniform(*self.calcium_hu)), heterogeneity_hu=float(rng.uniform(*self.heterogeneity_hu)),
            texture_seed=int(rng.integers(2**31)),
        )
