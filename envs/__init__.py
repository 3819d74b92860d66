"""Push-T simulation. ``import envs`` registers the gymnasium env ``PushT-v0``:

    gymnasium.make("PushT-v0", obs_type="state" | "keypoints" | "image", legacy=True,
                   render_mode=None | "rgb_array" | "human")

300-step time limit, 10 Hz control.
"""
import os

os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")

import gymnasium  # noqa: E402

from dpstack.envs.physics import agent_velocity_after_step  # noqa: E402
from dpstack.envs.pusht_env import PushTEnv, initial_state_for_seed  # noqa: E402

MAX_EPISODE_STEPS = 300

if "PushT-v0" not in gymnasium.registry:
    gymnasium.register(id="PushT-v0", entry_point="dpstack.envs.pusht_env:PushTEnv", max_episode_steps=MAX_EPISODE_STEPS)

__all__ = ["PushTEnv", "agent_velocity_after_step", "initial_state_for_seed", "MAX_EPISODE_STEPS"]
