"""3-D nodule models: shape (sphere, ellipsoid, lobulated, spiculated) and density (solid,
part-solid, ground-glass), evaluated as soft occupancy and HU on arbitrary points in mm.

``diameter_mm`` is the diameter of the sphere with the same volume as the nodule's core
(spicules excluded). Lobulation is a random low-order spherical-harmonic perturbation of the
radius: a random polynomial of degree <= 4 in the unit direction, which spans exactly the
spherical harmonics of degree <= 4.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from itertools import combinations_with_replacement

import numpy as np

SHAPES = ("sphere", "ellipsoid", "lobulated", "spiculated")
DENSITIES = ("solid", "part_solid", "ground_glass")

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

    def __post_init__(self) -> None:
        if self.shape not in SHAPES:
            raise ValueError(f"shape={self.shape!r}: expected one of {SHAPES}")
        if self.density not in DENSITIES:
            raise ValueError(f"density={self.density!r}: expected one of {DENSITIES}")
        if not (0.5 <= self.diameter_mm <= 80):
            raise ValueError(f"diameter_mm={self.diameter_mm}: expected 0.5..80 mm")

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
    """Draws random :class:`NoduleParams` (sizes like NODE21: 4-30 mm).

    Attributes:
        diameter_mm: (low, high); drawn log-uniformly.
        shape_probs / density_probs: probabilities in the order of ``SHAPES`` / ``DENSITIES``.
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
        shape = SHAPES[rng.choice(len(SHAPES), p=np.asarray(self.shape_probs) / sum(self.shape_probs))]
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
