"""Evaluate a policy on seeded Push-T episodes: the paper's protocol, metrics and rollout videos.

Protocol (Chi et al. 2023): 50 test episodes seeded 100000…100049 and 6 "train" episodes seeded
0…5, 300 steps each, legacy resets, receding-horizon execution. Per episode the score is the max
over steps (the reset state excluded, as in the reference) of clip(coverage / 0.95, 0, 1); ``test/mean_score`` is its mean over test episodes and
``test/success_rate`` the fraction of episodes that reached coverage > 0.95.
Episodes run in waves of ``n_envs`` lockstep envs; an episode whose env worker crashes or hangs
is re-run in a later wave and reported under ``failures``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from tqdm.auto import tqdm

from dpstack.envs.video import write_video
from dpstack.evaluation.vector_env import WorkerEnvPool, stack_observations
from dpstack.policy.executor import RecedingHorizonExecutor

MAX_RERUNS_PER_EPISODE = 2


@dataclass
class RunnerConfig:
    obs_type: str = "keypoints"  # env observation: "keypoints" (low-dim) or "image"
    n_test: int = 50
    test_start_seed: int = 100000
    n_train: int = 6
    train_start_seed: int = 0
    max_steps: int = 300
    n_envs: int = 56              # the protocol's 56 episodes in one lockstep wave, one policy batch
    n_workers: int | None = 0     # 0: in-process (fastest here: BENCHMARKS "Evaluation speed"); K: K env processes;
                                  # None: one process per env (the original's layout)
    n_test_videos: int = 4
    n_train_videos: int = 2
    legacy: bool = True
    worker_timeout: float = 60.0

    def episodes(self) -> list[tuple[str, int]]:
        return ([("train", self.train_start_seed + i) for i in range(self.n_train)]
                + [("test", self.test_start_seed + i) for i in range(self.n_test)])


@dataclass
class EpisodeResult:
    split: str
    seed: int
    max_reward: float
    max_coverage: float
    success: bool
    steps: int
    final_coverage: float


@dataclass
class EvaluationResult:
    episodes: list[EpisodeResult]
    videos: dict[str, Path] = field(default_factory=dict)
    failures: list[dict] = field(default_factory=list)

    def metrics(self) -> dict[str, float]:
        out = {}
        for split in ("train", "test"):
            chosen = [e for e in self.episodes if e.split == split]
            if chosen:
                out[f"{split}/mean_score"] = float(np.mean([e.max_reward for e in chosen]))
                out[f"{split}/success_rate"] = float(np.mean([e.success for e in chosen]))
                out[f"{split}/mean_max_coverage"] = float(np.mean([e.max_coverage for e in chosen]))
        out["env_failures"] = len(self.failures)
        return out


class PushTRunner:
    """Runs ``predict(stacked_obs, keys) -> (B, n_action_steps, 2)`` on the configured episodes; row i's
    key is ``((split 0=train 1=test, env seed), chunk index)`` (see ``torch_predictor(episode_seed=)``)."""

    def __init__(self, config: RunnerConfig, n_obs_steps: int, n_action_steps: int) -> None:
        self.config = config
        self.n_obs_steps = n_obs_steps
        self.n_action_steps = n_action_steps

    def run(self, predict: Callable, video_dir: Path | None = None, progress: bool = True) -> EvaluationResult:
        cfg = self.config
        pending = cfg.episodes()
        video_budget = {"test": cfg.n_test_videos, "train": cfg.n_train_videos}
        want_video = {ep for split in ("train", "test")
                      for ep in [e for e in pending if e[0] == split][:video_budget[split]]} if video_dir else set()
        env_kwargs = dict(obs_type=cfg.obs_type, legacy=cfg.legacy, render_mode="rgb_array" if want_video else None)
        n_slots = max(1, min(cfg.n_envs, len(pending)))
        result = EvaluationResult(episodes=[])
        reruns: dict[tuple[str, int], int] = {}
        bar = tqdm(total=len(pending), desc="eval episodes", disable=not progress, leave=False)
        with WorkerEnvPool(n_slots, env_kwargs, cfg.n_workers, cfg.worker_timeout) as pool:
            while pending:
                wave, pending = pending[:n_slots], pending[n_slots:]
                finished, failed = self._run_wave(pool, wave, predict, want_video, video_dir, result)
                for episode, reason in failed:
                    reruns[episode] = reruns.get(episode, 0) + 1
                    result.failures.append({"split": episode[0], "seed": episode[1], "reason": reason})
                    if reruns[episode] > MAX_RERUNS_PER_EPISODE:
                        raise RuntimeError(f"episode {episode} failed {reruns[episode]} times; last error: {reason}")
                    pending.append(episode)
                bar.update(len(finished))
        bar.close()
        result.episodes.sort(key=lambda e: (e.split, e.seed))
        return result

    def _run_wave(self, pool, wave, predict, want_video, video_dir, result):
        """Run the episodes of one wave in lockstep; returns (finished slots, [(episode, reason)])."""
        failed: dict[int, str] = {}  # slot -> reason; a failed slot leaves the wave at once

        def call(command, arguments, slots):
            answers, failures = pool.call_all(command, arguments, slots)
            failed.update({f.slot: f.reason for f in failures if f.slot not in failed})
            return answers

        answers = call("reset", [seed for _, seed in wave], list(range(len(wave))))
        active = sorted(answers)
        observations = {s: answers[s][0] for s in active}
        coverage: dict[int, list[float]] = {s: [] for s in active}  # per step, as the reference scores
        frames = {s: [] for s in active if wave[s] in want_video}
        self._record_frames(call, frames, active)
        active = [s for s in active if s not in failed]
        executor = RecedingHorizonExecutor(predict, self.n_obs_steps, self.n_action_steps)
        if active:
            split_index = {"train": 0, "test": 1}
            executor.reset(stack_observations([observations[s] for s in active]),
                           episode_keys=[(split_index[wave[s][0]], wave[s][1]) for s in active])
        for step in range(self.config.max_steps):
            if not active:
                break
            batch_obs = None if step == 0 else stack_observations([observations[s] for s in active])
            actions = dict(zip(active, executor.act(batch_obs)))
            answers = call("step", [actions[s] for s in active], active)
            for s, (obs, _, terminated, _, info) in answers.items():
                observations[s] = obs
                coverage[s].append(info["coverage"])
            self._record_frames(call, frames, list(answers))
            still_running = [s for s in active if s in answers and s not in failed and not answers[s][2]]
            if len(still_running) != len(active):
                executor.select([i for i, s in enumerate(active) if s in still_running])
                active = still_running
        finished = [s for s in coverage if s not in failed]
        for s in finished:
            split, seed = wave[s]
            covered = np.asarray(coverage[s] or [0.0])
            result.episodes.append(EpisodeResult(
                split=split, seed=seed, max_reward=float(np.clip(covered / 0.95, 0.0, 1.0).max()),
                max_coverage=float(covered.max()), success=bool(covered.max() > 0.95), steps=len(coverage[s]),
                final_coverage=float(covered[-1])))
            if frames.get(s):
                path = Path(video_dir) / f"{split}_seed{seed}.mp4"
                result.videos[f"{split}/seed{seed}"] = write_video(path, frames[s])
        return finished, [(wave[s], reason) for s, reason in failed.items()]

    @staticmethod
    def _record_frames(call, frames, slots) -> None:
        wanted = [s for s in slots if s in frames]
        if wanted:
            for s, frame in call("render", [None] * len(wanted), wanted).items():
                frames[s].append(frame)
