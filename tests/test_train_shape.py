"""Shape GAN training: a few steps, resume, checkpoints loadable with weights_only, torchrun DDP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cxr_nodule_aug import ShapeGenerator
from cxr_nodule_aug.cli import main
from cxr_nodule_aug.train.common import resolve_config
from cxr_nodule_aug.train.shape import ShapeConfig

TINY = ["base_width=16", "d_width=16", "image_size=32", "batch_size=4", "log_every=1", "sample_every=2", "checkpoint_every=2"]


def write_masks(folder: Path, n: int = 8) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:64, :64]
    for i in range(n):
        a, b = rng.uniform(8, 20, 2)
        m = ((yy - 32) / a) ** 2 + ((xx - 32) / b) ** 2 <= 1
        Image.fromarray((m * 255).astype(np.uint8)).save(folder / f"m{i}.png")
    return folder


def test_config_overrides_and_errors(tmp_path):
    (tmp_path / "c.yaml").write_text("steps: 7\nbetas: [0.5, 0.9]\n")
    cfg = resolve_config(ShapeConfig, tmp_path / "c.yaml", ["lr=0.001", "augment=false"])
    assert cfg.steps == 7 and cfg.betas == (0.5, 0.9) and cfg.lr == 0.001 and cfg.augment is False
    with pytest.raises(ValueError, match="unknown config key 'stepz'"):
        resolve_config(ShapeConfig, None, ["stepz=3"])
    with pytest.raises(ValueError, match="steps"):
        resolve_config(ShapeConfig, None, ["steps=many"])


def test_train_resume_and_outputs(tmp_path):
    data = write_masks(tmp_path / "masks")
    out = tmp_path / "run"
    assert main(["train", "shape", f"data={data}", f"out={out}", "steps=2", *TINY]) == 0
    assert (out / "config.yaml").exists() and (out / "samples" / "step000002.png").exists()
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["step"] == 2
    # resume: continues from step 2 to 4
    assert main(["train", "shape", f"data={data}", f"out={out}", "steps=4", *TINY]) == 0
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]
    g = ShapeGenerator.from_pretrained(out / "model")
    assert g.image_size == 32


def test_missing_data_is_a_clear_error(tmp_path, capsys):
    # The CLI prints one line (no traceback), exit 1; the message names the argument.
    assert main(["train", "shape", f"data={tmp_path / 'nope'}", f"out={tmp_path / 'run'}", *TINY]) == 1
    err = capsys.readouterr().err
    assert "data=" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def _radiographs(folder: Path, n: int = 2) -> Path:
    """16-bit images with thousands of grey levels, as a folder of radiographs holds."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    for i in range(n):
        yy, xx = np.mgrid[:96, :96]
        pixels = 1500 + 900 * np.sin(xx / 9.0) * np.cos(yy / 13.0) + rng.normal(0, 200, (96, 96))
        Image.fromarray(pixels.clip(0, 4095).astype(np.uint16)).save(folder / f"r{i}.png")
    return folder


def test_a_folder_of_radiographs_is_refused_before_training(tmp_path, capsys):
    data = _radiographs(tmp_path / "radiographs")
    out = tmp_path / "run"
    assert main(["train", "shape", f"data={data}", f"out={out}", "steps=20", *TINY]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    # What it found (the distinct values of the first file), and what it expected.
    found = len(np.unique(np.array(Image.open(data / "r0.png"))))
    assert f"image 'r0.png' has {found:,} distinct values" in err and "expected binary nodule masks" in err, err
    assert not out.exists()  # refused before the run folder was made


def test_binary_masks_with_antialiased_grey_edges_are_refused(tmp_path):
    from cxr_nodule_aug.train.shape import MAX_LABELS, MaskFolder

    yy, xx = np.mgrid[:64, :64]
    soft = np.clip(255 * (14 - np.hypot(yy - 32, xx - 32)), 0, 255).astype(np.uint8)  # a disc with a ramp edge
    soft[0, : MAX_LABELS + 1] = np.arange(1, MAX_LABELS + 2)  # more grey levels than labels allowed
    Image.fromarray(soft).save(tmp_path / "soft.png")
    with pytest.raises(ValueError, match=f"<= {MAX_LABELS} labels"):
        MaskFolder(tmp_path, image_size=32)


def test_torchrun_two_cpu_processes(tmp_path):
    data = write_masks(tmp_path / "masks")
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29533",
           "-m", "cxr_nodule_aug.cli", "train", "shape", f"data={data}", f"out={out}", "steps=3", *TINY]
    subprocess.run(cmd, check=True, env=env, timeout=240)
    assert torch.load(out / "checkpoint.pt", weights_only=True)["step"] == 3
    assert (out / "model" / "model.safetensors").exists()


