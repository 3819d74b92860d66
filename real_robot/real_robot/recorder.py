"""``recorder``: writes demonstrations from the robot's topics into the project's zarr replay buffer.

Every control period (``rate_hz``, 10 Hz as the Push-T data) while an episode is recording, one step is
sampled from the newest messages, in the layout ``train.py`` reads (``pusht_cchi_v7_replay.zarr``'s):

- ``state`` (5,): agent x, y and block x, y, θ in pixels / radians of the training frame (``agent_pose``,
  ``block_pose``: PoseStamped in the table frame, mapped by the ``pixel_to_table`` calibration);
- ``keypoint`` (9, 2): the block's keypoints from its pose (as the dataset and the policy node compute them);
- ``action`` (2,): the newest commanded agent target (``command_pose``, e.g. from a teleoperation device) in
  pixels; before the first command the agent's own position (holding still);
- ``img`` (96, 96, 3) uint8, with ``record_images``: the newest ``image`` (rgb8 / bgr8, any size, resized
  as the policy node does).

Services: ``~/start_episode`` and ``~/stop_episode`` (std_srvs/Trigger; stop appends the episode to the store
and commits it, so an interrupted session loses at most the episode in progress) and ``~/discard_episode``.
A step is recorded only when every input is fresh (newer than ``max_age_s``); stale periods are counted and
reported in the stop response. Then: ``python train.py data_root=<folder holding pusht/...zarr>``.
"""
from __future__ import annotations

import sys
import threading
from pathlib import Path

import numpy as np

from real_robot.kinematics import PlanarCalibration
from real_robot.observations import block_pose_pixels, image_from_msg, keypoints_from_pose
from real_robot.params import read_parameters
from real_robot.signals import run_node

PARAMETERS = {
    "output": ("str", "data/robot_demos/pusht/pusht_cchi_v7_replay.zarr"),
    "rate_hz": ("float", 10.0),
    "record_images": ("bool", False),
    "image_size": ("int", 96),
    "max_age_s": ("float", 0.5),
    "pixel_to_table": ("float_list", [0.0008, 0.0, 0.25, 0.0, -0.0008, 0.2]),
    "table_height": ("float", 0.15),
    "tool_orientation": ("float_list", [1.0, 0.0, 0.0, 0.0]),
}


class EpisodeSteps:
    """The steps of the episode being recorded, and their arrays in the replay buffer's layout."""

    def __init__(self) -> None:
        self.steps: list[dict[str, np.ndarray]] = []
        self.stale_periods = 0

    def add(self, state: np.ndarray, keypoint: np.ndarray, action: np.ndarray, image: np.ndarray | None) -> None:
        step = {"state": state.astype(np.float32), "keypoint": keypoint.reshape(9, 2).astype(np.float32),
                "action": action.astype(np.float32)}
        if image is not None:
            step["img"] = image.astype(np.uint8)
        self.steps.append(step)

    def arrays(self) -> dict[str, np.ndarray]:
        return {key: np.stack([step[key] for step in self.steps]) for key in self.steps[0]}


