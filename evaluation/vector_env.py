"""Push-T envs stepped in lockstep, in worker processes that are watched for crashes and hangs.

Each worker owns one env and answers commands over a pipe. A worker that dies, raises, or does not
answer within ``timeout`` seconds is killed and replaced by a fresh one; the call reports which
slots failed so the caller can re-run those episodes. ``n_workers=0`` runs the envs in-process.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import time
import traceback
from dataclasses import dataclass
from typing import Any

import numpy as np


def make_env(env_kwargs: dict):
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
    from dpstack.envs.pusht_env import PushTEnv

    return PushTEnv(**env_kwargs)


def _worker_main(connection, env_kwargs: dict) -> None:
    env = make_env(env_kwargs)
    while True:
        try:
            command, argument = connection.recv()
        except (EOFError, KeyboardInterrupt):
            return
        try:
            if command == "reset":
                result = env.reset(seed=argument)
            elif command == "step":
                result = env.step(argument)
            elif command == "render":
                result = env.render()
            elif command == "crash":  # test hook: die without answering
                os._exit(1)
            elif command == "sleep":  # test hook: hang for ``argument`` seconds
                time.sleep(argument)
                result = None
            elif command == "close":
                connection.send(("ok", None))
                return
            else:
                raise ValueError(f"unknown command {command!r}")
            connection.send(("ok", result))
        except Exception:  # report, keep serving
            connection.send(("error", traceback.format_exc()))


@dataclass
class WorkerFailure:
    slot: int
    reason: str


class _InProcessSlot:
    def __init__(self, env_kwargs: dict) -> None:
        self.env = make_env(env_kwargs)

    def call(self, command: str, argument: Any = None):
        if command == "reset":
            return self.env.reset(seed=argument)
        if command == "step":
            return self.env.step(argument)
        if command == "render":
            return self.env.render()
        raise ValueError(f"unknown command {command!r}")

    def close(self) -> None:
        self.env.close()


class WorkerEnvPool:
    """``n_slots`` Push-T envs; ``call_all(command, args, slots)`` returns results and failures."""

    def __init__(self, n_slots: int, env_kwargs: dict, n_workers: int | None = None, timeout: float = 60.0) -> None:
        self.n_slots = n_slots
        self.env_kwargs = env_kwargs
        self.timeout = timeout
        self.in_process = n_workers == 0
        # fork: workers start fast and need no `if __name__ == "__main__"` guard in user scripts;
        # they only run env code (no torch), so forking a process with torch threads is safe.
        self.context = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
        self.slots: list = [None] * n_slots
        for slot in range(n_slots):
            self._start(slot)
        self.restarts = 0

    def _start(self, slot: int) -> None:
        if self.in_process:
            self.slots[slot] = _InProcessSlot(self.env_kwargs)
            return
        parent, child = self.context.Pipe()
        process = self.context.Process(target=_worker_main, args=(child, self.env_kwargs), daemon=True)
        process.start()
        child.close()
        self.slots[slot] = (process, parent)

    def _restart(self, slot: int) -> None:
        process, connection = self.slots[slot]
        process.kill()
        process.join(timeout=5)
        connection.close()
        self.restarts += 1
        self._start(slot)

    def call_all(self, command: str, arguments: list, slots: list[int]) -> tuple[dict[int, Any], list[WorkerFailure]]:
        """Send ``command`` with ``arguments[i]`` to ``slots[i]`` concurrently; gather answers."""
        results, failures = {}, []
        if self.in_process:
            for slot, argument in zip(slots, arguments):
                try:
                    results[slot] = self.slots[slot].call(command, argument)
                except Exception as error:
                    failures.append(WorkerFailure(slot, f"{type(error).__name__}: {error}"))
                    self._start(slot)
            return results, failures
        sent = []
        for slot, argument in zip(slots, arguments):
            try:
                self.slots[slot][1].send((command, argument))
                sent.append(slot)
            except (BrokenPipeError, OSError) as error:
                failures.append(WorkerFailure(slot, f"worker pipe broken: {error}"))
        for slot in sent:
            process, connection = self.slots[slot]
            reason = None
            try:
                if connection.poll(self.timeout):
                    status, payload = connection.recv()
                    if status == "ok":
                        results[slot] = payload
                    else:
                        reason = f"worker raised:\n{payload}"
                else:
                    reason = f"worker did not answer {command!r} within {self.timeout:.0f} s"
            except (EOFError, OSError) as error:
                reason = f"worker died (exit code {process.exitcode}): {type(error).__name__}"
            if reason is not None:
                failures.append(WorkerFailure(slot, reason))
        for failure in failures:
            self._restart(failure.slot)
        return results, failures

    def crash_worker(self, slot: int) -> None:
        """Make a worker exit abruptly (used by tests of the failure path)."""
        if not self.in_process:
            self.slots[slot][1].send(("crash", None))

    def close(self) -> None:
        for slot in self.slots:
            if self.in_process:
                slot.close()
                continue
            process, connection = slot
            try:
                connection.send(("close", None))
                connection.poll(2)
            except (BrokenPipeError, OSError):
                pass
            process.join(timeout=2)
            if process.is_alive():
                process.kill()
            connection.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def stack_observations(observations: list) -> dict[str, np.ndarray]:
    """Batch env observations: arrays become ``{"obs": (B, D)}``, dicts are stacked per key."""
    if isinstance(observations[0], dict):
        return {key: np.stack([o[key] for o in observations]) for key in observations[0]}
    return {"obs": np.stack(observations).astype(np.float32)}
