"""Push-T env steps/s per observation type, ours vs a reference-style pipeline, same run.

    python benchmarks/env_speed.py [--steps 2000] [--repeats 5]

Random actions (uniform over the workspace, fixed seed). The baseline re-creates the reference
simulator's per-step work with the same physics: Vec2d arithmetic reading the agent back from
pymunk every substep, contacts counted through Python arbiter objects, shapely coverage,
keypoints built point by point, and for images pymunk's stock pygame debug drawing of the whole
scene on a fresh canvas, a full pixel copy and a NumPy bilinear resize.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")

import numpy as np  # noqa: E402
import pygame  # noqa: E402
import pymunk.pygame_util  # noqa: E402
import shapely.geometry as sg  # noqa: E402

from dpstack.envs import PushTEnv  # noqa: E402
from dpstack.envs.geometry import GOAL_POSE, TEE_KEYPOINTS, TEE_POLYGONS, transform_points  # noqa: E402
from dpstack.envs.physics import K_P, K_V, SUBSTEP_DT, SUBSTEPS, PushTPhysics  # noqa: E402
from dpstack.envs.render import linear_resize_taps  # noqa: E402

# Timings the issue reports for the reference implementation on this machine (steps/s).
REFERENCE_REPORTED = {"keypoints": 2818.0, "image": 553.0}


class ReferenceStyleEnv:
    """The reference's per-step work on our physics scene (see module docstring)."""

    def __init__(self, obs_type: str) -> None:
        self.obs_type = obs_type
        self.goal = sg.MultiPolygon([sg.Polygon(p) for p in transform_points(TEE_POLYGONS, GOAL_POSE)])
        index, w0, w1 = linear_resize_taps(512, 96)
        self.rows, self.w0, self.w1 = index, w0[:, None, None], w1[:, None, None]

    def reset(self, seed: int) -> None:
        self.physics = PushTPhysics()
        self.physics.space.on_collision(0, 0, post_solve=self._count_contacts)
        rs = np.random.RandomState(seed)
        self.physics.set_state(np.array([rs.randint(50, 450), rs.randint(50, 450), rs.randint(100, 400),
                                         rs.randint(100, 400), rs.randn() * 2 * np.pi - np.pi]))

    def _count_contacts(self, arbiter, space, data) -> None:
        self.n_contacts += len(arbiter.contact_point_set.points)

    def step(self, action: np.ndarray):
        self.n_contacts = 0
        agent = self.physics.agent
        for _ in range(SUBSTEPS):
            acceleration = K_P * (action - agent.position) + K_V * (pymunk.Vec2d(0, 0) - agent.velocity)
            agent.velocity += acceleration * SUBSTEP_DT
            self.physics.space.step(SUBSTEP_DT)
        block = self.physics.block
        block_geom = sg.MultiPolygon([sg.Polygon([block.local_to_world(v) for v in s.get_vertices()])
                                      for s in self.physics.block_shapes])
        coverage = self.goal.intersection(block_geom).area / self.goal.area
        return self._observation(), coverage

    def _observation(self):
        physics = self.physics
        if self.obs_type == "keypoints":
            keypoints = [physics.block.local_to_world(tuple(k)) for k in TEE_KEYPOINTS]
            return np.array([c for k in keypoints for c in k] + list(physics.agent.position))
        canvas = pygame.Surface((512, 512))
        canvas.fill((255, 255, 255))
        for polygon in transform_points(TEE_POLYGONS, GOAL_POSE):
            pygame.draw.polygon(canvas, (144, 238, 144), [tuple(np.rint(v)) for v in polygon])
        physics.space.debug_draw(pymunk.pygame_util.DrawOptions(canvas))
        image = np.transpose(np.array(pygame.surfarray.pixels3d(canvas)), (1, 0, 2)).astype(np.float32)
        rows = image[self.rows[:, 0]] * self.w0 + image[self.rows[:, 1]] * self.w1
        cols = rows[:, self.rows[:, 0]] * self.w0.transpose(1, 0, 2) + rows[:, self.rows[:, 1]] * self.w1.transpose(1, 0, 2)
        return {"image": np.rint(cols).transpose(2, 0, 1) / 255.0, "agent_pos": np.array(physics.agent.position)}


def steps_per_second(env, reset, actions: np.ndarray) -> float:
    reset()
    start = time.perf_counter()
    for action in actions:
        env.step(action)
    return len(actions) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    actions = np.random.default_rng(0).uniform(0, 512, (args.steps, 2))

    print(f"{'obs type':<10} {'ours steps/s':>13} {'baseline':>9} {'ratio':>6} {'vs reported ref':>16}")
    for obs_type in ("state", "keypoints", "image"):
        ours_env = PushTEnv(obs_type=obs_type)
        base_env = ReferenceStyleEnv(obs_type if obs_type != "state" else "keypoints")
        ours, base = [], []
        for _ in range(args.repeats):  # interleaved so both see the same machine load
            ours.append(steps_per_second(ours_env, lambda: ours_env.reset(seed=1), actions))
            if obs_type != "state":
                base.append(steps_per_second(base_env, lambda: base_env.reset(seed=1), actions))
        ours_median = statistics.median(ours)
        if base:
            base_median = statistics.median(base)
            reported = REFERENCE_REPORTED[obs_type]
            print(f"{obs_type:<10} {ours_median:>13.0f} {base_median:>9.0f} {ours_median / base_median:>5.1f}x "
                  f"{ours_median / reported:>15.1f}x")
        else:
            print(f"{obs_type:<10} {ours_median:>13.0f} {'-':>9} {'-':>6} {'-':>16}")


if __name__ == "__main__":
    main()
