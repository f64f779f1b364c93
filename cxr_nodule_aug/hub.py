"""Weights I/O: one loading path for local directories and Hugging Face Hub repos.

Every model saves as a directory holding ``config.json`` (the constructor arguments plus
``model_type``) and ``model.safetensors`` (the state dict), and loads from

* a local directory (the shipped ``weights/<name>/`` is the embedded default), without network;
* ``"org/name"`` or ``"org/name@revision"`` on the Hub, through ``huggingface_hub``
  (``hf_hub_download``: its cache, ``revision`` pinning and ``local_files_only`` all apply).

Loading is strict and treats both files as untrusted data:

* ``model_type`` picks the class from one explicit table (:mod:`cxr_nodule_aug.registry`),
  imported on demand, so every saved model loads in a fresh interpreter;
* constructor arguments that only choose an initialisation (``NoduleDetector``'s ``imagenet``)
  are ignored: building a model from a config never reads a pretrained file;
* the config's types are checked, and the model is first built on the ``meta`` device (no
  memory) and compared with the safetensors header (names, shapes, dtypes) before anything is
  allocated; a mismatch names the config field that causes it when one can be told. The meta
  model then gets uninitialised storage that the file fills (built for real instead when it
  keeps tensors a state dict does not set);
* tensors are never cast (a float16 or int64 file for a float32 model is refused), and
  non-finite values (NaN, inf) are refused, naming the tensor.

Every failure is a :class:`WeightsError` naming the file.
"""

from __future__ import annotations

import inspect
import json
import math
import os
import re
import tempfile
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch
from huggingface_hub import HfApi, hf_hub_download
from safetensors import safe_open
from safetensors.torch import load_model as _load_safetensors
from safetensors.torch import save_model as _save_safetensors

from cxr_nodule_aug.registry import MODEL_TYPES, model_class

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
MODEL_CARD_NAME = "README.md"
LIBRARY_NAME = "cxr-nodule-aug"
WEIGHTS_ENV = "CXR_NODULE_AUG_WEIGHTS"

_REPO_RE = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.\-]*/[\w.\-]+)(?:@(?P<rev>[\w.\-/]+))?$")

M = TypeVar("M", bound="PretrainedMixin")

__all__ = ["MODEL_TYPES", "PretrainedMixin", "WeightsError", "load_model"]

# torch dtype -> the safetensors header's dtype name.
_SAFETENSORS_DTYPES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8", torch.bool: "BOOL",
}


class WeightsError(RuntimeError):
    """A weights directory or Hub repo is missing a file or does not match the model."""


def default_weights_dir() -> Path | None:
    """Where the shipped weights live, or ``None``.

    Order: the ``CXR_NODULE_AUG_WEIGHTS`` environment variable, then ``weights/`` beside the
    package in a source checkout (editable installs), then ``cxr_nodule_aug/_weights`` inside an
    installed wheel.
    """
    env = os.environ.get(WEIGHTS_ENV)
    if env:
        return Path(env)
    here = Path(__file__).resolve().parent
    checkout = here.parent / "weights"
    # Only a folder beside pyproject.toml is ours: an installed package's parent is
    # site-packages, where another distribution may have put a top-level weights/.
    if checkout.is_dir() and (here.parent / "pyproject.toml").is_file():
        return checkout
    if (here / "_weights").is_dir():
        return here / "_weights"
    return None


def parse_source(source: str | os.PathLike, revision: str | None = None) -> tuple[str, Path | None, str | None]:
    """Split a weights source into ``(kind, local_path, revision)``; kind is ``"local"`` or ``"hub"``.

    A path that exists locally always wins over the Hub reading of the same string.
    """
    path = Path(source).expanduser()
    if path.is_dir():
        if revision is not None:
            raise ValueError(f"revision={revision!r} was given for the local directory {str(path)!r}; revisions apply to Hub repos only")
        return "local", path, None
    text = str(source)
    match = _REPO_RE.match(text)
    if match is None or text.startswith((".", "/", "~")):
        raise WeightsError(
            f"weights source {text!r} is neither an existing local directory nor a Hub repo id "
            "of the form 'org/name' or 'org/name@revision'"
        )
    rev_in_id = match.group("rev")
    if rev_in_id and revision and rev_in_id != revision:
        raise ValueError(f"conflicting revisions: {text!r} pins {rev_in_id!r} but revision={revision!r}")
    return "hub", None, rev_in_id or revision


