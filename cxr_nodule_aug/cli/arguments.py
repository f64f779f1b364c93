"""Argument types shared by the ``cxr-nodule-aug`` commands: one parser per kind of value.

Each is an argparse ``type`` (or, for ranges given as two words, an ``action``): a bad value
is an argparse error, reported by :mod:`cxr_nodule_aug.cli.errors` as one line with exit 2
and the flag named (argparse prefixes ``argument --flag:``).

* :func:`whole_number` (counts, seeds, sizes), :func:`number` (finite floats with bounds);
* :class:`NumberRange`: a number or a ``MIN,MAX`` range (also ``MIN MAX`` as two words with
  :meth:`NumberRange.action`), the one range syntax of every command;
* :func:`output_dir` (a folder to create or resume: not a file, creatable, writable),
  :func:`existing_dir`, :func:`existing_file`, :func:`torch_device`.
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
from pathlib import Path
from typing import Callable

from cxr_nodule_aug.cli.errors import UsageError


def whole_number(minimum: int | None = None, maximum: int | None = None) -> Callable[[str], int]:
    """An ``int`` in ``[minimum, maximum]`` (either bound optional)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        _check_bounds(text, value, minimum, maximum, "whole number")
        return value

    parse.__name__ = "whole number"
    return parse


def number(minimum: float | None = None, maximum: float | None = None, *, above: float | None = None, below: float | None = None) -> Callable[[str], float]:
    """A finite ``float``; ``minimum``/``maximum`` are inclusive bounds, ``above``/``below`` strict."""

    def parse(text: str) -> float:
        value = _finite(text)
        _check_bounds(text, value, minimum, maximum, "number", above, below)
        return value

    parse.__name__ = "number"
    return parse


def _finite(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r}: expected a finite number")
    return value


def _check_bounds(text, value, minimum, maximum, kind, above=None, below=None) -> None:
    wants = []
    if minimum is not None:
        wants.append(f">= {minimum:g}")
    if above is not None:
        wants.append(f"> {above:g}")
    if maximum is not None:
        wants.append(f"<= {maximum:g}")
    if below is not None:
        wants.append(f"< {below:g}")
    bad = ((minimum is not None and value < minimum) or (maximum is not None and value > maximum)
           or (above is not None and value <= above) or (below is not None and value >= below))
    if bad:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a {kind} {' and '.join(wants)}")


class NumberRange:
    """A number or a ``MIN,MAX`` range (``MIN <= MAX``), as an argparse ``type``.

    Args:
        cast: ``int`` or ``float``.
        minimum: inclusive lower bound of both ends (``None``: no bound).
        above: strict lower bound of both ends (e.g. ``0`` for diameters).
        maximum: inclusive upper bound of both ends.
        single: whether one number is accepted (returned as is; a range returns a tuple).

    ``NumberRange(...).action()`` is the same parser for ``nargs`` flags (``--flag MIN MAX``),
    which also accepts ``--flag MIN,MAX``; it stores a ``(min, max)`` tuple.
    """

    def __init__(self, cast: type = float, *, minimum: float | None = None, above: float | None = None,
                 maximum: float | None = None, single: bool = True) -> None:
        self.cast, self.minimum, self.above, self.maximum, self.single = cast, minimum, above, maximum, single
        self.__name__ = "range"

    def __call__(self, text: str):
        parts = [p.strip() for p in str(text).split(",")]
        if len(parts) not in ((1, 2) if self.single else (2,)) or not all(parts):
            want = "a number or MIN,MAX" if self.single else "MIN,MAX (or MIN MAX)"
            raise argparse.ArgumentTypeError(f"{text!r}: expected {want}")
        kind = "whole number" if self.cast is int else "number"
        values = []
        for p in parts:
            if self.cast is int:
                try:
                    v = int(p)
                except ValueError:
                    raise argparse.ArgumentTypeError(f"{text!r}: {p!r} is not a whole number") from None
            else:
                v = _finite(p)
            _check_bounds(text, v, self.minimum, self.maximum, kind, self.above)
            values.append(v)
        if len(values) == 2 and values[0] > values[1]:
            raise argparse.ArgumentTypeError(f"{text!r}: MIN ({values[0]:g}) is above MAX ({values[1]:g})")
        return values[0] if len(values) == 1 else (values[0], values[1])

    def action(self) -> type[argparse.Action]:
        """An argparse action for ``nargs="+"``: ``MIN MAX`` or ``MIN,MAX`` (one word) -> tuple."""
        parse = self

        class RangeAction(argparse.Action):
            def __call__(self, parser, namespace, values, option_string=None):
                words = [values] if isinstance(values, str) else list(values)
                if len(words) > 2:
                    raise argparse.ArgumentError(self, f"expected MIN MAX, got {len(words)} values: {' '.join(words)}")
                try:
                    value = parse(",".join(words))
                except argparse.ArgumentTypeError as err:
                    raise argparse.ArgumentError(self, str(err)) from None
                if not isinstance(value, tuple):
                    value = (value, value)
                setattr(namespace, self.dest, value)

        return RangeAction


