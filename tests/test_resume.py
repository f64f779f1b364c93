"""Exact resume (#11.5): a run stopped and resumed ends with the weights of an uninterrupted one.

Tiny shape GAN on 5 masks (2 batches an epoch), CPU, bit-for-bit comparisons.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from cxr_nodule_aug.train import common
from cxr_nodule_aug.train.common import resolve_config
from cxr_nodule_aug.train.shape import ShapeConfig
from cxr_nodule_aug.train.shape import train as train_shape

from test_train_shape import write_masks


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
    cfg = resolve_config(ShapeConfig, None, [f"data={data}", f"out={out}", f"steps={steps}", "g_width=16", "d_width=16", "image_size=16",
                                            "latent_dim=8", "batch_size=2", "log_every=1", "sample_every=1000", "checkpoint_every=1000", *extra])
    train_shape(cfg)


@pytest.mark.parametrize("workers", [0, 2])
def test_shape_training_resumed_mid_epoch_equals_an_uninterrupted_run(tmp_path, workers):
    data = write_masks(tmp_path / "masks", n=5)  # batch_size 2, drop_last: 2 batches an epoch
    _run(tmp_path / "straight", data, 7, f"num_workers={workers}")
    _run(tmp_path / "resumed", data, 3, f"num_workers={workers}")  # stops in epoch 1, after its first batch
    _run(tmp_path / "resumed", data, 7, f"num_workers={workers}")
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