def resolve_files(
    source: str | os.PathLike,
    *,
    revision: str | None = None,
    local_files_only: bool = False,
    cache_dir: str | os.PathLike | None = None,
    subfolder: str | None = None,
) -> tuple[Path, Path]:
    """Return local paths ``(config.json, model.safetensors)`` for a source.

    Hub repos go through :func:`huggingface_hub.hf_hub_download` (offline with
    ``local_files_only=True`` or ``HF_HUB_OFFLINE=1``, from its cache).
    """
    kind, path, rev = parse_source(source, revision)
    if kind == "local":
        folder = path / subfolder if subfolder else path
        config, weights = folder / CONFIG_NAME, folder / WEIGHTS_NAME
        for f in (config, weights):
            if not f.is_file():
                raise WeightsError(f"{f} is missing: a weights directory holds {CONFIG_NAME} and {WEIGHTS_NAME}")
        return config, weights
    repo_id = str(source).split("@", 1)[0]
    files = []
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        try:
            files.append(
                Path(
                    hf_hub_download(
                        repo_id,
                        name,
                        subfolder=subfolder,
                        revision=rev,
                        cache_dir=cache_dir,
                        local_files_only=local_files_only,
                        library_name=LIBRARY_NAME,
                    )
                )
            )
        except Exception as err:  # huggingface_hub raises several types; keep the cause attached
            where = f"{repo_id}@{rev}" if rev else repo_id
            raise WeightsError(
                f"could not get {name} from the Hub repo {where!r}"
                f"{' (local_files_only=True: only the local cache was searched)' if local_files_only else ''}: {err}"
            ) from err
    return files[0], files[1]


def read_config(path: Path) -> dict[str, Any]:
    try:
        config = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise WeightsError(f"{path} is not a readable JSON config: {err}") from err
    if not isinstance(config, dict) or "model_type" not in config:
        raise WeightsError(f"{path} has no 'model_type' entry; it was not written by save_pretrained")
    return config