def output_dir(text: str) -> Path:
    """A folder a command will create (or resume in): not an existing file, and either an
    existing writable folder or creatable under its nearest existing parent. Writability is
    probed (a temporary folder made and removed), which also holds for root and read-only
    mounts; nothing is left behind."""
    path = Path(text).expanduser()
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a file, not a directory")
    parent = path if path.is_dir() else path.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r}: cannot create it, {str(parent)!r} is a file")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".cxr-nodule-aug-probe-", dir=parent))
    except OSError as err:
        what = "the directory is not writable" if parent == path else f"cannot create it, {str(parent)!r} is not writable"
        raise argparse.ArgumentTypeError(f"{text!r}: {what} ({err.strerror})") from None
    return path


def existing_dir(text: str) -> Path:
    path = Path(text).expanduser()
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r}: no such directory")
    return path


def existing_file(text: str) -> Path:
    path = Path(text).expanduser()
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"{text!r}: no such file")
    return path


def torch_device(text: str) -> str:
    import torch

    try:
        torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a torch device (e.g. cpu, cuda, cuda:1)") from None
    return text


def weights_source(flag: str, text: str | None, loader: Callable[[str], object]):
    """Load ``text`` with ``loader`` (a ``from_pretrained``), a missing or wrong model being a
    usage error that names ``flag``."""
    from cxr_nodule_aug.hub import WeightsError

    try:
        return loader(text)
    except (WeightsError, ValueError, FileNotFoundError) as err:
        raise UsageError(f"{flag} {text!r}: {err}") from None


def open_image_dataset(kind: str, data, mask_folder: Path):
    """``(dataset, mask file names)`` for a command that writes one mask per image of a dataset
    (``lungs``, ``masks``) into ``mask_folder``: the dataset opened, non-empty, its images' mask
    names distinct, and ``mask_folder`` not its image folder. Each failure is a
    :class:`UsageError` naming ``--data`` or ``--out``."""
    from cxr_nodule_aug.datasets import mask_file_names, open_dataset

    try:
        dataset = open_dataset(kind, data)
    except (ValueError, FileNotFoundError) as err:
        raise UsageError(f"--data {str(data)!r}: {err}") from None
    if len(dataset) == 0:
        raise UsageError(f"--data {str(data)!r}: the {kind} dataset holds no images")
    try:
        names = mask_file_names(dataset)
    except ValueError as err:
        raise UsageError(f"--data {str(data)!r}: {err}") from None
    images = {Path(p).resolve() for _, p, _ in dataset.items}
    if any((Path(mask_folder) / n).resolve() in images for n in names):
        raise UsageError(f"--out {str(mask_folder)!r} holds the dataset's images: a mask would replace an image; use another folder")
    return dataset, names
