"""Run logging: JSON lines in ``<output>/logs.json.txt`` always; wandb when ``logging.mode`` is
``online`` (after ``wandb login``) or ``offline`` (no account; sync later with ``wandb sync``)."""
from __future__ import annotations

import json
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

LOGGING_MODES = ("online", "offline", "disabled")


class RunLogger:
    def __init__(self, output_dir: Path, cfg: DictConfig) -> None:
        mode = cfg.logging.mode
        if mode not in LOGGING_MODES:
            raise ValueError(f"logging.mode must be one of {LOGGING_MODES}, got {mode!r}")
        self.path = Path(output_dir) / "logs.json.txt"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(self.path, "a")
        self.run = None
        if mode != "disabled":
            import wandb

            self.run = wandb.init(project=cfg.logging.project, name=cfg.logging.name, mode=mode,
                                  group=cfg.logging.group, tags=list(cfg.logging.tags or []),
                                  dir=str(output_dir), resume="allow", id=cfg.logging.id,
                                  config=OmegaConf.to_container(cfg, resolve=True))

    def log(self, values: dict, step: int, every: int = 1) -> None:
        if every > 1 and step % every:
            return
        self.file.write(json.dumps({"step": step, **values}) + "\n")
        self.file.flush()
        if self.run is not None:
            self.run.log(values, step=step)

    def log_videos(self, videos: dict[str, Path], step: int) -> None:
        if self.run is None or not videos:
            return
        import wandb

        self.run.log({f"{name}/video": wandb.Video(str(path), format="mp4") for name, path in videos.items()},
                     step=step)

    def log_images(self, images: dict[str, Path], step: int) -> None:
        if self.run is None or not images:
            return
        import wandb

        self.run.log({f"{name}/image": wandb.Image(str(path)) for name, path in images.items()}, step=step)

    def close(self) -> None:
        self.file.close()
        if self.run is not None:
            self.run.finish()


class NullLogger:
    """The logger of a distributed run's ranks other than 0: rank 0 logs for the run."""

    def log(self, values: dict, step: int, every: int = 1) -> None:
        pass

    def close(self) -> None:
        pass
