"""One RunConfig, one name per concept (#11): every trainer's config shares the run fields, old
names are refused with the new one, bundled configs and the shipped model cards' configs resolve,
and config ranges use the command line's one range parser."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from cxr_nodule_aug.train import common, detector, lung, texture
from cxr_nodule_aug.train.common import resolve_config
from cxr_nodule_aug.train.shape import ShapeConfig


def _task_config(task: str) -> type:
    """The config class of ``cxr-nodule-aug train TASK`` (every task, also ones added later)."""
    import importlib

    from cxr_nodule_aug.cli.train import TASKS

    module, name = TASKS[task]
    return getattr(importlib.import_module(module), name)


def test_an_old_config_key_names_the_new_one(tmp_path):
    """One name per concept: a config written with the old names fails with the new name."""
    (tmp_path / "old.yaml").write_text("g_width: 64\n")
    with pytest.raises(ValueError, match="'g_width' was renamed: use base_width"):
        resolve_config(ShapeConfig, tmp_path / "old.yaml")
    for old, new in [("num_workers=2", "use workers"), ("g_lr=0.1", "use lr"), ("d_lr_ratio=0.1", "use d_lr")]:
        for config in (ShapeConfig, texture.TextureConfig, lung.LungConfig, detector.DetectorConfig):
            with pytest.raises(ValueError, match=new):
                resolve_config(config, None, [old])


def test_every_config_shares_the_run_fields():
    from cxr_nodule_aug.cli.train import TASKS

    for config in map(_task_config, TASKS):
        assert issubclass(config, common.RunConfig)
        names = {f.name for f in dataclasses.fields(config)}
        assert names >= {f.name for f in dataclasses.fields(common.RunConfig)}
        assert not names & set(common.RENAMED_KEYS)


def test_bundled_configs_and_shipped_model_cards_use_todays_names(tmp_path):
    """Every bundled YAML (``TASK-*.yaml``), and the training config each shipped model card
    prints, resolves against its task's config: no old or unknown key."""
    from cxr_nodule_aug.cli.train import TASKS

    root = Path(common.__file__).parent / "configs"
    bundled = sorted(root.glob("*.yaml"))
    assert {p.stem.split("-")[0] for p in bundled} <= set(TASKS) and len(bundled) >= 7
    for path in bundled:
        resolve_config(_task_config(path.stem.split("-")[0]), path)
    weights = Path(__file__).resolve().parent.parent / "weights"
    cards = sorted(card for card in weights.glob("*/README.md") if card.parent.name in TASKS)
    assert len(cards) >= 3
    for card in cards:
        text = card.read_text()
        block = text.split("full training config", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
        (tmp_path / "card.yaml").write_text(block)
        resolve_config(_task_config(card.parent.name), tmp_path / "card.yaml")


def test_detector_ranges_use_the_one_range_parser():
    assert detector._range("4,24", "augment_diameters", above=0.0) == (4.0, 24.0)
    assert detector._range("2", "augment_num_nodules", int, minimum=0) == 2
    with pytest.raises(ValueError, match=r"augment_diameters='24,4': .*MIN \(24\) is above MAX \(4\)"):
        detector._range("24,4", "augment_diameters", above=0.0)
    with pytest.raises(ValueError, match="augment_diameters='0,4': .*> 0"):
        detector._range("0,4", "augment_diameters", above=0.0)


@pytest.mark.parametrize("config", [ShapeConfig, texture.TextureConfig, lung.LungConfig, detector.DetectorConfig])
@pytest.mark.parametrize("override, needle", [
    ("steps=-1", "steps=-1: expected a number >= 1"), ("steps=0", "steps=0: expected a number >= 1"),
    ("batch_size=0", "batch_size=0: expected a number >= 1"), ("lr=0", "lr=0.0: expected a number > 0"),
    ("lr=-1e-3", "lr=-0.001: expected a number > 0"), ("workers=-1", "workers=-1: expected a number >= 0"),
    ("log_every=0", "log_every=0"), ("checkpoint_every=0", "checkpoint_every=0"), ("seed=-2", "seed=-2"),
])
def test_bad_run_values_are_refused_naming_the_field(config, override, needle):
    """Before: ``steps=-1`` trained 0 steps and wrote a model; ``lr=0`` trained nothing."""
    with pytest.raises(ValueError, match=needle.replace("(", r"\(")):
        resolve_config(config, None, [override])


@pytest.mark.parametrize("config, override", [
    (ShapeConfig, "d_lr=0"), (ShapeConfig, "betas=[0.5, 1.0]"), (ShapeConfig, "base_width=0"),
    (texture.TextureConfig, "max_fill=0"), (texture.TextureConfig, "holdout_fraction=1"), (texture.TextureConfig, "w_perceptual=-1"),
    (lung.LungConfig, "neck_p=1.5"), (lung.LungConfig, "depth=0"),
    (detector.DetectorConfig, "augment_p=2"), (detector.DetectorConfig, "image_size=8"), (detector.DetectorConfig, "worker_niceness=20"),
    (detector.DetectorConfig, "augment_composition=overlay"),
])
def test_bad_trainer_values_are_refused_naming_the_field(config, override):
    with pytest.raises(ValueError, match=f"^{override.split('=')[0]}="):
        resolve_config(config, None, [override])


def test_yaml_values_are_type_checked_and_the_cli_says_usage_error(tmp_path, capsys):
    (tmp_path / "c.yaml").write_text("lr: 1e-4\nsteps: 1e3\n")  # YAML 1.1 reads these as text
    cfg = resolve_config(ShapeConfig, tmp_path / "c.yaml", ["d_lr=1e-5"])
    assert (cfg.lr, cfg.steps, cfg.d_lr) == (1e-4, 1000, 1e-5) and isinstance(cfg.steps, int)
    (tmp_path / "c.yaml").write_text("lr: fast\n")
    with pytest.raises(ValueError, match=r"lr='fast': expected a float"):
        resolve_config(ShapeConfig, tmp_path / "c.yaml")
    (tmp_path / "c.yaml").write_text("steps: 3\nlr: 1\nbetas: [0.5, 0.9]\n")  # ints for floats, lists for tuples
    cfg = resolve_config(ShapeConfig, tmp_path / "c.yaml")
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float) and cfg.betas == (0.5, 0.9)
    with pytest.raises(ValueError, match="worker_niceness=2.5: expected an int"):
        detector.DetectorConfig(worker_niceness=2.5)
    from cxr_nodule_aug.cli import main

    assert main(["train", "shape", "data=x", f"out={tmp_path / 'run'}", "steps=-1"]) == 2
    assert "steps=-1: expected a number >= 1" in capsys.readouterr().err and not (tmp_path / "run").exists()


