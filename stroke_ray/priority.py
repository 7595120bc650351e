"""Light work at a low CPU priority, so that a node's model threads keep its cores.

On a CPU node the model actors' torch threads fill every core; a read or write task that runs
beside them at the same priority takes a core from one of those threads for whole scheduler
slices, and the other threads then spin at every barrier of the forward pass waiting for it
(measured: +17 % CPU seconds in the bf16 actor on a 2-core node). Run at nice 19, such a task
still gets every cycle the model leaves (between batches, while the actor waits for input) and
takes few of the others.

The priority belongs to one thread, never to the process: on Linux the nice value is a
per-thread attribute, so the work runs on a helper thread that lowered its own priority, and
a Ray worker process that later hosts a model actor keeps its normal priority.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

__all__ = ["LOW_PRIORITY_NICE", "at_low_priority"]

logger = logging.getLogger(__name__)

LOW_PRIORITY_NICE = 19  # the lowest priority Linux has

Result = TypeVar("Result")


def _lower_this_thread() -> None:
    """Give the calling thread the lowest priority (where the OS allows it)."""
    try:
        os.setpriority(os.PRIO_PROCESS, 0, LOW_PRIORITY_NICE)  # 0: this thread, on Linux
    except (AttributeError, OSError) as err:  # not POSIX, or not permitted: run as it is
        logger.debug("could not lower the thread priority: %s", err)


_low_priority_thread = ThreadPoolExecutor(
    max_workers=1, thread_name_prefix="low-priority", initializer=_lower_this_thread
)


def at_low_priority(function: Callable[..., Result], *args, **kwargs) -> Result:
    """``function(*args, **kwargs)`` run on this process's low-priority thread (on Linux;
    elsewhere the nice value is the whole process's, so it runs as it is)."""
    if not sys.platform.startswith("linux"):
        return function(*args, **kwargs)
    return _low_priority_thread.submit(function, *args, **kwargs).result()
