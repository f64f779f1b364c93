"""Random parameter samplers: ``sampler(n, generator=None) -> Tensor[n]``.

Kept apart from the ops that use the values (kornia's habit): a transform asks a sampler for
numbers, then applies a deterministic op. Any callable with this signature works, so users
can plug in their own distributions.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import torch


@runtime_checkable
class Sampler(Protocol):
    def __call__(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor: ...


def _positive_finite(values: Sequence[float], name: str) -> list[float]:
    out = [float(v) for v in values]
    for v in out:
        if not math.isfinite(v) or v <= 0:
            raise ValueError(f"{name} must be positive and finite, got {v}")
    return out


class Constant:
    """Always ``value``."""

    def __init__(self, value: float, *, name: str = "value", unit: str | None = None) -> None:
        (self.value,) = _positive_finite([value], name)
        self.unit = unit

    def __call__(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return torch.full((n,), self.value, dtype=torch.float64)

    def __repr__(self) -> str:
        return f"Constant({self.value})"


class Uniform:
    """Uniform on ``[low, high]``."""

    def __init__(self, low: float, high: float, *, name: str = "range", unit: str | None = None) -> None:
        self.low, self.high = _positive_finite([low, high], name)
        if self.low > self.high:
            raise ValueError(f"{name} must be (min, max) with min <= max, got ({low}, {high})")
        self.unit = unit

    def __call__(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        u = torch.rand(n, generator=generator, dtype=torch.float64)
        return self.low + (self.high - self.low) * u

    def __repr__(self) -> str:
        return f"Uniform({self.low}, {self.high})"


class Choice:
    """Uniform over a list of values."""

    def __init__(self, values: Sequence[float], *, name: str = "values", unit: str | None = None) -> None:
        if len(values) == 0:
            raise ValueError(f"{name} must not be empty")
        self.values = torch.tensor(_positive_finite(values, name), dtype=torch.float64)
        self.unit = unit

    def __call__(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        idx = torch.randint(len(self.values), (n,), generator=generator)
        return self.values[idx]

    def __repr__(self) -> str:
        return f"Choice({self.values.tolist()})"


class IntUniform:
    """Integers uniform on ``[low, high]`` (both included)."""

    def __init__(self, low: int, high: int, *, name: str = "range") -> None:
        if int(low) != low or int(high) != high or low < 0 or low > high:
            raise ValueError(f"{name} must be a non-negative int or (min, max) ints with min <= max, got ({low}, {high})")
        self.low, self.high = int(low), int(high)

    def __call__(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return torch.randint(self.low, self.high + 1, (n,), generator=generator)

    def __repr__(self) -> str:
        return f"IntUniform({self.low}, {self.high})"


def as_sampler(spec: Any, name: str, *, unit: str | None = None) -> Callable[..., torch.Tensor]:
    """A number -> :class:`Constant`; a 2-tuple ``(min, max)`` -> :class:`Uniform`; any other
    sequence -> :class:`Choice`; a callable is used as it is."""
    if callable(spec):
        return spec
    if isinstance(spec, bool):
        raise TypeError(f"{name} must be a number, a (min, max) tuple, a sequence or a sampler, got {spec!r}")
    if isinstance(spec, (int, float)):
        return Constant(spec, name=name, unit=unit)
    if isinstance(spec, torch.Tensor):
        spec = spec.flatten().tolist()
    if isinstance(spec, tuple) and len(spec) == 2:
        return Uniform(spec[0], spec[1], name=name, unit=unit)
    if isinstance(spec, Sequence) and not isinstance(spec, str):
        return Choice(spec, name=name, unit=unit)
    raise TypeError(f"{name} must be a number, a (min, max) tuple, a sequence or a sampler callable, got {type(spec).__name__}")


def draw(sampler: Callable[..., torch.Tensor], n: int, generator: torch.Generator | None, name: str) -> torch.Tensor:
    """Call a sampler and check what it returned: n positive finite numbers."""
    values = torch.as_tensor(sampler(n, generator=generator), dtype=torch.float64).flatten()
    if values.numel() != n:
        raise ValueError(f"{name} sampler returned {values.numel()} values for n={n}")
    if not torch.isfinite(values).all() or (values <= 0).any():
        raise ValueError(f"{name} must be positive and finite, the sampler returned {values.tolist()}")
    return values


def draw_with_attributes(sampler: Callable[..., torch.Tensor], n: int, generator: torch.Generator | None,
                         name: str) -> tuple[torch.Tensor, list[dict[str, Any]] | None]:
    """:func:`draw`, and for a sampler that draws whole table rows (it has ``sample_rows(n,
    generator) -> list[dict]`` and ``attribute``, the column it returns) each drawn row's
    attributes, for the records. Row samplers consume the generator as their ``__call__`` does,
    so the drawn values do not depend on which function drew them."""
    if not callable(getattr(sampler, "sample_rows", None)):
        return draw(sampler, n, generator, name), None
    rows = sampler.sample_rows(n, generator=generator)
    if len(rows) != n:
        raise ValueError(f"{name} sampler returned {len(rows)} rows for n={n}")
    values = draw(lambda k, generator=None: torch.tensor([float(r[sampler.attribute]) for r in rows], dtype=torch.float64),
                  n, None, name)
    return values, [dict(r) for r in rows]

