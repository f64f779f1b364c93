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
    for config in (ShapeConfig, texture.TextureConfig, lung.LungConfig, detector.DetectorConfig):
        assert issubclass(config, common.RunConfig)
        names = {f.name for f in dataclasses.fields(config)}
        assert names >= {f.name for f in dataclasses.fields(common.RunConfig)}
        assert not names & set(common.RENAMED_KEYS)


CONFIGS = {"shape": ShapeConfig, "texture": texture.TextureConfig, "lung": lung.LungConfig, "detector": detector.DetectorConfig}


def test_bundled_configs_and_shipped_model_cards_use_todays_names(tmp_path):
    """Every bundled YAML, and the training config each shipped model card prints, resolves."""
    root = Path(common.__file__).parent / "configs"
    for path in sorted(root.glob("*.yaml")):
        resolve_config(CONFIGS[path.stem.split("-")[0]], path)
    weights = Path(__file__).resolve().parent.parent / "weights"
    for card in sorted(weights.glob("*/README.md")):
        text = card.read_text()
        block = text.split("full training config", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
        (tmp_path / "card.yaml").write_text(block)
        resolve_config(CONFIGS[card.parent.name], tmp_path / "card.yaml")


def test_detector_ranges_use_the_one_range_parser():
    assert detector._range("4,24", "augment_diameters", above=0.0) == (4.0, 24.0)
    assert detector._range("2", "augment_num_nodules", int, minimum=0) == 2
    with pytest.raises(ValueError, match=r"augment_diameters='24,4': .*MIN \(24\) is above MAX \(4\)"):
        detector._range("24,4", "augment_diameters", above=0.0)
    with pytest.raises(ValueError, match="augment_diameters='0,4': .*> 0"):
        detector._range("0,4", "augment_diameters", above=0.0)
