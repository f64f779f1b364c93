"""Killed jobs resume to the bytes of an uninterrupted run (issue 15, "interrupted jobs").

For ``sim``, ``synthesize``, ``lungs`` and ``train shape``: the command runs in a subprocess,
is killed with SIGKILL once part of its output exists, and the same command is run again to
completion; every file it leaves (manifests included) must equal, byte for byte, what one
uninterrupted run writes, and no temporary file may remain. The reruns and the uninterrupted
runs go through :func:`cxr_nodule_aug.cli.main` in this process (the same command, without a
second interpreter start). Everything is single-threaded, as the commands run themselves.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

import cxr_nodule_aug
from cxr_nodule_aug.cli import main

PACKAGE_ROOT = Path(cxr_nodule_aug.__file__).resolve().parent.parent  # the tree under test (subprocesses import the same)
ENV = {**os.environ, "PYTHONPATH": str(PACKAGE_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the subprocesses (OMP_NUM_THREADS=1): the same float reductions
    yield
    torch.set_num_threads(threads)


def kill_midway(argv: list[str], started: Callable[[], bool], timeout: float = 600) -> int:
    """Run the command in a subprocess and SIGKILL it as soon as ``started()`` is true; the
    command must not have finished by itself. Returns the killed process's id."""
    proc = subprocess.Popen([sys.executable, "-m", "cxr_nodule_aug.cli", *argv], cwd=PACKAGE_ROOT, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout
    try:
        while not started():
            if proc.poll() is not None:
                pytest.fail(f"the command ended (status {proc.returncode}) before it could be killed: {proc.stderr.read().decode()[-2000:]}")
            if time.monotonic() > deadline:
                pytest.fail("the command wrote nothing to interrupt in time")
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    print(f"killed {argv[0]} while writing a file: {any_temp_file(argv)}")
    return proc.pid


def half_written(path: Path, pid: int) -> None:
    """What a process ``pid`` killed inside ``atomic_write(path, ...)`` leaves: the first bytes
    under the temporary name. Catching a kill inside a write takes luck (writes last
    milliseconds), so the tests also leave one on purpose."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.with_name(f".{path.name}.{pid}.tmp").write_bytes(b"\x89PNG\r\n\x1a\n half")


def any_temp_file(argv: list[str]) -> bool:
    out = next((Path(a.split("=", 1)[1]) for a in argv if a.startswith("out=")), None)
    out = Path(argv[argv.index("--out") + 1]) if "--out" in argv else out
    return out is not None and out.is_dir() and any(p.name.endswith(".tmp") for p in out.rglob("*"))


def files(root: Path, skip: Callable[[Path], bool] = lambda p: False) -> dict[str, str]:
    """Relative path -> sha256 of every file under ``root``."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and not skip(p.relative_to(root))}


def count(folder: Path, pattern: str) -> int:
    return len(list(folder.glob(pattern))) if folder.is_dir() else 0


def writing(root: Path) -> bool:
    """A file is being written (an atomic write's temporary file exists): the moment to kill."""
    return any(p.name.endswith(".tmp") for p in root.rglob(".*")) if root.is_dir() else False


def assert_same_output(resumed: Path, uninterrupted: Path, skip: Callable[[Path], bool] = lambda p: False) -> None:
    a, b = files(resumed, skip), files(uninterrupted, skip)
    assert not [k for k in a if k.endswith(".tmp")], "temporary files left behind"
    assert sorted(a) == sorted(b)
    assert [k for k in a if a[k] != b[k]] == []


# -- sim -----------------------------------------------------------------------------------------
SIM = ["--normal", "1", "--nodule", "3", "--size", "128", "--seed", "5", "--no-progress"]


@pytest.fixture(scope="module")
def sim_runs(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("sim")
    killed, whole = root / "killed", root / "whole"
    # Killed while writing a file after the first image, or at the latest once three of four are done.
    records = lambda: count(killed / "records", "*.json")  # noqa: E731
    pid = kill_midway(["sim", *SIM, "--out", str(killed)], lambda: (records() >= 1 and writing(killed)) or records() >= 3)
    half_written(killed / "images" / "simcxr_000003.png", pid)
    assert not json.loads((killed / "manifest.json").read_text())["complete"]
    assert count(killed / "records", "*.json") < 4
    assert main(["sim", *SIM, "--out", str(killed)]) == 0
    assert main(["sim", *SIM, "--out", str(whole)]) == 0
    return killed, whole


def test_sim(sim_runs):
    killed, whole = sim_runs
    assert json.loads((killed / "manifest.json").read_text())["complete"]
    assert_same_output(killed, whole)


# -- synthesize ----------------------------------------------------------------------------------
def test_synthesize(sim_runs, tmp_path):
    source = sim_runs[1]
    argv = ["synthesize", "--data", str(source), "--count", "5", "--diameters", "4,8", "--unit", "px", "--seed", "2", "--no-progress"]
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    parts = lambda: count(killed / ".parts", "*.json")  # noqa: E731
    pid = kill_midway([*argv, "--out", str(killed)], lambda: (parts() >= 1 and writing(killed)) or parts() >= 4)
    half_written(killed / "images" / "synth_000004_x.png", pid)
    assert not (killed / "metadata.csv").exists() and count(killed / ".parts", "*.json") < 5
    assert main([*argv, "--out", str(killed)]) == 0
    assert main([*argv, "--out", str(whole)]) == 0
    assert_same_output(killed, whole)
    assert json.loads((killed / "manifest.json").read_text())["complete"]


# -- lungs ---------------------------------------------------------------------------------------
def test_lungs(sim_runs, tmp_path):
    source = sim_runs[1]
    data = tmp_path / "node21"
    (data / "images").mkdir(parents=True)
    names = []
    for png in sorted((source / "images").glob("*.png")):
        for copy in range(2):  # 8 images: long enough to be killed midway
            name = f"{png.stem}_{copy}.png"
            (data / "images" / name).write_bytes(png.read_bytes())
            names.append(name)
    (data / "metadata.csv").write_text("img_name,x,y,width,height,label\n" + "".join(f"{n},0,0,0,0,0\n" for n in names))
    argv = ["lungs", "--data", str(data), "--dataset", "node21", "--no-progress"]
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    masks = lambda: count(killed, "*.png")  # noqa: E731
    pid = kill_midway([*argv, "--out", str(killed)], lambda: (masks() >= 1 and writing(killed)) or masks() >= 6)
    half_written(killed / names[-1], pid)
    assert count(killed, "*.png") < len(names)
    assert main([*argv, "--out", str(killed)]) in (0, 3)
    assert main([*argv, "--out", str(whole)]) in (0, 3)
    assert_same_output(killed, whole)
    assert count(whole, "*.png") + len((whole / "failed.txt").read_text().splitlines() if (whole / "failed.txt").exists() else []) == len(names)


# -- train shape (checkpoints every step) --------------------------------------------------------
def _masks(folder: Path, n: int = 8) -> Path:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:64, :64]
    for i in range(n):
        a, b = rng.uniform(8, 20, 2)
        Image.fromarray(((((yy - 32) / a) ** 2 + ((xx - 32) / b) ** 2 <= 1) * 255).astype(np.uint8)).save(folder / f"m{i}.png")
    return folder


def test_train_shape(tmp_path):
    data = _masks(tmp_path / "masks")
    tiny = ["steps=10", "base_width=16", "d_width=16", "image_size=32", "batch_size=3", "log_every=1", "sample_every=3", "checkpoint_every=1"]
    killed, whole = tmp_path / "killed", tmp_path / "whole"

    def logged(n: int) -> bool:
        path = killed / "metrics.jsonl"
        return path.is_file() and len(path.read_text().splitlines()) >= n

    kill_midway(["train", "shape", f"data={data}", f"out={killed}", *tiny], lambda: logged(4))  # mid-epoch: 8 masks, 2 batches of 3
    assert not (killed / "model").exists()
    (killed / "checkpoint.tmp").write_bytes(b"half a checkpoint")  # a kill inside save_checkpoint's torch.save
    assert main(["train", "shape", f"data={data}", f"out={killed}", *tiny]) == 0
    assert main(["train", "shape", f"data={data}", f"out={whole}", *tiny]) == 0
    # The sample grids and the model config are the same files; the log differs only in its wall
    # times, config.yaml in out=. model.safetensors holds the same tensors and metadata, but its
    # header's metadata order is not reproducible (safetensors writes a hash map: it differs
    # between two uninterrupted runs too), so it is compared by content.
    volatile = {"metrics.jsonl", "config.yaml", "checkpoint.pt", "model/model.safetensors"}
    assert_same_output(killed, whole, skip=lambda p: str(p) in volatile)
    with safe_open(killed / "model" / "model.safetensors", "pt") as a, safe_open(whole / "model" / "model.safetensors", "pt") as b:
        assert a.metadata() == b.metadata() and sorted(a.keys()) == sorted(b.keys())
        assert all(torch.equal(a.get_tensor(k), b.get_tensor(k)) for k in b.keys())
    rows = lambda run: [{k: v for k, v in json.loads(line).items() if k != "time_s"} for line in (run / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    assert rows(killed) == rows(whole) and [r["step"] for r in rows(whole)] == list(range(1, 11))
    a = torch.load(killed / "checkpoint.pt", weights_only=True)["modules"]
    b = torch.load(whole / "checkpoint.pt", weights_only=True)["modules"]
    assert all(torch.equal(a[m][k], b[m][k]) for m in b for k in b[m])
