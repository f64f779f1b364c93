"""``NoduleSynthesizer``: the one insertion engine the transforms, the CLI, the trainers and the
benchmarks share.

It owns the models (shape, texture, optionally lung), the device they run on and the optional
``torch.compile`` of the texture network, and exposes the insertion pipeline as deterministic
public stages (same inputs, same models, same device -> same bits)::

    synth = NoduleSynthesizer.from_pretrained()           # shipped weights (or "DIR", "org/name@rev")
    lung = synth.lung_mask(image)                         # (H, W) bool, the lung model's
    fps = synth.footprints(records)                       # (R, R) bool masks at size, one per nodule
    cut = synth.cut(image, records)                       # patches, holes, regions (NoduleCut)
    changes = synth.compose([cut], [records])             # the composition mode's working-domain change
    result = synth.paste(cut, records, changes[0])        # InsertionResult: image, masks, boxes, records
    results = synth.insert([image, ...], [records, ...])  # all of the above, one network call per batch

The random choices (how many nodules, their sizes, seeds and places) are the transforms'
(:class:`~cxr_nodule_aug.NoduleInpaint`); the engine only executes records.

Composition modes
-----------------
How a nodule's new pixels are made from its cut is a *composition mode*, chosen by name
(``composition="replace"``, the paper's inpainting: the texture network fills the hole and
its output replaces the pixels under the nodule). The modes are one table, :data:`COMPOSITIONS`,
``name -> CompositionMode("module:function", texture_subfolder)``, resolved lazily (no
registration by import side effects; a synthesizer pickles by the mode's name). A mode's
function has the signature of :data:`cxr_nodule_aug.functional.insertion.Composition`::

    def my_composition(model, cuts: list[NoduleCut], records: list[list[NoduleRecord]]) -> list[list[Tensor]]:
        # one call per batch: every image's cut (cuts[i].patches (N, 1, P, P), .holes,
        # .regions (R, R) working image under each nodule, .footprints, .working) and records
        # (conditions: contrast, and whatever fields the mode reads); return per image and per
        # nodule the (R, R) float32 change of the working (windowed, log-like) image.

:func:`~cxr_nodule_aug.functional.insertion.paste_nodules` then scales each change by its
record's ``contrast``, keeps it inside the footprint, adds it to the working image and maps the
sum back to the image's dtype and range, for every mode alike. To add a mode (e.g. an
``"additive"`` nodule *layer* added in the working domain), write its function and add one
line to :data:`COMPOSITIONS` naming it and the subfolder of a weights source that holds its
network; ``NoduleSynthesizer.from_pretrained(weights, composition="additive")``,
``NoduleInpaint(composition="additive")`` and ``InsertNodules(records, composition="additive")``
then use it with no change to the transforms.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from cxr_nodule_aug.functional.insertion import (
    Composition,
    InsertionResult,
    NoduleCut,
    Working,
    cut_nodules,
    insert_nodules_batch,
    paste_nodules,
    shape_footprints,
)
from cxr_nodule_aug.functional.intensity import check_image, to_working
from cxr_nodule_aug.functional.placement import InsertionError, check_diameters_fit
from cxr_nodule_aug.hub import default_weights_dir, load_model, parse_source
from cxr_nodule_aug.models.layer import LayerGenerator
from cxr_nodule_aug.models.lung import LungSegmenter
from cxr_nodule_aug.models.shape import ShapeGenerator
from cxr_nodule_aug.models.texture import TextureGenerator
from cxr_nodule_aug.records import NoduleRecord


@dataclass(frozen=True)
class CompositionMode:
    """One composition mode: its function (``"module:function"``, a
    :data:`~cxr_nodule_aug.functional.insertion.Composition`) and the subfolder of a weights
    source that holds its network."""

    function: str
    texture_subfolder: str = "texture"


COMPOSITIONS: dict[str, CompositionMode] = {
    "replace": CompositionMode("cxr_nodule_aug.functional.insertion:replace_composition", "texture"),
    # Issue 13: the nodule's layer (LayerGenerator) added in the working domain; records' density.
    "additive": CompositionMode("cxr_nodule_aug.functional.composition:additive_composition", "layer"),
}
"""The composition modes by name (see the module docstring)."""


def composition_mode(name: str) -> CompositionMode:
    """The table entry of ``name``; ``ValueError`` naming the known modes if there is none."""
    if not isinstance(name, str) or name not in COMPOSITIONS:
        raise ValueError(f"composition must be one of {sorted(COMPOSITIONS)}, got {name!r}")
    return COMPOSITIONS[name]


DEFAULT_COMPOSITION = "additive"
"""The composition mode used when none is named: the nodule's layer added to the radiograph
(it wins ``benchmarks/results/realism.md``: two-sample accuracy 0.456 vs 0.723 for replace;
kept detail behind the nodule on the real radiograph 0.997 vs -0.009)."""


def resolve_composition(composition: str | None, texture_model: Any = None) -> str:
    """The composition mode's name: ``composition`` if given (checked), else the one the given
    network implies (a :class:`LayerGenerator`: ``"additive"``; any other inpainter:
    ``"replace"``), else :data:`DEFAULT_COMPOSITION`."""
    if composition is not None:
        composition_mode(composition)
        return composition
    if isinstance(texture_model, nn.Module):
        return "additive" if isinstance(getattr(texture_model, "_orig_mod", texture_model), LayerGenerator) else "replace"
    return DEFAULT_COMPOSITION


def composition_function(name: str) -> Composition:
    """The function of composition mode ``name``, imported on first use."""
    module, _, attr = composition_mode(name).function.partition(":")
    return getattr(importlib.import_module(module), attr)


ModelSpec = nn.Module | str | os.PathLike | bool | None
"""A model, a source to load it from (local directory or ``org/name[@revision]``), ``None``
(take it from ``weights``) or ``False`` (none)."""

_INPAINTER_ATTRS = ("patch_size", "mask_type", "max_fill")
_ROLES = {"shape": ShapeGenerator, "texture": TextureGenerator, "lung": LungSegmenter}


def _check_model(model: nn.Module | None, role: str) -> nn.Module | None:
    if model is None:
        return None
    cls = _ROLES[role]
    # Any inpainter with TextureGenerator's contract works (baselines included).
    inpainter = role == "texture" and all(hasattr(model, a) for a in _INPAINTER_ATTRS)
    if not (isinstance(model, cls) or inpainter):
        extra = f" or an inpainter with {', '.join(_INPAINTER_ATTRS)}" if role == "texture" else ""
        raise TypeError(f"{role}_model must be a {cls.__name__}{extra}, got {type(model).__name__}")
    return model.eval()


def _load(spec: ModelSpec, role: str, weights: str | os.PathLike | None, subfolder: str, required: bool) -> nn.Module | None:
    if spec is False:
        if required:
            raise ValueError(f"{role}_model=False: a {role} model is required here")
        return None
    if spec is True:
        raise TypeError(f"{role}_model must be a model, a weights source, None or False, got True")
    if isinstance(spec, nn.Module):
        return _check_model(spec, role)
    # A texture source may hold any inpainter (config.json names its class).
    loader = load_model if role == "texture" else _ROLES[role].from_pretrained
    if spec is not None:
        return _check_model(loader(spec), role)
    if weights is None:
        weights = default_weights_dir()
    if weights is None:
        if required:
            raise ValueError(
                f"no {role} model: no shipped weights were found (a wheel install carries them in cxr_nodule_aug/_weights, "
                f"a source checkout in weights/; or set CXR_NODULE_AUG_WEIGHTS=DIR). Pass weights='DIR or org/name[@revision]' or {role}_model=..."
            )
        return None
    kind, path, _ = parse_source(weights)
    if kind == "local" and not (path / subfolder).is_dir():
        if required:
            if subfolder == COMPOSITIONS["additive"].texture_subfolder:
                raise ValueError(
                    f"weights directory {str(path)!r} has no '{subfolder}/' model, which the default composition='additive' needs: "
                    f"train one ('cxr-nodule-aug train layer', then 'cxr-nodule-aug export RUN --name layer --weights-dir {path}'), "
                    "or use the paper's inpainting with composition='replace' (CLI: --composition replace; train detector: augment_composition=replace)"
                )
            raise ValueError(f"weights directory {str(path)!r} has no '{subfolder}/' model; pass {role}_model=...")
        return None
    return _check_model(loader(weights, subfolder=subfolder), role)


def _describe(model: nn.Module | None) -> str:
    if model is None:
        return "None"
    config = getattr(model, "config", None)
    if isinstance(config, Mapping):
        keys = ("latent_dim", "image_size", "patch_size", "mask_type", "max_fill", "base_width", "input_size")
        shown = ", ".join(f"{k}={config[k]!r}" for k in keys if k in config)
        return f"{type(model).__name__}({shown})"
    return type(model).__name__


class NoduleSynthesizer(nn.Module):
    """The insertion engine: models, device, compile, and the deterministic stages.

    Args:
        shape_model: the :class:`ShapeGenerator` (``None``: this synthesizer makes no new
            footprints; :meth:`cut` and :meth:`insert` then need them given).
        texture_model: the network of the composition mode (for ``"replace"`` a
            :class:`TextureGenerator` or any inpainter with ``patch_size``, ``mask_type`` and
            ``max_fill``; ``None``: no cut or insertion).
        lung_model: the :class:`LungSegmenter` behind :meth:`lung_mask` (``None``: none).
        device: where the networks run (default: each input image's device). Results come back
            on the input image's device.
        compile_texture: run the texture network through ``torch.compile`` (inductor),
            compiled on first use in each process (a DataLoader worker compiles its own; the
            compiled graph is never pickled). Outputs move by ~1e-5: replay with the same
            setting for a bit-exact result.
        composition: the composition mode's name (:data:`COMPOSITIONS`); default: the one
            ``texture_model`` implies (a :class:`LayerGenerator`: ``"additive"``, an inpainter:
            ``"replace"``), :data:`DEFAULT_COMPOSITION` without one.

    ``repr`` is one line; the models are submodules (``state_dict``, ``.to()``) and the whole
    pickles for DataLoader workers.
    """

    def __init__(
        self,
        shape_model: ShapeGenerator | None = None,
        texture_model: nn.Module | None = None,
        lung_model: LungSegmenter | None = None,
        *,
        device: torch.device | str | None = None,
        compile_texture: bool = False,
        composition: str | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(compile_texture, bool):
            raise TypeError(f"compile_texture must be a bool, got {type(compile_texture).__name__}")
        composition = resolve_composition(composition, texture_model)
        if texture_model is not None and composition in ("additive", "replace"):
            is_layer = isinstance(getattr(texture_model, "_orig_mod", texture_model), LayerGenerator)
            if is_layer != (composition == "additive"):
                need = "a LayerGenerator (a weights source's 'layer/' model)" if composition == "additive" else "an inpainter such as TextureGenerator (a weights source's 'texture/' model)"
                raise ValueError(f"composition={composition!r} needs {need} as texture_model, got {type(texture_model).__name__}")
        self.shape_model = _check_model(shape_model, "shape")
        self.texture_model = _check_model(texture_model, "texture")
        self.lung_model = _check_model(lung_model, "lung")
        self.device = torch.device(device) if device is not None else None
        self.compile_texture = compile_texture
        self.composition = composition

    @classmethod
    def from_pretrained(
        cls,
        weights: str | os.PathLike | None = None,
        *,
        shape_model: ModelSpec = None,
        texture_model: ModelSpec = None,
        lung_model: ModelSpec = None,
        device: torch.device | str | None = None,
        compile_texture: bool = False,
        composition: str | None = None,
    ) -> NoduleSynthesizer:
        """Load the models from ``weights``: a directory or Hub repo (``org/name[@revision]``)
        with ``shape/``, the composition mode's network (``texture/`` for ``"replace"``) and
        optionally ``lung/``; default: the shipped weights.

        ``shape_model``, ``texture_model``, ``lung_model``: a model or a source overriding
        ``weights`` for that part; ``False`` leaves the part out (``lung_model=False``: no lung
        model; ``shape_model=False, texture_model=False``: a lung-mask-only engine). A missing
        shape or texture model is an error unless left out; a missing lung model is not.

        ``composition``: the composition mode (:data:`COMPOSITIONS`); default
        :data:`DEFAULT_COMPOSITION` (``"additive"``: the weights' ``layer/`` model), or the
        mode a given ``texture_model`` implies (an inpainter: ``"replace"``).
        """
        if composition is None and texture_model not in (None, False):
            texture_model = _load(texture_model, "texture", weights, "texture", required=True)  # a source: load it to see what it is
        composition = resolve_composition(composition, texture_model)
        mode = composition_mode(composition)
        return cls(
            _load(shape_model, "shape", weights, "shape", required=shape_model is not False),
            _load(texture_model, "texture", weights, mode.texture_subfolder, required=texture_model is not False),
            _load(lung_model, "lung", weights, "lung", required=False),
            device=device,
            compile_texture=compile_texture,
            composition=composition,
        )

    def __repr__(self) -> str:
        device = "input's" if self.device is None else str(self.device)
        return (
            f"NoduleSynthesizer(composition={self.composition!r}, shape={_describe(self.shape_model)}, texture={_describe(self.texture_model)}, "
            f"lung={_describe(self.lung_model)}, device={device}, compile_texture={self.compile_texture})"
        )

    def __getstate__(self) -> dict[str, Any]:
        state = dict(super().__getstate__())
        state.pop("_compiled_texture", None)  # a compiled graph belongs to the process that built it
        return state

    # -- models and devices -------------------------------------------------------------------
    def work_device(self, image: torch.Tensor) -> torch.device:
        """Where the networks run for ``image``: ``device`` if set, else the image's."""
        return self.device if self.device is not None else image.device

    def _models_to(self, device: torch.device) -> None:
        for m in (self.shape_model, self.texture_model, self.lung_model):
            if m is not None:
                p = next(m.parameters(), None)
                if p is not None and p.device != device:
                    m.to(device)

    def _require(self, role: str) -> nn.Module:
        model = getattr(self, f"{role}_model")
        if model is None:
            raise ValueError(f"this NoduleSynthesizer has no {role} model: build it with {role}_model=... (or weights=... that include one)")
        return model

    def texture_for_call(self) -> nn.Module:
        """The texture model as insertion calls it: ``torch.compile(texture_model)`` when
        ``compile_texture=True`` (built lazily, once per process), else the model itself."""
        texture = self._require("texture")
        if not self.compile_texture:
            return texture
        pid, compiled = self.__dict__.get("_compiled_texture", (None, None))
        if pid != os.getpid() or compiled is None or compiled._orig_mod is not texture:
            compiled = torch.compile(texture)
            # Outside nn.Module's registry: not a submodule, not in the state dict.
            object.__setattr__(self, "_compiled_texture", (os.getpid(), compiled))
        return compiled

    def composition_function(self) -> Composition:
        """This synthesizer's composition mode's function."""
        return composition_function(self.composition)

    # -- stages ----------------------------------------------------------------------------------
    def working(self, image: torch.Tensor) -> Working:
        """``to_working(image)`` on the work device: the (H, W) float32 grey level in the
        image's own window and the window (lo, hi). Pass it to :meth:`lung_mask`, :meth:`cut`
        and :meth:`insert` to compute the image-wide window once."""
        check_image(image)
        return to_working(image.as_subclass(torch.Tensor).to(self.work_device(image)))

    def lung_mask(self, image: torch.Tensor, *, working: Working | None = None) -> torch.Tensor:
        """(H, W) bool on the work device: the lung model's lung field of ``image`` (C, H, W).

        ``ValueError`` without a lung model; :class:`InsertionError` when it finds no lung.
        """
        lung_model = self._require("lung")
        image = image.as_subclass(torch.Tensor)
        device = self.work_device(image)
        self._models_to(device)
        if working is None:
            working = self.working(image)
        mask = lung_model.predict_mask(working[0].clamp(0, 1)[None, None])[0]
        if not mask.any():
            raise InsertionError("the lung model found no lung in this image; pass a lung mask in the target")
        return mask

    def shapes(self, seeds: Sequence[int], *, device: torch.device | str | None = None) -> torch.Tensor:
        """(N, S, S) bool: the shape model's mask for each seed (on ``device``, default the
        shape model's)."""
        return self._require("shape").generate(list(seeds), device=device)

    def footprints(
        self,
        records: Sequence[NoduleRecord] | Sequence[int],
        diameters_px: Sequence[float] | None = None,
        *,
        device: torch.device | str | None = None,
    ) -> list[torch.Tensor]:
        """The nodules' masks at size: one (R, R) bool canvas per nodule (R from
        :func:`~cxr_nodule_aug.functional.insertion.region_side`), the shape model's mask for
        the seed, size-modulated to the diameter.

        ``footprints(records)`` takes seeds and diameters from the records;
        ``footprints(seeds, diameters_px)`` from two sequences (before the nodules have a place).
        """
        if diameters_px is None:
            seeds, diameters_px = [int(r.seed) for r in records], [float(r.diameter_px) for r in records]
        else:
            seeds = [int(s) for s in records]
        texture, shape = self._require("texture"), self._require("shape")
        if device is not None:
            device = torch.device(device)
            self._models_to(device)
        return shape_footprints(shape, seeds, list(diameters_px), texture.patch_size, texture.max_fill, device=device)

    def cut(
        self,
        image: torch.Tensor,
        records: Sequence[NoduleRecord],
        *,
        footprints: list[torch.Tensor] | None = None,
        working: Working | None = None,
    ) -> NoduleCut:
        """Cut every record's patch and hole from ``image`` (C, H, W), on the work device, as
        the texture model is given them: the one cut of inference and texture training.

        ``footprints``: the records' masks if the caller has them (:meth:`footprints`, or a
        real nodule's mask on its canvas), else made from the records' seeds and diameters.
        """
        texture = self._require("texture")
        check_image(image)
        image = image.as_subclass(torch.Tensor)
        device = self.work_device(image)
        self._models_to(device)
        image = image.to(device)
        if footprints is None:
            _, H, W = image.shape
            check_diameters_fit([r.diameter_px for r in records], H, W, "the image")
            footprints = self.footprints(records, device=device)
        return cut_nodules(image, [r.center_xy for r in records], footprints, texture.patch_size, texture.mask_type, working)

    def compose(self, cuts: list[NoduleCut], records: list[Sequence[NoduleRecord]]) -> list[list[torch.Tensor]]:
        """The composition mode on every image's cut at once (one network call): per image and
        nodule, the (R, R) float32 change of the working image."""
        if len(cuts) != len(records):
            raise ValueError(f"cuts and records must pair up, got {len(cuts)} and {len(records)}")
        return self.composition_function()(self.texture_for_call(), cuts, [list(r) for r in records])

    def paste(self, cut: NoduleCut, records: Sequence[NoduleRecord], changes: list[torch.Tensor]) -> InsertionResult:
        """Write one image's changes (:meth:`compose`) into it:
        :func:`~cxr_nodule_aug.functional.insertion.paste_nodules`."""
        return paste_nodules(cut, list(records), changes)

    def insert(
        self,
        images: Sequence[torch.Tensor],
        records: Sequence[Sequence[NoduleRecord]],
        *,
        footprints: Sequence[list[torch.Tensor] | None] | None = None,
        working: Sequence[Working | None] | None = None,
    ) -> list[InsertionResult]:
        """Insert ``records[i]`` into ``images[i]``, all nodules of all images through one
        network call: footprints -> :meth:`cut` -> :meth:`compose` -> :meth:`paste`. Each
        image's result equals inserting it alone (to float tolerance of a batched convolution);
        inputs are not modified; results are on each input image's device.

        ``footprints``, ``working``: per image, what the caller already computed (or ``None``).
        """
        if len(images) != len(records):
            raise ValueError(f"images and records must pair up, got {len(images)} and {len(records)}")
        if not images:
            return []
        self._require("texture")
        footprints = [None] * len(images) if footprints is None else list(footprints)
        if any(fp is None and len(r) for fp, r in zip(footprints, records)):
            self._require("shape")
        inputs = [im.as_subclass(torch.Tensor) for im in images]
        device = self.work_device(inputs[0])
        self._models_to(device)
        results = insert_nodules_batch(
            [im.to(device) for im in inputs],
            [list(r) for r in records],
            self.shape_model,
            self.texture_for_call(),
            footprints=footprints,
            working=None if working is None else list(working),
            composition=self.composition_function(),
        )
        return [_on(result, im.device) for result, im in zip(results, inputs)]


def _on(result: InsertionResult, device: torch.device) -> InsertionResult:
    if result.image.device == device:
        return result
    return InsertionResult(result.image.to(device), result.masks.to(device), result.boxes_xyxy.to(device), result.records)
