"""A daemon thread that runs one function each time it is woken: the policy node's inference.

Wakes that arrive while it runs coalesce into one more run. Kept off the rclpy executor on
purpose: with inference in a callback group of a MultiThreadedExecutor the 10 Hz control clock
stalled for seconds on two cores (BENCHMARKS.md); a SingleThreadedExecutor plus this thread does not."""
from __future__ import annotations

import threading
from typing import Callable


class WakeableWorker:
    def __init__(self, work: Callable[[], None], on_error: Callable[[Exception], None], name: str = "worker") -> None:
        self.work, self.on_error = work, on_error
        self.wakeup = threading.Event()
        self.stopping = False
        self.thread = threading.Thread(target=self._loop, name=name, daemon=True)

    def start(self) -> None:
        self.thread.start()

    def wake(self) -> None:
        self.wakeup.set()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop after the current run (waits up to ``timeout`` seconds for it)."""
        self.stopping = True
        self.wakeup.set()
        if self.thread.is_alive():
            self.thread.join(timeout)

    def _loop(self) -> None:
        while True:
            self.wakeup.wait()
            self.wakeup.clear()
            if self.stopping:
                return
            try:
                self.work()
            except Exception as error:  # noqa: BLE001 - the thread must outlive one failed run
                try:
                    self.on_error(error)
                except Exception:  # noqa: BLE001 - e.g. logging through a node already destroyed
                    pass
