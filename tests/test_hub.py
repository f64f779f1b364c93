"""Weight files are data: the registry, and what ``from_pretrained`` / ``load_model`` refuse.

Models are tiny (a few thousand parameters; the detectors a few million) to stay fast on 2 cores.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from cxr_nodule_aug import WeightsError, load_model
from cxr_nodule_aug.baselines.partial_conv import PartialConvUNet
from cxr_nodule_aug.detection.models import NoduleDetector
from cxr_nodule_aug.hub import PretrainedMixin
from cxr_nodule_aug.models import LayerGenerator, LungSegmenter, PatchDiscriminator, ShapeDiscriminator, ShapeGenerator, TextureGenerator

import cxr_nodule_aug

PACKAGE = Path(cxr_nodule_aug.__file__).resolve().parent  # the package under test (checkout or install)

TINY = {
    "ShapeGenerator": lambda: ShapeGenerator(latent_dim=8, base_width=16, image_size=16),
    "ShapeDiscriminator": lambda: ShapeDiscriminator(base_width=8, image_size=16),
    "TextureGenerator": lambda: TextureGenerator(base_width=4, patch_size=32),
    "PatchDiscriminator": lambda: PatchDiscriminator(base_width=4),
    "LayerGenerator": lambda: LayerGenerator(base_width=4, patch_size=32),
    "LungSegmenter": lambda: LungSegmenter(base_width=4, depth=2, input_size=32),
    "PartialConvUNet": lambda: PartialConvUNet(base_width=4, patch_size=32),
    "NoduleDetector": lambda: NoduleDetector("fasterrcnn", "mobilenet_v3", image_size=64, fpn_channels=16, box_head_width=32),
}


def _all_subclasses(cls: type) -> set[type]:
    out = set()
    for sub in cls.__subclasses__():
        out |= {sub} | _all_subclasses(sub)
    return out


def test_registry_lists_every_model_class():
    from cxr_nodule_aug.registry import MODEL_TYPES, model_class

    package_classes = {c for c in _all_subclasses(PretrainedMixin) if c.__module__.startswith("cxr_nodule_aug.")}
    assert {c.__name__ for c in package_classes} == set(MODEL_TYPES) == set(TINY)
    for name in MODEL_TYPES:
        cls = model_class(name)
        assert cls.model_type == name and cls in package_classes
    with pytest.raises(KeyError, match="unknown model_type 'Nope'"):
        model_class("Nope")


def test_hub_imports_nothing_above_it():
    """hub.py imports only the registry from the package: no model, detection or transform module."""
    import ast

    for module in ("hub", "registry"):
        tree = ast.parse((PACKAGE / f"{module}.py").read_text())
        imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        assert {m for m in imported if m.startswith("cxr_nodule_aug")} <= {"cxr_nodule_aug.registry"}, (module, imported)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("saved")
    torch.manual_seed(0)
    for name, make in TINY.items():
        make().eval().save_pretrained(root / name)
    return root


# Loaded first, before anything imports their modules (the package's top level does not).
_NOT_IMPORTED_BY_THE_PACKAGE = {"PartialConvUNet": "cxr_nodule_aug.baselines.partial_conv", "NoduleDetector": "cxr_nodule_aug.detection.models"}


def test_every_model_type_loads_in_a_fresh_interpreter(saved):
    """#11.1: load_model in a new interpreter whose only import is the top-level package.

    One interpreter for all types (each costs seconds of imports on 2 cores): the types whose
    module the package does not import load first, and the subprocess checks that their module
    was not imported before: PartialConvUNet through ``NoduleInpaint(texture_model=DIR)`` (which
    calls load_model), NoduleDetector through load_model.
    """
    order = [*_NOT_IMPORTED_BY_THE_PACKAGE, *sorted(set(TINY) - set(_NOT_IMPORTED_BY_THE_PACKAGE))]
    code = (
        "import sys, torch\n"
        "from cxr_nodule_aug import NoduleInpaint, load_model\n"
        f"first = {_NOT_IMPORTED_BY_THE_PACKAGE!r}\n"
        "assert first['PartialConvUNet'] not in sys.modules\n"
        "tf = NoduleInpaint(texture_model=sys.argv[1] + '/PartialConvUNet')  # the transform's path, too\n"
        "assert type(tf.texture_model).__name__ == 'PartialConvUNet'\n"
        "del first['PartialConvUNet']  # its fresh load was NoduleInpaint's (through load_model)\n"
        "for name in sys.argv[2:]:\n"
        "    assert first.get(name) not in sys.modules, first[name] + ' was imported before its load'\n"
        "    m = load_model(sys.argv[1] + '/' + name)\n"
        "    print(type(m).__name__, sum(float(t.double().sum()) for t in m.state_dict().values() if t.is_floating_point()))\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(PACKAGE.parent), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", code, str(saved), *order], capture_output=True, text=True, cwd=saved, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.strip().splitlines()
    assert len(lines) == len(order), out.stdout
    for name, line in zip(order, lines):
        loaded_name, total = line.split()
        assert loaded_name == name
        ref = type(TINY[name]()).from_pretrained(saved / name)
        assert float(total) == pytest.approx(sum(float(t.double().sum()) for t in ref.state_dict().values() if t.is_floating_point()))


def _edit_config(directory: Path, **changes) -> None:
    path = directory / "config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


def _copy(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True)
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


class _Marker:
    """A pickle that creates a directory when it is unpickled."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        import os

        return (os.mkdir, (self.path,))


