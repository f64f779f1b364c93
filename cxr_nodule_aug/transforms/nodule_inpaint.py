"""``NoduleInpaint``: the random augmentation."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from cxr_nodule_aug.functional.insertion import place_nodules
from cxr_nodule_aug.functional.placement import check_diameters_fit, mask_bbox_hw
from cxr_nodule_aug.records import NoduleRecord
from cxr_nodule_aug.samplers import resolve_sampler
from cxr_nodule_aug.samplers.base import IntUniform, as_sampler, draw, draw_with_attributes
from cxr_nodule_aug.samplers.density import as_density_sampler, default_density_sampler, draw_densities
from cxr_nodule_aug.synthesizer import ModelSpec, NoduleSynthesizer
from cxr_nodule_aug.transforms._base import NoduleTransformBase, build_synthesizer

_SEED_HIGH = 2**62


class NoduleInpaint(NoduleTransformBase):
    """Insert synthetic lung nodules into a chest X-ray detection sample, with labels.

    With probability ``p``, draws ``num_nodules`` nodules (diameter, contrast, shape seed),
    places each inside the lung mask clear of existing boxes, synthesises it (shape generator
    -> size modulation -> the composition mode's network on the patch around it: by default
    the nodule's layer added to the radiograph) and appends its box, label,
    instance mask (when the target has ``masks``) and a :class:`NoduleRecord` to the target.
    The records replay exactly with :class:`InsertNodules`.

    Args:
        diameters: nodule diameter: a number, a ``(min, max)`` range (uniform), a sequence
            (uniform choice), ``"lidc"`` / ``"lidc:SPLIT"`` (real LIDC-IDRI sizes in mm,
            :class:`~cxr_nodule_aug.samplers.LIDCDiameters`; needs the ``lidc`` extra), or
            any sampler ``sampler(n, generator=None) -> Tensor[n]`` such as
            :class:`HEMSampler`. Samplers that draw whole rows (LIDC, HEM) also fill each
            record's ``attributes``.
        unit: ``"px"`` or ``"mm"`` for ``diameters``. Default: the sampler's ``unit`` attribute
            if it has one (``HEMSampler.from_missed`` is in mm), else ``"px"``. Millimetres
            need the pixel spacing: ``target["pixel_spacing_mm"]`` or ``pixel_spacing_mm``.
        num_nodules: nodules per augmented image: an int or an inclusive ``(min, max)``.
        p: probability of augmenting a sample.
        label: class label of the new boxes.
        contrast: scale of the synthesised intensity change: a number, range, sequence or
            sampler (1 = as synthesised).
        synthesizer: the :class:`~cxr_nodule_aug.synthesizer.NoduleSynthesizer` that inserts
            the nodules (share one between transforms, the CLI and your own code); if not
            given, one is loaded from ``weights``, the model arguments, ``device``,
            ``compile_texture`` and ``composition`` (then pass none of those with it).
        weights: a directory or Hub repo (``org/name[@revision]``) with ``shape/``,
            ``texture/`` and optionally ``lung/``; default: the shipped weights.
        shape_model, texture_model, lung_model: models or sources overriding ``weights``.
            ``lung_model=False`` disables the lung model (then every sample needs a lung mask).
        composition: how the nodule's pixels are made. Default ``"additive"``: the nodule's
            layer (a non-negative attenuation, soft edge) added to the radiograph in the
            working domain, from the weights' ``layer/`` model, so the ribs and vessels behind
            it stay visible. ``"replace"``: the paper's inpainting (the texture network's
            output replaces the pixels under the nodule), from ``texture/``. A given
            ``texture_model`` that is an inpainter (``TextureGenerator``) implies
            ``"replace"``. The modes are :data:`cxr_nodule_aug.synthesizer.COMPOSITIONS`.
        density: for ``composition="additive"``: the density class of each nodule
            (``"ground_glass"``, ``"part_solid"``, ``"solid"``, ``"calcified"``): a class name,
            a sequence of names (uniform choice), a ``{name: weight}`` dict or any sampler
            ``sampler(n, generator=None) -> list[str]``; default: LIDC-IDRI's frequencies
            (:data:`~cxr_nodule_aug.samplers.density.LIDC_DENSITY_FREQUENCIES`: 73 % solid,
            12 % calcified, 9 % ground-glass, 5 % part-solid). Recorded in each
            :class:`NoduleRecord` (``density``), so the records replay. The replace mode takes
            no density (passing one is an error).
        pixel_spacing_mm: spacing to use when the target has none.
        gap_px: minimum clearance between a new nodule's box and any other box.
        generator: CPU ``torch.Generator`` for every random choice. ``None`` uses torch's global
            RNG (which DataLoader seeds per worker). A given generator is forked per DataLoader
            worker from the worker's seed, so workers draw different nodules and two runs with
            the same seeds draw the same ones.
        device: where to run the networks (default: the image's device); the output stays on
            the image's device.
        compile_texture: run the texture network through ``torch.compile`` (inductor),
            compiled on first use in each process. On 2 CPU threads it measured 1.1x faster at
            one nodule a call and 1.4x at 4-8 (``benchmarks/throughput.py``), after ~20 s of
            compiling per process (less with inductor's on-disk cache); outputs move by ~1e-5,
            so replay the records with ``InsertNodules(..., compile_texture=True)`` too.
        on_failure: ``"raise"`` (default) or ``"skip"``. What to do with a sample that cannot
            receive its nodules (:class:`InsertionError`: no room in the lungs, a nodule larger
            than the lungs, a constant image, an empty lung mask, a contrast too small to
            change a pixel). ``"skip"`` returns the sample unaugmented with no label added,
            counts it in ``skipped`` and logs a warning (logger ``cxr_nodule_aug``) naming the
            image; an online-augmentation run then survives its hard images. Invalid arguments
            and malformed samples raise in both modes. Either way the error names the image
            (``target["image_id"]`` or a similar key, else its shape).

    Sample keys (names configurable): ``boxes`` (the one ``tv_tensors.BoundingBoxes``, any
    axis-aligned format), ``labels``, optional ``masks`` (N, H, W), ``lung_mask`` (H, W),
    ``pixel_spacing_mm`` ((row, col) mm), ``nodules`` (list of records, appended to).
    """

    def __init__(
        self,
        diameters: float | tuple[float, float] | Sequence[float] | Callable[..., torch.Tensor] = (8.0, 40.0),
        *,
        unit: str | None = None,
        num_nodules: int | tuple[int, int] = 1,
        p: float = 0.5,
        label: int = 1,
        contrast: float | tuple[float, float] | Sequence[float] | Callable[..., torch.Tensor] = 1.0,
        weights: str | os.PathLike | None = None,
        shape_model: ModelSpec = None,
        texture_model: ModelSpec = None,
        lung_model: ModelSpec | bool = None,
        pixel_spacing_mm: float | tuple[float, float] | None = None,
        gap_px: int = 2,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        compile_texture: bool = False,
        composition: str | None = None,
        density: str | Sequence[str] | Mapping[str, float] | Callable[..., list[str]] | None = None,
        synthesizer: NoduleSynthesizer | None = None,
        on_failure: str = "raise",
        **keys: str,
    ) -> None:
        if on_failure not in ("raise", "skip"):
            raise ValueError(f"on_failure must be 'raise' or 'skip', got {on_failure!r}")
        if not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be a probability in [0, 1], got {p!r}")
        diameters = resolve_sampler(diameters, "diameters", unit=unit)  # "lidc" -> LIDCDiameters
        if unit is None:
            unit = getattr(diameters, "unit", None) or "px"
        if unit not in ("px", "mm"):
            raise ValueError(f"unit must be 'px' or 'mm', got {unit!r}")
        if isinstance(num_nodules, int):
            num_nodules = (num_nodules, num_nodules)
        if not (isinstance(num_nodules, (tuple, list)) and len(num_nodules) == 2):
            raise TypeError(f"num_nodules must be an int or (min, max), got {num_nodules!r}")
        if num_nodules[1] < 1:
            raise ValueError(f"num_nodules must allow at least one nodule, got {num_nodules!r}")
        if generator is not None and (not isinstance(generator, torch.Generator) or generator.device.type != "cpu"):
            raise TypeError(f"generator must be a CPU torch.Generator or None, got {generator!r}")
        if int(gap_px) != gap_px or gap_px < 0:
            raise ValueError(f"gap_px must be a non-negative int, got {gap_px!r}")
        synthesizer = build_synthesizer(synthesizer, weights=weights, shape_model=shape_model, texture_model=texture_model, lung_model=lung_model,
                                        device=device, compile_texture=compile_texture, composition=composition)
        super().__init__(synthesizer=synthesizer, **keys)
        if synthesizer.composition == "additive":
            self.density = default_density_sampler() if density is None else as_density_sampler(density)
        elif density is not None:
            raise ValueError(f"density={density!r} applies to composition='additive' (a layer model's condition); this transform's composition is {synthesizer.composition!r}")
        else:
            self.density = None
        self.diameters = as_sampler(diameters, "diameters", unit=unit)
        self.unit = unit
        self.num_nodules = IntUniform(*num_nodules, name="num_nodules")
        self.p = float(p)
        self.label = int(label)
        self.contrast = as_sampler(contrast, "contrast")
        self.default_spacing = pixel_spacing_mm
        self.gap_px = int(gap_px)
        self.generator = generator
        self.on_failure = on_failure
        self._worker_key: tuple[int, int] | None = None
        if self.unit == "mm" and pixel_spacing_mm is not None:
            self.pixel_spacing_mm({}, pixel_spacing_mm)  # validate now

    def extra_repr(self) -> str:
        density = "" if self.density is None else f", density={self.density!r}"
        return f"diameters={self.diameters!r}, unit={self.unit!r}, num_nodules={self.num_nodules!r}, p={self.p}, label={self.label}{density}, on_failure={self.on_failure!r}"

    def check_inputs(self, flat_inputs: list[Any]) -> None:
        # Whatever the draw of p decides: a sample this transform could never augment is refused.
        super().check_inputs(flat_inputs)
        _, target = flat_inputs
        if self.unit == "mm" and self.pixel_spacing_mm(target, self.default_spacing) is None:
            raise ValueError(
                f"diameters are in mm but the pixel spacing is unknown: put (row_mm, col_mm) in "
                f"target[{self.pixel_spacing_key!r}] or pass pixel_spacing_mm=..."
            )
        image, _ = flat_inputs
        if self.target_lung_mask(image, target) is None:  # (an empty one: nowhere to place a nodule)
            self.require_lung_model()

    def _rng(self) -> torch.Generator | None:
        if self.generator is None:
            return None
        info = torch.utils.data.get_worker_info()
        if info is None:
            return self.generator
        key = (info.id, info.seed)
        if self._worker_key != key:
            # Each worker holds a pickled copy of the same generator: fork it by the worker's
            # seed so workers differ, and runs with the same seeds repeat.
            mixed = (self.generator.initial_seed() * 6364136223846793005 + info.seed) % 2**63
            self.generator = torch.Generator().manual_seed(mixed)
            self._worker_key = key
        return self.generator

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        image, target = flat_inputs
        g = self._rng()
        if self.p < 1.0 and float(torch.rand(1, generator=g)) >= self.p:
            return {"records": []}
        n = int(self.num_nodules(1, generator=g)[0])
        if n == 0:
            return {"records": []}
        sizes, attributes = draw_with_attributes(self.diameters, n, g, "diameters")
        contrasts = draw(self.contrast, n, g, "contrast")
        seeds = torch.randint(0, _SEED_HIGH, (n,), generator=g).tolist()
        # Drawn only for the additive mode (replace's random stream stays as it was).
        densities = draw_densities(self.density, n, g) if self.density is not None else [None] * n
        spacing = self.pixel_spacing_mm(target, self.default_spacing)
        if self.unit == "mm":  # (check_inputs made sure the spacing is known)
            sizes = sizes / ((spacing[0] + spacing[1]) / 2)
        # Rounded once here so that a replay from the records rebuilds the same footprints.
        diameters_px = [round(d, 4) for d in sizes.tolist()]
        lung, working = self.lung_mask_and_working(image, target)
        if working is None:  # the window, now: a constant image fails before any model runs
            working = self.synthesizer.working(image)
        # A nodule no shape of that size could fit in the lungs is refused before any work.
        check_diameters_fit(diameters_px, *mask_bbox_hw(lung), "the lung mask's bounding box")
        footprints = self.synthesizer.footprints(seeds, diameters_px, device=self.work_device(image))
        centres = place_nodules(lung, footprints, self.existing_boxes_xyxy(target), gap_px=self.gap_px, generator=g)
        mm_per_px = None if spacing is None else (spacing[0] + spacing[1]) / 2
        records = [
            NoduleRecord(
                center_xy=c,
                diameter_px=d,
                seed=s,
                contrast=float(k),
                label=self.label,
                diameter_mm=None if mm_per_px is None else round(d * mm_per_px, 4),
                density=dn,
                composition=self.synthesizer.composition,
                attributes=None if attributes is None else attributes[i],
            )
            for i, (c, d, s, k, dn) in enumerate(zip(centres, diameters_px, seeds, contrasts.tolist(), densities))
        ]
        # The records are the whole decision (plain data; InsertNodules(records) replays them);
        # the footprints and the working image are a cache of this sample's insertion.
        return {"records": records, "footprints": footprints, "working": working}
