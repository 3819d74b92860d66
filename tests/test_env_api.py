"""Push-T env: registration, spaces, seeding, reset-to-state, actions, reward and rendering."""
import gymnasium
import numpy as np
import pymunk
import pytest
import shapely.geometry as sg

from dpstack import envs
from dpstack.envs.geometry import (
    GOAL_POSE,
    TEE_POLYGONS,
    block_keypoints,
    block_keypoints_batch,
    clear_of_walls,
    goal_coverage,
    mirror_points,
    mirror_poses,
    move_points,
    move_states,
    transform_points,
)
from dpstack.envs.physics import PushTPhysics


def make(obs_type="state", **kwargs):
    return gymnasium.make("PushT-v0", obs_type=obs_type, **kwargs)


@pytest.mark.parametrize("legacy, seed, expected", [
    (True, 0, [222, 97, 222.99383, 381.59904, 3.00800]),
    (True, 100000, [235, 124, 299.61289, 145.20158, 5.37826]),
    (False, 100000, [235, 124, 335, 128, 5.37826]),
])
def test_seeded_reset_matches_reference_initial_states(legacy, seed, expected):
    obs, info = make(legacy=legacy).reset(seed=seed)
    np.testing.assert_allclose(obs, expected, atol=1e-5)
    assert info["reset_seed"] == seed


def test_seed_zero_legacy_is_the_first_demo_start(pusht_arrays):
    obs, _ = make(legacy=True).reset(seed=0)
    np.testing.assert_allclose(obs, pusht_arrays["state"][0], atol=1e-4)


def test_observation_spaces_and_types():
    for obs_type, check in [
        ("state", lambda o: o.shape == (5,) and o.dtype == np.float64),
        ("keypoints", lambda o: o.shape == (20,) and o.dtype == np.float64),
        ("image", lambda o: o["image"].shape == (3, 96, 96) and o["image"].dtype == np.float32
         and o["agent_pos"].shape == (2,) and o["agent_pos"].dtype == np.float32),
    ]:
        env = make(obs_type)
        obs, _ = env.reset(seed=3)
        assert check(obs), obs_type
        assert env.observation_space.contains(obs), obs_type
        obs, *_ = env.step(env.action_space.sample())
        assert check(obs), obs_type


def test_keypoints_observation_is_block_keypoints_then_agent():
    env = make("keypoints")
    obs, info = env.reset(seed=5)
    np.testing.assert_allclose(obs[:18], block_keypoints(info["block_pose"]).reshape(-1))
    np.testing.assert_allclose(obs[18:], info["pos_agent"])


def test_image_observation_is_in_unit_range_and_shows_the_scene():
    obs, _ = make("image").reset(seed=1)
    image = obs["image"]
    assert 0.0 <= image.min() and image.max() <= 1.0
    assert image.max() == 1.0  # white background
    assert len(np.unique(image.reshape(3, -1), axis=1).T) > 20  # goal, block, agent, walls


def test_reset_to_state_places_exactly_whatever_legacy():
    state = np.array([100.0, 120.0, 300.5, 250.25, 1.0])
    for legacy in (True, False):
        obs, info = make(legacy=legacy).reset(options={"reset_to_state": state})
        np.testing.assert_allclose(obs, state, atol=1e-9)
        assert info["reset_seed"] is None


def test_legacy_order_moves_the_origin_like_the_reference():
    # The reference documents (200, 200, 1.0) requested with legacy ordering landing at (237.87, 220.69).
    physics = PushTPhysics()
    physics.set_state(np.array([50.0, 50.0, 200.0, 200.0, 1.0]), position_before_angle=True)
    np.testing.assert_allclose(physics.block_pose[:2], [237.87, 220.69], atol=0.01)


def test_unseeded_resets_are_reproducible_after_a_seeded_one():
    env_a, env_b = make(), make()
    env_a.reset(seed=7), env_b.reset(seed=7)
    first_a, _ = env_a.reset()
    first_b, _ = env_b.reset()
    np.testing.assert_array_equal(first_a, first_b)
    second, _ = env_a.reset()
    assert not np.array_equal(first_a, second)


@pytest.mark.parametrize("bad", [[np.nan, 3.0], [1.0, np.inf], [1.0, 2.0, 3.0], [[1.0, 2.0]], "left"])
def test_invalid_actions_raise_value_error_naming_the_input(bad):
    env = make()
    env.reset(seed=0)
    with pytest.raises(ValueError, match="action"):
        env.step(bad)


