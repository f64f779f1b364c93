"""What ``NoduleInpaint`` and ``InsertNodules`` share: models, input checks, and writing the
inserted nodules back into the sample (image, boxes, labels, masks, records)."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import PIL.Image
import torch
from torch import nn
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from cxr_nodule_aug.functional.insertion import InsertionResult, Working
from cxr_nodule_aug.functional.intensity import check_image
from cxr_nodule_aug.functional.placement import InsertionError
from cxr_nodule_aug.synthesizer import ModelSpec, NoduleSynthesizer
from cxr_nodule_aug.transforms._sample import ParsedSample, parse_sample, rebuild, wrap_image

_log = logging.getLogger("cxr_nodule_aug")

_AXIS_ALIGNED = (tv_tensors.BoundingBoxFormat.XYXY, tv_tensors.BoundingBoxFormat.XYWH, tv_tensors.BoundingBoxFormat.CXCYWH)


def build_synthesizer(
    synthesizer: NoduleSynthesizer | None,
    *,
    weights: str | os.PathLike | None,
    shape_model: ModelSpec,
    texture_model: ModelSpec,
    lung_model: ModelSpec,
    device: torch.device | str | None,
    compile_texture: bool,
    composition: str | None,
) -> NoduleSynthesizer:
    """The transform's engine: the one given, else loaded from the model arguments."""
    if synthesizer is None:
        return NoduleSynthesizer.from_pretrained(weights, shape_model=shape_model, texture_model=texture_model, lung_model=lung_model,
                                                 device=device, compile_texture=compile_texture, composition=composition)
    if not isinstance(synthesizer, NoduleSynthesizer):
        raise TypeError(f"synthesizer must be a NoduleSynthesizer, got {type(synthesizer).__name__}")
    given = {"weights": weights, "shape_model": shape_model, "texture_model": texture_model, "lung_model": lung_model, "device": device}
    clash = [k for k, v in given.items() if v is not None] + (["compile_texture"] if compile_texture else [])
    clash += [] if composition is None else ["composition"]
    if clash:
        raise ValueError(f"pass either synthesizer=... or {', '.join(clash)}: the synthesizer already holds its models and settings")
    return synthesizer


