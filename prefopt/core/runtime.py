"""The process's runtime: torch intra-op threads, and the distributed world (size, main process).

torch and accelerate are imported when a function runs, never when this module is imported (``core``
stays importable without them, and ``prefopt --help`` fast).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run a block with ``n`` torch intra-op threads (None: leave them), restoring them afterwards.

    The world's model is tiny: on 2 cores a second OpenMP thread makes its training several times
    slower (a DPO quickstart: 12 s with one thread, 108 s with two), and the results do not depend on
    it (the warm start gives the same reference with one thread and with two)."""
    import torch

    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def process_state():
    """accelerate's ``PartialState`` for this launch (CPU processes join a gloo group)."""
    import torch
    from accelerate import PartialState

    # Under `accelerate launch` on CPU the processes only join a gloo group when told to use the CPU
    # (ACCELERATE_USE_CPU); without it PartialState would report a world of 1 and the global batch
    # would be derived for the wrong number of processes.
    cpu = (
        os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
        or not torch.cuda.is_available()
    )
    return PartialState(cpu=cpu)


def world_size() -> int:
    """Number of processes of this launch (1 without ``accelerate launch``)."""
    return process_state().num_processes


def is_main_process() -> bool:
    return process_state().is_main_process


def wait_for_everyone() -> None:
    """A barrier across the launch's processes (a no-op with one)."""
    process_state().wait_for_everyone()
