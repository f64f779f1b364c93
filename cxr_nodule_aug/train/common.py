"""What every trainer shares: :class:`RunConfig` (the fields every config has), :func:`start_run`,
:func:`make_loader` and :func:`train_loop` (resume, metrics log, sample images, checkpoints,
exact RNG restore), plus seeding, torchrun/DDP, checkpoints, logs and sample grids.

A trainer is its config dataclass (a :class:`RunConfig` subclass) and a ``train(cfg)``
function that builds data and models, then hands one *step function* to :func:`train_loop`::

    @dataclasses.dataclass
    class MyConfig(common.RunConfig):
        out: str = "runs/mine"          # redeclare a field to change its default
        base_width: int = 16            # the trainer's own fields

        def check(self) -> None:        # runs on every construction: bad values fail early
            super().check()             # steps, batch_size, lr, workers ...
            common.check_value(self, "base_width", minimum=1)

    def train(cfg: MyConfig) -> Path:
        d, out = common.start_run(cfg)                # DDP, seeds, <out>/config.yaml
        loader = common.make_loader(cfg, dataset, d)  # batch_size, workers, seeded shuffle
        model = Net(cfg.base_width).to(d.device)
        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)

        def step(batch, n):                           # one optimiser step; n counts from 1
            loss = ...
            opt.zero_grad(set_to_none=True); loss.backward(); opt.step()
            return {"loss": loss}                     # logged every log_every steps

        common.train_loop(cfg, d, out, loader, step, modules={"model": model}, optimizers={"model": opt})
        if d.is_main:
            model.save_pretrained(out / "model")
        common.cleanup(d)
        return out / "model"

``samples=`` (a function returning an image grid) adds ``samples/stepNNNNNN.png``. To make it a
``cxr-nodule-aug train NAME`` task, add it to ``TASKS`` in :mod:`cxr_nodule_aug.cli.train` and
bundle ``train/configs/NAME-cpu.yaml`` (tests resolve every bundled config against its task).

Everything that must survive a resume goes into ``modules`` / ``optimizers`` / ``schedulers``;
random draws inside ``step`` use the global generators (torch, numpy, python), which the
checkpoint saves and restores, so a run stopped and resumed is bit-identical to one that was
not (on CPU, single process).
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import json
import logging
import os
import random
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Callable, ClassVar, NamedTuple, TypeVar

import numpy as np
import torch
import torch.distributed as dist
import yaml
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm import tqdm

from cxr_nodule_aug.io.writers import atomic_write

C = TypeVar("C")
log = logging.getLogger(__name__)


# --- configs -----------------------------------------------------------------------------------
# Config keys that were renamed (one name per concept across the trainers): an old name in a
# config file or an override is an error that names the new one.
RENAMED_KEYS: dict[str, str] = {
    "num_workers": "workers",
    "g_lr": "lr (the generator's learning rate; d_lr is the discriminator's)",
    "g_width": "base_width",
    "d_lr_ratio": "d_lr (the discriminator's learning rate itself: old lr x d_lr_ratio, e.g. 1e-4 x 0.1 -> d_lr=1e-5)",
}


@dataclasses.dataclass
class RunConfig:
    """The fields every trainer's config has, under the same name in each.

    - ``data``: what to train on (each trainer says what it accepts).
    - ``out``: the run folder: ``config.yaml``, ``metrics.jsonl``, ``samples/``,
      ``checkpoint.pt`` (resumed when present) and ``model/``.
    - ``steps``: optimiser steps in all; a resumed run continues up to it.
    - ``batch_size``; ``lr``: the model's learning rate (the generator's where a discriminator
      has its own ``d_lr``).
    - ``workers``: DataLoader worker processes (0: load in the training process).
    - ``seed``: seeds python, numpy, torch and the data order; ``device``: auto, cpu, cuda.
    - ``log_every`` (a row of ``metrics.jsonl``), ``sample_every`` (a PNG under ``samples/``;
      0: none), ``checkpoint_every``: in steps; the last step always logs, samples and saves.

    Other names of these concepts are refused (:data:`RENAMED_KEYS`): width is ``base_width``
    (and ``d_width`` for a discriminator), a discriminator's learning rate ``d_lr``.
    """

    data: str = ""
    out: str = "runs/run"
    steps: int = 1000
    batch_size: int = 8
    lr: float = 1e-4
    workers: int = 0
    seed: int = 0
    device: str = "auto"
    log_every: int = 50
    sample_every: int = 500
    checkpoint_every: int = 250

    renamed: ClassVar[Mapping[str, str]] = RENAMED_KEYS

    def __post_init__(self) -> None:
        """Every field has its default's type (a bad value fails here, naming the field, not
        steps later), then :meth:`check`. A subclass adds its own bounds in ``check``."""
        for f in dataclasses.fields(self):
            if f.default is dataclasses.MISSING:
                continue
            value, like = getattr(self, f.name), f.default
            if isinstance(value, str) and value != (value := _number_from_text(value, like)):
                setattr(self, f.name, value)
            if isinstance(like, tuple) and isinstance(value, list):
                value = tuple(value)
                setattr(self, f.name, value)
            elif isinstance(like, float) and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
                setattr(self, f.name, value)
            if type(value) is not type(like):
                kind = type(like).__name__
                raise ValueError(f"{f.name}={value!r}: expected {'an' if kind[0] in 'aeiou' else 'a'} {kind}")
        self.check()

    def check(self) -> None:
        """Bounds of the run fields; subclasses call ``super().check()`` and :func:`check_value`."""
        for name in ("steps", "batch_size", "log_every", "checkpoint_every"):
            check_value(self, name, minimum=1)
        for name in ("workers", "seed", "sample_every"):
            check_value(self, name, minimum=0)
        check_value(self, "lr", above=0)


@dataclasses.dataclass
class AdversarialConfig(RunConfig):
    """:class:`RunConfig` for a generator trained against a discriminator (shape, texture,
    layer): ``lr`` is the generator's learning rate, ``d_lr`` the discriminator's; ``betas``
    both Adams'; ``base_width`` the generator's width, ``d_width`` the discriminator's."""

    d_lr: float = 1e-5
    betas: tuple = (0.5, 0.999)
    base_width: int = 16
    d_width: int = 32

    def check(self) -> None:
        super().check()
        check_value(self, "d_lr", above=0)
        check_value(self, "betas", minimum=0, below=1)
        check_value(self, "base_width", minimum=1)
        check_value(self, "d_width", minimum=1)