def test_out_of_range_actions_are_clipped():
    env = make().unwrapped
    env.reset(seed=0)
    env.step([900.0, -50.0])
    np.testing.assert_array_equal(env.latest_action, [512.0, 0.0])


def test_step_before_reset_is_a_clear_error():
    with pytest.raises(RuntimeError, match="reset"):
        envs.PushTEnv().step([1.0, 1.0])


def test_reward_and_termination_at_goal():
    env = make()
    goal_state = np.array([100.0, 100.0, *GOAL_POSE])
    _, info = env.reset(options={"reset_to_state": goal_state})
    assert info["coverage"] == pytest.approx(1.0) and info["is_success"]
    _, reward, terminated, truncated, info = env.step([100.0, 100.0])
    assert reward == 1.0 and terminated and not truncated and info["is_success"]


def test_reward_is_clipped_coverage_ratio():
    env = make()
    env.reset(options={"reset_to_state": [100.0, 100.0, 256.0, 276.0, np.pi / 4]})
    _, reward, terminated, _, info = env.step([100.0, 100.0])
    assert 0.0 < info["coverage"] < 0.95 and not terminated and not info["is_success"]
    assert reward == pytest.approx(info["coverage"] / 0.95)


def _shapely_coverage(pose):
    goal = sg.MultiPolygon([sg.Polygon(p) for p in transform_points(TEE_POLYGONS, GOAL_POSE)])
    block = sg.MultiPolygon([sg.Polygon(p) for p in transform_points(TEE_POLYGONS, pose)])
    return goal.intersection(block).area / goal.area


def test_coverage_matches_shapely_on_random_poses():
    rng = np.random.default_rng(0)
    poses = np.column_stack([rng.uniform(150, 360, 500), rng.uniform(150, 360, 500), rng.uniform(-np.pi, np.pi, 500)])
    ours = np.array([goal_coverage(p) for p in poses])
    reference = np.array([_shapely_coverage(p) for p in poses])
    assert (reference > 0).sum() > 200
    np.testing.assert_allclose(ours, reference, atol=1e-9)


def test_mirror_is_a_symmetry_of_the_task():
    """Reflecting across the goal T's axis fixes the goal, is its own inverse, moves the block's outline
    to the T at the mirrored pose (body x negated) and leaves the goal coverage unchanged."""
    rng = np.random.default_rng(2)
    poses = np.column_stack([rng.uniform(150, 360, 300), rng.uniform(150, 360, 300), rng.uniform(-np.pi, np.pi, 300)])
    np.testing.assert_allclose(mirror_poses(GOAL_POSE), GOAL_POSE, atol=1e-12)
    np.testing.assert_allclose(mirror_poses(mirror_poses(poses)), poses, atol=1e-12)
    mirrored_t = TEE_POLYGONS * np.array([-1.0, 1.0])
    for pose, mirrored in zip(poses[:20], mirror_poses(poses[:20])):
        np.testing.assert_allclose(mirror_points(transform_points(TEE_POLYGONS, pose)),
                                   transform_points(mirrored_t, mirrored), atol=1e-9)
    coverage = np.array([goal_coverage(p) for p in poses])
    assert (coverage > 0.1).sum() > 50
    np.testing.assert_allclose([goal_coverage(p) for p in mirror_poses(poses)], coverage, atol=1e-9)


def test_move_states_is_the_rigid_motion_from_one_block_pose_to_another():
    """``move_states`` carries the block at ``from_pose`` to ``to_pose`` (its outline and keypoints with
    it), keeps every distance between agent and block, and its inverse undoes it."""
    rng = np.random.default_rng(3)
    states = np.column_stack([rng.uniform(50, 460, (40, 4)), rng.uniform(-np.pi, np.pi, 40)])
    from_pose = states[-1, 2:5]
    moved = move_states(states, from_pose, GOAL_POSE)
    np.testing.assert_allclose(moved[-1, 2:5], GOAL_POSE, atol=1e-12)
    assert goal_coverage(moved[-1, 2:5]) > 1 - 1e-12
    for state, moved_state in zip(states, moved):
        np.testing.assert_allclose(transform_points(TEE_POLYGONS, moved_state[2:5]),
                                   move_points(transform_points(TEE_POLYGONS, state[2:5]), from_pose, GOAL_POSE),
                                   atol=1e-9)
    np.testing.assert_allclose(np.linalg.norm(moved[:, :2] - moved[:, 2:4], axis=1),
                               np.linalg.norm(states[:, :2] - states[:, 2:4], axis=1), atol=1e-9)
    np.testing.assert_allclose(move_states(moved, GOAL_POSE, from_pose), states, atol=1e-9)


