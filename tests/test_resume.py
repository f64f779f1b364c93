"""Exact resume (#11.5): a run stopped and resumed ends with the weights of an uninterrupted one,
for every trainer (all four run on :func:`cxr_nodule_aug.train.common.train_loop`).

Tiny models on 2 batches an epoch, CPU, bit-for-bit comparisons.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from conftest import lung_mask, make_image, make_target
from torchvision import tv_tensors

from cxr_nodule_aug.detection import ToDetectorInput
from cxr_nodule_aug.train import common, detector, lung, shape, texture
from cxr_nodule_aug.train.common import resolve_config
from cxr_nodule_aug.train.shape import ShapeConfig
from cxr_nodule_aug.train.shape import train as train_shape

from test_train_shape import write_masks
from test_train_texture import samples as texture_samples


def _draws() -> tuple:
    return (random.random(), random.gauss(0, 1), float(np.random.rand()), float(np.random.randn()), torch.rand(3).tolist())


def test_checkpoint_restores_every_global_random_state(tmp_path):
    module = nn.Linear(2, 2)
    opt = torch.optim.SGD(module.parameters(), lr=0.1)
    common.seed_everything(3)
    random.gauss(0, 1), np.random.randn()  # leave a cached Gaussian in both generators
    common.save_checkpoint(tmp_path / "c.pt", step=1, modules={"m": module}, optimizers={"m": opt})
    expected = _draws()
    common.seed_everything(99)  # what a fresh process does before loading
    common.load_checkpoint(tmp_path / "c.pt", modules={"m": module}, optimizers={"m": opt})
    assert _draws() == expected


def _run(out: Path, data: Path, steps: int, *extra: str) -> None:
    cfg = resolve_config(ShapeConfig, None, [f"data={data}", f"out={out}", f"steps={steps}", "base_width=16", "d_width=16", "image_size=16",
                                            "latent_dim=8", "batch_size=2", "log_every=1", "sample_every=1000", "checkpoint_every=1000", *extra])
    train_shape(cfg)


@pytest.mark.parametrize("workers", [0, 2])
def test_shape_training_resumed_mid_epoch_equals_an_uninterrupted_run(tmp_path, workers):
    data = write_masks(tmp_path / "masks", n=5)  # batch_size 2, drop_last: 2 batches an epoch
    _run(tmp_path / "straight", data, 7, f"workers={workers}")
    _run(tmp_path / "resumed", data, 3, f"workers={workers}")  # stops in epoch 1, after its first batch
    _run(tmp_path / "resumed", data, 7, f"workers={workers}")
    straight = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=True)
    resumed = torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=True)
    assert straight["step"] == resumed["step"] == 7
    for net in ("G", "D"):
        for name, value in straight["modules"][net].items():
            assert torch.equal(value, resumed["modules"][net][name]), f"{net}.{name}"
    a, b = load_file(tmp_path / "straight" / "model" / "model.safetensors"), load_file(tmp_path / "resumed" / "model" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "straight" / "metrics.jsonl").read_text().count("\n") == 7
    losses = lambda p: [line.split('"loss_g": ')[1].split(",")[0] for line in p.read_text().splitlines()]  # noqa: E731
    assert losses(tmp_path / "straight" / "metrics.jsonl") == losses(tmp_path / "resumed" / "metrics.jsonl")


def _shape(tmp_path: Path):
    data = write_masks(tmp_path / "masks", n=5)
    over = [f"data={data}", "base_width=16", "d_width=16", "image_size=16", "latent_dim=8"]
    return shape.ShapeConfig, over, shape.train, {}


def _texture(tmp_path: Path):
    pairs = texture.extract_patches(texture_samples(n=6), patch_size=32, max_fill=0.5)  # 5 training pairs
    over = ["base_width=4", "d_width=4", "patch_size=32", "lr_drop_step=4", "w_perceptual=0", "holdout_fraction=0.1"]
    return texture.TextureConfig, over, texture.train, {"pairs": pairs}


def _lung(tmp_path: Path):
    samples = [(tv_tensors.Image(make_image(torch.uint16, seed=i)), {"lung_mask": tv_tensors.Mask(lung_mask())}) for i in range(6)]
    over = ["base_width=4", "depth=2", "input_size=32", "holdout_fraction=0.2", "opacity_p=0.5", "neck_p=0.5"]  # 5 training images
    return lung.LungConfig, over, lung.train, {"samples": samples}


def _detector(tmp_path: Path):
    to_input = ToDetectorInput(64)
    data = [to_input(make_image(torch.uint16, seed=i), make_target(boxes=((20.0 + 5 * i, 30.0, 34.0 + 5 * i, 44.0),))) for i in range(5)]
    over = ["image_size=64", "fpn_channels=16", "box_head_width=32", "imagenet=false", "warmup_steps=2", "eval_every=1000"]
    return detector.DetectorConfig, over, detector.train, {"train_set": data}


TRAINERS = {"shape": _shape, "texture": _texture, "lung": _lung, "detector": _detector}


class _Killed(Exception):
    pass


@pytest.mark.parametrize("trainer", sorted(TRAINERS))
def test_every_trainer_resumed_mid_epoch_equals_an_uninterrupted_run(tmp_path, trainer, monkeypatch):
    """5 samples, batch 2 (2 batches an epoch), 5 steps: straight == killed after the checkpoint
    of step 3 (mid-epoch), then resumed with the same config (same schedules)."""
    config, over, train, inputs = TRAINERS[trainer](tmp_path)

    def run(out: Path) -> None:
        cfg = resolve_config(config, None, [f"out={out}", "steps=5", "batch_size=2", "log_every=1", "sample_every=1000", "checkpoint_every=3", *over])
        train(cfg, **inputs)

    run(tmp_path / "straight")
    save = common.save_checkpoint

    def save_then_die(path, *, step, **kwargs):
        save(path, step=step, **kwargs)
        if step == 3:
            raise _Killed

    monkeypatch.setattr(common, "save_checkpoint", save_then_die)
    with pytest.raises(_Killed):
        run(tmp_path / "resumed")
    monkeypatch.setattr(common, "save_checkpoint", save)
    assert torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=True)["step"] == 3
    run(tmp_path / "resumed")
    straight = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=True)
    resumed = torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=True)
    assert straight["step"] == resumed["step"] == 5
    for net, values in straight["modules"].items():
        for name, value in values.items():
            assert torch.equal(value, resumed["modules"][net][name]), f"{trainer}: {net}.{name}"
    rows = lambda run: [{k: v for k, v in json.loads(line).items() if k != "time_s"} for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    assert len(rows("straight")) == 5 and rows("straight") == rows("resumed")
    assert sorted(p.name for p in (tmp_path / "straight" / "samples").iterdir()) == ["step000005.png"]  # the last step draws samples


def test_batches_resume_at_an_epoch_boundary():
    """A checkpoint after an epoch's last batch resumes with the next epoch's first batch."""
    data = torch.utils.data.TensorDataset(torch.arange(6.0))
    make = lambda: torch.utils.data.DataLoader(data, batch_size=2, shuffle=True, generator=torch.Generator().manual_seed(0))  # noqa: E731
    straight = common.Batches(make())
    seq = [next(straight)[0].tolist() for _ in range(3)]  # exactly one epoch
    state = straight.state_dict()
    rest = [next(straight)[0].tolist() for _ in range(4)]
    resumed = common.Batches(make(), state=state)
    assert [next(resumed)[0].tolist() for _ in range(4)] == rest
    assert sorted(sum(seq, [])) == list(range(6)) and rest[:3] != seq  # a new shuffle each epoch


def test_a_checkpoint_of_the_older_format_still_resumes(tmp_path, caplog):
    """Before exact resume: NumPy's key array only, no data position. It loads, with warnings."""
    module = nn.Linear(2, 2)
    opt = torch.optim.SGD(module.parameters(), lr=0.1)
    common.save_checkpoint(tmp_path / "c.pt", step=3, modules={"m": module}, optimizers={"m": opt})
    state = torch.load(tmp_path / "c.pt", weights_only=True)
    state["rng"] = {"torch": state["rng"]["torch"], "numpy": torch.from_numpy(np.random.get_state()[1].astype(np.int64)), "python": state["rng"]["python"]}
    torch.save(state, tmp_path / "c.pt")
    with caplog.at_level("WARNING"):
        loaded = common.load_checkpoint(tmp_path / "c.pt", modules={"m": module}, optimizers={"m": opt})
        loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.arange(4.0)), batch_size=2)
        batches = common.Batches(loader, state=loaded.get("data"), step=loaded["step"])
    assert batches.epoch == 1 and len(next(batches)[0]) == 2
    assert "incomplete NumPy random state" in caplog.text and "no data-loader position" in caplog.text
