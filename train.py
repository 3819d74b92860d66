"""Train a Diffusion Policy: ``python train.py [--config-name=NAME] [key=value ...]``.

The config (``configs/``, hydra) fully describes the run; outputs go to
``data/outputs/<date>/<time>_<name>_<task>`` (checkpoints, logs, rollout videos). Re-running with
``hydra.run.dir=<that folder>`` and ``training.resume=true`` continues from ``latest.ckpt``.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from dpstack.training.config import validate_config

OmegaConf.register_new_resolver("eval", eval, replace=True)


@hydra.main(version_base=None, config_path="configs", config_name="pusht_lowdim_quickstart")
def main(cfg: DictConfig) -> None:
    from dpstack.training.workspace import TrainingWorkspace

    validate_config(cfg)
    output_dir = Path(HydraConfig.get().runtime.output_dir)
    print(f"output dir: {output_dir}")
    metrics = TrainingWorkspace(cfg, output_dir).run()
    print(json.dumps({k: v for k, v in metrics.items() if isinstance(v, (int, float))}, indent=2))


if __name__ == "__main__":
    sys.exit(main())
