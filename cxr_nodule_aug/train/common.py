"""What every trainer shares: configs, seeding, torchrun/DDP, checkpoints, logs, sample grids."""

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
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist
import yaml
from torch import nn

from cxr_nodule_aug.io.writers import atomic_write

C = TypeVar("C")
log = logging.getLogger(__name__)


# --- configs -----------------------------------------------------------------------------------
def _coerce(value: str, like: Any) -> Any:
    """Parse a command-line override with YAML, checked against the default's type."""
    parsed = yaml.safe_load(value)
    if like is None or parsed is None:
        return parsed
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


def resolve_config(cls: type[C], path: str | os.PathLike | None = None, overrides: Sequence[str] = ()) -> C:
    """Defaults of dataclass ``cls`` <- YAML file ``path`` <- ``key=value`` overrides."""
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    values: dict[str, Any] = {}
    if path is not None:
        data = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path}: a config file must be a YAML mapping")
        unknown = set(data) - set(fields)
        if unknown:
            raise ValueError(f"{path}: unknown config keys {sorted(unknown)}; known: {sorted(fields)}")
        values.update(data)
    defaults = cls()  # type: ignore[call-arg]
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like key=value")
        key, raw = item.split("=", 1)
        if key not in fields:
            raise ValueError(f"unknown config key {key!r}; known: {sorted(fields)}")
        try:
            values[key] = _coerce(raw, getattr(defaults, key))
        except (ValueError, yaml.YAMLError) as err:
            raise ValueError(f"override {key}={raw!r}: {err}") from err
    for key, value in values.items():
        if isinstance(getattr(defaults, key), tuple) and isinstance(value, list):
            values[key] = tuple(value)
    return dataclasses.replace(defaults, **values)  # type: ignore[type-var]


def write_config(config: Any, out_dir: Path) -> Path:
    path = out_dir / "config.yaml"
    data = {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(config).items()}
    path.write_text(yaml.safe_dump(data, sort_keys=True))
    return path


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


def start_run(cfg: Any) -> tuple[Dist, Path]:
    """Distributed set-up, seeds, ``<out>/samples`` and ``<out>/config.yaml``: every trainer's
    first lines. ``cfg`` needs ``device``, ``seed`` and ``out``."""
    d = setup_distributed(cfg.device)
    seed_everything(cfg.seed, d.rank)
    out = Path(cfg.out)
    if d.is_main:
        (out / "samples").mkdir(parents=True, exist_ok=True)
        write_config(cfg, out)
    barrier(d)
    return d, out


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
    ``sampler``: a ``DistributedSampler``, given its epoch before each one. Cost: a resume
    loads (and augments) up to one epoch's batches again before training continues.
    """

    def __init__(self, loader: Any, sampler: Any = None, *, state: Mapping[str, Any] | None = None, step: int = 0) -> None:
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


def lsgan_d_loss(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    return 0.5 * ((real - 1) ** 2).mean() + 0.5 * (fake**2).mean()


def lsgan_g_loss(fake: torch.Tensor) -> torch.Tensor:
    return 0.5 * ((fake - 1) ** 2).mean()