@pytest.mark.parametrize("task", ["shape", "texture", "lung", "detector"])
def test_print_config_reads_back_as_the_same_config(task, tmp_path, capsys):
    from cxr_nodule_aug.cli import main

    config = _task_config(task)
    assert main(["train", task, "--config", f"{task}-cpu", "--print-config", "seed=3", "lr=2e-3"]) == 0
    (tmp_path / "printed.yaml").write_text(capsys.readouterr().out)
    expected = resolve_config(config, Path(common.__file__).parent / "configs" / f"{task}-cpu.yaml", ["seed=3", "lr=2e-3"])
    assert resolve_config(config, tmp_path / "printed.yaml") == expected and expected.lr == 2e-3


def test_the_patch_trainers_share_one_config_base():
    """texture and layer fill a nodule patch the same way: one PatchConfig (fields, defaults,
    checks); shape, texture and layer share AdversarialConfig (d_lr, betas, widths)."""
    layer = _task_config("layer")
    assert issubclass(texture.TextureConfig, common.PatchConfig) and issubclass(layer, common.PatchConfig)
    assert issubclass(ShapeConfig, common.AdversarialConfig)
    for config in (texture.TextureConfig, layer):
        for override in ("max_fill=0", "patch_size=0", "jitter=-0.1", "d_lr=0", "contrast_range=[-1, 1]"):
            with pytest.raises(ValueError, match=f"^{override.split('=')[0]}="):
                resolve_config(config, None, [override])
    with pytest.raises(ValueError, match="max_layer="):
        resolve_config(layer, None, ["max_layer=0"])
    with pytest.raises(ValueError, match="context_norm='sometimes'"):
        resolve_config(texture.TextureConfig, None, ["context_norm=sometimes"])


def test_detector_online_augmentation_uses_the_additive_default_or_the_named_composition():
    """Issue 13: train detector's NoduleInpaint follows the library's default (additive, with a
    density per nodule); augment_composition=replace selects the paper's inpainting."""
    cfg = resolve_config(detector.DetectorConfig, None, ["augment_p=1", "augment_unit=px"])
    tf = detector.online_augment(cfg)
    assert cfg.augment_composition == "additive" and tf.synthesizer.composition == "additive" and tf.density is not None
    tf = detector.online_augment(resolve_config(detector.DetectorConfig, None, ["augment_p=1", "augment_unit=px", "augment_composition=replace"]))
    assert tf.synthesizer.composition == "replace" and tf.density is None
