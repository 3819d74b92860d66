"""Push-T envs stepped in lockstep, in this process or in worker processes watched for crashes and hangs.

Each worker hosts a group of envs and answers one message per call for all of them over a pipe. A worker
that dies or does not answer within ``timeout`` seconds is killed and replaced by a fresh one; the call
reports which slots failed so the caller can re-run those episodes. ``n_workers=0`` runs the envs in-process.
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


def _apply(env, command: str, argument: Any):
    if command == "reset":
        return env.reset(seed=argument)
    if command == "step":
        return env.step(argument)
    if command == "render":
        return env.render()
    raise ValueError(f"unknown command {command!r}")


class _InProcessSlot:
    def __init__(self, env_kwargs: dict) -> None:
        self.env = make_env(env_kwargs)

    def call(self, command: str, argument: Any = None):
        return _apply(self.env, command, argument)

    def close(self) -> None:
        self.env.close()


def _worker_main(connection, env_kwargs: dict, n_envs: int) -> None:
    """Serve ``n_envs`` envs: one message carries the command for several of them, one answer returns
    ``[("ok", result) | ("error", traceback)]`` in the same order. An env that raises is rebuilt."""
    envs = [make_env(env_kwargs) for _ in range(n_envs)]
    while True:
        try:
            command, requests = connection.recv()
        except (EOFError, KeyboardInterrupt):
            return
        if command == "crash":  # test hook: die without answering
            os._exit(1)
        if command == "sleep":  # test hook: hang for ``requests`` seconds
            time.sleep(requests)
        if command == "close":
            connection.send(("ok", None))
            return
        answers = []
        for local, argument in requests:
            try:
                answers.append(("ok", _apply(envs[local], command, argument)))
            except Exception:  # report, rebuild, keep serving
                answers.append(("error", traceback.format_exc()))
                envs[local] = make_env(env_kwargs)
        connection.send(answers)


@dataclass
class WorkerFailure:
    slot: int
    reason: str


def worker_groups(n_slots: int, n_workers: int | None) -> list[list[int]]:
    """The slots each worker process hosts: contiguous, as equal as possible; ``None``: one per slot."""
    count = n_slots if n_workers is None else max(1, min(n_workers, n_slots))
    return [list(group) for group in np.array_split(np.arange(n_slots), count)]


class WorkerEnvPool:
    """``n_slots`` Push-T envs; ``call_all(command, args, slots)`` returns results and failures.

    ``n_workers=0`` steps them in this process; K > 0 spreads them over K processes (one message per
    process per call); ``None`` gives each env its own process (the original's layout). A process that
    dies or does not answer within ``timeout`` is replaced: the slots it hosted report a failure (those in
    the failing call at once, the others at their next step or render, since their env state is gone)."""

    def __init__(self, n_slots: int, env_kwargs: dict, n_workers: int | None = None, timeout: float = 60.0) -> None:
        if n_workers is not None and n_workers < 0:
            raise ValueError(f"n_workers must be None (a process per env), 0 (in-process) or positive, got {n_workers}")
        self.n_slots = n_slots
        self.env_kwargs = env_kwargs
        self.timeout = timeout
        self.in_process = n_workers == 0
        # fork: workers start fast and need no `if __name__ == "__main__"` guard in user scripts;
        # they only run env code (no torch), so forking a process with torch threads is safe.
        self.context = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
        self.restarts = 0
        self.lost: set[int] = set()  # slots whose worker was replaced since their last reset
        if self.in_process:
            self.slots: list = [None] * n_slots
            for slot in range(n_slots):
                self._start(slot)
            return
        self.groups = worker_groups(n_slots, n_workers)
        self.home = {slot: (worker, local) for worker, group in enumerate(self.groups)
                     for local, slot in enumerate(group)}
        self.workers: list = [None] * len(self.groups)
        for worker in range(len(self.groups)):
            self._start_worker(worker)

    def _start(self, slot: int) -> None:
        """In-process: a fresh env in ``slot``."""
        self.slots[slot] = _InProcessSlot(self.env_kwargs)

    def _start_worker(self, worker: int) -> None:
        parent, child = self.context.Pipe()
        process = self.context.Process(target=_worker_main, args=(child, self.env_kwargs, len(self.groups[worker])),
                                       daemon=True)
        process.start()
        child.close()
        self.workers[worker] = (process, parent)

    def _restart_worker(self, worker: int) -> None:
        process, connection = self.workers[worker]
        process.kill()
        process.join(timeout=5)
        connection.close()
        self.restarts += 1
        self.lost.update(self.groups[worker])
        self._start_worker(worker)

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
        requests: dict[int, list] = {}
        for slot, argument in zip(slots, arguments):
            if command == "reset":
                self.lost.discard(slot)
            elif slot in self.lost:
                self.lost.discard(slot)
                failures.append(WorkerFailure(slot, "its worker process was replaced; the env state is gone"))
                continue
            requests.setdefault(self.home[slot][0], []).append((slot, argument))
        sent = []
        for worker, items in requests.items():
            message = [(self.home[slot][1], argument) for slot, argument in items]
            try:
                self.workers[worker][1].send((command, arguments[0] if command == "sleep" else message))
                sent.append(worker)
            except (BrokenPipeError, OSError) as error:
                failures += [WorkerFailure(slot, f"worker pipe broken: {error}") for slot, _ in items]
        broken = [worker for worker in requests if worker not in sent]
        for worker in sent:
            process, connection = self.workers[worker]
            slots_sent = [slot for slot, _ in requests[worker]]
            reason = None
            try:
                if connection.poll(self.timeout):
                    for slot, (status, payload) in zip(slots_sent, connection.recv()):
                        if status == "ok":
                            results[slot] = payload
                        else:
                            failures.append(WorkerFailure(slot, f"worker raised:\n{payload}"))
                else:
                    reason = f"worker did not answer {command!r} within {self.timeout:.0f} s"
            except (EOFError, OSError) as error:
                reason = f"worker died (exit code {process.exitcode}): {type(error).__name__}"
            if reason is not None:
                failures += [WorkerFailure(slot, reason) for slot in slots_sent]
                broken.append(worker)
        for worker in broken:
            self._restart_worker(worker)
        self.lost.difference_update(slots)  # this call's own slots were reported with their reason just now
        return results, failures

    def crash_worker(self, slot: int) -> None:
        """Make the process hosting ``slot`` exit abruptly (used by tests of the failure path)."""
        if not self.in_process:
            self.workers[self.home[slot][0]][1].send(("crash", None))

    def close(self) -> None:
        if self.in_process:
            for slot in self.slots:
                slot.close()
            return
        for process, connection in self.workers:
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
