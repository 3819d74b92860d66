"""Keep the k best checkpoints by a monitored metric (``max``: higher is better, ``min``: lower), plus
``latest.ckpt``."""
from __future__ import annotations

from pathlib import Path


class TopKCheckpoints:
    """Files ``epoch=EEEE-<monitor>=S.SSS.ckpt``; a new one is written only if it enters the top k."""

    def __init__(self, directory: Path, k: int, monitor: str, mode: str = "max") -> None:
        if mode not in ("max", "min"):
            raise ValueError(f"checkpoint.mode must be 'max' or 'min', got {mode!r}")
        self.directory, self.k, self.monitor = Path(directory), k, monitor
        self.sign = 1.0 if mode == "max" else -1.0
        self.entries: list[tuple[float, str]] = []  # (score, file name), best first

    def admit(self, score: float, epoch: int) -> tuple[Path | None, list[Path]]:
        """Record ``score``; returns the path to write if it enters the top k, and the files it evicts."""
        if self.k <= 0 or (len(self.entries) >= self.k and self.sign * score <= self.sign * self.entries[-1][0]):
            return None, []
        name = f"epoch={epoch:04d}-{self.monitor.replace('/', '_')}={score:.3f}.ckpt"
        ranked = sorted(self.entries + [(score, name)], key=lambda entry: -self.sign * entry[0])
        self.entries = ranked[:self.k]
        return self.directory / name, [self.directory / dropped for _, dropped in ranked[self.k:]]

    def state(self) -> list[list]:
        return [[score, name] for score, name in self.entries]

    def load_state(self, state: list[list]) -> None:
        self.entries = [(float(score), str(name)) for score, name in state]
