"""The training workspace: owns one run — data, model, EMA, optimizer, LR schedule, logging,
evaluation, checkpoints and exact resume — for every model of the project; its recipe
(``training.recipes``: a policy, an image DDPM, ...) supplies the data, the model and the evaluation.

Optimisation: AdamW, learning rate warmed up linearly for ``lr_warmup_steps`` then cosine-decayed
to 0 over all training steps, stepped per batch; EMA of the weights with decay
1 − (1 + step / inv_gamma)^(−power) capped at ``max_value``. Evaluations use the EMA model.
"""
from __future__ import annotations

import copy
import json
import math
import random
import signal
import time
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from dpstack.datasets.loader import make_dataloader
from dpstack.diffusion.checkpoint_io import CheckpointError, load_checkpoint, save_checkpoint
from dpstack.diffusion.ema import EMAModel
from dpstack.training import distributed
from dpstack.training.logger import NullLogger, RunLogger
from dpstack.training.recipes import DEFAULT_RECIPE, make_recipe
from dpstack.training.topk import TopKCheckpoints

# Settings added after checkpoints were first written, with the value that older checkpoints imply.
LATER_SETTINGS = {("policy", "cond_noise_std"): 0.0, ("task", "dataset", "mirror"): False,
                  ("task", "dataset", "align_to_goal"): False, ("recipe",): DEFAULT_RECIPE,
                  ("task", "split_scheme"): "test_split"}


def _with_later_settings(config: dict) -> dict:
    """A copy of a run config with the ``LATER_SETTINGS`` it lacks filled in at their implied values."""
    config = copy.deepcopy(config)
    for (*sections, key), implied in LATER_SETTINGS.items():
        tree = config
        for name in sections:
            tree = tree.setdefault(name, {})
        tree.setdefault(key, implied)
    return config


