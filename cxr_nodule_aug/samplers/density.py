"""Density classes for the additive layer model: ``sampler(n, generator=None) -> list[str]``.

A density is a category (:data:`~cxr_nodule_aug.models.layer.DENSITY_CLASSES`:
ground-glass, part-solid, solid, calcified), so its sampler returns class names rather than
numbers; any callable with this signature works.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from cxr_nodule_aug.models.layer import DENSITY_CLASSES


class DensityChoice:
    """Density classes drawn with given probabilities (one class: always that class).

    Args:
        weights: ``{class: weight}`` (normalised here), a sequence of classes (uniform) or one
            class name.
    """

    def __init__(self, weights: Mapping[str, float] | Sequence[str] | str) -> None:
        if isinstance(weights, str):
            weights = {weights: 1.0}
        elif not isinstance(weights, Mapping):
            weights = {c: 1.0 for c in weights}
        if not weights:
            raise ValueError(f"density must name at least one of {DENSITY_CLASSES}")
        for c, w in weights.items():
            if c not in DENSITY_CLASSES:
                raise ValueError(f"density must be one of {DENSITY_CLASSES}, got {c!r}")
            if not (isinstance(w, (int, float)) and w >= 0 and w == w and w != float("inf")):
                raise ValueError(f"density weight of {c!r} must be a finite number >= 0, got {w!r}")
        total = float(sum(weights.values()))
        if total <= 0:
            raise ValueError(f"density weights must not all be 0, got {dict(weights)}")
        self.classes = list(weights)
        self.probs = torch.tensor([float(weights[c]) / total for c in self.classes], dtype=torch.float64)

    def __call__(self, n: int, generator: torch.Generator | None = None) -> list[str]:
        if len(self.classes) == 1:
            return [self.classes[0]] * n  # no draw: a constant spends no random numbers
        idx = torch.multinomial(self.probs, n, replacement=True, generator=generator)
        return [self.classes[i] for i in idx.tolist()]

    def __repr__(self) -> str:
        if len(self.classes) == 1:
            return f"DensityChoice({self.classes[0]!r})"
        return "DensityChoice({" + ", ".join(f"{c!r}: {p:.3g}" for c, p in zip(self.classes, self.probs.tolist())) + "})"


def as_density_sampler(spec: Any) -> Callable[..., list[str]]:
    """A class name, a sequence of names or a ``{name: weight}`` dict -> :class:`DensityChoice`;
    a callable is used as it is."""
    if callable(spec):
        return spec
    if isinstance(spec, (str, Mapping)) or (isinstance(spec, Sequence) and not isinstance(spec, (bytes, bytearray))):
        return DensityChoice(spec)
    raise TypeError(f"density must be a class name, a sequence of names, a {{name: weight}} dict or a sampler, got {type(spec).__name__}")


def draw_densities(sampler: Callable[..., list[str]], n: int, generator: torch.Generator | None) -> list[str]:
    """Call a density sampler and check that it returned ``n`` known class names."""
    values = list(sampler(n, generator=generator))
    if len(values) != n:
        raise ValueError(f"density sampler returned {len(values)} values for n={n}")
    bad = [v for v in values if v not in DENSITY_CLASSES]
    if bad:
        raise ValueError(f"density sampler returned {bad}: expected names from {DENSITY_CLASSES}")
    return values