@dataclasses.dataclass
class PatchConfig(AdversarialConfig):
    """:class:`AdversarialConfig` for the models that fill a nodule patch cut by inference's
    cut (texture, layer): ``patch_size`` and ``max_fill`` as the engine cuts, ``num_stages``
    (coarse-to-fine), L1 weights on the coarse and fine outputs and the adversarial weight,
    a learning-rate drop (10x, both models) at ``lr_drop_step``, the held-out fraction of
    images, the nodule's ``jitter`` in its window (a fraction of the window) and the per-patch
    intensity augmentation (``gamma_range``, ``contrast_range``; (1, 1) switches each off)."""

    lr_drop_step: int = 4500
    num_stages: int = 2
    patch_size: int = 64
    max_fill: float = 0.5
    w_l1_coarse: float = 1.0
    w_l1_fine: float = 1.0
    w_adversarial: float = 1.0
    holdout_fraction: float = 0.1
    jitter: float = 0.125
    gamma_range: tuple = (0.3, 1.5)
    contrast_range: tuple = (0.7, 1.2)

    def check(self) -> None:
        super().check()
        check_value(self, "num_stages", minimum=1)
        check_value(self, "patch_size", minimum=1)
        for name in ("lr_drop_step", "w_l1_coarse", "w_l1_fine", "w_adversarial", "jitter"):
            check_value(self, name, minimum=0)
        check_value(self, "max_fill", above=0, maximum=1)
        check_value(self, "holdout_fraction", minimum=0, below=1)
        check_value(self, "gamma_range", above=0)
        check_value(self, "contrast_range", minimum=0)


