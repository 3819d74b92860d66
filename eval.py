"""Evaluate a checkpoint with the paper's protocol:

    python eval.py --checkpoint CKPT [CKPT ...] --output_dir DIR [--device cpu] [--n_test 50]
                   [--test_start_seed 100000] [--n_train 6] [--n_envs 56] [--n_workers 0] [--num_inference_steps K]

Writes ``DIR/eval_log.json`` (``test/mean_score`` = mean of per-episode max reward,
``test/success_rate``, per-seed results) and rollout videos in ``DIR/media/``. Several checkpoints (e.g.
the last 10 of a run) are each evaluated into ``DIR/<name>/`` and ``DIR/eval_summary.json`` reports the
paper's "max / avg" over them: the maximum and the mean of their test mean scores and success rates.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

from dpstack.policy.diffusion_policy import SAMPLERS


def workers_argument(text: str) -> int | None:
    return None if text.lower() == "none" else int(text)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Evaluate a Diffusion Policy checkpoint in the Push-T simulator.",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--checkpoint", required=True, type=Path, nargs="+",
                        help="a .ckpt from train.py or pretrained/ (or an exported .onnx / .pt); several: max / avg")
    parser.add_argument("--output_dir", required=True, type=Path, help="eval_log.json and media/ go here")
    parser.add_argument("--device", default="cpu", help="torch device of the policy")
    parser.add_argument("--n_test", type=int, default=50, help="test episodes (seeds from --test_start_seed)")
    parser.add_argument("--test_start_seed", type=int, default=100000, help="first test seed (the paper's)")
    parser.add_argument("--n_train", type=int, default=6, help="episodes on training seeds")
    parser.add_argument("--train_start_seed", type=int, default=0, help="first training seed")
    parser.add_argument("--n_envs", type=int, default=56,
                        help="environments stepped in lockstep, one policy batch (results do not depend on it)")
    parser.add_argument("--n_workers", type=workers_argument, default=0,
                        help="0: envs in this process (the fastest, measured); K: K env processes, each hosting a "
                             "share of the envs (crashes and hangs are contained); none: one process per env")
    parser.add_argument("--num_inference_steps", type=int, default=None, help="denoising steps (None: the checkpoint's)")
    parser.add_argument("--sampler", choices=SAMPLERS, default=None,
                        help="None: the checkpoint's; consistency is for distilled policies (policy.distillation)")
    parser.add_argument("--n_action_steps", type=int, default=None, help="actions executed per chunk (None: the checkpoint's)")
    parser.add_argument("--init_noise_scale", type=float, default=None,
                        help="sampling temperature τ: the chain starts from N(0, τ² I) (None: the checkpoint's)")
    parser.add_argument("--ddim_steps_offset", type=int, default=None,
                        help="shift DDIM's timesteps up, e.g. 40: DDIM-2 at t = 90, 40 (None: the checkpoint's)")
    parser.add_argument("--n_test_videos", type=int, default=4, help="test episodes written as videos")
    parser.add_argument("--n_train_videos", type=int, default=2, help="training-seed episodes written as videos")
    parser.add_argument("--seed", type=int, default=42, help="seed of the diffusion sampling noise")
    parser.add_argument("--wandb", choices=["online", "offline", "disabled"], default="disabled",
                        help="also log the metrics and videos to wandb")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if len(args.checkpoint) == 1:
        return evaluate_checkpoint(args, args.checkpoint[0], args.output_dir)
    logs = [evaluate_checkpoint(args, path, args.output_dir / path.stem) for path in args.checkpoint]
    summary = {"checkpoints": [str(path) for path in args.checkpoint]}
    for key in ("test/mean_score", "test/success_rate"):
        values = [log[key] for log in logs]
        summary[key] = {"max": max(values), "mean": sum(values) / len(values), "each": values}
    (args.output_dir / "eval_summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps({key: summary[key] for key in ("test/mean_score", "test/success_rate")}, indent=2))
    print(f"wrote {args.output_dir / 'eval_summary.json'}")
    return summary


def evaluate_checkpoint(args: argparse.Namespace, checkpoint: Path, output_dir: Path) -> dict:
    from dpstack.evaluation.runner import PushTRunner, RunnerConfig
    from dpstack.policy.checkpoint import load_policy
    from dpstack.policy.executor import torch_predictor
    from dpstack.training.cli import exit_on_user_error

    with exit_on_user_error(also=(ValueError,)):  # ValueError: an inference setting the policy refuses
        policy = load_policy(checkpoint, device=args.device)
        changes = {"num_inference_steps": args.num_inference_steps, "sampler": args.sampler,
                   "n_action_steps": args.n_action_steps, "ddim_steps_offset": args.ddim_steps_offset,
                   "init_noise_scale": args.init_noise_scale}
        policy.reconfigure(**{key: value for key, value in changes.items() if value is not None})
    policy.optimize_for_inference()  # identical actions, faster sampling
    obs_type = "keypoints" if policy.config.obs_type == "lowdim" else "image"
    runner_config = RunnerConfig(obs_type=obs_type, n_test=args.n_test, test_start_seed=args.test_start_seed,
                                 n_train=args.n_train, train_start_seed=args.train_start_seed, n_envs=args.n_envs,
                                 n_workers=args.n_workers, n_test_videos=args.n_test_videos,
                                 n_train_videos=args.n_train_videos)
    runner = PushTRunner(runner_config, policy.config.n_obs_steps, policy.config.n_action_steps)
    started = time.monotonic()
    # Each episode's sampling noise comes from (seed, episode, chunk) alone: results do not depend on n_envs.
    result = runner.run(torch_predictor(policy, args.device, episode_seed=args.seed),
                        video_dir=output_dir / "media")
    metrics = result.metrics()
    log = {
        **metrics,
        "checkpoint": str(checkpoint),
        "sampler": policy.config.sampler,
        "num_inference_steps": policy.config.num_inference_steps,
        "ddim_steps_offset": policy.config.ddim_steps_offset,
        "init_noise_scale": policy.config.init_noise_scale,
        "n_action_steps": policy.config.n_action_steps,
        "runner": asdict(runner_config),
        "wall_seconds": time.monotonic() - started,
        "episodes": [asdict(e) for e in result.episodes],
        "failures": result.failures,
        "videos": {name: str(path) for name, path in result.videos.items()},
    }
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "eval_log.json").write_text(json.dumps(log, indent=2))
    if args.wandb != "disabled":
        import wandb

        config = {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()}
        run = wandb.init(project="diffusion_policy_eval", mode=args.wandb, dir=str(output_dir), config=config)
        run.log(metrics | {f"{name}/video": wandb.Video(str(path), format="mp4") for name, path in result.videos.items()})
        run.finish()
    summary = {k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()}
    print(json.dumps(summary, indent=2))
    print(f"wrote {output_dir / 'eval_log.json'}")
    return log


if __name__ == "__main__":
    main(sys.argv[1:])
