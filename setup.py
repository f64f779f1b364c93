"""Build hook: wheels carry the shipped weights as package data ``cxr_nodule_aug/_weights``.

All metadata lives in pyproject.toml. The weights stay in one place in git (``weights/`` at the
repository root, which a source checkout and an editable install load directly); a regular build
copies them into the build tree, where ``cxr_nodule_aug.hub.default_weights_dir`` finds them in an
installed wheel. MANIFEST.in puts ``weights/`` into the sdist so a wheel built from it has them too.
"""

from __future__ import annotations

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

WEIGHTS_SRC = Path(__file__).resolve().parent / "weights"
WEIGHTS_PACKAGE_DIR = ("cxr_nodule_aug", "_weights")
MODEL_NAMES = ("layer", "lung", "shape", "texture")
REQUIRED_FILES = ("config.json", "model.safetensors")


def _weight_files() -> list[Path]:
    """The files of ``weights/<model>/``, relative to ``weights/``; raises if a model is incomplete."""
    missing = [f"{name}/{file}" for name in MODEL_NAMES for file in REQUIRED_FILES if not (WEIGHTS_SRC / name / file).is_file()]
    if missing:
        # A wheel without them would install fine and fail at NoduleInpaint(): refuse to build it.
        raise FileNotFoundError(f"cannot build cxr-nodule-aug: shipped weights missing under {WEIGHTS_SRC}: {', '.join(missing)}")
    return sorted(
        path.relative_to(WEIGHTS_SRC)
        for name in MODEL_NAMES
        for path in (WEIGHTS_SRC / name).iterdir()
        if path.is_file() and not path.name.startswith(".")
    )


class BuildPyWithWeights(build_py):
    """``build_py`` that also copies ``weights/{layer,lung,shape,texture}/*`` to ``cxr_nodule_aug/_weights/``.

    Editable installs skip it (as setuptools' own ``build_py`` skips copying): they load
    ``weights/`` from the checkout.
    """

    def _weights_mapping(self) -> dict[str, str]:
        build_dir = Path(self.build_lib, *WEIGHTS_PACKAGE_DIR)
        return {str(build_dir / rel): str(WEIGHTS_SRC / rel) for rel in _weight_files()}

    def run(self) -> None:
        super().run()
        if self.editable_mode:
            return
        for target, source in self._weights_mapping().items():
            self.mkpath(str(Path(target).parent))
            self.copy_file(source, target)

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        outputs = super().get_outputs(include_bytecode)
        if self.editable_mode:
            return outputs
        return outputs + list(self._weights_mapping())


setup(cmdclass={"build_py": BuildPyWithWeights})
