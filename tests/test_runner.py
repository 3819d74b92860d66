"""The evaluation runner: protocol, metric on scripted episodes, videos, crashing and hanging workers."""
import numpy as np
import pytest

from dpstack.envs import PushTEnv
from dpstack.evaluation.runner import EpisodeResult, EvaluationResult, PushTRunner, RunnerConfig
from dpstack.evaluation.vector_env import WorkerEnvPool


def hold_still(stacked):
    """Target = the agent's current position: nothing moves, so the score is the initial coverage."""
    agent = stacked["obs"][:, -1, 18:20]
    return np.repeat(agent[:, None, :], 8, axis=1)


def initial_coverage(seed):
    return PushTEnv(obs_type="keypoints").reset(seed=seed)[1]["coverage"]


def test_paper_protocol_defaults():
    episodes = RunnerConfig().episodes()
    assert episodes[:6] == [("train", s) for s in range(6)]
    assert episodes[6:] == [("test", 100000 + i) for i in range(50)]


@pytest.mark.parametrize("n_workers", [0, None, 2])
def test_metric_on_scripted_episodes(n_workers, tmp_path):
    config = RunnerConfig(n_test=5, n_train=1, n_envs=3, n_workers=n_workers, max_steps=20,
                          n_test_videos=1, n_train_videos=0)
    result = PushTRunner(config, n_obs_steps=2, n_action_steps=8).run(hold_still, video_dir=tmp_path, progress=False)
    test = [e for e in result.episodes if e.split == "test"]
    assert [e.seed for e in test] == list(range(100000, 100005))
    for episode in test:
        expected = initial_coverage(episode.seed)
        assert episode.max_coverage == pytest.approx(expected, abs=1e-9)
        assert episode.max_reward == pytest.approx(min(expected / 0.95, 1.0))
        assert episode.steps == 20 and not episode.success
    metrics = result.metrics()
    assert metrics["test/mean_score"] == pytest.approx(np.mean([e.max_reward for e in test]))
    assert metrics["test/success_rate"] == 0.0 and metrics["env_failures"] == 0
    assert list(result.videos) == ["test/seed100000"] and result.videos["test/seed100000"].stat().st_size > 1000


def test_success_rate_and_mean_score_definitions():
    result = EvaluationResult(episodes=[
        EpisodeResult("test", 1, 1.0, 0.97, True, 40, 0.97),
        EpisodeResult("test", 2, 0.5, 0.475, False, 300, 0.2),
    ])
    metrics = result.metrics()
    assert metrics["test/mean_score"] == 0.75 and metrics["test/success_rate"] == 0.5
    assert metrics["test/mean_max_coverage"] == pytest.approx(0.7225)


def test_crashed_worker_is_replaced_and_reported():
    with WorkerEnvPool(2, dict(obs_type="keypoints"), n_workers=None, timeout=20) as pool:
        answers, failures = pool.call_all("reset", [0, 1], [0, 1])
        assert not failures
        pool.crash_worker(1)
        answers, failures = pool.call_all("step", [np.array([100.0, 100.0])] * 2, [0, 1])
        assert [f.slot for f in failures] == [1] and 0 in answers
        assert "died" in failures[0].reason or "broken" in failures[0].reason
        answers, failures = pool.call_all("reset", [5], [1])  # the replacement works
        assert not failures and pool.restarts == 1


def test_a_crash_fails_every_env_its_worker_hosted():
    """Two workers for five envs ({0, 1, 2} and {3, 4}): a crash during a call that touches only slot 0 fails
    slot 0 at once and slots 1 and 2 at their next step (their env state died with the process); the other
    worker's envs carry on, and a reset brings the lost slots back."""
    with WorkerEnvPool(5, dict(obs_type="keypoints"), n_workers=2, timeout=20) as pool:
        assert pool.groups == [[0, 1, 2], [3, 4]]
        _, failures = pool.call_all("reset", list(range(5)), list(range(5)))
        assert not failures
        pool.crash_worker(0)
        _, failures = pool.call_all("render", [None], [0])
        assert [f.slot for f in failures] == [0] and pool.restarts == 1
        answers, failures = pool.call_all("step", [np.array([100.0, 100.0])] * 4, [1, 2, 3, 4])
        assert sorted(f.slot for f in failures) == [1, 2] and sorted(answers) == [3, 4]
        assert "replaced" in failures[0].reason
        answers, failures = pool.call_all("reset", [7, 8], [1, 2])
        assert not failures and sorted(answers) == [1, 2]
        answers, failures = pool.call_all("step", [np.array([100.0, 100.0])] * 2, [1, 2])
        assert not failures


