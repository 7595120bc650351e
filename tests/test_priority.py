"""Light work runs on a low-priority thread; the calling thread keeps its priority."""

from __future__ import annotations

import os
import sys
import threading

import pytest

from stroke_ray.priority import LOW_PRIORITY_NICE, at_low_priority

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="per-thread nice values are Linux's"
)


def _thread_and_nice(offset: int) -> tuple[str, int]:
    return threading.current_thread().name, os.getpriority(os.PRIO_PROCESS, 0) + offset


def test_work_runs_at_the_lowest_priority_and_the_caller_keeps_its_own():
    before = os.getpriority(os.PRIO_PROCESS, 0)
    name, nice = at_low_priority(_thread_and_nice, offset=0)
    assert name.startswith("low-priority") and name != threading.current_thread().name
    assert nice == max(before, LOW_PRIORITY_NICE)
    assert os.getpriority(os.PRIO_PROCESS, 0) == before  # not the process's: the thread's
    assert at_low_priority(_thread_and_nice, 1)[1] == nice + 1  # arguments pass, thread reused


def test_errors_reach_the_caller():
    with pytest.raises(ZeroDivisionError):
        at_low_priority(lambda: 1 / 0)