def check_value(cfg: Any, name: str, *, minimum: float | None = None, above: float | None = None,
                maximum: float | None = None, below: float | None = None) -> None:
    """Raise ``ValueError`` naming ``name`` unless ``cfg.<name>`` is finite and within the
    bounds (``minimum``/``maximum`` inclusive, ``above``/``below`` strict); a tuple's every item."""
    value = getattr(cfg, name)
    for v in value if isinstance(value, tuple) else (value,):
        bad = (not isinstance(v, (int, float)) or isinstance(v, bool) or v != v or v in (float("inf"), float("-inf"))
               or (minimum is not None and v < minimum) or (above is not None and v <= above)
               or (maximum is not None and v > maximum) or (below is not None and v >= below))
        if bad:
            wants = [f">= {minimum:g}" if minimum is not None else "", f"> {above:g}" if above is not None else "",
                     f"<= {maximum:g}" if maximum is not None else "", f"< {below:g}" if below is not None else ""]
            raise ValueError(f"{name}={value!r}: expected {'values' if isinstance(value, tuple) else 'a number'} {' and '.join(w for w in wants if w)}")


def _check_key(key: str, fields: Mapping[str, Any], renamed: Mapping[str, str], where: str) -> None:
    if key in fields:
        return
    if key in renamed:
        raise ValueError(f"{where}config key {key!r} was renamed: use {renamed[key]}")
    raise ValueError(f"{where}unknown config key {key!r}; known: {sorted(fields)}")


def _coerce(value: str, like: Any) -> Any:
    """Parse a command-line override with YAML, checked against the default's type."""
    parsed = yaml.safe_load(value)
    if like is None or parsed is None:
        return parsed
    parsed = _number_from_text(parsed, like)
    if isinstance(like, bool):
        if not isinstance(parsed, bool):
            raise ValueError(f"expected true/false, got {value!r}")
        return parsed
    if isinstance(like, (int, float)) and not isinstance(parsed, bool) and isinstance(parsed, (int, float)):
        return type(like)(parsed) if not (isinstance(like, int) and isinstance(parsed, float) and not parsed.is_integer()) else parsed
    if isinstance(like, (list, tuple)) and isinstance(parsed, list):
        return type(like)(parsed)
    if isinstance(like, str):
        return str(parsed) if not isinstance(parsed, str) else parsed
    if type(parsed) is not type(like):
        raise ValueError(f"expected a {type(like).__name__}, got {value!r}")
    return parsed


def _number_from_text(value: Any, like: Any) -> Any:
    """``"1e-4"`` (which YAML 1.1 reads as text) as the number a numeric field wants."""
    if isinstance(value, str) and isinstance(like, (int, float)) and not isinstance(like, bool):
        try:
            number = float(value)
        except ValueError:
            return value
        return int(number) if isinstance(like, int) and number.is_integer() else number
    return value


def resolve_config(cls: type[C], path: str | os.PathLike | None = None, overrides: Sequence[str] = ()) -> C:
    """Defaults of dataclass ``cls`` <- YAML file ``path`` <- ``key=value`` overrides."""
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    renamed = getattr(cls, "renamed", RENAMED_KEYS)
    values: dict[str, Any] = {}
    if path is not None:
        data = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path}: a config file must be a YAML mapping")
        for key in data:
            _check_key(key, fields, renamed, f"{path}: ")
        values.update(data)
    defaults = cls()  # type: ignore[call-arg]
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like key=value")
        key, raw = item.split("=", 1)
        _check_key(key, fields, renamed, "")
        try:
            values[key] = _coerce(raw, getattr(defaults, key))
        except (ValueError, yaml.YAMLError) as err:
            raise ValueError(f"override {key}={raw!r}: {err}") from err
    for key, value in values.items():
        if isinstance(getattr(defaults, key), tuple) and isinstance(value, list):
            values[key] = tuple(value)
    return dataclasses.replace(defaults, **values)  # type: ignore[type-var]


def config_yaml(config: Any) -> str:
    """The config as YAML (keys sorted, tuples as lists): what ``--print-config`` prints and
    ``<out>/config.yaml`` holds, and what ``--config FILE`` reads back."""
    data = {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(config).items()}
    return yaml.safe_dump(data, sort_keys=True)


