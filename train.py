"""Train a model: ``python train.py [--config-name=NAME] [key=value ...]``.

The config (``configs/``, hydra) fully describes the run, its ``recipe`` the kind of model (a Diffusion
Policy by default, ``image_diffusion`` for the MNIST DDPM); outputs go to
``data/outputs/<date>/<time>_<name>_<task>`` (checkpoints, logs, rollout videos or sample grids). Running again with the
same ``hydra.run.dir=<that folder>`` continues from its ``checkpoints/latest.ckpt`` (``training.resume``
is true by default; ``training.resume=false`` starts over in that folder).

``torchrun --nproc_per_node=N train.py ...`` trains the same config on N processes with DistributedDataParallel
(``training.batch_size`` stays the global batch; see ``training/distributed.py``).
"""
from __future__ import annotations

import json
import re
import signal
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from dpstack.training.cli import exit_on_user_error, remove_if_unused
from dpstack.training.config import validate_config

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
DEFAULT_CONFIG = "pusht_lowdim_quickstart"

OmegaConf.register_new_resolver("eval", eval, replace=True)


def config_summaries() -> list[str]:
    """One entry per config in ``configs/``: its name and the first sentence of its leading comment."""
    lines = []
    for path in sorted(CONFIG_DIR.glob("*.yaml")):
        comment = []
        for line in path.read_text().splitlines():
            if not line.startswith("#") or line.startswith("#  "):  # the end, or an indented command line
                break
            comment.append(line.lstrip("# ").strip())
        about = re.split(r"(?<! al)\. |; ", " ".join(comment))[0].rstrip(":.")  # "Chi et al. 2023" stays whole
        marker = " (the default)" if path.stem == DEFAULT_CONFIG else ""
        lines.append(f"  {path.stem}{marker}\n      {about}")
    return lines


def shared_output_dir(own: Path, main_rank: str) -> Path:
    """Rank 0's run folder; this rank's own, if hydra made a different one, is removed while still empty."""
    if Path(main_rank) != own:
        remove_if_unused(own)
    return Path(main_rank)


@hydra.main(version_base=None, config_path="configs", config_name=DEFAULT_CONFIG)
def main(cfg: DictConfig) -> None:
    output_dir = Path(HydraConfig.get().runtime.output_dir)
    with exit_on_user_error(output_dir):
        from dpstack.training import distributed
        from dpstack.training.workspace import TrainingWorkspace

        validate_config(cfg)
        topology, cfg.training.device = distributed.start(cfg.training.device)
        try:
            if topology.enabled:  # ranks started in different seconds name different dated folders: rank 0's wins
                output_dir = shared_output_dir(output_dir, distributed.broadcast(str(output_dir)))
            if topology.is_main:
                print(f"output dir: {output_dir}" + (f" ({topology.world_size} processes)" if topology.enabled else ""))
            metrics = TrainingWorkspace(cfg, output_dir).run()
            distributed.finish_together()
        finally:
            distributed.stop()
        if not topology.is_main:
            return
    print(json.dumps({k: v for k, v in metrics.items() if isinstance(v, (int, float))}, indent=2))
    if "interrupted_by" in metrics:  # saved and resumable; exit as the signal would have
        raise SystemExit(128 + signal.Signals[metrics["interrupted_by"]].value)


if __name__ == "__main__":
    if {"--help", "-h"} & set(sys.argv[1:]):
        print(__doc__.strip() + "\n\nConfigs (--config-name=NAME):\n" + "\n".join(config_summaries()) + "\n")
    sys.exit(main())
