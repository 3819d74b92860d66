"""``policy_node``: runs a Diffusion Policy checkpoint as a 10 Hz ROS 2 controller.

Observations (latest message of each, sampled on the control clock into a history of
n_obs_steps): the agent / end-effector position (``agent_pose`` PoseStamped in the table
frame, or ``joint_states`` + UR forward kinematics), the block (``block_keypoints``
Float64MultiArray of 18 pixel values, or ``block_pose`` PoseStamped) for low-dim policies,
``image`` (sensor_msgs/Image, rgb8/bgr8) for image policies.

Commands (``output_mode``): ``joint_trajectory`` (trajectory_msgs/JointTrajectory for a
ros2_control JointTrajectoryController, UR analytic IK), ``pose`` (PoseStamped for Cartesian
controllers, stamped with the action's scheduled time) or ``float_array`` (Float64MultiArray of
joint positions for a forward position controller).

Safety: starts disabled (dry run) until ``~/enable`` (std_srvs/SetBool) is called with true;
``~/estop`` (Trigger) latches a stop until ``~/reset_estop`` (which leaves the node disabled);
workspace, per-step and joint-speed clamps; stale observations (newest older than
``stale_factor * dt``) hold position; inference results later than ``inference_timeout_s`` are
discarded. ``~/status`` (std_msgs/String, JSON) and ``~/predicted_chunk`` (PoseArray, table
frame) are published for monitoring.
"""
from __future__ import annotations

import json
import math
import sys
import threading
import time
from typing import Dict, Optional

import numpy as np

from real_robot.control import ActionSchedule, clamp_actions, coerce, joint_speed_ok
from real_robot.kinematics import (
    UR_JOINT_NAMES, PlanarCalibration, URKinematics, quaternion_to_matrix, yaw_of_quaternion,
)

OUTPUT_MODES = ("joint_trajectory", "pose", "float_array")
AGENT_SOURCES = ("pose", "joint_states")
BLOCK_SOURCES = ("keypoints", "block_pose")

# name -> (kind, default)
PARAMETERS = {
    "checkpoint": ("str", ""),
    "device": ("str", "cpu"),
    "robot": ("str", "ur"),
    "control_rate_hz": ("float", 10.0),
    "num_threads": ("int", 1),
    "seed": ("int", 0),
    "output_mode": ("str", "joint_trajectory"),
    "command_topic": ("str", "/scaled_joint_trajectory_controller/joint_trajectory"),
    "joint_names": ("str_list", list(UR_JOINT_NAMES)),
    "ur_model": ("str", "ur5e"),
    "home_joints": ("float_list", [0.0, -1.5708, 1.5708, -1.5708, -1.5708, 0.0]),
    "agent_source": ("str", "pose"),
    "block_source": ("str", "keypoints"),
    "pixel_to_table": ("float_list", [0.0008, 0.0, 0.25, 0.0, -0.0008, 0.2]),
    "table_height": ("float", 0.15),
    "tool_orientation": ("float_list", [1.0, 0.0, 0.0, 0.0]),
    "frame_id": ("str", "base"),
    "workspace_min_px": ("float_list", [10.0, 10.0]),
    "workspace_max_px": ("float_list", [502.0, 502.0]),
    "max_step_px": ("float", 60.0),
    "max_velocity_px_s": ("float", 600.0),
    "max_joint_velocity": ("float", 2.0),
    "stale_factor": ("float", 2.0),
    "inference_timeout_s": ("float", 1.0),
    "latency_margin_s": ("float", 0.01),
    "handover_margin_steps": ("int", 1),
    "enabled": ("bool", False),
    "publish_hold": ("bool", True),
}


class ConfigError(ValueError):
    """An invalid parameter combination; the node exits with it."""


def read_parameters(node) -> Dict[str, object]:
    from rcl_interfaces.msg import ParameterDescriptor

    values = {}
    for name, (kind, default) in PARAMETERS.items():
        # dynamic_typing: a DOUBLE given as 10 (INTEGER, e.g. from a launch argument) is accepted.
        node.declare_parameter(name, default, ParameterDescriptor(dynamic_typing=True))
        raw = node.get_parameter(name).value
        values[name] = coerce(name, default if raw is None else raw, kind)
    return values