def test_detector_config_never_loads_pretrained_backbone_files(tmp_path, monkeypatch):
    """#16.8: {"backbone": "resnet18", "imagenet": true} in config.json reads no torch hub file."""
    torch.manual_seed(0)
    model = NoduleDetector("fasterrcnn", "resnet18", image_size=64, fpn_channels=8, box_head_width=16).eval()
    model.save_pretrained(tmp_path / "det")
    _edit_config(tmp_path / "det", imagenet=True)
    # A torch hub cache holding a booby-trapped "ImageNet ResNet-18" file at the path torchvision reads.
    from torchvision.models import ResNet18_Weights

    home = tmp_path / "torch_home"
    ckpt = home / "hub" / "checkpoints" / ResNet18_Weights.IMAGENET1K_V1.url.rsplit("/", 1)[-1]
    ckpt.parent.mkdir(parents=True)
    marker = tmp_path / "unpickled"
    ckpt.write_bytes(pickle.dumps(_Marker(str(marker))))
    monkeypatch.setenv("TORCH_HOME", str(home))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    loads = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: loads.append(a) or real_load(*a, **k))
    loaded = load_model(tmp_path / "det")
    assert not marker.exists() and loads == []
    assert isinstance(loaded, NoduleDetector) and loaded.config["imagenet"] is False
    for (k, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), k


def _peak_rss_bytes() -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def test_config_sizes_checked_against_the_header_before_any_allocation(tmp_path):
    """#16.8: base_width=16384 (11.7 GB if built) fails fast, naming the field, allocating nothing big."""
    ShapeGenerator(base_width=16, image_size=32).save_pretrained(tmp_path / "s")
    _edit_config(tmp_path / "s", base_width=16384)
    peak = _peak_rss_bytes()
    t0 = time.perf_counter()
    with pytest.raises(WeightsError, match=r"'net\.0\.weight'.*field 'base_width'=16384"):
        ShapeGenerator.from_pretrained(tmp_path / "s")
    assert time.perf_counter() - t0 < 10
    if peak is not None:
        assert _peak_rss_bytes() - peak < 512 * 2**20


@pytest.mark.parametrize(("field", "value"), [("base_width", -5), ("latent_dim", -1), ("image_size", "32"), ("base_width", 2.5), ("base_width", True)])
def test_bad_config_values_are_weights_errors_naming_the_field(tmp_path, field, value):
    ShapeGenerator(base_width=16, image_size=32).save_pretrained(tmp_path / "s")
    _edit_config(tmp_path / "s", **{field: value})
    with pytest.raises(WeightsError, match=f"field '{field}'"):
        ShapeGenerator.from_pretrained(tmp_path / "s")


def test_another_architecture_is_refused_from_the_header(tmp_path):
    ShapeGenerator(base_width=16, image_size=32).save_pretrained(tmp_path / "s")
    _edit_config(tmp_path / "s", image_size=64)  # one more layer: keys differ, no shape to blame
    with pytest.raises(WeightsError, match="lacks net.10.bias.*another architecture"):
        ShapeGenerator.from_pretrained(tmp_path / "s")


@pytest.mark.parametrize("dtype", [torch.float16, torch.float64, torch.int64])
def test_tensor_dtypes_must_match(tmp_path, dtype):
    """#16.8: a float16 / float64 / int64 tensor is refused, not cast into the float32 model."""
    LungSegmenter(base_width=4, depth=2, input_size=32).save_pretrained(tmp_path / "l")
    weights = tmp_path / "l" / "model.safetensors"
    tensors = load_file(weights)
    tensors["head.weight"] = (tensors["head.weight"] * 100).to(dtype)
    save_file(tensors, weights, metadata={"model_type": "LungSegmenter"})
    with pytest.raises(WeightsError, match=r"'head\.weight'.*stored as"):
        LungSegmenter.from_pretrained(tmp_path / "l")


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_weights_are_refused(tmp_path, bad):
    TextureGenerator(base_width=4, patch_size=32).save_pretrained(tmp_path / "t")
    weights = tmp_path / "t" / "model.safetensors"
    tensors = load_file(weights)
    name = sorted(k for k in tensors if k.endswith("weight"))[0]
    tensors[name] = tensors[name].clone()
    tensors[name].view(-1)[3] = bad
    save_file(tensors, weights)
    with pytest.raises(WeightsError, match=f"'{name}'.*non-finite"):
        load_model(tmp_path / "t")


def test_corrupt_weights_file_is_a_weights_error(tmp_path):
    ShapeGenerator(base_width=16, image_size=32).save_pretrained(tmp_path / "s")
    (tmp_path / "s" / "model.safetensors").write_bytes(b"\xff" * 64)
    with pytest.raises(WeightsError, match="not a readable safetensors file"):
        ShapeGenerator.from_pretrained(tmp_path / "s")


@pytest.mark.parametrize("arch", ["fasterrcnn", "retinanet"])
def test_loaded_detector_keeps_its_saved_detections_per_img(tmp_path, arch):
    """#16.3: a detector saved with detections_per_img=3 returns at most 3 boxes per image."""
    torch.manual_seed(0)
    model = NoduleDetector(arch, "mobilenet_v3", image_size=64, fpn_channels=16, box_head_width=32, score_thresh=0.0, detections_per_img=3)
    model.save_pretrained(tmp_path / "det")
    loaded = load_model(tmp_path / "det")
    assert loaded.config["detections_per_img"] == 3
    images = torch.rand(2, 1, 64, 64, generator=torch.Generator().manual_seed(0))
    for m in (model, loaded):
        preds = m.predict(images)
        assert all(len(p["boxes"]) == 3 for p in preds), [len(p["boxes"]) for p in preds]


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_detections_per_img_is_checked(bad):
    with pytest.raises(ValueError, match="detections_per_img"):
        NoduleDetector("fasterrcnn", "mobilenet_v3", detections_per_img=bad)
