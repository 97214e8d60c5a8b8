"""Shared by tests: does a long kernel let other Python threads run?"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


def ticks_while_running(work: Callable[[], object]) -> int:
    """Run ``work`` in a thread and count the 1 ms sleeps this thread completes meanwhile: many
    ticks only if the kernel released the GIL (a held GIL stalls this loop until it returns)."""
    done = threading.Event()

    def run() -> None:
        try:
            work()
        finally:
            done.set()

    worker = threading.Thread(target=run)
    ticks = 0
    worker.start()
    time.sleep(0.01)
    while not done.is_set():
        ticks += 1
        time.sleep(0.001)
    worker.join()
    return ticks
