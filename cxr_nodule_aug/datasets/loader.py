"""DataLoader plumbing for augmentation that shares the CPU with training."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable


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
