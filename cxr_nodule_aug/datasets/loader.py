"""DataLoader plumbing: worker priority for augmentation that shares the CPU with training, a
collate for detection samples, and tv_tensors of every dtype crossing the worker boundary."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch


class LowPriorityWorkers:
    """``worker_init_fn`` that lowers each DataLoader worker's CPU priority (``os.nice``).

    When training already keeps every core busy (CPU training, or a GPU job whose main process
    feeds it), workers at normal priority preempt the training threads, and a preempted thread
    stalls the others at the next synchronisation point: on 2 cores a worker's 100 ms costs the
    training step well over 100 ms. At a lower priority the workers run in the gaps the
    training leaves (``benchmarks/throughput.py`` measures both). The prefetched batches keep
    the loader ahead; if the workers cannot keep up, training waits for them as before.

    Args:
        niceness: added to the worker's nice value, 1 (slightly lower) to 19 (lowest).
        then: another ``worker_init_fn`` to run afterwards (it gets the worker id).

    Example::

        DataLoader(dataset, num_workers=2, worker_init_fn=LowPriorityWorkers())
    """

    def __init__(self, niceness: int = 19, then: Callable[[int], None] | None = None) -> None:
        if not isinstance(niceness, int) or not 1 <= niceness <= 19:
            raise ValueError(f"niceness must be an int in [1, 19], got {niceness!r}")
        if then is not None and not callable(then):
            raise TypeError(f"then must be a callable worker_init_fn or None, got {type(then).__name__}")
        self.niceness = niceness
        self.then = then

    def __call__(self, worker_id: int) -> None:
        if hasattr(os, "nice"):
            os.nice(self.niceness)
        else:  # Windows: no nice(); the workers keep the normal priority
            warnings.warn("LowPriorityWorkers: os.nice is not available on this platform; workers keep their priority", RuntimeWarning, stacklevel=2)
        if self.then is not None:
            self.then(worker_id)

    def __repr__(self) -> str:
        return f"LowPriorityWorkers(niceness={self.niceness}{'' if self.then is None else f', then={self.then!r}'})"


def collate_samples(batch: Sequence[Any]) -> tuple[list[Any], ...]:
    """A DataLoader ``collate_fn`` for detection samples: ``[(image, target), ...]`` ->
    ``([image, ...], [target, ...])``, nothing stacked, converted or dropped.

    Detection samples cannot be stacked (each image has its own number of boxes, and images may
    differ in size), which is why torch's default collate works only with ``batch_size=1``. This
    is the ``lambda batch: tuple(zip(*batch))`` of the torchvision detection references, as lists,
    with a clear error for a sample that is not a tuple of equal length. The tv_tensors
    (``Image``, ``BoundingBoxes``, ``Mask``, any dtype including uint16) keep their type when they
    cross from the workers (see :func:`share_tv_tensors_between_workers`).

    Example::

        from cxr_nodule_aug import collate_samples
        loader = DataLoader(dataset, batch_size=4, num_workers=2, collate_fn=collate_samples)
        for images, targets in loader: ...
    """
    if not isinstance(batch, Sequence) or not batch:
        raise ValueError(f"batch must be a non-empty sequence of samples, got {type(batch).__name__}")
    first = batch[0]
    if not isinstance(first, (tuple, list)):
        raise TypeError(f"collate_samples expects samples that are tuples such as (image, target), got {type(first).__name__}")
    for i, sample in enumerate(batch):
        if not isinstance(sample, (tuple, list)) or len(sample) != len(first):
            raise ValueError(f"batch[{i}] is not a tuple of {len(first)} items like batch[0]")
    return tuple(list(column) for column in zip(*batch))


def _rebuild_tv_tensor(cls: type, tensor: torch.Tensor, state: dict[str, Any]) -> torch.Tensor:
    out = tensor.as_subclass(cls)
    out.__dict__.update(state)
    return out


def _reduce_tv_tensor(obj: torch.Tensor) -> tuple[Any, tuple[Any, ...]]:
    # The plain tensor shares the same storage and goes through torch's own reducer (shared memory).
    return _rebuild_tv_tensor, (type(obj), obj.as_subclass(torch.Tensor), dict(obj.__dict__))


def share_tv_tensors_between_workers() -> None:
    """Let tv_tensors of every dtype cross from DataLoader workers to the main process.

    torch's worker-to-main transfer pickles a tensor subclass through its storage's legacy typed
    wrapper, which fails for uint16 (``'UntypedStorage' object has no attribute
    '_untyped_storage'``), the dtype of 12/16-bit radiographs: a uint16 ``tv_tensors.Image`` could
    not leave a worker with any collate that keeps it (``lambda b: tuple(zip(*b))``). This
    registers, for the multiprocessing pickler only, a reduction of each tv_tensor class to its
    plain tensor (sent through shared memory as torch sends any tensor) plus its class and
    metadata (box format, canvas size), rebuilt on arrival. Importing
    :mod:`cxr_nodule_aug.datasets` calls it; calling it again is harmless.
    """
    from multiprocessing.reduction import ForkingPickler

    from torchvision import tv_tensors

    for name in ("Image", "Video", "Mask", "BoundingBoxes", "KeyPoints"):
        cls = getattr(tv_tensors, name, None)
        if cls is not None:
            ForkingPickler.register(cls, _reduce_tv_tensor)


share_tv_tensors_between_workers()
