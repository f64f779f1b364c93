"""HU -> linear attenuation at an effective X-ray energy.

A two-material model: voxels at or below 0 HU are water/air mixtures, voxels above 0 HU are
water/cortical-bone mixtures. Both parts are linear in HU, so a CT splits into two basis
volumes once (``soft`` and ``bone``) and the attenuation at any energy is

    mu(E) = mu_water(E) * soft + (mu_bone(E) - mu_water(E)) * bone        [1/mm]

which lets every rendered image draw its own energy from the same two precomputed projections.
"""

from __future__ import annotations

import numpy as np

# Mass attenuation coefficients (cm^2/g, NIST XCOM, total with coherent) at these energies (keV).
_ENERGY_KEV = np.array([30.0, 40.0, 50.0, 60.0, 80.0, 100.0])
_WATER_MU_RHO = np.array([0.3756, 0.2683, 0.2269, 0.2059, 0.1837, 0.1707])
_BONE_MU_RHO = np.array([1.331, 0.6655, 0.4242, 0.3148, 0.2229, 0.1855])  # ICRU-44 cortical bone
_BONE_DENSITY_G_CM3 = 1.92
#: Effective energy of the CT scanner that produced the HU values.
CT_EFFECTIVE_ENERGY_KEV = 70.0


def _loglog_interp(energy_kev: float, table: np.ndarray) -> float:
    return float(np.exp(np.interp(np.log(energy_kev), np.log(_ENERGY_KEV), np.log(table))))


def mu_water_per_mm(energy_kev: float) -> float:
    """Linear attenuation of water at ``energy_kev`` in 1/mm."""
    _check_energy(energy_kev)
    return _loglog_interp(energy_kev, _WATER_MU_RHO) * 0.1


def mu_bone_per_mm(energy_kev: float) -> float:
    """Linear attenuation of cortical bone at ``energy_kev`` in 1/mm."""
    _check_energy(energy_kev)
    return _loglog_interp(energy_kev, _BONE_MU_RHO) * _BONE_DENSITY_G_CM3 * 0.1


def bone_hu() -> float:
    """HU that cortical bone has on the CT (at :data:`CT_EFFECTIVE_ENERGY_KEV`)."""
    return 1000.0 * (mu_bone_per_mm(CT_EFFECTIVE_ENERGY_KEV) / mu_water_per_mm(CT_EFFECTIVE_ENERGY_KEV) - 1.0)


def hu_to_basis(hu: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Split HU (any shape) into the (soft, bone) basis: soft in [0, 1], bone >= 0 (float32)."""
    hu = np.asarray(hu, dtype=np.float32)
    soft = 1.0 + np.clip(hu, -1000.0, 0.0) / 1000.0
    bone = np.clip(hu, 0.0, None) / np.float32(bone_hu())
    return soft.astype(np.float32), bone.astype(np.float32)


def basis_weights(energy_kev: float) -> tuple[float, float]:
    """Weights (1/mm) turning (soft, bone) basis line integrals into attenuation line integrals."""
    mw = mu_water_per_mm(energy_kev)
    return mw, mu_bone_per_mm(energy_kev) - mw


def _check_energy(energy_kev: float) -> None:
    if not (_ENERGY_KEV[0] <= energy_kev <= _ENERGY_KEV[-1]):
        raise ValueError(
            f"energy_kev={energy_kev} is outside the tabulated range "
            f"[{_ENERGY_KEV[0]:.0f}, {_ENERGY_KEV[-1]:.0f}] keV"
        )