def write_config(config: Any, out_dir: Path) -> Path:
    path = out_dir / "config.yaml"
    path.write_text(config_yaml(config))
    return path


def cached(path: Path, d: Dist, make: Callable[[], Any]) -> Any:
    """``make()``'s result (tensors and containers), saved to ``path`` by rank 0 the first time
    and loaded from it when the file exists: a resumed run gets the same training pairs without
    re-reading the data."""
    if path.exists():
        return torch.load(path, weights_only=True)
    value = make()
    if d.is_main:
        torch.save(value, path)
    return value


# --- distributed -------------------------------------------------------------------------------
@dataclasses.dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = dataclasses.field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def setup_distributed(device: str = "auto") -> Dist:
    """Read torchrun's environment; start gloo (CPU) or NCCL (CUDA) when WORLD_SIZE > 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device == "auto" else device.startswith("cuda")
    dev = torch.device(f"cuda:{local}" if use_cuda else "cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return Dist(rank, world, local, dev)


def wrap_ddp(model: nn.Module, d: Dist) -> nn.Module:
    if not d.enabled:
        return model
    return nn.parallel.DistributedDataParallel(model, device_ids=[d.device.index] if d.device.type == "cuda" else None)


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def all_mean(value: torch.Tensor, d: Dist) -> torch.Tensor:
    if d.enabled:
        value = value.detach().clone()
        dist.all_reduce(value)
        value /= d.world_size
    return value


def barrier(d: Dist) -> None:
    if d.enabled:
        dist.barrier()


def cleanup(d: Dist) -> None:
    if d.enabled and dist.is_initialized():
        dist.destroy_process_group()


class Run(NamedTuple):
    """What :func:`start_run` returns: ``d, out = start_run(cfg)``."""

    dist: Dist
    out: Path


def start_run(cfg: RunConfig) -> Run:
    """Distributed set-up, seeds, ``<out>/samples`` and ``<out>/config.yaml``: every trainer's
    first lines."""
    d = setup_distributed(cfg.device)
    seed_everything(cfg.seed, d.rank)
    out = Path(cfg.out)
    if d.is_main:
        (out / "samples").mkdir(parents=True, exist_ok=True)
        write_config(cfg, out)
    barrier(d)
    return Run(d, out)


def make_loader(cfg: RunConfig, data: Dataset, d: Dist | None = None, **kwargs: Any) -> DataLoader:
    """The training DataLoader: ``cfg.batch_size``, ``cfg.workers``, a shuffle seeded by
    ``cfg.seed`` (its generator is what :class:`Batches` saves for an exact resume), full batches
    only when the data holds one, and a ``DistributedSampler`` under torchrun. ``kwargs`` go to
    the DataLoader (``collate_fn``, ``worker_init_fn`` ...)."""
    sampler = DistributedSampler(data, num_replicas=d.world_size, rank=d.rank, seed=cfg.seed, drop_last=True) if d is not None and d.enabled else None
    return DataLoader(data, batch_size=cfg.batch_size, shuffle=sampler is None, sampler=sampler, drop_last=len(data) >= cfg.batch_size,
                      num_workers=cfg.workers, generator=torch.Generator().manual_seed(cfg.seed), **kwargs)


# --- seeding -----------------------------------------------------------------------------------
def seed_everything(seed: int, rank: int = 0) -> torch.Generator:
    """Seed python, numpy and torch (different per rank); returns a CPU generator for data."""
    s = seed + 1000 * rank
    random.seed(s)
    np.random.seed(s % 2**32)
    torch.manual_seed(s)
    return torch.Generator().manual_seed(s)


# --- random state ------------------------------------------------------------------------------
def rng_state() -> dict[str, Any]:
    """Python's, NumPy's and torch's (CPU and CUDA) global random states, as plain containers and
    tensors (a checkpoint holding them loads with ``weights_only=True``)."""
    _, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": repr(random.getstate()),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`rng_state` returned (all of it: python, numpy, torch, CUDA)."""
    torch.set_rng_state(state["torch"])
    numpy_state = state["numpy"]
    if isinstance(numpy_state, Mapping):
        keys = numpy_state["keys"].cpu().numpy().astype(np.uint32)
        np.random.set_state(("MT19937", keys, int(numpy_state["pos"]), int(numpy_state["has_gauss"]), float(numpy_state["cached_gaussian"])))
    else:  # checkpoints before exact resume saved the key array only: the position is lost
        log.warning("this checkpoint holds an incomplete NumPy random state (older format): NumPy draws after the resume differ from an uninterrupted run")
    random.setstate(ast.literal_eval(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        cuda = list(state["cuda"])
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
        else:
            log.warning("the checkpoint holds %d CUDA random states, this machine has %d devices: CUDA draws are not restored", len(cuda), torch.cuda.device_count())


@contextlib.contextmanager
def rng_preserved() -> Iterator[None]:
    """Run a block without changing any global random state (python, numpy, torch, CUDA)."""
    state = rng_state()
    try:
        yield
    finally:
        set_rng_state(state)


class Batches:
    """Endless batches from ``loader``, epoch after epoch, whose position saves and restores
    exactly: :meth:`state_dict` goes into the checkpoint (``save_checkpoint(..., data=batches)``)
    and ``Batches(loader, sampler, state=checkpoint["data"])`` continues with the batch an
    uninterrupted run would have drawn next.

    The position is the epoch, the batches drawn in it, and the loader's ``generator`` state at
    the epoch's start (which fixes its shuffle and its workers' seeds). Resuming restores that
    state, starts the epoch and draws the batches already used (without training on them)
    inside :func:`rng_preserved`, so the global random states restored from the checkpoint
    stay as they were. Exact when the loader has a ``generator`` and, with workers, when they
    are not persistent (persistent workers keep one seed across epochs: after a resume in a
    later epoch the worker-side draws, and the shuffle, are those of a restarted epoch).
    ``sampler``: a ``DistributedSampler``, given its epoch before each one (default: the
    loader's own sampler when it has ``set_epoch``). Cost: a resume
    loads (and augments) up to one epoch's batches again before training continues.
    """

    def __init__(self, loader: Any, sampler: Any = None, *, state: Mapping[str, Any] | None = None, step: int = 0) -> None:
        if sampler is None and hasattr(getattr(loader, "sampler", None), "set_epoch"):
            sampler = loader.sampler
        self.loader, self.sampler = loader, sampler
        self.epoch, self.batch = 0, 0
        self._epoch_generator: torch.Tensor | None = None
        self._it: Iterator[Any] | None = None
        if state is not None:
            self.epoch = int(state["epoch"])
            skip = int(state["batch"])
            generator = getattr(loader, "generator", None)
            if state.get("generator") is not None and generator is not None:
                generator.set_state(state["generator"].cpu())
            if skip:
                log.info("resuming in epoch %d: redrawing its first %d batches (not trained on) to reach the checkpoint's position", self.epoch, skip)
            with rng_preserved():
                self._start()
                for _ in range(skip):
                    next(self._it)  # type: ignore[arg-type]
            self.batch = skip
        elif step:
            # A checkpoint without the data position (older format): the epoch it was in.
            self.epoch = step // max(len(loader), 1)
            log.warning("the checkpoint holds no data-loader position (older format): resuming at the start of epoch %d, not at the exact batch", self.epoch)

    def _start(self) -> None:
        if self.sampler is not None and hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(self.epoch)
        generator = getattr(self.loader, "generator", None)
        self._epoch_generator = generator.get_state() if generator is not None else None
        self._it = iter(self.loader)
        self.batch = 0

    def __iter__(self) -> Batches:
        return self

    def __next__(self) -> Any:
        if self._it is None:
            self._start()
        try:
            item = next(self._it)  # type: ignore[arg-type]
        except StopIteration:
            if self.batch == 0:
                raise RuntimeError("the DataLoader yields no batch (an empty dataset, or drop_last with fewer samples than batch_size)") from None
            self.epoch += 1
            self._start()
            item = next(self._it)  # type: ignore[arg-type]
        self.batch += 1
        return item

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "batch": self.batch, "generator": self._epoch_generator}


# --- checkpoints -------------------------------------------------------------------------------
def save_checkpoint(path: Path, *, step: int, modules: Mapping[str, nn.Module], optimizers: Mapping[str, torch.optim.Optimizer], schedulers: Mapping[str, Any] | None = None, extra: Mapping[str, Any] | None = None, data: Batches | None = None) -> None:
    """Atomic write of plain tensors and containers only: loadable with ``weights_only=True``.

    Holds every global random state (python, numpy, torch, CUDA) and, with ``data``, the
    position of the training batches, so that a resume continues exactly (see
    :func:`load_checkpoint` and :class:`Batches`).
    """
    state = {
        "step": step,
        "modules": {k: unwrap(m).state_dict() for k, m in modules.items()},
        "optimizers": {k: o.state_dict() for k, o in optimizers.items()},
        "schedulers": {k: s.state_dict() for k, s in (schedulers or {}).items()},
        "rng": rng_state(),
        "extra": dict(extra or {}),
    }
    if data is not None:
        state["data"] = data.state_dict()
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path, *, modules: Mapping[str, nn.Module], optimizers: Mapping[str, torch.optim.Optimizer], schedulers: Mapping[str, Any] | None = None, map_location: Any = "cpu") -> dict[str, Any]:
    """Restore modules, optimisers, schedulers and every global random state; returns the
    checkpoint (``state.get("data")`` is the batch position for :class:`Batches`).

    A single-process run resumes bit for bit on CPU. Under torchrun only rank 0's states are
    saved, so ranks > 0 keep their freshly seeded streams: the resumed run is valid but not
    identical to an uninterrupted one.
    """
    state = torch.load(path, map_location=map_location, weights_only=True)
    for k, m in modules.items():
        unwrap(m).load_state_dict(state["modules"][k], strict=True)
    for k, o in optimizers.items():
        o.load_state_dict(state["optimizers"][k])
    for k, s in (schedulers or {}).items():
        s.load_state_dict(state["schedulers"][k])
    if dist.is_initialized() and dist.get_rank() > 0:
        # Only rank 0's random states are saved: the other ranks keep their own seeded streams
        # (restoring rank 0's on every rank would make them draw the same noise).
        return state
    rng = dict(state["rng"])
    rng["torch"] = rng["torch"].cpu()  # map_location may have moved it; the CPU generator wants a CPU tensor
    if "cuda" in rng:
        rng["cuda"] = [t.cpu() for t in rng["cuda"]]
    set_rng_state(rng)
    return state