class NoduleTransformBase(v2.Transform):
    """Base for transforms that add nodules to a detection sample: a
    :class:`~cxr_nodule_aug.synthesizer.NoduleSynthesizer` (``self.synthesizer``) and the
    target's key names. Subclasses implement ``make_params(flat_inputs) -> {"records": [...]}``
    where ``flat_inputs`` is ``[image (C, H, W) tensor, target dict]``; the engine inserts the
    records (all samples of :meth:`batch` at once) and this class writes them back.
    """

    def __init__(
        self,
        *,
        synthesizer: NoduleSynthesizer,
        labels_key: str = "labels",
        masks_key: str = "masks",
        lung_mask_key: str = "lung_mask",
        pixel_spacing_key: str = "pixel_spacing_mm",
        records_key: str = "nodules",
    ) -> None:
        super().__init__()
        self.synthesizer = synthesizer
        self.labels_key = labels_key
        self.masks_key = masks_key
        self.lung_mask_key = lung_mask_key
        self.pixel_spacing_key = pixel_spacing_key
        self.records_key = records_key
        self.on_failure = "raise"
        self.skipped = 0
        """Samples left unaugmented by ``on_failure="skip"`` in this process (each worker of a
        DataLoader counts its own; reset it per epoch if you read it per epoch)."""

    # -- the engine's parts, read-only views ----------------------------------------------------
    @property
    def shape_model(self) -> nn.Module | None:
        return self.synthesizer.shape_model

    @property
    def texture_model(self) -> nn.Module | None:
        return self.synthesizer.texture_model

    @property
    def lung_model(self) -> nn.Module | None:
        return self.synthesizer.lung_model

    @property
    def device(self) -> torch.device | None:
        return self.synthesizer.device

    @property
    def compile_texture(self) -> bool:
        return self.synthesizer.compile_texture

    def texture_for_call(self) -> nn.Module:
        """:meth:`NoduleSynthesizer.texture_for_call`."""
        return self.synthesizer.texture_for_call()

    def work_device(self, image: torch.Tensor) -> torch.device:
        return self.synthesizer.work_device(image)

    def pixel_spacing_mm(self, target: Mapping[str, Any], default: float | Sequence[float] | None = None) -> tuple[float, float] | None:
        """(row_mm, col_mm) from the target, else ``default``, else ``None``."""
        value = target.get(self.pixel_spacing_key, None)
        if value is None:
            value = default
        if value is None:
            return None
        values = torch.as_tensor(value, dtype=torch.float64).flatten().tolist()
        if len(values) == 1:
            values = values * 2
        if len(values) != 2 or not all(math.isfinite(v) and v > 0 for v in values):
            raise ValueError(f"{self.pixel_spacing_key} must be a positive number or (row_mm, col_mm), got {value!r}")
        return values[0], values[1]

    def lung_mask(self, image: torch.Tensor, target: Mapping[str, Any]) -> torch.Tensor:
        """(H, W) bool on the work device: the target's lung mask, else the lung model's."""
        return self.lung_mask_and_working(image, target)[0]

    def target_lung_mask(self, image: torch.Tensor, target: Mapping[str, Any], require_lung: bool = True) -> torch.Tensor | None:
        """The target's lung mask as (H, W) bool on the work device, checked; ``None`` if the
        target has none. Wrong size -> ``ValueError``; no lung pixel -> :class:`InsertionError`
        (unless ``require_lung=False``: a replay does not consult the lungs)."""
        mask = target.get(self.lung_mask_key)
        if mask is None:
            return None
        H, W = image.shape[-2:]
        key = f"target[{self.lung_mask_key!r}]"
        if isinstance(mask, PIL.Image.Image):
            mask = TF.pil_to_tensor(mask)
        if not isinstance(mask, (torch.Tensor, np.ndarray)):
            raise TypeError(f"{key} must be an (H, W) tv_tensors.Mask or tensor, got {type(mask).__name__}")
        mask = torch.as_tensor(mask).as_subclass(torch.Tensor)
        if mask.ndim == 3 and mask.shape[0] == 1:
            mask = mask[0]
        if tuple(mask.shape) != (H, W):
            raise ValueError(f"{key} must be (H, W) = {(H, W)} like the image, got {tuple(mask.shape)}")
        if mask.is_floating_point() and not torch.isfinite(mask).all():
            raise ValueError(f"{key} contains NaN or infinite values")
        mask = mask.to(self.work_device(image))
        mask = mask > 0.5 if mask.is_floating_point() else mask.bool()
        if require_lung and not mask.any():
            raise InsertionError(f"{key} is empty (all zeros): there is no lung to place a nodule in")
        return mask

    def require_lung_model(self) -> None:
        """Raise unless a lung model can stand in for a sample's missing lung mask."""
        if self.lung_model is None:
            raise ValueError(
                f"the sample has no lung mask (target[{self.lung_mask_key!r}]) and no lung model is configured: "
                f"nodules are never placed blindly. Add a tv_tensors.Mask of shape (H, W) as target[{self.lung_mask_key!r}], "
                "or pass lung_model=... (or weights=... that include a 'lung' model)"
            )

    def lung_mask_and_working(self, image: torch.Tensor, target: Mapping[str, Any]) -> tuple[torch.Tensor, Working | None]:
        """:meth:`lung_mask`, and the working image on the work device when the lung model
        needed it (``None`` otherwise), so that insertion does not compute the image-wide
        window a second time."""
        mask = self.target_lung_mask(image, target)
        if mask is not None:
            return mask, None
        self.require_lung_model()
        working = self.synthesizer.working(image.as_subclass(torch.Tensor))
        return self.synthesizer.lung_mask(image, working=working), working

    @staticmethod
    def existing_boxes_xyxy(target: Mapping[str, Any]) -> torch.Tensor:
        """The target's boxes as absolute XYXY float32 on the CPU."""
        boxes = next(v for v in target.values() if isinstance(v, tv_tensors.BoundingBoxes))
        return TF.convert_bounding_box_format(boxes.as_subclass(torch.Tensor).float(), old_format=boxes.format, new_format=tv_tensors.BoundingBoxFormat.XYXY).cpu()

    def target_keys(self) -> tuple[str, ...]:
        """The target entries this transform reads or writes (never taken for the image)."""
        return (self.labels_key, self.masks_key, self.lung_mask_key, self.pixel_spacing_key, self.records_key, "iscrowd", "area")

    # -- v2 hooks -----------------------------------------------------------------------------
    def check_inputs(self, flat_inputs: list[Any]) -> None:
        image, target = flat_inputs
        check_image(image)
        H, W = image.shape[-2:]
        boxes = next(v for v in target.values() if isinstance(v, tv_tensors.BoundingBoxes))
        if boxes.format not in _AXIS_ALIGNED:
            raise ValueError(f"BoundingBoxes format {boxes.format.name} is not supported: use XYXY, XYWH or CXCYWH")
        if tuple(boxes.canvas_size) != (H, W):
            raise ValueError(f"BoundingBoxes canvas_size {tuple(boxes.canvas_size)} does not match the image size {(H, W)}")
        if boxes.ndim != 2 or boxes.shape[-1] != 4:
            raise ValueError(f"BoundingBoxes must be (N, 4), got {tuple(boxes.shape)}")
        if boxes.format == tv_tensors.BoundingBoxFormat.CXCYWH and not boxes.is_floating_point():
            raise ValueError(
                f"CXCYWH BoundingBoxes of dtype {boxes.dtype} cannot hold a box of odd width or height exactly "
                "(its centre lies on a half pixel): use float boxes or the XYXY/XYWH format"
            )
        if boxes.is_floating_point() and not torch.isfinite(boxes).all():
            bad = torch.nonzero(~torch.isfinite(boxes.as_subclass(torch.Tensor)).all(1)).flatten().tolist()
            raise ValueError(f"BoundingBoxes must be finite: rows {bad} hold NaN or infinite values")
        xyxy = TF.convert_bounding_box_format(boxes.as_subclass(torch.Tensor).double(), old_format=boxes.format, new_format=tv_tensors.BoundingBoxFormat.XYXY)
        tol = 1e-3
        if len(xyxy) and ((xyxy[:, :2] < -tol).any() or (xyxy[:, 2] > W + tol).any() or (xyxy[:, 3] > H + tol).any()):
            raise ValueError(f"boxes lie outside the {W}x{H} canvas (XYXY): {xyxy.tolist()}")
        if self.labels_key not in target:
            raise ValueError(f"the target has no {self.labels_key!r} entry: new nodules need labels appended next to the boxes (labels_key=...)")
        labels = torch.as_tensor(target[self.labels_key])
        if labels.ndim != 1 or len(labels) != len(boxes):
            raise ValueError(f"target[{self.labels_key!r}] must have one label per box ({len(boxes)}), got shape {tuple(labels.shape)}")
        masks = target.get(self.masks_key)
        if masks is not None and (not isinstance(masks, torch.Tensor) or masks.ndim != 3 or masks.shape[0] != len(boxes) or tuple(masks.shape[-2:]) != (H, W)):
            raise ValueError(f"target[{self.masks_key!r}] must be (N, H, W) = ({len(boxes)}, {H}, {W}) instance masks, got {tuple(getattr(masks, 'shape', ()))}")
        records = target.get(self.records_key)
        if records is not None and not isinstance(records, (list, tuple)):
            raise TypeError(f"target[{self.records_key!r}] must be a list of NoduleRecord, got {type(records).__name__}")
        self.pixel_spacing_mm(target)  # validates it when present
        self.target_lung_mask(image, target, require_lung=False)  # validates its size when present

    def forward(self, *inputs: Any) -> Any:
        return self.batch([inputs if len(inputs) > 1 else inputs[0]])[0]

    def _failed(self, err: Exception, parsed: ParsedSample) -> Exception:
        """``err`` with the image named in front of its message (same type), or ``err``."""
        try:
            named = type(err)(f"{parsed.name()}: {err}")
        except Exception:  # an exception type with another constructor: keep it as it is
            return err
        named.__cause__ = err
        return named

    def _skip(self, err: Exception) -> bool:
        """Whether a failure of one sample is skipped (``on_failure="skip"``); counts and logs it."""
        if getattr(self, "on_failure", "raise") != "skip" or not isinstance(err, InsertionError):
            return False
        self.skipped += 1
        _log.warning("%s skipped a sample (left unaugmented, no label added; %d so far in this process): %s", type(self).__name__, self.skipped, err)
        return True

    def batch(self, samples: Sequence[Any]) -> list[Any]:
        """Apply to several samples at once: one texture-model call for all their nodules.

        Parameters are drawn per sample, in order, exactly as ``[self(s) for s in samples]``
        would draw them, so the result is the per-sample result (to float tolerance: a batched
        convolution may round differently). The way to use a GPU inside a training loop.
        """
        parsed, params = [], []
        for sample in samples:
            p = parse_sample(sample, self.target_keys())
            flat = [p.image, p.target]
            try:
                self.check_inputs(flat)
                prm = self.make_params(flat)
            except (ValueError, TypeError) as err:
                named = self._failed(err, p)
                if not self._skip(named):
                    raise named from err
                prm = {"records": []}
            parsed.append(p)
            params.append(prm)
        todo = [i for i, prm in enumerate(params) if prm["records"]]
        results: dict[int, InsertionResult] = {}
        if todo:

            def insert(idx: list[int]) -> list[InsertionResult]:
                return self.synthesizer.insert(
                    [parsed[i].image for i in idx],
                    [params[i]["records"] for i in idx],
                    footprints=[params[i].get("footprints") for i in idx],
                    working=[params[i].get("working") for i in idx],
                )

            try:
                results = dict(zip(todo, insert(todo)))
            except InsertionError:
                # Find the sample(s) that failed, one by one, to name (or skip) them.
                for i in todo:
                    try:
                        results[i] = insert([i])[0]
                    except InsertionError as err:
                        named = self._failed(err, parsed[i])
                        if not self._skip(named):
                            raise named from err
        out = []
        for i, (sample, p) in enumerate(zip(samples, parsed)):
            try:
                out.append(rebuild(sample, self.write_back(p, results.get(i))))
            except (ValueError, TypeError) as err:
                raise self._failed(err, p) from err
        return out

    # -- writing back ---------------------------------------------------------------------------
    def write_back(self, parsed: ParsedSample, result: InsertionResult | None) -> dict[tuple, Any]:
        """The path -> replacement map for :func:`rebuild`: new image, boxes, labels, masks, records."""
        target = dict(parsed.target)
        previous = list(target.get(self.records_key, []))
        if result is None:
            target[self.records_key] = previous
            return {parsed.target_path: target}
        image = parsed.image
        records = result.records
        new_image = result.image.to(image.device)

        boxes = parsed.boxes
        new_xyxy = result.boxes_xyxy.to(boxes.device)
        new_boxes = new_xyxy
        if boxes.format != tv_tensors.BoundingBoxFormat.XYXY:
            new_boxes = TF.convert_bounding_box_format(new_xyxy, old_format=tv_tensors.BoundingBoxFormat.XYXY, new_format=boxes.format)
        new_boxes = new_boxes.to(boxes.dtype)
        # The appended box must say exactly where the nodule is (and what its record says).
        back = TF.convert_bounding_box_format(new_boxes.double(), old_format=boxes.format, new_format=tv_tensors.BoundingBoxFormat.XYXY)
        if not torch.equal(back, new_xyxy.double()):
            raise ValueError(
                f"BoundingBoxes of dtype {boxes.dtype} in {boxes.format.name} cannot hold the new nodule boxes {new_xyxy.tolist()} exactly "
                f"(stored as {back.tolist()}): use float32 boxes"
            )
        cat = torch.cat([boxes.as_subclass(torch.Tensor), new_boxes])
        target[parsed.boxes_key] = tv_tensors.wrap(cat, like=boxes)

        labels = torch.as_tensor(target[self.labels_key])
        new_labels = torch.tensor([r.label for r in records], dtype=labels.dtype, device=labels.device)
        target[self.labels_key] = torch.cat([labels, new_labels])

        n_old = len(boxes)
        masks = target.get(self.masks_key)
        if masks is not None:
            new_masks = result.masks.to(device=masks.device, dtype=masks.dtype)
            target[self.masks_key] = tv_tensors.wrap(torch.cat([masks.as_subclass(torch.Tensor), new_masks]), like=masks) if isinstance(masks, tv_tensors.TVTensor) else torch.cat([masks, new_masks])
        for key in ("iscrowd", "area"):
            value = target.get(key)
            if isinstance(value, torch.Tensor) and value.ndim == 1 and len(value) == n_old:
                extra = result.masks.flatten(1).sum(1) if key == "area" else torch.zeros(len(records))
                target[key] = torch.cat([value, extra.to(device=value.device, dtype=value.dtype)])
        target[self.records_key] = previous + records
        # The target first, then the image: in a flat dict the image is one of the target's entries.
        return {parsed.target_path: target, parsed.image_path: wrap_image(new_image, parsed.image_leaf)}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:  # pragma: no cover - forward does the work
        raise NotImplementedError("nodule transforms rewrite the whole sample in forward()")