def test_export_writes_loadable_weights_with_card(tmp_path):
    data = write_masks(tmp_path / "masks")
    out = tmp_path / "run"
    main(["train", "shape", f"data={data}", f"out={out}", "steps=1", *TINY])
    assert main(["export", str(out), "--name", "shape", "--weights-dir", str(tmp_path / "weights")]) == 0
    card = (tmp_path / "weights" / "shape" / "README.md").read_text()
    assert "SimCXR" in card and "steps: 1" in card and "Limits" in card
    assert ShapeGenerator.from_pretrained(tmp_path / "weights" / "shape").image_size == 32


def test_export_push_to_hub_uses_hf_api(tmp_path, monkeypatch):
    import cxr_nodule_aug.hub as hub

    calls = []

    class FakeApi:
        def __init__(self, token=None):
            pass

        def create_repo(self, repo_id, private=None, exist_ok=False):
            calls.append(("create", repo_id))

        def upload_folder(self, repo_id, folder_path, revision=None, commit_message=""):
            calls.append(("upload", repo_id, sorted(p.name for p in Path(folder_path).iterdir())))
            return "https://example.invalid/commit/1"

    monkeypatch.setattr(hub, "HfApi", FakeApi)
    data = write_masks(tmp_path / "masks")
    out = tmp_path / "run"
    main(["train", "shape", f"data={data}", f"out={out}", "steps=1", *TINY])
    main(["export", str(out), "--name", "shape", "--weights-dir", str(tmp_path / "w"), "--push-to-hub", "org/shape"])
    assert calls == [("create", "org/shape"), ("upload", "org/shape", ["README.md", "config.json", "model.safetensors"])]


def test_labelled_mask_files_hold_one_nodule_per_value(tmp_path):
    from cxr_nodule_aug.train.shape import MaskFolder

    labels = np.zeros((64, 64), np.uint8)
    labels[5:15, 5:15] = 1
    labels[30:50, 30:45] = 2
    labels[50:60, 2:8] = 3
    Image.fromarray(labels).save(tmp_path / "a_nodules.png")
    Image.fromarray((labels > 0).astype(np.uint8) * 255).save(tmp_path / "a_lung.png")
    data = MaskFolder(tmp_path, image_size=32, pattern="*_nodules.png")
    assert len(data) == 3


def test_stabilisers_train_and_save_the_ema_generator(tmp_path):
    """d_norm=spectral, ema_decay, real_label, d_blur_sigma: a run resumes with the EMA in the
    checkpoint, and the saved model is the EMA of G (not the last G)."""
    from cxr_nodule_aug.train.shape import blur_for_discriminator, recalibrate_batchnorm, update_ema

    data = write_masks(tmp_path / "masks")
    out = tmp_path / "run"
    opts = ["d_norm=spectral", "ema_decay=0.9", "real_label=0.9", "d_blur_sigma=0.75"]
    assert main(["train", "shape", f"data={data}", f"out={out}", "steps=2", *TINY, *opts]) == 0
    assert main(["train", "shape", f"data={data}", f"out={out}", "steps=3", *TINY, *opts]) == 0
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["step"] == 3 and set(state["modules"]) == {"G", "D", "G_ema"}
    saved = ShapeGenerator.from_pretrained(out / "model").state_dict()
    for k, v in state["modules"]["G_ema"].items():
        if "running" not in k and "num_batches" not in k:  # the weights are the EMA's ...
            torch.testing.assert_close(saved[k], v)
    # ... the BatchNorm statistics those of the EMA's own weights, not the training G's
    ema = ShapeGenerator(100, 16, 32, 3)
    ema.load_state_dict(state["modules"]["G_ema"])
    recal = recalibrate_batchnorm(ema, seed=0).state_dict()
    for k in saved:
        torch.testing.assert_close(saved[k], recal[k])
    assert any(not torch.equal(saved[k], v) for k, v in state["modules"]["G"].items() if v.is_floating_point())
    # the pieces
    a, b = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    expect = 0.75 * a.weight.detach() + 0.25 * b.weight.detach()
    update_ema(a, b, 0.75)
    torch.testing.assert_close(a.weight, expect)
    x = torch.zeros(1, 1, 9, 9)
    x[..., 4, 4] = 1
    y = blur_for_discriminator(1.0)(x)
    assert y.shape == x.shape and abs(float(y.sum()) - 1) < 1e-5 and float(y.max()) < 0.2
    assert blur_for_discriminator(0.0)(x) is x


@pytest.mark.parametrize("bad", ["d_norm=layer", "ema_decay=1.0", "real_label=0.4", "d_blur_sigma=-1"])
def test_stabiliser_settings_are_checked(tmp_path, bad, capsys):
    data = write_masks(tmp_path / "masks")
    assert main(["train", "shape", f"data={data}", f"out={tmp_path / 'run'}", "steps=1", *TINY, bad]) == 1
    assert bad.split("=")[0] in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # refused before the run folder is made