# --- logs and pictures -------------------------------------------------------------------------
class MetricsLog:
    """JSON lines: one object per logged step (rank 0 only)."""

    def __init__(self, path: Path, enabled: bool = True) -> None:
        self.path = path
        self.enabled = enabled
        self.t0 = time.time()

    def truncate_after(self, step: int) -> None:
        """On resume: drop rows logged after the checkpoint, which the run will log again."""
        if not self.enabled or not self.path.exists():
            return
        rows = [line for line in self.path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
        # Atomic: a kill during the rewrite must not lose the rows before the checkpoint.
        atomic_write(self.path, "".join(r + "\n" for r in rows).encode())

    def write(self, step: int, **metrics: float) -> None:
        if not self.enabled:
            return
        row = {"step": step, "time_s": round(time.time() - self.t0, 2), **{k: float(v.detach()) if isinstance(v, torch.Tensor) else float(v) for k, v in metrics.items()}}
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")


def save_grid(images: torch.Tensor, path: Path, nrow: int = 8) -> None:
    """Images (B, C, H, W) in [0, 1] -> one PNG."""
    from torchvision.utils import save_image

    save_image(images.detach().float().clamp(0, 1).cpu(), path, nrow=nrow, padding=2, pad_value=1.0)


# --- the loop ----------------------------------------------------------------------------------
def due(step: int, every: int, steps: int) -> bool:
    """Whether an ``every``-steps event happens after ``step`` of ``steps``: each ``every``-th
    step and the last (never when ``every <= 0``)."""
    return every > 0 and (step % every == 0 or step == steps)


StepFn = Callable[[Any, int], Mapping[str, Any]]
SampleFn = Callable[[Any], "tuple[torch.Tensor, int]"]


def train_loop(cfg: RunConfig, d: Dist, out: Path, loader: Any, step: StepFn, *, modules: Mapping[str, nn.Module],
               optimizers: Mapping[str, torch.optim.Optimizer], schedulers: Mapping[str, Any] | None = None,
               samples: SampleFn | None = None, name: str = "train", show: Sequence[str] = ()) -> int:
    """Run ``step`` from where ``<out>/checkpoint.pt`` stopped (or from 0) to ``cfg.steps``;
    returns the last step's number.

    - ``step(batch, n)``: one optimiser step on ``batch`` (the loader's, as it yields it; move
      it to the device yourself), ``n`` = 1, 2, ... its number. Returns the metrics of the step
      (tensors or floats); every ``cfg.log_every`` steps they are averaged over the ranks and
      written to ``<out>/metrics.jsonl`` (a step that has nothing to log returns ``{}``).
      Work that only a logged step needs: ``if due(n, cfg.log_every, cfg.steps)``.
    - ``modules``, ``optimizers``, ``schedulers``: what the checkpoint holds (unwrapped
      modules; the DDP wrapper goes in the step). Put in train mode before the first step.
    - ``samples(batch)``: every ``cfg.sample_every`` steps on rank 0, with ``modules`` in eval
      mode and no gradients: returns ``(images (B, C, H, W) in [0, 1], images per row)``,
      saved as ``<out>/samples/stepNNNNNN.png``.
    - ``name``: the progress bar's label; ``show``: metrics shown on the bar.

    Resume: the modules, optimisers, schedulers, every global random state and the data
    position (:class:`Batches`) come back, and the metrics log drops the rows after the
    checkpoint, so N steps straight == N/2, stop, resume, N/2 (bit-identical on CPU).
    """
    ckpt = out / "checkpoint.pt"
    n, state = 0, {}
    if ckpt.exists():
        state = load_checkpoint(ckpt, modules=modules, optimizers=optimizers, schedulers=schedulers, map_location=d.device)
        n = int(state["step"])
        log.info("resumed from %s at step %d", ckpt, n)
    metrics = MetricsLog(out / "metrics.jsonl", enabled=d.is_main)
    metrics.truncate_after(n)
    batches = Batches(loader, state=state.get("data"), step=n)  # resumes at the exact batch
    for module in modules.values():
        module.train()
    bar = tqdm(total=cfg.steps, initial=n, desc=name, disable=not d.is_main, dynamic_ncols=True)
    while n < cfg.steps:
        batch = next(batches)
        n += 1
        values = step(batch, n)
        bar.update(1)
        if due(n, cfg.log_every, cfg.steps):
            row = {k: all_mean(v.detach(), d) if isinstance(v, torch.Tensor) else v for k, v in values.items()}
            metrics.write(n, **row)
            if show:
                bar.set_postfix({k: f"{float(row[k]):.4g}" for k in show if k in row})
        if d.is_main and samples is not None and due(n, cfg.sample_every, cfg.steps):
            for module in modules.values():
                module.eval()
            with torch.no_grad():
                images, nrow = samples(batch)
                save_grid(images, out / "samples" / f"step{n:06d}.png", nrow=nrow)
            for module in modules.values():
                module.train()
        if due(n, cfg.checkpoint_every, cfg.steps):
            if d.is_main:
                save_checkpoint(ckpt, step=n, modules=modules, optimizers=optimizers, schedulers=schedulers, data=batches)
            barrier(d)
    bar.close()
    return n


def lsgan_d_loss(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    return 0.5 * ((real - 1) ** 2).mean() + 0.5 * (fake**2).mean()


def lsgan_g_loss(fake: torch.Tensor) -> torch.Tensor:
    return 0.5 * ((fake - 1) ** 2).mean()
