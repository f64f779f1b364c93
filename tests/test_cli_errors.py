"""Every ``cxr-nodule-aug`` error is one line on stderr with exit 2 (usage) or 1 (runtime), no
traceback unless ``--debug`` (issue 15's command-line findings and issue 14 item 4).

Most cases call :func:`cxr_nodule_aug.cli.main` in-process (what ``python -m cxr_nodule_aug.cli``
runs, returning the exit status); two run the real command to check the process's status and
stderr. No model weights load in any refused case, so each is fast.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import cxr_nodule_aug
from cxr_nodule_aug.cli import main

PACKAGE_ROOT = Path(cxr_nodule_aug.__file__).resolve().parent.parent  # the tree under test (subprocesses import the same)


def run_cli(capsys, *argv: str) -> tuple[int, str]:
    """(exit status, stderr) of one in-process run; stderr must be a single line without a traceback."""
    rc = main([str(a) for a in argv])
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err, err
    assert len(err.splitlines()) == 1, err
    return rc, err


def unwritable(tmp_path: Path) -> Path:
    """A folder path no process can create: under /proc (root ignores permission bits), else a
    read-only folder."""
    if Path("/proc/self").is_dir():
        return Path("/proc/cxr-nodule-aug-test/out")
    ro = tmp_path / "read-only"
    ro.mkdir(exist_ok=True)
    ro.chmod(0o500)
    return ro / "out"


# -- sim -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("args", "needle"), [
    (["--nodule", "-1"], "argument --nodule: '-1': expected a whole number >= 0"),
    (["--normal", "-3", "--nodule", "1"], "argument --normal: '-3': expected a whole number >= 0"),
    (["--nodule", "1", "--size", "0"], "argument --size: '0': expected a whole number >= 16"),
    (["--nodule", "1", "--diameter-mm", "30", "4"], "argument --diameter-mm: '30,4': MIN (30) is above MAX (4)"),
    (["--nodule", "1", "--diameter-mm", "0", "4"], "argument --diameter-mm: '0,4': expected a number >= 0.5"),
    (["--nodule", "1", "--seed", "-1"], "argument --seed: '-1': expected a whole number >= 0"),
    (["--nodule", "1", "--workers", "0"], "argument --workers: '0': expected a whole number >= 1"),
    (["--nodule", "1", "--shard", "4/4"], "argument --shard: '4/4': expected 0 <= i < n"),
    ([], "--normal and --nodule are both 0"),
])
def test_sim_bad_values_are_usage_errors(tmp_path, capsys, args, needle):
    rc, err = run_cli(capsys, "sim", "--out", tmp_path / "o", "--no-progress", *args)
    assert rc == 2 and err.startswith("cxr-nodule-aug sim: error: ") and needle in err, err
    assert not (tmp_path / "o").exists()


def test_sim_out_is_a_file_or_unwritable(tmp_path, capsys):
    (tmp_path / "afile").write_text("mine")
    rc, err = run_cli(capsys, "sim", "--nodule", "1", "--out", tmp_path / "afile")
    assert rc == 2 and "argument --out:" in err and "is a file, not a directory" in err, err
    assert (tmp_path / "afile").read_text() == "mine"
    rc, err = run_cli(capsys, "sim", "--nodule", "1", "--out", tmp_path / "afile" / "sub")
    assert rc == 2 and "argument --out:" in err and "is a file" in err, err
    rc, err = run_cli(capsys, "sim", "--nodule", "1", "--out", unwritable(tmp_path))
    assert rc == 2 and "argument --out:" in err and "not writable" in err, err


def test_sim_refuses_another_export_in_out(tmp_path, capsys):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    rc, err = run_cli(capsys, "sim", "--nodule", "1", "--size", "16", "--out", out, "--no-progress")
    assert rc == 2 and "is not empty and has no manifest.json" in err, err


# -- hem -------------------------------------------------------------------------------------------
def test_hem_detector_missing_or_wrong(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    rc, err = run_cli(capsys, "hem", "--detector", tmp_path / "no-such-model", "--data", data, "--out", tmp_path / "h")
    assert rc == 2 and "cxr-nodule-aug hem: error: --detector" in err and "no-such-model" in err, err
    empty = tmp_path / "empty-model"
    empty.mkdir()
    rc, err = run_cli(capsys, "hem", "--detector", empty, "--data", data, "--out", tmp_path / "h")
    assert rc == 2 and "--detector" in err and "config.json is missing" in err, err
    # A weights directory of another model (here a shape generator) is not a detector.
    from cxr_nodule_aug import ShapeGenerator

    ShapeGenerator(latent_dim=8, base_width=8, image_size=32).save_pretrained(tmp_path / "shape")
    rc, err = run_cli(capsys, "hem", "--detector", tmp_path / "shape", "--data", data, "--out", tmp_path / "h")
    assert rc == 2 and "--detector" in err and "not a 'NoduleDetector'" in err, err
    rc, err = run_cli(capsys, "hem", "--detector", empty, "--data", tmp_path / "nope")
    assert rc == 2 and "argument --data:" in err and "no such directory" in err, err
    rc, err = run_cli(capsys, "hem", "--detector", empty, "--data", data, "--batch-size", "0")
    assert rc == 2 and "argument --batch-size:" in err, err
    assert not (tmp_path / "h").exists()


# -- demo ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("args", "needle"), [
    (["--diameters-px", "0", "-5", "10"], "argument --diameters-px: '0': expected a number > 0"),
    (["--diameters-mm", "6", "nan", "9"], "argument --diameters-mm: 'nan': expected a finite number"),
    (["--diameters-px", "30", "60"], "argument --diameters-px: expected 3 arguments"),
    (["--seed", "-2"], "argument --seed: '-2': expected a whole number >= 0"),
    (["--shape-seeds", "1", "x"], "argument --shape-seeds: 'x' is not a whole number"),
    (["--image", "{tmp}/missing.dcm"], "argument --image: "),
    (["--out", "{tmp}/afile"], "argument --out: "),
    (["--weights", "{tmp}/no-weights"], "--weights "),
])
def test_demo_bad_arguments(tmp_path, capsys, args, needle):
    (tmp_path / "afile").write_text("")
    argv = ["demo", "--out", str(tmp_path / "d"), "--no-sim", *(a.format(tmp=tmp_path) for a in args)]
    rc, err = run_cli(capsys, *argv)
    assert rc == 2 and err.startswith("cxr-nodule-aug demo: error: ") and needle in err, err
    assert not (tmp_path / "d").exists()


# -- eval ------------------------------------------------------------------------------------------
def _eval_files(tmp_path: Path) -> tuple[Path, Path]:
    from cxr_nodule_aug.eval import write_node21_predictions

    gt = tmp_path / "metadata.csv"
    gt.write_text("img_name,x,y,width,height,label\nn0.mha,0,0,10,10,1\nn1.mha,0,0,0,0,0\n")
    preds = tmp_path / "nodules.json"
    write_node21_predictions({"n0.mha": {"boxes": torch.tensor([[0.0, 0, 10, 10]]), "scores": torch.tensor([0.9])},
                              "n1.mha": {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0)}}, preds)
    return preds, gt


@pytest.mark.parametrize(("args", "needle"), [
    (["--bootstrap", "-1"], "argument --bootstrap: '-1': expected a whole number >= 0"),
    (["--seed", "-1"], "argument --seed: '-1': expected a whole number >= 0"),
    (["--fp-per-image", "0"], "argument --fp-per-image: '0': expected a number > 0"),
    (["--iou-threshold", "1"], "argument --iou-threshold: '1': expected a number >= 0 and < 1"),
    (["--pixel-spacing-mm", "1", "-1"], "argument --pixel-spacing-mm: '-1': expected a number > 0"),
])
def test_eval_bad_values_name_their_flag_not_the_predictions(tmp_path, capsys, args, needle):
    preds, gt = _eval_files(tmp_path)
    rc, err = run_cli(capsys, "eval", "--predictions", preds, "--ground-truth", gt, "--out", tmp_path / "e", *args)
    assert rc == 2 and needle in err and "predictions" not in err, err
    assert not (tmp_path / "e").exists()
    # The same files with good values work.
    assert main(["eval", "--predictions", str(preds), "--ground-truth", str(gt), "--out", str(tmp_path / "e")]) == 0


# -- synthesize: a nodule that cannot fit fails in seconds, before any model loads -------------------
@pytest.fixture
def one_image_node21(tmp_path) -> Path:
    root = tmp_path / "node21"
    (root / "images").mkdir(parents=True)
    pixels = (np.random.default_rng(0).random((128, 128)) * 4000).astype(np.uint16)
    Image.fromarray(pixels).save(root / "images" / "a.png")
    (root / "metadata.csv").write_text("img_name,x,y,width,height,label\na.png,0,0,0,0,0\n")
    return root


@pytest.mark.parametrize(("args", "needle"), [
    (["--unit", "px", "--diameters", "5000"], "--diameters 5000 --unit px: a 5000 px nodule cannot fit in the image of source image 'a' (128 x 128 px); diameters must stay below 144.4 px"),
    (["--unit", "px", "--diameters", "4,5000"], "--diameters 4,5000 --unit px: a 5000 px nodule cannot fit"),
    (["--unit", "mm", "--diameters", "6,12"], "diameters in mm need the pixel spacing, and source image 'a' has none; give the diameters in pixels with --unit px"),
])
def test_synthesize_refuses_a_nodule_that_cannot_fit_before_loading_models(one_image_node21, tmp_path, capsys, monkeypatch, args, needle):
    from cxr_nodule_aug.cli import synthesize

    built = []
    monkeypatch.setattr(synthesize, "_make_transform", lambda a: built.append(a))
    t0 = time.perf_counter()
    rc, err = run_cli(capsys, "synthesize", "--data", one_image_node21, "--dataset", "node21", "--count", "3",
                      "--out", tmp_path / "s", "--no-progress", *args)
    seconds = time.perf_counter() - t0
    assert rc == 2 and needle in err, err
    assert built == [] and not (tmp_path / "s").exists()
    assert seconds < 20, seconds


def test_synthesize_with_weights_without_a_layer_model_names_the_fix(one_image_node21, tmp_path, capsys):
    """The default composition is additive (issue 13): a weights folder made before it (shape/ and
    texture/, lung/) is refused before any work, naming 'train layer' and --composition replace."""
    import shutil

    weights = tmp_path / "weights_old"
    for part in ("shape", "texture", "lung"):
        shutil.copytree(PACKAGE_ROOT / "weights" / part, weights / part)
    rc, err = run_cli(capsys, "synthesize", "--data", one_image_node21, "--dataset", "node21", "--count", "1", "--unit", "px",
                      "--diameters", "20", "--out", tmp_path / "s", "--no-progress", "--weights", weights)
    assert rc == 2, err
    assert "has no 'layer/' model" in err and "cxr-nodule-aug train layer" in err and "--composition replace" in err, err
    assert not (tmp_path / "s").exists()
    rc, err = run_cli(capsys, "synthesize", "--data", one_image_node21, "--dataset", "node21", "--count", "1", "--unit", "px",
                      "--diameters", "20", "--out", tmp_path / "s", "--no-progress", "--weights", weights, "--composition", "replace")
    # With the paper's mode the folder loads (this noise image then has too little lung for the nodule).
    assert "layer/" not in err and "cannot fit the lung mask" in err, err
    synth = cxr_nodule_aug.NoduleSynthesizer.from_pretrained(str(weights), composition="replace")
    assert synth.composition == "replace" and type(synth.texture_model).__name__ == "TextureGenerator"


@pytest.mark.parametrize(("args", "needle"), [
    (["--count", "0"], "argument --count: '0': expected a whole number >= 1"),
    (["--count", "1", "--diameters", "9,3"], "argument --diameters: '9,3': MIN (9) is above MAX (3)"),
    (["--count", "1", "--diameters", "-4"], "argument --diameters: '-4': expected a number > 0"),
    (["--count", "1", "--num-nodules", "3,x"], "argument --num-nodules: '3,x': 'x' is not a whole number"),
    (["--count", "1", "--contrast", "inf"], "argument --contrast: 'inf': expected a finite number"),
    (["--count", "1", "--device", "gpu0"], "argument --device: 'gpu0' is not a torch device"),
    (["--count", "1", "--seed", "-1"], "argument --seed: '-1': expected a whole number >= 0"),
    (["--count", "1", "--composition", "overlay"], "argument --composition: invalid choice: 'overlay'"),
    (["--count", "1", "--density", "dense"], "argument --density: 'dense': expected 'lidc' or class names from ground_glass, part_solid, solid, calcified"),
])
def test_synthesize_bad_values(one_image_node21, tmp_path, capsys, args, needle):
    rc, err = run_cli(capsys, "synthesize", "--data", one_image_node21, "--dataset", "node21", "--out", tmp_path / "s", *args)
    assert rc == 2 and needle in err, err


# -- the other commands' paths (survey) --------------------------------------------------------------
def test_lungs_and_export_paths(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    rc, err = run_cli(capsys, "lungs", "--data", data, "--out", unwritable(tmp_path))
    assert rc == 2 and "cxr-nodule-aug lungs: error: --out" in err and "not writable" in err, err
    rc, err = run_cli(capsys, "export", tmp_path, "--name", "../shape", "--weights-dir", tmp_path / "w")
    assert rc == 2 and "argument --name: '../shape': expected a folder name" in err, err
    rc, err = run_cli(capsys, "export", tmp_path, "--name", "shape", "--weights-dir", unwritable(tmp_path))
    assert rc == 2 and "argument --weights-dir:" in err and "not writable" in err, err
    rc, err = run_cli(capsys, "export", tmp_path, "--name", "shape", "--weights-dir", tmp_path / "w")
    assert rc == 2 and "holds no trained model" in err, err


# -- the contract itself ---------------------------------------------------------------------------
def test_unknown_command_and_option_are_one_line_usage_errors(capsys):
    rc, err = run_cli(capsys, "simulate")
    assert rc == 2 and err.startswith("cxr-nodule-aug: error: argument COMMAND: invalid choice: 'simulate'"), err
    rc, err = run_cli(capsys, "sim", "--out", "x", "--sizes", "3")
    assert rc == 2 and "unrecognized arguments: --sizes 3" in err, err
    rc, err = run_cli(capsys, "sim", "--nodule", "1")
    assert rc == 2 and "the following arguments are required: --out" in err, err


def test_train_config_errors(tmp_path, capsys):
    rc, err = run_cli(capsys, "train", "shape", "stepz=3")
    assert rc == 2 and "unknown config key 'stepz'" in err, err
    rc, err = run_cli(capsys, "train", "shape", "--config", "no-such-config")
    assert rc == 2 and "--config 'no-such-config' is neither a file nor a bundled config" in err, err


def test_a_runtime_failure_is_exit_1_and_debug_shows_the_traceback(tmp_path, capsys):
    preds, gt = _eval_files(tmp_path)
    preds.write_text(json.dumps({"type": "Multiple 2D bounding boxes", "boxes": [{"corners": "bad"}]}))
    argv = ["eval", "--predictions", str(preds), "--ground-truth", str(gt), "--out", str(tmp_path / "e")]
    rc, err = run_cli(capsys, *argv)
    assert rc == 1 and err.startswith("cxr-nodule-aug eval: error: "), err
    with pytest.raises(ValueError):
        main(["--debug", *argv])
    with pytest.raises(ValueError):
        main([*argv, "--debug"])


def test_the_installed_command_exits_with_the_status(tmp_path):
    """The process itself: status 2 and one stderr line; with --debug the traceback."""
    env = {**os.environ, "PYTHONPATH": str(PACKAGE_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = [sys.executable, "-m", "cxr_nodule_aug.cli", "sim", "--nodule", "1", "--size", "0", "--out", str(tmp_path / "o")]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=PACKAGE_ROOT, timeout=300)
    assert r.returncode == 2 and r.stdout == "", (r.returncode, r.stdout)
    assert r.stderr.strip().splitlines() == ["cxr-nodule-aug sim: error: argument --size: '0': expected a whole number >= 16 (see 'cxr-nodule-aug sim --help')"]
    r = subprocess.run([*cmd[:3], "--debug", *cmd[3:]], capture_output=True, text=True, env=env, cwd=PACKAGE_ROOT, timeout=300)
    assert r.returncode != 0 and "Traceback" in r.stderr and "UsageError" in r.stderr, r.stderr[-2000:]


# -- one table of exit statuses (#11) ----------------------------------------------------------------
def test_one_exit_status_table_in_help_and_readme(capsys):
    """``cxr-nodule-aug --help`` ends with :data:`EXIT_CODES`; the README's table says the same."""
    import re

    from cxr_nodule_aug.cli import COMMANDS, errors

    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    shown = capsys.readouterr().out
    readme = (PACKAGE_ROOT / "README.md").read_text()
    rows = dict(re.findall(r"^\| (\d+) \| (.+) \|$", readme, flags=re.M))
    assert {int(k): v.replace("`", "") for k, v in rows.items()} == errors.EXIT_CODES
    for code, meaning in errors.EXIT_CODES.items():
        assert re.search(rf"^  {code}\s+{re.escape(meaning)}$", shown, flags=re.M), (code, shown)
    # every status a command returns or maps to is in the table
    assert {errors.EXIT_RUNTIME, errors.EXIT_USAGE, errors.EXIT_SOME_FAILED, errors.EXIT_INTERRUPTED} <= set(errors.EXIT_CODES)
    from cxr_nodule_aug.cli import lungs

    assert lungs.EXIT_SOME_FAILED is errors.EXIT_SOME_FAILED and len(COMMANDS) >= 10


def test_commands_import_no_other_command():
    """A command module imports from the CLI package only the shared argument types and errors
    (a helper two commands need lives in the library, public)."""
    import ast

    cli = PACKAGE_ROOT / "cxr_nodule_aug" / "cli"
    shared = {"cxr_nodule_aug.cli.arguments", "cxr_nodule_aug.cli.errors"}
    offenders = []
    for path in sorted(cli.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("cxr_nodule_aug.cli") and node.module not in shared:
                if not (path.name in ("__init__.py", "__main__.py") and node.module == "cxr_nodule_aug.cli"):
                    offenders.append(f"{path.name}:{node.lineno} {node.module}")
            if isinstance(node, ast.Import):
                offenders += [f"{path.name}:{node.lineno} {a.name}" for a in node.names if a.name.startswith("cxr_nodule_aug.cli.")]
    assert not offenders, offenders