def test_clear_of_walls_sees_the_agent_and_the_block_corners():
    home = np.array([200.0, 300.0, 256.0, 256.0, 0.3])
    assert clear_of_walls(home) and clear_of_walls(np.stack([home, home]))
    assert not clear_of_walls(home + [0, 200, 0, 0, 0])  # agent centre 500: its disc crosses the wall at 504
    assert clear_of_walls(np.array([200.0, 300.0, 440.0, 256.0, 0.0]))  # bar tip at x = 500, clear of 504
    assert not clear_of_walls(np.array([200.0, 300.0, 450.0, 256.0, 0.0]))  # bar tip at x = 510
    assert not clear_of_walls(np.array([200.0, 300.0, 400.0, 256.0, -np.pi / 2]))  # stem tip at x = 520
    assert clear_of_walls(np.array([200.0, 300.0, 400.0, 256.0, np.pi / 2]))  # the stem points to x = 280


def test_batched_keypoints_equal_single_ones():
    poses = np.random.default_rng(3).uniform([0, 0, -np.pi], [512, 512, np.pi], (40, 3))
    np.testing.assert_allclose(block_keypoints_batch(poses), np.stack([block_keypoints(p) for p in poses]),
                               atol=1e-9)


def test_tee_geometry_matches_pymunk_body():
    physics = PushTPhysics()
    for shape, polygon in zip(physics.block_shapes, TEE_POLYGONS):
        np.testing.assert_array_equal(np.array([tuple(v) for v in shape.get_vertices()]), polygon)
    assert physics.block.moment == 3000.0 and physics.block.mass == 1.0
    assert tuple(physics.block.center_of_gravity) == (0.0, 45.0)
    assert physics.space.damping == 0.0 and tuple(physics.space.gravity) == (0.0, 0.0)
    assert physics.space.iterations == 10
    assert all(s.friction == 0.0 for s in physics.space.shapes)
    assert physics.agent.body_type == pymunk.Body.KINEMATIC


def test_tracked_agent_position_equals_pymunk():
    physics = PushTPhysics()
    physics.set_state(np.array([100.0, 100.0, 300.0, 300.0, 0.3]))
    rng = np.random.default_rng(1)
    for target in rng.uniform(0, 512, (50, 2)):
        vx, vy = physics.agent.velocity
        px, py = physics.agent.position
        for _ in range(10):  # the PD law, integrated independently
            vx += (100 * (target[0] - px) + 20 * (0 - vx)) * 0.01
            vy += (100 * (target[1] - py) + 20 * (0 - vy)) * 0.01
            px, py = px + vx * 0.01, py + vy * 0.01
        physics.step(target)
        assert tuple(physics.agent.position) == (px, py)


def test_same_seed_and_actions_give_identical_trajectories():
    actions = np.random.default_rng(2).uniform(0, 512, (100, 2))

    def rollout():
        env = make("image")
        obs, _ = env.reset(seed=11)
        frames = [obs["image"]]
        for a in actions:
            obs, *_ = env.step(a)
            frames.append(obs["image"])
        return np.stack(frames), obs["agent_pos"]

    (frames_a, pos_a), (frames_b, pos_b) = rollout(), rollout()
    np.testing.assert_array_equal(frames_a, frames_b)
    np.testing.assert_array_equal(pos_a, pos_b)


def test_time_limit_truncates_at_300_steps():
    env = make()
    env.reset(seed=0)
    for step in range(1, 301):
        _, _, terminated, truncated, _ = env.step([50.0, 50.0])
        assert not terminated
        assert truncated == (step == 300)


def test_step_none_advances_no_physics():
    env = make()
    obs, _ = env.reset(seed=4)
    obs_after, *_ = env.step(None)
    np.testing.assert_array_equal(obs, obs_after)


def test_rgb_array_render_marks_the_commanded_action():
    env = make(render_mode="rgb_array")
    env.reset(seed=0)
    frame_before = env.render()
    env.step([400.0, 60.0])
    frame = env.render()
    assert frame.shape == (256, 256, 3) and frame.dtype == np.uint8
    assert np.array_equal(frame[30, 200], [255, 0, 0])  # the red cross at (400, 60) / 2
    assert not np.array_equal(frame_before[30, 200], [255, 0, 0])


def test_human_render_mode_opens_a_window_headless():
    import pygame

    env = make(render_mode="human", obs_type="keypoints")
    env.reset(seed=0)
    env.step([200.0, 200.0])
    assert pygame.display.get_surface() is not None
    env.close()