class PretrainedMixin:
    """``save_pretrained`` / ``from_pretrained`` / ``push_to_hub`` for an ``nn.Module``.

    Subclasses call ``self.register_config(**kwargs)`` in ``__init__`` with every constructor
    argument (JSON types only); that dict becomes ``config.json``.
    """

    model_type: ClassVar[str]
    config: dict[str, Any]
    # Constructor arguments that only choose an initialisation, with the value loading uses:
    # the saved weights replace that initialisation, so loading never needs (or reads) it.
    init_only_args: ClassVar[dict[str, Any]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.model_type = cls.__name__

    def register_config(self, **kwargs: Any) -> None:
        json.dumps(kwargs)  # fail early on a non-JSON argument
        self.config = dict(kwargs)

    # -- saving -------------------------------------------------------------------------------
    def save_pretrained(self, directory: str | os.PathLike, *, model_card: str | None = None, metadata: dict[str, Any] | None = None) -> Path:
        """Write ``config.json`` + ``model.safetensors`` (+ ``README.md`` if ``model_card``)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        config = {"model_type": self.model_type, **self.config}
        if metadata:
            config["metadata"] = metadata
        (directory / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        _save_safetensors(self, str(directory / WEIGHTS_NAME), metadata={"model_type": self.model_type, "library": LIBRARY_NAME})
        if model_card is not None:
            (directory / MODEL_CARD_NAME).write_text(model_card)
        return directory

    def push_to_hub(self, repo_id: str, *, revision: str | None = None, commit_message: str = "Upload model", private: bool | None = None, token: str | None = None, model_card: str | None = None) -> str:
        """Save to a temporary directory and upload it with :class:`huggingface_hub.HfApi`."""
        api = HfApi(token=token)
        api.create_repo(repo_id, private=private, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            self.save_pretrained(tmp, model_card=model_card)
            info = api.upload_folder(repo_id=repo_id, folder_path=tmp, revision=revision, commit_message=commit_message)
        return str(getattr(info, "commit_url", info))

    # -- loading ------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls: type[M],
        source: str | os.PathLike,
        *,
        revision: str | None = None,
        local_files_only: bool = False,
        cache_dir: str | os.PathLike | None = None,
        subfolder: str | None = None,
        map_location: str | torch.device = "cpu",
    ) -> M:
        """Load from a local directory or ``org/name[@revision]`` on the Hub; strict keys.

        Returns the model in eval mode on ``map_location``.
        """
        config_path, weights_path = resolve_files(source, revision=revision, local_files_only=local_files_only, cache_dir=cache_dir, subfolder=subfolder)
        config = read_config(config_path)
        model_type = config.pop("model_type")
        config.pop("metadata", None)
        target_cls: type[PretrainedMixin] = cls
        if cls is PretrainedMixin:
            try:
                target_cls = model_class(model_type)
            except KeyError as err:
                raise WeightsError(f"{config_path}: {err.args[0]}") from None
        elif model_type != cls.model_type:
            raise WeightsError(f"{config_path} holds a {model_type!r}, not a {cls.model_type!r}")
        config.update({k: v for k, v in target_cls.init_only_args.items() if k in config})
        _check_config_types(target_cls, config, config_path)
        model = _build(target_cls, config, config_path, device="meta")
        _check_header(weights_path, model, config, config_path, target_cls.__name__)
        if _state_dict_sets_every_tensor(model):
            model = model.to_empty(device=map_location)  # uninitialised: the file overwrites every tensor
        else:  # e.g. torchvision's anchor generator keeps plain tensors: build it for real
            model = _build(target_cls, config, config_path, device=None)
        try:
            _load_safetensors(model, str(weights_path), strict=True, device=str(map_location))
        except RuntimeError as err:
            raise WeightsError(f"{weights_path} does not match {target_cls.__name__}{config}: {err}") from err
        for name, tensor in model.state_dict().items():
            # A sum is finite when every value is (one cheap reduction); only a non-finite sum,
            # which finite values can also overflow to, needs the element-wise check.
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor.sum())) and not bool(torch.isfinite(tensor).all()):
                bad = int((~torch.isfinite(tensor)).sum())
                raise WeightsError(f"{weights_path}: tensor {name!r} holds {bad} non-finite value(s) (NaN or inf); refusing to load it")
        model.to(map_location)
        model.eval()
        return model  # type: ignore[return-value]


def _check_config_types(cls: type, config: dict[str, Any], config_path: Path) -> None:
    """Each config value has its constructor default's type; integers are >= 0, floats finite."""
    params = inspect.signature(cls.__init__).parameters
    for key, value in config.items():
        if key not in params or params[key].default is inspect.Parameter.empty:
            continue  # an unknown key fails at construction, naming it
        default = params[key].default
        if isinstance(default, bool):
            ok, want = isinstance(value, bool), "true or false"
        elif isinstance(default, int):
            ok, want = isinstance(value, int) and not isinstance(value, bool) and value >= 0, "a non-negative integer"
        elif isinstance(default, float):
            ok, want = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value), "a finite number"
        elif isinstance(default, str):
            ok, want = isinstance(value, str), "a string"
        else:
            continue  # None, tuples: the constructor checks them
        if not ok:
            raise WeightsError(f"{config_path}: field {key!r} must be {want}, got {value!r}")


