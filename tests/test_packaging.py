"""Packaging: an sdist and the wheel built from it carry the shipped weights, and a wheel install loads them.

The build runs on a copy of the checkout (so no build/ or egg-info lands in the repository),
offline, with the venv's setuptools: sdist through setuptools' PEP 517 backend, then
``pip wheel`` on the unpacked sdist, as ``python -m build`` does.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODELS = ("layer", "lung", "shape", "texture")
# Top-level paths of a working checkout that are not sources (see .gitignore); copying data/ or
# runs/ would take minutes.
NOT_SOURCES = {".git", ".venv", "data", "runs", "out", "build", "dist", ".pytest_cache", ".hypothesis"}
PIP_ENV = {"PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"}


def _copy_checkout(dest: Path) -> None:
    def ignore(directory: str, names: list[str]) -> set[str]:
        skip = {n for n in names if n == "__pycache__" or n.endswith(".egg-info")}
        if Path(directory) == REPO:
            skip |= NOT_SOURCES & set(names)
        return skip

    shutil.copytree(REPO, dest, ignore=ignore)
    # Decoys where a checkout keeps its data and experiments: neither may reach an sdist or wheel.
    for decoy in ("data/decoy/__init__.py", "runs/decoy/model.safetensors", "out/decoy.yaml"):
        (dest / decoy).parent.mkdir(parents=True, exist_ok=True)
        (dest / decoy).write_text("decoy\n")


def _run(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def test_wheel_from_sdist_ships_weights_and_loads_them_when_installed(tmp_path):
    src, dist = tmp_path / "src", tmp_path / "dist"
    _copy_checkout(src)
    pip_env = {**os.environ, **PIP_ENV}

    # sdist: sources, setup.py and weights/, nothing from the data or run folders.
    build_sdist = "import sys; from setuptools import build_meta; print(build_meta.build_sdist(sys.argv[1]))"
    sdist_name = _run([sys.executable, "-c", build_sdist, str(dist)], cwd=src, env=pip_env).strip().splitlines()[-1]
    with tarfile.open(dist / sdist_name) as tar:
        sdist_root = sdist_name.removesuffix(".tar.gz")
        members = {m.name.removeprefix(sdist_root + "/") for m in tar.getmembers() if m.isfile()}
        for name in MODELS:
            assert {f"weights/{name}/config.json", f"weights/{name}/model.safetensors"} <= members
        assert "setup.py" in members
        assert not [m for m in members if m.split("/")[0] in {"data", "runs", "out", "build", "dist"}]
        unpacked = tmp_path / "sdist"
        tar.extractall(unpacked, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))

    # wheel, built from the sdist as pip / build would.
    wheelhouse = tmp_path / "wheelhouse"
    _run(
        [sys.executable, "-m", "pip", "wheel", str(unpacked / sdist_root), "--no-deps", "--no-build-isolation", "--no-index", "-q", "-w", str(wheelhouse)],
        cwd=tmp_path,
        env=pip_env,
    )
    (wheel,) = wheelhouse.glob("cxr_nodule_aug-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = {n for n in zf.namelist() if not n.endswith("/")}
        for name in MODELS:
            for file in ("config.json", "model.safetensors", "README.md"):
                arcname = f"cxr_nodule_aug/_weights/{name}/{file}"
                assert arcname in names, arcname
                assert zf.read(arcname) == (REPO / "weights" / name / file).read_bytes(), arcname
        configs = {f"cxr_nodule_aug/train/configs/{p.name}" for p in (REPO / "cxr_nodule_aug/train/configs").glob("*.yaml")}
        assert configs and configs <= names

        # Nothing unexpected: the package (every source module, the weights, the configs) and its
        # dist-info, no tests/, data/, runs/ or top-level weights/.
        dist_info = "-".join(wheel.name.split("-")[:2]) + ".dist-info"
        assert {n.split("/")[0] for n in names} == {"cxr_nodule_aug", dist_info}
        sources = {p.relative_to(REPO).as_posix() for p in (REPO / "cxr_nodule_aug").rglob("*.py") if "__pycache__" not in p.parts}
        package_files = {n for n in names if n.startswith("cxr_nodule_aug/")}
        assert {n for n in package_files if n.endswith(".py")} == sources
        weights = {n for n in package_files if n.startswith("cxr_nodule_aug/_weights/")}
        assert package_files - sources - weights == configs

    # Installed into a bare target, imported from outside the checkout: the weights come from it.
    site = tmp_path / "site"
    _run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target", str(site), str(wheel)], cwd=tmp_path, env=pip_env)
    check = (
        "import json, cxr_nodule_aug\n"
        "from cxr_nodule_aug import NoduleInpaint, TextureGenerator\n"
        "from cxr_nodule_aug.hub import default_weights_dir\n"
        "root = default_weights_dir()\n"
        "texture = TextureGenerator.from_pretrained(root / 'texture')\n"
        "tf = NoduleInpaint()\n"
        "print(json.dumps({'package': cxr_nodule_aug.__file__, 'weights': str(root),\n"
        "                  'texture_eval': not texture.training, 'lung': tf.lung_model is not None}))\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in {"CXR_NODULE_AUG_WEIGHTS", "PYTHONPATH"}}
    env.update(PYTHONPATH=str(site), HF_HUB_OFFLINE="1")
    result = json.loads(_run([sys.executable, "-c", check], cwd=tmp_path, env=env).strip().splitlines()[-1])
    assert Path(result["package"]).is_relative_to(site), result
    assert Path(result["weights"]) == site / "cxr_nodule_aug" / "_weights", result
    assert result["texture_eval"] and result["lung"], result