def test_hanging_worker_times_out_and_is_replaced():
    with WorkerEnvPool(1, dict(obs_type="keypoints"), n_workers=None, timeout=1.0) as pool:
        _, failures = pool.call_all("sleep", [30.0], [0])
        assert failures and "did not answer" in failures[0].reason
        answers, failures = pool.call_all("reset", [3], [0])
        assert not failures and pool.restarts == 1


def test_runner_reruns_episode_after_worker_failure(monkeypatch):
    config = RunnerConfig(n_test=2, n_train=0, n_envs=2, n_workers=None, max_steps=10, worker_timeout=20)
    runner = PushTRunner(config, 2, 8)
    original = WorkerEnvPool.call_all
    state = {"crashed": False}

    def call_all(self, command, arguments, slots):
        if command == "step" and not state["crashed"]:
            state["crashed"] = True
            self.crash_worker(slots[-1])
        return original(self, command, arguments, slots)

    monkeypatch.setattr(WorkerEnvPool, "call_all", call_all)
    result = runner.run(hold_still, progress=False)
    assert sorted(e.seed for e in result.episodes) == [100000, 100001]
    assert len(result.failures) == 1 and result.failures[0]["seed"] == 100001
    assert result.metrics()["env_failures"] == 1


def test_render_failure_reruns_the_episode_once(monkeypatch, tmp_path):
    config = RunnerConfig(n_test=2, n_train=0, n_envs=2, n_workers=0, max_steps=6, n_test_videos=2)
    original = WorkerEnvPool.call_all
    state = {"renders": 0}

    def call_all(self, command, arguments, slots):
        if command == "render":
            state["renders"] += 1
            if state["renders"] == 3:  # one failing render for the first slot, mid-episode
                from dpstack.evaluation.vector_env import WorkerFailure

                answers, failures = original(self, command, arguments[1:], slots[1:])
                self._start(slots[0])
                return answers, failures + [WorkerFailure(slots[0], "render failed")]
        return original(self, command, arguments, slots)

    monkeypatch.setattr(WorkerEnvPool, "call_all", call_all)
    result = PushTRunner(config, 2, 8).run(hold_still, video_dir=tmp_path, progress=False)
    assert sorted(e.seed for e in result.episodes) == [100000, 100001]
    assert [f["seed"] for f in result.failures] == [100000]


def test_episode_results_do_not_depend_on_n_envs():
    """With per-episode noise (torch_predictor(episode_seed=)), evaluating episodes one at a time or
    together in one wave gives the same rollouts: the noise is identical, and the network's outputs
    differ only by the float rounding of batched matrix products (~1e-7)."""
    from pathlib import Path

    from dpstack.policy.checkpoint import load_policy
    from dpstack.policy.executor import torch_predictor

    policy = load_policy(Path(__file__).resolve().parent.parent / "pretrained" / "pusht_lowdim.ckpt")
    results = []
    for n_envs in (3, 1):
        config = RunnerConfig(n_test=3, n_train=0, max_steps=40, n_envs=n_envs, n_workers=0)
        result = PushTRunner(config, 2, 8).run(torch_predictor(policy, episode_seed=7), progress=False)
        results.append([(e.seed, e.max_reward, e.final_coverage, e.steps) for e in result.episodes])
    np.testing.assert_allclose(np.array(results[0]), np.array(results[1]), rtol=0, atol=1e-4)
    assert any(r[2] > 0 for r in results[0])  # the policy really pushed the block