def test_augment_rot90_false_keeps_horizontal_edges_horizontal():
    """augment_rot90=false: only flips and half turns, which map a horizontal edge to a horizontal edge."""
    from cxr_nodule_aug.train.shape import MaskFolder

    m = torch.zeros(1, 8, 8)
    m[0, 2, 1:7] = 1.0  # one horizontal line
    data = MaskFolder.__new__(MaskFolder)
    data.masks, data.augment, data.rot90 = m[None], True, False
    torch.manual_seed(0)
    for _ in range(20):
        out = data[0]
        assert out[0].sum(1).max() == 6  # still a row of 6 pixels


def test_recalibrate_batchnorm_uses_the_models_own_statistics_and_leaves_it_alone():
    """The EMA of G with G's running statistics normalises with other weights' statistics;
    recalibrate_batchnorm recomputes them, exactly (cumulative average), on a copy."""
    from cxr_nodule_aug.train.shape import recalibrate_batchnorm

    torch.manual_seed(0)
    g = ShapeGenerator(8, 16, 16, 1)
    before = {k: v.clone() for k, v in g.state_dict().items()}
    r = recalibrate_batchnorm(g, seed=3, batches=2, batch_size=5)
    for k, v in g.state_dict().items():  # the model itself is untouched
        assert torch.equal(v, before[k]), k
    assert not r.training and r.net[1].momentum == g.net[1].momentum
    # the first BatchNorm's running mean is the mean of its inputs over both batches
    gen = torch.Generator().manual_seed(3)
    z = torch.cat([torch.randn(5, 8, generator=gen) for _ in range(2)])
    with torch.no_grad():
        x = g.net[0](z[:, :, None, None])
    torch.testing.assert_close(r.net[1].running_mean, x.mean((0, 2, 3)))
    assert torch.equal(recalibrate_batchnorm(g, seed=3, batches=2, batch_size=5).state_dict()["net.1.running_var"],
                       r.state_dict()["net.1.running_var"])  # reproducible from the seed


def test_fine_tune_from_init_with_d_warmup_and_snapshots(tmp_path):
    """init= starts G from saved weights; for d_warmup_steps only D trains (G stays the init
    model exactly); snapshot_every saves the sampled model for selection."""
    data = write_masks(tmp_path / "masks")
    first = tmp_path / "first"
    assert main(["train", "shape", f"data={data}", f"out={first}", "steps=1", *TINY]) == 0
    init = ShapeGenerator.from_pretrained(first / "model").state_dict()
    out = tmp_path / "ft"
    opts = [f"init={first / 'model'}", "d_warmup_steps=2", "d_warmup_lr=1e-3", "snapshot_every=2", "d_norm=spectral"]
    assert main(["train", "shape", f"data={data}", f"out={out}", "steps=3", *TINY, *opts]) == 0
    warm = ShapeGenerator.from_pretrained(out / "snapshots" / "step000002").state_dict()
    for k, v in init.items():
        assert torch.equal(warm[k], v), k  # after the warm-up G is still the init model
    last = ShapeGenerator.from_pretrained(out / "snapshots" / "step000003")
    assert any(not torch.equal(last.state_dict()[k], v) for k, v in init.items() if v.is_floating_point())
    assert json.loads((out / "model" / "config.json").read_text())["metadata"]["init"] == str(first / "model")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert "loss_g" not in rows[0] and "loss_g" in rows[2]
    # stopped after the warm-up and resumed == straight through (the networks are made after seeding)
    opts = [f"init={first / 'model'}", "d_warmup_steps=1", "d_warmup_lr=1e-3", "d_norm=spectral", "ema_decay=0.9"]
    assert main(["train", "shape", f"data={data}", f"out={tmp_path / 'straight'}", "steps=3", *TINY, *opts]) == 0
    assert main(["train", "shape", f"data={data}", f"out={tmp_path / 'resumed'}", "steps=2", *TINY, *opts]) == 0
    assert main(["train", "shape", f"data={data}", f"out={tmp_path / 'resumed'}", "steps=3", *TINY, *opts]) == 0
    straight, resumed = (torch.load(tmp_path / r / "checkpoint.pt", weights_only=True) for r in ("straight", "resumed"))
    for net, state in straight["modules"].items():
        for name, value in state.items():
            assert torch.equal(value, resumed["modules"][net][name]), f"{net}.{name}"


@pytest.mark.parametrize("bad", ["init=NOPE", "d_warmup_steps=5", "snapshot_every=-1", "d_warmup_lr=-1", "init=WIDE"])
def test_fine_tune_settings_are_checked(tmp_path, bad, capsys):
    data = write_masks(tmp_path / "masks")
    if bad == "init=WIDE":  # a model of another width
        ShapeGenerator(100, 32, 32, 3).save_pretrained(tmp_path / "wide")
        bad = f"init={tmp_path / 'wide'}"
    elif bad == "init=NOPE":
        bad = f"init={tmp_path / 'nope'}"
    assert main(["train", "shape", f"data={data}", f"out={tmp_path / 'run'}", "steps=3", *TINY, bad]) in (1, 2)
    err = capsys.readouterr().err
    assert bad.split("=")[0] + "=" in err, err
    assert not (tmp_path / "run").exists()  # refused before the run folder is made