def validate(p: Dict[str, object]) -> None:
    problems = []
    if not p["checkpoint"]:
        problems.append("parameter 'checkpoint' is required (a .ckpt written by train.py)")
    if not 0 < p["control_rate_hz"] <= 1000:
        problems.append(f"control_rate_hz must be in (0, 1000], got {p['control_rate_hz']}")
    if p["output_mode"] not in OUTPUT_MODES:
        problems.append(f"output_mode must be one of {OUTPUT_MODES}, got {p['output_mode']!r}")
    if p["agent_source"] not in AGENT_SOURCES:
        problems.append(f"agent_source must be one of {AGENT_SOURCES}, got {p['agent_source']!r}")
    if p["block_source"] not in BLOCK_SOURCES:
        problems.append(f"block_source must be one of {BLOCK_SOURCES}, got {p['block_source']!r}")
    if len(p["workspace_min_px"]) != 2 or len(p["workspace_max_px"]) != 2 or \
            not all(a < b for a, b in zip(p["workspace_min_px"], p["workspace_max_px"])):
        problems.append("workspace_min_px / workspace_max_px must be [x, y] with min < max")
    for name in ("max_step_px", "max_velocity_px_s", "max_joint_velocity", "stale_factor", "inference_timeout_s"):
        if not p[name] > 0:
            problems.append(f"{name} must be > 0, got {p[name]}")
    needs_joints = p["output_mode"] in ("joint_trajectory", "float_array") or p["agent_source"] == "joint_states"
    if needs_joints and len(p["joint_names"]) != 6:
        problems.append(f"joint_names must name the 6 UR joints for {p['output_mode']} / joint_states, "
                        f"got {p['joint_names']} (joint output ships analytic IK for UR5/UR5e only; "
                        "use output_mode:=pose with a Cartesian controller for other arms)")
    if needs_joints and len(p["home_joints"]) != 6:
        problems.append("home_joints must have 6 values")
    if problems:
        raise ConfigError("; ".join(problems))


