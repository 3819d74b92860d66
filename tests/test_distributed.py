"""torchrun + DistributedDataParallel on the CPU (gloo, 2 processes, loopback): the 2-process run equals the
1-process run for the same global batch and seed, resumes exactly (also on another world size and after a
SIGTERM), and the sharding arithmetic gives the global batch mean's gradient."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from dpstack.training import distributed
from dpstack.training.distributed import Topology

REPO = Path(__file__).resolve().parents[1]
# Float tolerances of "equal": the 2-process all-reduce sums gradients in another order than one process.
LOSS_TOLERANCE = 1e-5     # absolute, per logged step loss (values ≈ 2)
WEIGHT_TOLERANCE = 1e-4   # absolute, largest parameter difference after the run (Adam, lr 1e-3)


def test_shards_cover_the_global_batch_and_weights_give_its_mean_gradient():
    indices = list(range(100, 113))  # 13 samples on 2 and on 5 ranks: uneven parts
    for world in (2, 5, 20):
        parts = [distributed.shard(indices, Topology(rank, world)) for rank in range(world)]
        sizes = distributed.shard_sizes(len(indices), world)
        assert sum(sizes) == 13 and max(sizes) - min(sizes) <= 1
        assert sum((p for p, n in zip(parts, sizes) if n), []) == indices  # contiguous, in order, no overlap
        assert all(p == indices[:1] for p, n in zip(parts, sizes) if not n)  # an empty part: a placeholder
    # DDP averages the ranks' gradients: (1/W) Σ_r w_r ∇L_r must equal ∇ of the mean over all 13 samples.
    x, w = torch.randn(13, 3), torch.randn(3, requires_grad=True)
    (x @ w).pow(2).mean().backward()
    expected, w.grad = w.grad.clone(), None
    world = 5
    total = torch.zeros(3)
    for rank in range(world):
        topology = Topology(rank, world)
        part = x[torch.tensor(distributed.shard(list(range(13)), topology))]
        (distributed.loss_weight(13, topology) * (part @ w).pow(2).mean()).backward()
        total += w.grad / world
        w.grad = None
    assert torch.allclose(total, expected, atol=1e-6)


def test_rank_seeds_differ_by_rank_and_step():
    seeds = {distributed.rank_seed(42, rank, step) for rank in range(4) for step in (0, 10)}
    assert len(seeds) == 8 and distributed.rank_seed(42, 1) == distributed.rank_seed(42, 1)


# --- runs ------------------------------------------------------------------------------------------
def tiny_language_model(corpus: Path, kind: str, *extra: str) -> list[str]:
    return [f"--config-name=shakespeare_{kind}", f"task.corpus={corpus}", "task.stride=16",
            "model.transformer.block_size=32", "model.transformer.n_layer=1", "model.transformer.d_model=32",
            "model.transformer.n_head=2", "training.batch_size=13", "training.rollout_every=0",
            "training.progress=false", "logging.mode=disabled", "training.device=cpu", "training.log_every=1",
            "training.num_threads=1", *extra]


def launch(args: list[str], processes: int) -> subprocess.Popen:
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}  # loopback only
    runner = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
              if processes > 1 else [sys.executable])
    return subprocess.Popen([*runner, "train.py", *args], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def train(args: list[str], processes: int) -> str:
    process = launch(args, processes)
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output[-3000:]
    return output


def step_losses(run: Path) -> dict[int, float]:
    rows = (json.loads(line) for line in (run / "logs.json.txt").read_text().splitlines())
    return {row["step"]: row["train_loss"] for row in rows if "train_loss" in row}


def final_state(run: Path) -> dict:
    return torch.load(run / "checkpoints" / "latest.ckpt", map_location="cpu", weights_only=False)


def largest_difference(a: dict, b: dict) -> float:
    return max((a[section][key].float() - b[section][key].float()).abs().max().item()
               for section in ("model", "ema_model") for key in a[section])


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    import random

    rng = random.Random(0)
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text("".join(rng.choice("abcdefgh \n") for _ in range(3000)))
    return path


def test_two_processes_train_as_one_and_resume_on_another_world_size(tmp_path, corpus):
    """A loss without randomness (AR, no dropout): the 2-process loss curve and weights equal the 1-process
    ones; a 1-process run stopped at step 10 and finished on 2 processes equals them too."""
    args = tiny_language_model(corpus, "ar", "model.transformer.dropout=0.0", "training.num_epochs=2")
    train([*args, f"hydra.run.dir={tmp_path / 'one'}"], 1)
    output = train([*args, f"hydra.run.dir={tmp_path / 'two'}"], 2)
    assert "(2 processes)" in output
    train([*args, "training.max_train_steps=10", f"hydra.run.dir={tmp_path / 'moved'}"], 1)
    assert final_state(tmp_path / "moved")["training_state"]["global_step"] == 10
    train([*args, f"hydra.run.dir={tmp_path / 'moved'}"], 2)

    one = step_losses(tmp_path / "one")
    assert len(one) == 26  # 2 epochs of 13 global batches (the last one short)
    for name in ("two", "moved"):
        other = step_losses(tmp_path / name)
        assert other.keys() == one.keys()
        assert max(abs(one[k] - other[k]) for k in one) < LOSS_TOLERANCE, name
        assert largest_difference(final_state(tmp_path / "one")["state_dicts"],
                                  final_state(tmp_path / name)["state_dicts"]) < WEIGHT_TOLERANCE, name
    ranks = final_state(tmp_path / "two")["training_state"]["rank_rng"]
    assert len(ranks) == 2 and not torch.equal(ranks[0]["torch"], ranks[1]["torch"])  # a stream each


def test_sigterm_saves_every_rank_and_the_resume_is_exact(tmp_path, corpus):
    """The masked model's loss draws t and masks from each rank's stream: a 2-process run stopped by SIGTERM
    (to torchrun, which passes it on) and resumed ends with the same weights as a straight one."""
    args = tiny_language_model(corpus, "mdlm", "training.num_epochs=40")
    train([*args, f"hydra.run.dir={tmp_path / 'straight'}"], 2)
    stopped = tmp_path / "stopped"
    process = launch([*args, f"hydra.run.dir={stopped}"], 2)
    deadline = time.monotonic() + 120
    while not ((stopped / "logs.json.txt").exists() and len(step_losses(stopped)) > 30):
        assert process.poll() is None and time.monotonic() < deadline, "the run ended before it could be stopped"
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=120)
    assert "SIGTERM: stopped at step" in output, output[-3000:]
    stop_step = final_state(stopped)["training_state"]["global_step"]
    assert 30 < stop_step < 520
    train([*args, f"hydra.run.dir={stopped}"], 2)
    straight, resumed = final_state(tmp_path / "straight"), final_state(stopped)
    assert resumed["training_state"]["global_step"] == straight["training_state"]["global_step"] == 520
    assert largest_difference(straight["state_dicts"], resumed["state_dicts"]) == 0.0
