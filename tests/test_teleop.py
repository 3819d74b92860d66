"""Human teleoperation, driven headless with posted pygame events."""
import numpy as np
import pygame
import pytest

from dpstack.datasets.replay_buffer import ReplayBuffer
from dpstack.envs import PushTEnv
from dpstack.envs.teleop import TeleopSession, main


def post_mouse(x, y):
    pygame.event.post(pygame.event.Event(pygame.MOUSEMOTION, pos=(x, y), rel=(0, 0), buttons=(0, 0, 0)))


def post_key(key):
    pygame.event.post(pygame.event.Event(pygame.KEYDOWN, key=key, mod=0, unicode="", scancode=0))


@pytest.fixture
def session(tmp_path):
    session = TeleopSession(tmp_path / "demos.zarr", fps=1000)
    pygame.event.clear()
    yield session
    session.close()


def drive(session, path_points):
    """Move the mouse along the points, one control tick each."""
    for x, y in path_points:
        post_mouse(x, y)
        session.run(max_ticks=1)


def test_recorded_episode_is_saved_in_dataset_layout_and_replays(session):
    start = session.info["pos_agent"]
    path = [start + [0, 0]] + [start + [3.0 * i, -2.0 * i] for i in range(1, 25)]
    drive(session, path)
    post_key(pygame.K_s)
    session.run(max_ticks=1)
    assert session.saved_episodes == 1

    buffer = ReplayBuffer.load(session.buffer.path)
    assert buffer.n_episodes == 1
    episode = buffer.get_episode(0)
    assert set(episode) == {"img", "state", "keypoint", "action", "n_contacts"}
    n = len(episode["action"])
    assert n == len(path)
    assert episode["img"].shape == (n, 96, 96, 3) and episode["keypoint"].shape == (n, 9, 2)
    assert episode["n_contacts"].shape == (n, 1)

    # The recorded episode replays to the same states from its seed.
    env = PushTEnv(obs_type="state")
    env.reset(seed=0)
    for t in range(n):
        np.testing.assert_allclose(env.unwrapped.physics.agent_position, episode["state"][t, :2], atol=1e-4)
        np.testing.assert_allclose(env.unwrapped.physics.block_pose, episode["state"][t, 2:], atol=1e-4)
        env.step(episode["action"][t])
    # And the recorded images are the env's own observations.
    image_env = PushTEnv(obs_type="image")
    obs, _ = image_env.reset(options={"reset_to_state": episode["state"][5]})
    np.testing.assert_allclose(obs["image"].transpose(1, 2, 0) * 255, episode["img"][5], atol=1e-3)


def test_agent_follows_mouse_only_after_engaging(session):
    agent = session.info["pos_agent"]
    far = agent + ([150.0, 0.0] if agent[0] < 256 else [-150.0, 0.0])
    before = session.info["pos_agent"].copy()
    drive(session, [far, far])
    assert not session.engaged and not session.recorder.steps
    np.testing.assert_array_equal(session.info["pos_agent"], before)


def test_discard_and_seed_progression(session):
    start = session.info["pos_agent"]
    drive(session, [start, start + [5, 5]])
    post_mouse(*(start + [0, 100] if start[1] < 300 else start - [0, 100]))  # away from the restarted agent
    post_key(pygame.K_r)
    session.run(max_ticks=1)
    assert session.recorder.steps == [] and session.saved_episodes == 0
    drive(session, [session.info["pos_agent"], session.info["pos_agent"] + [4, 0]])
    post_key(pygame.K_RETURN)
    session.run(max_ticks=1)
    assert session.saved_episodes == 1 and session.seed == 1


def test_quit_key_stops_and_appends_to_existing_store(tmp_path):
    output = tmp_path / "demos.zarr"
    first = TeleopSession(output, fps=1000)
    pygame.event.clear()
    drive(first, [first.info["pos_agent"], first.info["pos_agent"] + [2, 2]])
    post_key(pygame.K_s)
    post_key(pygame.K_q)
    assert first.run() == 1
    first.close()
    second = TeleopSession(output, fps=1000)
    assert second.buffer.n_episodes == 1 and second.seed == 1
    second.close()


def test_cli_requires_output():
    with pytest.raises(SystemExit):
        main([])