def warmup_cosine(warmup_steps: int, total_steps: int):
    """lr factor: k / warmup for k < warmup, then ½ (1 + cos(π (k − warmup) / (total − warmup)))."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return step / max(1, warmup_steps)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress))))

    return factor


class TrainingDivergedError(RuntimeError):
    """The loss or the gradients stopped being finite; nothing non-finite was written."""


def python_and_numpy_rng_state() -> dict:
    """Python's and NumPy's global RNG states as plain values and tensors (``weights_only``-loadable)."""
    version, internal, gauss = random.getstate()
    kind, keys, position, has_gauss, cached = np.random.get_state()
    return {"python": [version, list(internal), gauss],
            "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached]}


def restore_python_and_numpy_rng(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached))


@contextmanager
def stop_on_signals(signals=(signal.SIGINT, signal.SIGTERM)):
    """Turn SIGINT/SIGTERM into a request (``received[0]`` names the signal) that the loop honours after the
    current step; handlers are only installed in the main thread and are restored afterwards."""
    received: list[int] = []
    previous: dict = {}

    def request_stop(number, frame):
        received.append(number)
        signal.signal(number, previous[number])  # a second Ctrl-C stops at once

    try:
        for number in signals:
            previous[number] = signal.signal(number, request_stop)
    except ValueError:  # not the main thread: signals stay as they are
        pass
    try:
        yield received
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


class TrainingWorkspace:
    def __init__(self, cfg: DictConfig, output_dir: str | Path) -> None:
        self.cfg = cfg
        self.output_dir = Path(output_dir)
        self.checkpoint_dir = self.output_dir / "checkpoints"
        self.device = torch.device(cfg.training.device)
        self.epoch = 0
        self.global_step = 0
        self.recipe = make_recipe(cfg)
        self.topology = distributed.current_topology()

    # --- checkpoints -------------------------------------------------------------------
    def _payload(self, metrics: dict) -> dict:
        return {
            "config": OmegaConf.to_container(self.cfg, resolve=True),
            self.recipe.config_key: self.model.config.to_dict(),
            "state_dicts": {
                "model": self.model.state_dict(),
                "ema_model": self.ema.averaged_model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "lr_scheduler": self.lr_scheduler.state_dict(),
            },
            "training_state": {
                "epoch": self.epoch, "global_step": self.global_step,
                "ema_step": self.ema.optimization_step, "ema_decay": self.ema.decay,
                "torch_rng": torch.get_rng_state(), "loader_rng": self.loader_generator.get_state(),
                # A stop inside an epoch: its order is redrawn from the epoch's start state and the
                # batches already trained on are skipped, so the resumed run equals a straight one.
                "batch_in_epoch": self.batch_in_epoch, "epoch_loader_rng": self.epoch_loader_rng,
                "cpu_minutes": self.cpu_minutes(), "wall_minutes": self.wall_minutes(),
                "batches_per_epoch": self.batches_per_epoch,
                "cuda_rng": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else [],
                "host_rng": python_and_numpy_rng_state(),
                # Every rank's own noise stream (rank 0's is torch_rng / host_rng above), for an exact resume.
                "rank_rng": distributed.gather(self._rng_state()) if self.topology.enabled else None,
                "topk": self.topk.state(),
            },
            "metrics": metrics,
        }

    def _rng_state(self) -> dict:
        return {"torch": torch.get_rng_state(), "host": python_and_numpy_rng_state(),
                "cuda": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None}

    def _restore_rank_rng(self, saved: list[dict] | None) -> None:
        """Rank r > 0 of a distributed resume: its own saved stream, or (a rank the saved run did not have)
        a fresh one seeded from (seed, rank, step)."""
        rank = self.topology.rank
        if saved and rank < len(saved):
            torch.set_rng_state(saved[rank]["torch"])
            restore_python_and_numpy_rng(saved[rank]["host"])
            if self.device.type == "cuda" and saved[rank]["cuda"] is not None:
                torch.cuda.set_rng_state(saved[rank]["cuda"], self.device)
        else:
            seed_everything(distributed.rank_seed(self.cfg.training.seed, rank, self.global_step))

    def _check_compatible(self, payload: dict, path: Path) -> None:
        saved = _with_later_settings(payload["config"])
        current = _with_later_settings(OmegaConf.to_container(self.cfg, resolve=True))
        keys = ("recipe", self.recipe.model_section, "task", *getattr(self.recipe, "resume_keys", ()))
        differing = [key for key in keys if saved.get(key) != current.get(key)]
        if differing:
            raise CheckpointError(f"{path} was written by a run with a different {' and '.join(differing)} config; "
                                  f"resume it with its own config or start a new output dir")

    def _resume(self, path: Path) -> None:
        payload = load_checkpoint(path, map_location=self.device)
        self._check_compatible(payload, path)
        if hasattr(self.recipe, "check_resume"):
            self.recipe.check_resume(payload, self.model, path)
        states, position = payload["state_dicts"], payload["training_state"]
        self.model.load_state_dict(states["model"])
        self.ema.averaged_model.load_state_dict(states["ema_model"])
        self.ema.optimization_step, self.ema.decay = position["ema_step"], position["ema_decay"]
        self.optimizer.load_state_dict(states["optimizer"])
        self.lr_scheduler.load_state_dict(states["lr_scheduler"])
        self.epoch, self.global_step = position["epoch"], position["global_step"]
        torch.set_rng_state(position["torch_rng"])
        if self.device.type == "cuda" and position.get("cuda_rng"):
            torch.cuda.set_rng_state_all(position["cuda_rng"])
        self.loader_generator.set_state(position["loader_rng"])
        if "host_rng" in position:  # checkpoints written before 2026-12-03 lack it
            restore_python_and_numpy_rng(position["host_rng"])
        if self.topology.rank:
            self._restore_rank_rng(position.get("rank_rng"))
        self.batch_in_epoch = position.get("batch_in_epoch", 0)
        if self.batch_in_epoch:
            if position["batches_per_epoch"] != self.batches_per_epoch:
                raise CheckpointError(f"{path} stopped inside an epoch of {position['batches_per_epoch']} batches, "
                                      f"this config makes {self.batches_per_epoch}: resume with the same "
                                      "training.batch_size and dataset, or start a new output dir")
            self.loader_generator.set_state(position["epoch_loader_rng"])
        self.cpu_minutes_before = position.get("cpu_minutes", 0.0)
        self.wall_minutes_before = position.get("wall_minutes", 0.0)
        self.topk.load_state(position["topk"])
        print(f"resumed {path} at epoch {self.epoch}, step {self.global_step}"
              + (f" (batch {self.batch_in_epoch} of the epoch)" if self.batch_in_epoch else ""))

    def cpu_minutes(self) -> float:
        """CPU time of this process's training so far, summed over resumed runs."""
        return self.cpu_minutes_before + (time.process_time() - self.cpu_started) / 60

    def wall_minutes(self) -> float:
        return self.wall_minutes_before + (time.monotonic() - self.wall_started) / 60

    # --- the loop ----------------------------------------------------------------------
    def run(self) -> dict:
        """Train (or resume) the recipe's prerequisite runs, then this one; the final metrics."""
        for stage_cfg, stage_dir in getattr(self.recipe, "prerequisites", lambda _: [])(self.output_dir):
            print(f"prerequisite: the {stage_cfg.recipe} run in {stage_dir}")
            stage_metrics = TrainingWorkspace(stage_cfg, stage_dir).run()
            if "interrupted_by" in stage_metrics:
                return stage_metrics
        return self._run()

    def _run(self) -> dict:
        cfg, tc = self.cfg, self.cfg.training
        self.loader_generator = seed_everything(tc.seed)  # alike on every rank: one global data order
        if tc.num_threads:
            torch.set_num_threads(tc.num_threads)
        dataset, val_dataset = self.recipe.build_data()
        self.model = self.recipe.build_model(dataset).to(self.device)
        if self.topology.rank:  # rank 0 keeps the one-process noise stream, the others get their own
            seed_everything(distributed.rank_seed(tc.seed, self.topology.rank))
        self.ema = EMAModel(self.model, **cfg.ema)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=tc.lr, betas=tuple(tc.betas),
                                           eps=tc.eps, weight_decay=tc.weight_decay)
        shard = partial(distributed.shard, topology=self.topology) if self.topology.enabled else None
        loader = make_dataloader(dataset, tc.batch_size, shuffle=True, device=self.device,
                                 generator=self.loader_generator, num_workers=tc.get("num_workers", 0), shard=shard)
        total_steps = len(loader) * tc.num_epochs  # the LR schedule's length; max_train_steps only stops early
        self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, warmup_cosine(tc.lr_warmup_steps, total_steps))
        self.topk = TopKCheckpoints(self.checkpoint_dir, cfg.checkpoint.topk, cfg.checkpoint.monitor,
                                    cfg.checkpoint.get("mode", "max"))
        latest = self.checkpoint_dir / "latest.ckpt"
        self.batch_in_epoch, self.epoch_loader_rng, self.batches_per_epoch = 0, None, len(loader)
        self.cpu_minutes_before = self.wall_minutes_before = 0.0
        self.wall_started, self.cpu_started = time.monotonic(), time.process_time()
        if tc.resume and latest.exists():
            self._resume(latest)
        self.trainable = (distributed.wrap(self.model, self.device) if self.topology.enabled
                          else distributed.LossModule(self.model))
        logger = RunLogger(self.output_dir, cfg) if self.topology.is_main else NullLogger()
        try:
            with stop_on_signals() as received:
                return self._loop(loader, val_dataset, logger, received)
        finally:
            logger.close()

    def _train_step(self, batch, weight: float, stop_requested: bool) -> tuple[float, float, bool]:
        """One optimiser step; (loss, gradient norm before clipping, whether any rank asks to stop). Refuses
        non-finite values before they reach the weights, so every checkpoint stays finite. Distributed:
        the rank's mean loss is scaled by ``weight`` (``distributed.loss_weight``) and the global batch
        mean is logged."""
        tc = self.cfg.training
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=bool(tc.get("bf16_autocast", False))):
            loss = self.trainable(batch)
        loss_value = loss.item()
        if self.topology.enabled:
            loss = loss * weight
            loss_value, stops = distributed.all_sum([loss_value * weight / self.topology.world_size,
                                                     float(stop_requested)])
            stop_requested = stops > 0
        if not math.isfinite(loss_value):
            raise self._diverged(f"the loss is {loss_value}")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        clip = tc.get("grad_clip_norm") or math.inf
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip))
        if not math.isfinite(grad_norm):
            raise self._diverged(f"the gradient norm is {grad_norm}")
        self.optimizer.step()
        self.lr_scheduler.step()
        self.ema.step(self.model)
        return loss_value, grad_norm, stop_requested

    def _agree_to_stop(self, received: list[int]) -> bool:
        """Whether any rank got SIGINT/SIGTERM (every rank must take the same path through the loop)."""
        if not self.topology.enabled:
            return bool(received)
        return distributed.all_sum([float(bool(received))])[0] > 0

    def _diverged(self, what: str) -> TrainingDivergedError:
        latest = self.checkpoint_dir / "latest.ckpt"
        kept = f"{latest} (written before this step) is intact" if latest.exists() else "no checkpoint was written"
        return TrainingDivergedError(
            f"training diverged at step {self.global_step + 1} (epoch {self.epoch}): {what}; nothing was saved from "
            f"it and {kept}. Lower training.lr, set training.grad_clip_norm (e.g. 1.0), or turn off "
            f"training.bf16_autocast")

    def _loop(self, loader, val_dataset, logger: RunLogger, received: list[int]) -> dict:
        tc = self.cfg.training
        metrics: dict = {}
        while self.epoch < tc.num_epochs and (not tc.max_train_steps or self.global_step < tc.max_train_steps):
            epoch_losses = []
            self.epoch_loader_rng = self.loader_generator.get_state()  # this epoch's order is drawn from here
            loader.skip_next(self.batch_in_epoch)
            bar = tqdm(loader, desc=f"epoch {self.epoch}", leave=False, initial=self.batch_in_epoch,
                       total=len(loader), disable=not tc.progress or not self.topology.is_main)
            stopping = False
            for batch in bar:
                weight = (distributed.loss_weight(loader.batch_size_at(self.batch_in_epoch), self.topology)
                          if self.topology.enabled else 1.0)
                loss, grad_norm, stopping = self._train_step(batch, weight, bool(received))
                self.global_step += 1
                self.batch_in_epoch += 1
                epoch_losses.append(loss)
                bar.set_postfix(loss=f"{loss:.4f}")
                logger.log({"train_loss": loss, "grad_norm": grad_norm, "lr": self.lr_scheduler.get_last_lr()[0],
                            "global_step": self.global_step, "epoch": self.epoch}, self.global_step,
                           every=tc.log_every)
                # Stop early, except after an epoch's last batch: the loop then ends by itself and leaves
                # the sampler's generator where a straight run has it.
                stop = stopping or (tc.max_train_steps and self.global_step >= tc.max_train_steps)
                if stop and self.batch_in_epoch < len(loader):
                    break
            if self.batch_in_epoch >= len(loader):
                self.epoch, self.batch_in_epoch = self.epoch + 1, 0
            metrics = {"train_loss_epoch": float(np.mean(epoch_losses)), "epoch": self.epoch,
                       "global_step": self.global_step, "wall_minutes": self.wall_minutes(),
                       "cpu_minutes": self.cpu_minutes()}
            if stopping and self.batch_in_epoch:  # SIGINT/SIGTERM inside an epoch: save where we are and leave
                self._save(metrics)
                return self._interrupted(metrics, received)
            is_last = self.epoch >= tc.num_epochs or (tc.max_train_steps and self.global_step >= tc.max_train_steps)
            evaluating = tc.rollout_every and (self.epoch % tc.rollout_every == 0 or is_last)
            if evaluating:  # an evaluation that fails (minutes of rollouts) must not cost the epoch's training
                self._write_latest(self._payload(metrics))
            # Evaluation draws nothing from the training RNG (a stop-and-resume run evaluates where a
            # straight run does not): it runs on a fork of the torch RNG state, on rank 0 alone.
            with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else [],
                                       enabled=self.topology.is_main):
                validating = tc.val_every and (self.epoch % tc.val_every == 0 or is_last) and len(val_dataset)
                if validating and self.topology.is_main:
                    metrics["val_loss"] = self._validation_loss(val_dataset)
                if evaluating and self.topology.is_main:
                    metrics.update(self.recipe.evaluate(self.ema.averaged_model, self.epoch, self.global_step,
                                                        self.output_dir, logger))
            stopping = self._agree_to_stop(received)
            if self.epoch % tc.checkpoint_every == 0 or is_last or stopping:
                self._save(metrics)
            logger.log(metrics, self.global_step)
            if stopping:  # the signal came with an epoch's last batch: its evaluation and checkpoint are done
                return self._interrupted(metrics, received)
        return metrics

    def _interrupted(self, metrics: dict, received: list[int]) -> dict:
        name = signal.Signals(received[0]).name if received else "SIGTERM"  # or the signal reached another rank
        if self.topology.is_main:
            print(f"{name}: stopped at step {self.global_step}; saved {self.checkpoint_dir / 'latest.ckpt'}. "
                  f"Run the same command again to resume.")
        return {**metrics, "interrupted_by": name}

    def _write_latest(self, payload: dict) -> None:
        if self.topology.is_main:
            save_checkpoint(payload, self.checkpoint_dir / "latest.ckpt")

    @torch.no_grad()
    def _validation_loss(self, val_dataset) -> float:
        generator = torch.Generator(device=self.device).manual_seed(0)
        losses = [self.ema.averaged_model.compute_loss(batch, generator=generator).item()
                  for batch in make_dataloader(val_dataset, self.cfg.training.batch_size, shuffle=False,
                                               device=self.device)]
        return float(np.mean(losses))

    def _save(self, metrics: dict) -> None:
        """Top-k bookkeeping first, so that ``latest.ckpt`` records the list it belongs to. Every rank calls
        it (the payload gathers their RNG states; the weights are checked to agree); rank 0 writes."""
        if self.topology.enabled:
            distributed.check_in_step(self.model, self.ema.averaged_model)
        payload = self._payload(metrics)
        if not self.topology.is_main:
            return
        score = metrics.get(self.cfg.checkpoint.monitor)
        # A stop inside an epoch writes latest.ckpt only: top-k names checkpoints by finished epochs.
        if score is None or self.batch_in_epoch:
            admitted, dropped = None, []
        else:
            admitted, dropped = self.topk.admit(score, self.epoch)
            payload["training_state"]["topk"] = self.topk.state()
        if admitted is not None:
            save_checkpoint(payload, admitted)
        save_checkpoint(payload, self.checkpoint_dir / "latest.ckpt")
        for path in dropped:
            path.unlink(missing_ok=True)
        (self.output_dir / "latest_metrics.json").write_text(json.dumps(metrics, indent=2))