class PolicyNode:
    """Owns the rclpy node; built by ``main`` (and by the benchmark in-process)."""

    def __init__(self, node_name: str = "policy_node", policy=None) -> None:
        import torch
        from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
        from rclpy.node import Node
        from rclpy.qos import QoSProfile, ReliabilityPolicy, HistoryPolicy

        from geometry_msgs.msg import PoseArray, PoseStamped
        from sensor_msgs.msg import Image, JointState
        from std_msgs.msg import Float64MultiArray, String
        from std_srvs.srv import SetBool, Trigger
        from trajectory_msgs.msg import JointTrajectory

        self.node = node = Node(node_name)
        self.p = p = read_parameters(node)
        validate(p)
        torch.set_num_threads(max(1, p["num_threads"]))
        self.torch = torch
        self.dt = 1.0 / p["control_rate_hz"]
        try:
            self.calibration = PlanarCalibration(p["pixel_to_table"], p["table_height"], p["tool_orientation"])
            self.ur = URKinematics(p["ur_model"])
        except ValueError as error:
            raise ConfigError(str(error)) from None
        if policy is None:
            from policy.checkpoint import load_policy

            policy = load_policy(p["checkpoint"], p["device"], optimize=True)  # CheckpointError propagates to main
        self.policy = policy
        cfg = policy.config
        self.n_obs_steps, self.n_action_steps, self.obs_type = cfg.n_obs_steps, cfg.n_action_steps, cfg.obs_type
        self.image_size = int(getattr(cfg, "image_size", 96) or 96) if self.obs_type == "image" else None
        self.generator = torch.Generator(device=p["device"]).manual_seed(p["seed"]) if p["seed"] >= 0 else None

        from policy.executor import ObservationHistory

        self.history = ObservationHistory(self.n_obs_steps)
        self.history_stamps = []
        self.schedule = ActionSchedule(self.dt, p["latency_margin_s"])
        self.lock = threading.Lock()
        self.latest: Dict[str, tuple] = {}
        self.enabled = bool(p["enabled"])
        self.estopped = False
        self.state = "waiting_for_observations"
        self.holding = False
        self.inference_in_flight = False
        self.inference_started = 0.0
        self.generation = 0
        self.request = None
        self.latency_estimate = 0.0
        self.stats = dict(chunks=0, on_time=0, late=0, dropped=0, stale_chunks=0, timeouts=0,
                          clamped=0, ik_failures=0, commands=0, holds=0)
        self.last_e2e, self.last_e2e_chunk, self.last_latency = None, -1, None
        self.last_joints: Optional[np.ndarray] = None
        self.chunk_obs_time: Optional[float] = None
        self.agent_px: Optional[np.ndarray] = None

        self.control_group = MutuallyExclusiveCallbackGroup()
        self.inference_group = MutuallyExclusiveCallbackGroup()
        obs_group = ReentrantCallbackGroup()
        sensor_qos = QoSProfile(depth=5, reliability=ReliabilityPolicy.BEST_EFFORT, history=HistoryPolicy.KEEP_LAST)
        reliable = QoSProfile(depth=10)

        if p["agent_source"] == "pose":
            node.create_subscription(PoseStamped, "agent_pose", self._store("agent", self._agent_from_pose),
                                     reliable, callback_group=obs_group)
        node.create_subscription(JointState, "joint_states", self._store("joints", self._joints_from_state),
                                 reliable, callback_group=obs_group)
        if self.obs_type == "lowdim":
            if p["block_source"] == "keypoints":
                node.create_subscription(Float64MultiArray, "block_keypoints",
                                         self._store("keypoints", self._keypoints_from_array),
                                         reliable, callback_group=obs_group)
            else:
                node.create_subscription(PoseStamped, "block_pose", self._store("keypoints", self._keypoints_from_pose),
                                         reliable, callback_group=obs_group)
        else:
            node.create_subscription(Image, "image", self._store("image", self._image_from_msg),
                                     sensor_qos, callback_group=obs_group)

        mode = p["output_mode"]
        message_type = {"joint_trajectory": JointTrajectory, "pose": PoseStamped, "float_array": Float64MultiArray}[mode]
        self.command_pub = node.create_publisher(message_type, p["command_topic"], reliable)
        self.status_pub = node.create_publisher(String, "~/status", reliable)
        self.chunk_pub = node.create_publisher(PoseArray, "~/predicted_chunk", reliable)
        self.chunk_px_pub = node.create_publisher(Float64MultiArray, "~/predicted_chunk_px", reliable)
        node.create_service(SetBool, "~/enable", self._on_enable, callback_group=obs_group)
        node.create_service(Trigger, "~/estop", self._on_estop, callback_group=obs_group)
        node.create_service(Trigger, "~/reset_estop", self._on_reset_estop, callback_group=obs_group)

        self.msgs = dict(PoseStamped=PoseStamped, PoseArray=PoseArray, JointTrajectory=JointTrajectory,
                         Float64MultiArray=Float64MultiArray, String=String)
        self._warm_up()
        self.guard = node.create_guard_condition(self._run_inference, callback_group=self.inference_group)
        self.timer = node.create_timer(self.dt, self._control_tick, callback_group=self.control_group)
        node.get_logger().info(
            f"policy {p['checkpoint']} ({self.obs_type}, To={self.n_obs_steps}, Ta={self.n_action_steps}) at "
            f"{p['control_rate_hz']} Hz, output {mode} on {self.command_pub.topic_name}, "
            f"{'ENABLED' if self.enabled else 'disabled (dry run)'}; warm-up inference {self.latency_estimate * 1e3:.0f} ms")

    # --- observations ---------------------------------------------------------------------
    def now(self) -> float:
        return self.node.get_clock().now().nanoseconds * 1e-9

    def _store(self, key, decode):
        def callback(msg):
            try:
                value = decode(msg)
            except ValueError as error:
                self.node.get_logger().warning(f"ignoring {key} message: {error}", throttle_duration_sec=2.0)
                return
            header = getattr(msg, "header", None)
            stamp = header.stamp.sec + header.stamp.nanosec * 1e-9 if header is not None else 0.0
            if stamp == 0.0:
                stamp = self.now()
            with self.lock:
                self.latest[key] = (value, stamp)
        return callback

    def _agent_from_pose(self, msg) -> np.ndarray:
        return self.calibration.to_pixels(np.array([msg.pose.position.x, msg.pose.position.y]))

    def _joints_from_state(self, msg) -> np.ndarray:
        names = list(msg.name)
        try:
            return np.array([msg.position[names.index(n)] for n in self.p["joint_names"]], dtype=np.float64)
        except (ValueError, IndexError):
            raise ValueError(f"joint_states lacks one of {self.p['joint_names']}") from None

    def _keypoints_from_array(self, msg) -> np.ndarray:
        values = np.asarray(msg.data, dtype=np.float64)
        if values.shape != (18,) or not np.isfinite(values).all():
            raise ValueError(f"block_keypoints must hold 18 finite pixel values, got {values.shape}")
        return values

    def _keypoints_from_pose(self, msg) -> np.ndarray:
        from envs.geometry import block_keypoints

        q = msg.pose.orientation
        xy = self.calibration.to_pixels(np.array([msg.pose.position.x, msg.pose.position.y]))
        theta = self.calibration.angle_to_pixels(yaw_of_quaternion((q.x, q.y, q.z, q.w)))
        return block_keypoints(np.array([xy[0], xy[1], theta])).reshape(-1)

    def _image_from_msg(self, msg) -> np.ndarray:
        if msg.encoding not in ("rgb8", "bgr8"):
            raise ValueError(f"image encoding must be rgb8 or bgr8, got {msg.encoding!r}")
        rows = np.frombuffer(msg.data, dtype=np.uint8).reshape(msg.height, msg.step)
        image = rows[:, :msg.width * 3].reshape(msg.height, msg.width, 3)
        if msg.encoding == "bgr8":
            image = image[..., ::-1]
        size = self.image_size
        if image.shape[:2] != (size, size):  # nearest-neighbour resize, no OpenCV needed
            ys = (np.arange(size) * msg.height / size).astype(int)
            xs = (np.arange(size) * msg.width / size).astype(int)
            image = image[ys][:, xs]
        return np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32) / np.float32(255.0)

    def _sample(self):
        """The newest complete observation and its time (the oldest stamp of its parts)."""
        with self.lock:
            latest = dict(self.latest)
        if self.p["agent_source"] == "joint_states":
            if "joints" not in latest:
                return None
            joints, stamp = latest["joints"]
            agent = (self.calibration.to_pixels(self.ur.forward(joints)[:2, 3]), stamp)
        else:
            agent = latest.get("agent")
        other = latest.get("keypoints" if self.obs_type == "lowdim" else "image")
        if agent is None or other is None:
            return None
        t_obs = min(agent[1], other[1])
        if self.obs_type == "lowdim":
            obs = {"obs": np.concatenate([other[0], agent[0]]).astype(np.float32)[None]}
        else:
            obs = {"image": other[0][None], "agent_pos": agent[0].astype(np.float32)[None]}
        return obs, t_obs, agent[0]

    # --- control clock --------------------------------------------------------------------
    def _control_tick(self) -> None:
        now = self.now()
        sample = self._sample()
        with self.lock:
            if self.estopped:
                self.state = "estop"
            elif sample is None:
                self.state = "waiting_for_observations"
            else:
                obs, t_obs, agent_px = sample
                self.agent_px = agent_px
                if now - t_obs > self.p["stale_factor"] * self.dt:
                    if not self.holding:
                        self._hold("stale observation")
                    self.state = "stale_observation"
                else:
                    self.holding = False
                    if not self.history.frames:
                        self.history.reset(obs)
                        self.history_stamps = [t_obs] * self.n_obs_steps
                    else:
                        self.history.append(obs)
                        self.history_stamps = (self.history_stamps + [t_obs])[-self.n_obs_steps:]
                    self._tick_plan(now, t_obs)
            self._publish_status(now)

    def _tick_plan(self, now: float, t_obs: float) -> None:
        if self.inference_in_flight and now - self.inference_started > self.p["inference_timeout_s"]:
            self.stats["timeouts"] += 1
            self.generation += 1  # its result will be discarded
            self.inference_in_flight = False
            self.node.get_logger().warning("inference timed out; result will be discarded")
        if not self.inference_in_flight and self.schedule.needs_replan(
                now, self.latency_estimate, self.p["handover_margin_steps"]):
            self.request = (self.history.stacked(), t_obs, self.generation)
            self.inference_in_flight = True
            self.inference_started = now
            self.guard.trigger()
        self.schedule.prune(now)
        pending = self.schedule.pending(now)
        if not pending:
            self.state = "waiting_for_chunk"
            return
        self.state = "running" if self.enabled else "dry_run"
        if self.enabled:
            self._publish_command(pending, now)

    def _publish_command(self, pending, now: float) -> None:
        mode = self.p["output_mode"]
        if mode == "joint_trajectory":
            from builtin_interfaces.msg import Duration
            from trajectory_msgs.msg import JointTrajectoryPoint

            msg = self.msgs["JointTrajectory"]()  # header.stamp 0: start on receipt
            msg.joint_names = list(self.p["joint_names"])
            # The joint-speed checks gave the first point at least one period from the previous
            # plan point: never ask the controller to reach it sooner (later points keep spacing).
            delay = max(0.0, self.dt - (pending[0].time - now))
            for planned in pending:
                total_ns = int(round((planned.time - now + delay) * 1e9))
                seconds, nanoseconds = divmod(total_ns, 1_000_000_000)
                point = JointTrajectoryPoint(positions=[float(v) for v in planned.joints])
                point.time_from_start = Duration(sec=seconds, nanosec=nanoseconds)
                msg.points.append(point)
        elif mode == "pose":
            msg = self._pose_stamped(pending[0].pixels, pending[0].time)
        else:
            msg = self.msgs["Float64MultiArray"](data=[float(v) for v in pending[0].joints])
        self.command_pub.publish(msg)
        self.stats["commands"] += 1
        if self.chunk_obs_time is not None and self.last_e2e_chunk != self.stats["chunks"]:
            # End to end: observation stamp -> first command carrying that observation's chunk.
            self.last_e2e_chunk = self.stats["chunks"]
            self.last_e2e = now - self.chunk_obs_time

    def _pose_stamped(self, pixels, stamp: float):
        msg = self.msgs["PoseStamped"]()
        msg.header.frame_id = self.p["frame_id"]
        msg.header.stamp.sec = int(stamp)
        msg.header.stamp.nanosec = int((stamp % 1) * 1e9)
        self._fill_pose(msg.pose, pixels)
        return msg

    def _fill_pose(self, pose, pixels) -> None:
        xy = self.calibration.to_table(pixels)
        pose.position.x, pose.position.y, pose.position.z = float(xy[0]), float(xy[1]), float(self.p["table_height"])
        qx, qy, qz, qw = self.calibration.orientation
        pose.orientation.x, pose.orientation.y, pose.orientation.z, pose.orientation.w = qx, qy, qz, qw

    def _hold(self, reason: str, force: bool = False) -> None:
        """Drop the plan and (once) command the current position; nothing new follows. ``force``
        publishes the hold even with ``publish_hold: false`` (disable and e-stop must stop motion)."""
        self.schedule.clear()
        self.generation += 1
        self.inference_in_flight = False
        self.history.frames.clear()
        self.holding = True
        self.stats["holds"] += 1
        self.node.get_logger().warning(f"holding position: {reason}")
        if not (self.enabled and (self.p["publish_hold"] or force)):
            return
        mode = self.p["output_mode"]
        agent_px = self.agent_px
        if mode == "pose":
            if agent_px is not None:
                self.command_pub.publish(self._pose_stamped(agent_px, 0.0))
            return
        joints = self.latest.get("joints", (None,))[0]
        if joints is None and agent_px is not None:
            seed = self.last_joints if self.last_joints is not None else self.p["home_joints"]
            joints = self.ur.inverse(self.calibration.tool_pose(agent_px), seed)
        if joints is None:
            return
        if mode == "joint_trajectory":
            from builtin_interfaces.msg import Duration
            from trajectory_msgs.msg import JointTrajectoryPoint

            msg = self.msgs["JointTrajectory"]()
            msg.joint_names = list(self.p["joint_names"])
            msg.points.append(JointTrajectoryPoint(positions=[float(v) for v in joints],
                                                   time_from_start=Duration(sec=0, nanosec=int(self.dt * 1e9))))
        else:
            msg = self.msgs["Float64MultiArray"](data=[float(v) for v in joints])
        self.command_pub.publish(msg)

    # --- inference (own callback group) ----------------------------------------------------
    def _warm_up(self) -> None:
        """One inference on zeros so the first real one is not slow, and a latency estimate."""
        shape = {"lowdim": {"obs": (1, self.n_obs_steps, 20)},
                 "image": {"image": (1, self.n_obs_steps, 3, self.image_size or 96, self.image_size or 96),
                           "agent_pos": (1, self.n_obs_steps, 2)}}[self.obs_type]
        start = time.monotonic()
        self._predict({k: np.zeros(s, dtype=np.float32) for k, s in shape.items()})
        self.latency_estimate = time.monotonic() - start

    def _predict(self, stacked):
        torch = self.torch
        with torch.no_grad():
            obs = {k: torch.as_tensor(v, device=self.p["device"]) for k, v in stacked.items()}
            out = self.policy.predict_action(obs, generator=self.generator)
        return out["action"][0].cpu().numpy().astype(np.float64)

    def _run_inference(self) -> None:
        with self.lock:
            request, self.request = self.request, None
        if request is None:
            return
        stacked, t_obs, generation = request
        start = time.monotonic()
        try:
            actions = self._predict(stacked)
        except Exception as error:  # a failing model must not kill the control loop
            self.node.get_logger().error(f"inference failed: {type(error).__name__}: {error}")
            with self.lock:
                self.inference_in_flight = False
            return
        latency = time.monotonic() - start
        now = self.now()
        with self.lock:
            if generation != self.generation:
                return  # timed out, e-stopped or held meanwhile
            self.inference_in_flight = False
            self.last_latency = latency
            self.latency_estimate = max(latency, 0.8 * self.latency_estimate + 0.2 * latency)
            if not np.isfinite(actions).all():
                self.node.get_logger().error("policy returned non-finite actions; chunk dropped")
                return
            timed, report = self.schedule.schedule(actions, t_obs, now)
            self._clamp(timed, now)
            self.schedule.commit(timed)
            self.chunk_obs_time = t_obs
            self.stats["chunks"] += 1
            self.stats["dropped"] += report.n_dropped
            self.stats["stale_chunks"] += int(report.all_stale)
            if report.handed_over_on_time is not None:
                self.stats["on_time" if report.handed_over_on_time else "late"] += 1
            self._publish_chunk(actions)

    def _clamp(self, timed, now: float) -> None:
        """Workspace / per-step clamps in pixels, then IK with a joint-speed check (truncates)."""
        p = self.p
        previous = self.schedule.last_before(timed[0].time)
        start = previous.pixels if previous is not None else self.agent_px
        max_step = min(p["max_step_px"], p["max_velocity_px_s"] * self.dt)
        clamped, n = clamp_actions(np.array([t.pixels for t in timed]), start,
                                   np.array(p["workspace_min_px"]), np.array(p["workspace_max_px"]), max_step)
        self.stats["clamped"] += n
        for planned, pixels in zip(timed, clamped):
            planned.pixels = pixels
        if p["output_mode"] == "pose":
            return
        # IK seed: the previous planned point, else the measured joints, else the last command;
        # home_joints only pick the branch (no speed check against them: the arm may be elsewhere).
        seed = previous.joints if previous is not None and previous.joints is not None else None
        if seed is None:
            seed = self.latest.get("joints", (None,))[0]
        if seed is None:
            seed = self.last_joints
        check = seed is not None
        if seed is None:
            seed = np.asarray(p["home_joints"])
        previous_time = previous.time if previous is not None else now
        keep = len(timed)
        for i, planned in enumerate(timed):
            joints = self.ur.inverse(self.calibration.tool_pose(planned.pixels), seed)
            # The first point gets at least one control period (the controller interpolates to it).
            seconds = max(planned.time - previous_time, self.dt)
            if joints is None or (check and not joint_speed_ok(seed, joints, seconds, p["max_joint_velocity"])):
                self.stats["ik_failures"] += 1
                keep = i
                break
            planned.joints, seed, previous_time, check = joints, joints, planned.time, True
        del timed[keep:]
        if timed:
            self.last_joints = timed[-1].joints

    def _publish_chunk(self, actions) -> None:
        msg = self.msgs["PoseArray"]()
        msg.header.frame_id = self.p["frame_id"]
        msg.header.stamp = self.node.get_clock().now().to_msg()
        from geometry_msgs.msg import Pose

        for action in actions:
            pose = Pose()
            self._fill_pose(pose, action)
            msg.poses.append(pose)
        self.chunk_pub.publish(msg)
        self.chunk_px_pub.publish(self.msgs["Float64MultiArray"](data=[float(v) for v in np.ravel(actions)]))

    # --- services & status ----------------------------------------------------------------
    def _on_enable(self, request, response):
        with self.lock:
            if request.data and self.estopped:
                response.success, response.message = False, "e-stop latched; call ~/reset_estop first"
                return response
            if self.enabled and not request.data:
                self._hold("disabled", force=True)  # the controller would otherwise finish the last trajectory
            self.enabled = bool(request.data)
        response.success, response.message = True, "enabled" if self.enabled else "disabled (dry run)"
        self.node.get_logger().info(response.message)
        return response

    def _on_estop(self, request, response):
        with self.lock:
            if not self.estopped:
                self._hold("e-stop", force=True)
            self.estopped = True
            self.enabled = False
            self.state = "estop"
        response.success, response.message = True, "e-stop latched; commands stopped"
        self.node.get_logger().error(response.message)
        return response

    def _on_reset_estop(self, request, response):
        with self.lock:
            self.estopped = False
            self.holding = False
        response.success, response.message = True, "e-stop reset; node is disabled until ~/enable"
        return response

    def _publish_status(self, now: float) -> None:
        status = dict(state=self.state, enabled=self.enabled, estop=self.estopped, time=now,
                      latency_estimate=self.latency_estimate, pending=len(self.schedule.pending(now)),
                      last_inference_s=self.last_latency, last_e2e_s=self.last_e2e,
                      **self.stats)
        self.status_pub.publish(self.msgs["String"](data=json.dumps(status)))


def main(args=None) -> int:
    import rclpy
    from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor

    rclpy.init(args=args)
    holder = None
    try:
        holder = PolicyNode()
    except Exception as error:  # bad checkpoint / config: clear message, non-zero exit
        from policy.checkpoint import CheckpointError

        kind = "checkpoint error" if isinstance(error, CheckpointError) else \
            "configuration error" if isinstance(error, (ConfigError, ValueError)) else type(error).__name__
        print(f"policy_node: {kind}: {error}", file=sys.stderr, flush=True)
        if rclpy.ok():
            rclpy.shutdown()
        return 2
    executor = MultiThreadedExecutor(num_threads=3)
    executor.add_node(holder.node)
    try:
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        executor.shutdown()
        holder.node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