def _build(cls: type, config: dict[str, Any], config_path: Path, device: str | None) -> Any:
    """``cls(**config)``, on ``device`` when given (``"meta"``: shapes only, no memory)."""
    try:
        if device is None:
            return cls(**config)
        with torch.device(device):
            return cls(**config)
    except TypeError as err:
        raise WeightsError(f"{config_path} does not match {cls.__name__}'s arguments: {err}") from err
    except (ValueError, RuntimeError) as err:
        raise WeightsError(f"{config_path}: {cls.__name__}{config} cannot be built: {err}") from err


def _state_dict_sets_every_tensor(model: Any) -> bool:
    """True when loading a state dict sets every tensor ``model`` holds: all its buffers are
    persistent and no module keeps a tensor outside its parameters and buffers."""
    saved = set(model.state_dict())
    if any(name not in saved for name, _ in model.named_buffers()):
        return False
    for module in model.modules():
        for key, value in vars(module).items():
            if key in ("_parameters", "_buffers", "_modules"):
                continue
            items = value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple)) else (value,)
            if any(isinstance(item, torch.Tensor) for item in items):
                return False
    return True


def _blame(config: dict[str, Any], built: tuple[int, ...], stored: tuple[int, ...]) -> list[str]:
    """Config fields whose value is a dimension of the built tensor but not of the stored one."""
    return [k for k, v in config.items() if isinstance(v, int) and not isinstance(v, bool) and v in built and v not in stored]


def _check_header(weights_path: Path, model: Any, config: dict[str, Any], config_path: Path, cls_name: str) -> None:
    """Compare a (meta) model's tensors with the safetensors header, reading no tensor data."""
    try:
        with safe_open(str(weights_path), framework="pt") as f:
            header = {}
            for name in f.keys():
                piece = f.get_slice(name)
                header[name] = (tuple(piece.get_shape()), piece.get_dtype())
    except Exception as err:  # safetensors raises its own error type for a corrupt file
        raise WeightsError(f"{weights_path} is not a readable safetensors file: {err}") from err
    tensors = model.state_dict(keep_vars=True)
    aliases: dict[int, list[str]] = {}
    for name, t in tensors.items():
        aliases.setdefault(id(t), []).append(name)
    where = f"{weights_path} does not match {cls_name}{config}"
    unexpected = sorted(set(header) - set(tensors))
    missing = sorted(names[0] for names in aliases.values() if not any(n in header for n in names))
    if unexpected or missing:
        show = lambda names: ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")  # noqa: E731
        parts = ([f"the file lacks {show(missing)}"] if missing else []) + ([f"the file has unexpected {show(unexpected)}"] if unexpected else [])
        raise WeightsError(f"{where}: {'; '.join(parts)} ({config_path} describes another architecture)")
    sizes = ", ".join(f"{k}={v}" for k, v in config.items() if isinstance(v, int) and not isinstance(v, bool))
    for name, t in tensors.items():
        if name not in header:
            continue  # a tied alias of a stored tensor
        built, (stored, _) = tuple(t.shape), header[name]
        if built != stored:
            fields = _blame(config, built, stored)
            cause = (f"config.json field {fields[0]!r}={config[fields[0]]} makes it {built}" if len(fields) == 1
                     else f"config.json's sizes ({sizes}) make it {built}")
            raise WeightsError(f"{where}: tensor {name!r} is {stored} in the file but {cause} ({config_path})")
    for name, t in tensors.items():
        if name in header and header[name][1] != _SAFETENSORS_DTYPES.get(t.dtype):
            raise WeightsError(f"{where}: tensor {name!r} is stored as {header[name][1]} but the model holds {t.dtype}; "
                               "weights are never cast: save them in the model's dtype")


def load_model(source: str | os.PathLike, **kwargs: Any) -> Any:
    """Load any model of this library from ``source``, choosing the class from ``config.json``
    (``model_type``, looked up in :data:`cxr_nodule_aug.registry.MODEL_TYPES`)."""
    return PretrainedMixin.from_pretrained(source, **kwargs)