class RecorderNode:
    def __init__(self, node_name: str = "recorder") -> None:
        from geometry_msgs.msg import PoseStamped
        from rclpy.node import Node
        from rclpy.qos import qos_profile_sensor_data
        from sensor_msgs.msg import Image
        from std_srvs.srv import Trigger

        from dpstack.datasets.replay_buffer import ReplayBuffer

        self.node = node = Node(node_name)
        p = read_parameters(node, PARAMETERS)
        if not p["rate_hz"] > 0 or not p["max_age_s"] > 0:
            raise ValueError("rate_hz and max_age_s must be positive")
        self.p = p
        self.calibration = PlanarCalibration(p["pixel_to_table"], p["table_height"], p["tool_orientation"])
        output = Path(p["output"])
        self.buffer = ReplayBuffer.open(output, mode="a") if output.exists() else ReplayBuffer.create(output)
        self.lock = threading.Lock()
        self.latest: dict[str, tuple[float, np.ndarray]] = {}
        self.episode: EpisodeSteps | None = None
        for topic, decode in (("agent_pose", lambda m: self.calibration.to_pixels(
                np.array([m.pose.position.x, m.pose.position.y]))), ("block_pose", self._block),
                ("command_pose", lambda m: self.calibration.to_pixels(np.array([m.pose.position.x,
                                                                               m.pose.position.y])))):
            node.create_subscription(PoseStamped, topic, self._store(topic, decode), qos_profile_sensor_data)
        if p["record_images"]:
            node.create_subscription(Image, "image", self._store("image", lambda m: np.rint(image_from_msg(
                m, p["image_size"]).transpose(1, 2, 0) * 255)), qos_profile_sensor_data)
        for name, callback in (("~/start_episode", self._on_start), ("~/stop_episode", self._on_stop),
                               ("~/discard_episode", self._on_discard)):
            node.create_service(Trigger, name, callback)
        self.timer = node.create_timer(1.0 / p["rate_hz"], self.tick)
        node.get_logger().info(f"recording to {output} ({self.buffer.n_episodes} episodes there); call "
                               "~/start_episode and ~/stop_episode")

    def now(self) -> float:
        return self.node.get_clock().now().nanoseconds * 1e-9

    def _block(self, msg) -> np.ndarray:
        return np.concatenate([block_pose_pixels(msg, self.calibration), keypoints_from_pose(msg, self.calibration)])

    def _store(self, topic: str, decode):
        def callback(msg) -> None:
            try:
                value = np.asarray(decode(msg))
            except (ValueError, TypeError, AttributeError) as error:
                self.node.get_logger().warn(f"{topic}: message dropped ({error})", throttle_duration_sec=5.0)
                return
            if value.dtype.kind == "f" and not np.isfinite(value).all():
                return  # NaN/inf: counts as missing
            with self.lock:
                self.latest[topic] = (self.now(), value)
        return callback

    def tick(self) -> None:
        """Record one step from the newest inputs when an episode is on and they are all fresh."""
        with self.lock:
            if self.episode is None:
                return
            now, needed = self.now(), ["agent_pose", "block_pose"] + (["image"] if self.p["record_images"] else [])
            if any(now - self.latest.get(topic, (-np.inf, None))[0] > self.p["max_age_s"] for topic in needed):
                self.episode.stale_periods += 1
                return
            agent, block = self.latest["agent_pose"][1], self.latest["block_pose"][1]
            command = self.latest.get("command_pose")
            action = command[1] if command is not None and now - command[0] <= self.p["max_age_s"] else agent
            image = self.latest["image"][1] if self.p["record_images"] else None
            self.episode.add(np.concatenate([agent, block[:3]]), block[3:], action, image)

    def _on_start(self, request, response):
        with self.lock:
            response.success = self.episode is None
            if response.success:
                self.episode = EpisodeSteps()
                self.latest.pop("command_pose", None)  # a command from before the episode is no action of it
            response.message = "recording" if response.success else "an episode is already recording"
        return response

    def _on_stop(self, request, response):
        with self.lock:
            episode, self.episode = self.episode, None
        if episode is None or not episode.steps:
            response.success, response.message = False, "no episode steps recorded; nothing saved"
            return response
        self.buffer.add_episode(episode.arrays())
        response.success = True
        response.message = (f"saved episode {self.buffer.n_episodes - 1}: {len(episode.steps)} steps "
                            f"({episode.stale_periods} stale periods skipped) to {self.buffer.path}")
        self.node.get_logger().info(response.message)
        return response

    def _on_discard(self, request, response):
        with self.lock:
            response.success, self.episode = self.episode is not None, None
        response.message = "episode discarded" if response.success else "no episode was recording"
        return response


def main(args=None) -> int:
    return run_node(RecorderNode, "recorder", args, multithreaded=True)


if __name__ == "__main__":
    sys.exit(main())
