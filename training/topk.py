"""Keep the k best checkpoints by a monitored metric (higher is better), plus ``latest.ckpt``."""
from __future__ import annotations

from pathlib import Path

from policy.checkpoint import save_checkpoint


class TopKCheckpoints:
    """Files ``epoch=EEEE-<monitor>=S.SSS.ckpt``; a new one is written only if it enters the top k."""

    def __init__(self, directory: Path, k: int, monitor: str) -> None:
        self.directory, self.k, self.monitor = Path(directory), k, monitor
        self.entries: list[tuple[float, str]] = []  # (score, file name), best first

    def offer(self, payload: dict, score: float, epoch: int) -> Path | None:
        if self.k <= 0 or (len(self.entries) >= self.k and score <= self.entries[-1][0]):
            return None
        name = f"epoch={epoch:04d}-{self.monitor}={score:.3f}.ckpt"
        path = save_checkpoint(payload, self.directory / name)
        self.entries = sorted(self.entries + [(score, name)], key=lambda entry: -entry[0])
        for _, dropped in self.entries[self.k:]:
            (self.directory / dropped).unlink(missing_ok=True)
        self.entries = self.entries[:self.k]
        return path

    def best(self) -> Path | None:
        return self.directory / self.entries[0][1] if self.entries else None

    def state(self) -> list[list]:
        return [[score, name] for score, name in self.entries]

    def load_state(self, state: list[list]) -> None:
        self.entries = [(float(score), str(name)) for score, name in state]
