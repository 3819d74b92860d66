"""``policy_node``: runs a Diffusion Policy checkpoint as a 10 Hz ROS 2 controller.

Observations (recent messages of each, by stamp; each tick uses the newest complete observation, a
replan the n_obs_steps frames one period apart ending at it): the agent / end-effector position
(``agent_pose`` PoseStamped in the table frame, or ``joint_states`` + the arm's forward kinematics),
the block (``block_keypoints``: Float64MultiArray of 18 pixel values, or PolygonStamped of the 9 points with
their capture stamp; or ``block_pose`` PoseStamped) for low-dim policies, ``image`` (sensor_msgs/Image or
CompressedImage, cropped with ``image_crop`` and resized to 96×96) for image policies.

Commands (``output_mode``): ``joint_trajectory`` (trajectory_msgs/JointTrajectory for a ros2_control
JointTrajectoryController; UR5/UR5e closed-form or FR3 numerical IK), ``follow_joint_trajectory`` (the same
trajectories as goals of its FollowJointTrajectory action, ``trajectory_action.py``), ``pose`` (PoseStamped for
Cartesian controllers, stamped with the action's scheduled time) or ``float_array``
(Float64MultiArray of joint positions for a forward position controller, streamed at
``float_array_rate_hz`` along the planned path). Trajectory points carry knot velocities (cubic
interpolation in the controller; ``trajectory_velocities``).

The schedule holds the whole predicted horizon (``schedule_full_horizon``): replanning is timed by the Ta
executed actions, and a late chunk finds the arm still following the previous prediction's tail.

Inference runs in its own thread (``worker.py``); one executor thread serves the rest.

Safety (``safety.py``): starts disabled (dry run) until ``~/arm`` and, within ``arming_window_s``,
``~/enable`` (or ``ros2 param set <node> enabled true``); ``~/estop`` latches a stop until ``~/reset_estop``;
workspace, per-step and joint-speed clamps; stale observations and a controller slowed below
``min_speed_scaling`` hold position; late inference results are discarded. ``~/status`` (JSON: the state of
the README's state table and counters), ``/diagnostics`` and ``~/predicted_chunk`` are for monitoring.
"""
from __future__ import annotations

import json
import sys
import threading
import time
from typing import Optional

import numpy as np

from real_robot.commands import CommandBuilder
from real_robot.control import ActionSchedule, attach_joints, sample_trajectory
from real_robot.diagnostics import DiagnosticsReporter
from real_robot.kinematics import PlanarCalibration
from real_robot.observations import (
    TimedObservations, agent_from_pose, image_from_compressed, image_from_msg, joints_from_state, keypoints_from_array,
    keypoints_from_polygon, keypoints_from_pose,
)
from real_robot.params import ConfigError, read_parameters, validate
from real_robot.inputs import ObservationInputs
from real_robot.safety import SafetySwitches
from real_robot.trajectory_action import ActionCommander
from real_robot.signals import ignore_interrupts, init_with_interrupts, shutdown
from real_robot.worker import WakeableWorker

PUSHT_IMAGE_SIZE = 96  # image policies see 96x96 frames (the Push-T dataset's size); any camera size is resized


class PolicyNode(ObservationInputs, SafetySwitches):
    """Owns the rclpy node and the inference thread; built by ``main`` (and by tests in-process)."""

    def __init__(self, node_name: str = "policy_node", policy=None) -> None:
        import torch
        from rclpy.node import Node
        from rclpy.qos import QoSProfile, ReliabilityPolicy, HistoryPolicy

        from geometry_msgs.msg import PolygonStamped, PoseArray, PoseStamped
        from sensor_msgs.msg import CompressedImage, Image, JointState
        from std_msgs.msg import Float64, Float64MultiArray, String
        from std_srvs.srv import SetBool, Trigger
        from trajectory_msgs.msg import JointTrajectory

        self.node = node = Node(node_name)
        self.p = p = read_parameters(node)
        self.arm = validate(p)
        torch.set_num_threads(max(1, p["num_threads"]))
        self.torch = torch
        self.dt = 1.0 / p["control_rate_hz"]
        try:
            self.calibration = PlanarCalibration(p["pixel_to_table"], p["table_height"], p["tool_orientation"])
        except ValueError as error:
            raise ConfigError(str(error)) from None
        # The tool-speed cap (m/s) becomes a pixel-speed cap through the calibration; the lower one rules.
        p["max_velocity_px_s"] = min(p["max_velocity_px_s"], p["max_tool_speed_m_s"] / self.calibration.metres_per_pixel)
        self.commands = CommandBuilder(self.calibration, p["table_height"], p["frame_id"], p["joint_names"])
        if policy is None:
            from dpstack.policy.checkpoint import load_policy

            policy = load_policy(p["checkpoint"], p["device"], optimize=True)  # CheckpointError propagates to main
        self.policy = policy
        cfg = policy.config
        self.n_obs_steps, self.n_action_steps, self.obs_type = cfg.n_obs_steps, cfg.n_action_steps, cfg.obs_type
        self.image_size = PUSHT_IMAGE_SIZE if self.obs_type == "image" else None
        self.generator = torch.Generator(device=p["device"]).manual_seed(p["seed"]) if p["seed"] >= 0 else None

        self.schedule = ActionSchedule(self.dt, p["latency_margin_s"])
        self.lock = threading.Lock()
        # Kept long enough for the oldest frame even when one part lags the other by a stale period.
        self.observations = TimedObservations(span=(self.n_obs_steps + p["stale_factor"] + 1) * self.dt)
        self.enabled = bool(p["enabled"])
        self.estopped = False
        self.speed_scaling = None     # the controller's execution speed factor, when speed_scaling_topic is set
        self.armed_until = 0.0        # ~/arm opens a window (monotonic time) in which enabling is accepted
        self.state = "waiting_for_observations"
        self.hold_setpoint = None     # (pixels, joints) the current hold sent the arm to; None: not holding
        self.published_path = None    # (times, pixels, joints | None) the controller follows, from its setpoint on receipt
        self.last_sent = None         # (pixels, joints) of the last pose setpoint sent
        self.last_sent_time = 0.0     # its scheduled time
        self.inference_in_flight = False
        self.inference_started = 0.0
        self.generation = 0
        self.request = None
        self.latency_estimate = 0.0
        # tail_steps: control periods spent on a chunk's predicted tail (past its Ta actions) while the next was late
        self.stats = dict(chunks=0, on_time=0, late=0, dropped=0, stale_chunks=0, timeouts=0,
                          clamped=0, ik_failures=0, commands=0, holds=0, tail_steps=0)
        self.last_e2e, self.last_e2e_chunk, self.last_latency = None, -1, None
        self.last_joints: Optional[np.ndarray] = None
        self.last_tail_point = None
        self.chunk_obs_time: Optional[float] = None
        self.agent_px: Optional[np.ndarray] = None

        # Sensors subscribe BEST_EFFORT (SensorDataQoS): it matches both best-effort drivers (cameras, most
        # robot state publishers) and RELIABLE publishers; a RELIABLE subscription would miss the former.
        sensor_qos = QoSProfile(depth=5, reliability=ReliabilityPolicy.BEST_EFFORT, history=HistoryPolicy.KEEP_LAST)
        reliable = QoSProfile(depth=10)

        subscribe = node.create_subscription
        if p["agent_source"] == "pose":
            subscribe(PoseStamped, "agent_pose", self._store("agent", lambda m: agent_from_pose(m, self.calibration)),
                      sensor_qos)
        subscribe(JointState, "joint_states", self._store("joints", lambda m: joints_from_state(m, p["joint_names"])),
                  sensor_qos)
        if self.obs_type == "image":
            compressed = p["image_transport"] == "compressed"
            decode = image_from_compressed if compressed else image_from_msg
            subscribe(CompressedImage if compressed else Image, "image",
                      self._store("image", lambda m: decode(m, self.image_size, p["image_crop"])), sensor_qos)
        elif p["block_source"] == "keypoints":
            subscribe(Float64MultiArray, "block_keypoints", self._store("keypoints", keypoints_from_array), sensor_qos)
        elif p["block_source"] == "keypoints_stamped":
            subscribe(PolygonStamped, "block_keypoints", self._store("keypoints", keypoints_from_polygon), sensor_qos)
        else:
            subscribe(PoseStamped, "block_pose",
                      self._store("keypoints", lambda m: keypoints_from_pose(m, self.calibration)), sensor_qos)

        if p["speed_scaling_topic"]:
            subscribe(Float64, p["speed_scaling_topic"], self._on_speed_scaling, sensor_qos)
        mode = p["output_mode"]
        if mode == "follow_joint_trajectory":
            self.command_pub = ActionCommander(node, follow_joint_trajectory_action(), p["action_name"])
        else:
            message_type = {"joint_trajectory": JointTrajectory, "pose": PoseStamped, "float_array": Float64MultiArray}[mode]
            self.command_pub = node.create_publisher(message_type, p["command_topic"], reliable)
        self.status_pub = node.create_publisher(String, "~/status", reliable)
        self.diagnostics = DiagnosticsReporter(node, f"policy_node: {node.get_fully_qualified_name()}")
        self.chunk_pub = node.create_publisher(PoseArray, "~/predicted_chunk", reliable)
        self.chunk_px_pub = node.create_publisher(Float64MultiArray, "~/predicted_chunk_px", reliable)
        for srv_type, name, callback in ((SetBool, "~/enable", self._on_enable), (Trigger, "~/arm", self._on_arm),
                                         (Trigger, "~/estop", self._on_estop), (Trigger, "~/reset_estop", self._on_reset_estop)):
            node.create_service(srv_type, name, callback)

        self.String = String
        node.add_on_set_parameters_callback(self._on_parameters)
        self._warm_up()
        # Inference runs in its own thread, woken by the control tick; the executor (one thread for the
        # timer, subscriptions and services) never waits for it. ``main`` starts and stops it; in-process
        # tests call ``_run_inference`` themselves.
        self.inference = WakeableWorker(self._run_inference, name="inference", on_error=lambda error: (
            self.node.get_logger().error(f"inference step failed: {type(error).__name__}: {error}")))
        self.timer = node.create_timer(self.dt, self._control_tick)
        if mode == "float_array":
            self.stream_timer = node.create_timer(1.0 / p["float_array_rate_hz"], self._stream_tick)
        node.get_logger().info(
            f"policy {p['checkpoint']} ({self.obs_type}, To={self.n_obs_steps}, Ta={self.n_action_steps}) at "
            f"{p['control_rate_hz']} Hz, output {mode} on {self.command_pub.topic_name}, "
            f"{'ENABLED' if self.enabled else 'disabled (dry run)'}; warm-up inference {self.latency_estimate * 1e3:.0f} ms")

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
                _, t_obs, agent_px = sample
                self.agent_px = agent_px
                if not self._hold_if_stale(now, t_obs) and not self._hold_if_slowed():
                    self.hold_setpoint = None
                    self._tick_plan(now, t_obs)
            self._publish_status(now)

    def _tick_plan(self, now: float, t_obs: float) -> None:
        if self.inference_in_flight and now - self.inference_started > self.p["inference_timeout_s"]:
            self.stats["timeouts"] += 1
            self.generation += 1  # its result will be discarded
            self.inference_in_flight = False
            self.request = None
            self.node.get_logger().warning("inference timed out; result will be discarded")
        if not self.inference_in_flight and self.schedule.needs_replan(
                now, self.latency_estimate, self.p["handover_margin_steps"]):
            self.request = (self._stacked_history(t_obs), t_obs, self.generation)
            self.inference_in_flight = True
            self.inference_started = now
            self.inference.wake()
        self.schedule.prune(now)
        pending = self.schedule.pending(now)
        if not pending:
            self.state = "waiting_for_chunk"
            return
        self.state = "running" if self.enabled else "dry_run"
        if self.enabled and self.command_pub.get_subscription_count() == 0:
            self.state = "no_controller"  # commands go out, but nothing listens: not reported as running
        if pending[0].tail and pending[0] is not self.last_tail_point:  # counted once per action, not per tick
            self.last_tail_point = pending[0]
            self.stats["tail_steps"] += 1
        if self.enabled:
            self._publish_command(pending, now)

    def _publish_command(self, pending, now: float) -> None:
        mode = self.p["output_mode"]
        if mode == "pose":
            pixels = self._limited_setpoint(pending[0])
            self.command_pub.publish(self.commands.pose_stamped(pixels, pending[0].time))
            self.last_sent, self.last_sent_time = (pixels, pending[0].joints), pending[0].time
        else:  # a trajectory: published whole, or (float_array) streamed by ``_stream_tick``
            msg = self._limited_trajectory(self.schedule.ahead(now), now)
            if msg is not None:
                self.command_pub.publish(msg)
        self.stats["commands"] += 1
        if self.chunk_obs_time is not None and self.last_e2e_chunk != self.stats["chunks"]:
            # End to end: observation stamp -> first command carrying that observation's chunk.
            self.last_e2e_chunk = self.stats["chunks"]
            self.last_e2e = now - self.chunk_obs_time

    def _stream_tick(self) -> None:
        """float_array mode, at ``float_array_rate_hz``: the commanded path sampled now (straight segments
        between the plan's speed-checked points), so a forward position controller moves smoothly."""
        with self.lock:
            if self.published_path is None or not self.enabled or self.estopped or self.holding:
                return
            times, _, joints = self.published_path
            if joints is not None:
                self.command_pub.publish(self.commands.float_array(sample_trajectory(times, joints, self.now())))

    # --- inference (its own thread: worker.py) --------------------------------------------
    def _warm_up(self) -> None:
        """One inference on zeros so the first real one is not slow, and a latency estimate."""
        shape = {"lowdim": {"obs": (1, self.n_obs_steps, self.policy.config.obs_dim)},
                 "image": {"image": (1, self.n_obs_steps, 3, self.image_size, self.image_size),
                           "agent_pos": (1, self.n_obs_steps, 2)}}[self.obs_type]
        start = time.monotonic()
        self._predict({k: np.zeros(s, dtype=np.float32) for k, s in shape.items()})
        self.latency_estimate = time.monotonic() - start

    def _predict(self, stacked):
        """The actions to schedule from the newest observation on: the Ta executed ones, followed by the rest
        of the predicted horizon (their tail) when ``schedule_full_horizon``."""
        torch = self.torch
        with torch.no_grad():
            obs = {k: torch.as_tensor(v, device=self.p["device"]) for k, v in stacked.items()}
            out = self.policy.predict_action(obs, generator=self.generator)
        actions = out["action_pred"][0, self.n_obs_steps - 1:] if self.p["schedule_full_horizon"] else out["action"][0]
        return actions.cpu().numpy().astype(np.float64)

    def _run_inference(self) -> None:
        with self.lock:
            request, self.request = self.request, None
        if request is None:
            return
        stacked, t_obs, generation = request
        start = time.monotonic()
        time.sleep(self.p["simulated_inference_delay_s"])
        try:
            actions = self._predict(stacked)
        except Exception as error:  # a failing model must not kill the control loop
            self.node.get_logger().error(f"inference failed: {type(error).__name__}: {error}")
            actions = None
        latency = time.monotonic() - start
        if self.inference.stopping:
            return  # shutting down: the node may be gone
        now = self.now()
        with self.lock:
            if generation != self.generation:
                return  # timed out, e-stopped or held meanwhile: a newer request may be in flight
            self.inference_in_flight = False
            if actions is None:
                return
            self.last_latency = latency
            self.latency_estimate = max(latency, 0.8 * self.latency_estimate + 0.2 * latency)
            finite = np.isfinite(actions).all()
            if finite:
                timed, report = self.schedule.schedule(actions, t_obs, now, n_execute=self.n_action_steps)
                ik_start = self._clamp_pixels(timed, now)
        if not finite:
            self.node.get_logger().error("policy returned non-finite actions; chunk dropped")
            return
        # IK (up to a few ms a point for the FR3) runs without the lock: the control tick goes on.
        cut = ik_start is not None and attach_joints(timed, self.arm, self.calibration, *ik_start, self.dt,
                                                      self.p["max_joint_velocity"])
        with self.lock:
            if generation != self.generation:
                return
            self.stats["ik_failures"] += int(cut)
            if timed and timed[-1].joints is not None:
                self.last_joints = timed[-1].joints
            self.schedule.commit(timed)
            self.chunk_obs_time = t_obs
            self.stats["chunks"] += 1
            self.stats["dropped"] += report.n_dropped
            self.stats["stale_chunks"] += int(report.all_stale)
            if report.handed_over_on_time is not None:
                self.stats["on_time" if report.handed_over_on_time else "late"] += 1
        self.chunk_pub.publish(self.commands.chunk(actions, self.node.get_clock().now().to_msg()))
        self.chunk_px_pub.publish(self.commands.float_array(actions))

    # --- status ---------------------------------------------------------------------------
    def _publish_status(self, now: float) -> None:
        stats = {**self.stats, **getattr(self.command_pub, "stats", {})}  # the action's goal counters
        status = dict(state=self.state, enabled=self.enabled, estop=self.estopped, time=now,
                      latency_estimate=self.latency_estimate, pending=len(self.schedule.pending(now)),
                      last_inference_s=self.last_latency, last_e2e_s=self.last_e2e, **stats)
        self.status_pub.publish(self.String(data=json.dumps(status)))
        self.diagnostics.maybe_publish(now, self.state, stats, dict(
            latency_estimate_s=self.latency_estimate, last_inference_s=self.last_latency, last_e2e_s=self.last_e2e))


def follow_joint_trajectory_action():
    try:
        from control_msgs.action import FollowJointTrajectory
    except ImportError:
        raise ConfigError("output_mode follow_joint_trajectory needs control_msgs "
                          "(apt install ros-$ROS_DISTRO-control-msgs)") from None
    return FollowJointTrajectory


def main(args=None) -> int:
    import rclpy
    from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor

    # rclpy's own SIGINT handler would shut the context down before a hold could be published:
    # take SIGINT (and SIGTERM, which launch sends after a timeout) as KeyboardInterrupt instead.
    init_with_interrupts(rclpy, args)
    holder = None
    try:
        holder = PolicyNode()
    except KeyboardInterrupt:  # stopped while loading or warming up: nothing was commanded yet
        shutdown(rclpy)
        return 130
    except Exception as error:  # bad checkpoint / config: clear message, non-zero exit
        # Matched by name: importing policy.checkpoint here could fail again and hide the message.
        kind = "checkpoint error" if type(error).__name__ == "CheckpointError" else \
            "configuration error" if isinstance(error, (ConfigError, ValueError)) else type(error).__name__
        print(f"policy_node: {kind}: {error}", file=sys.stderr, flush=True)
        shutdown(rclpy)
        return 2
    # One executor thread for the timer, subscriptions and services, inference in its own thread: a
    # MultiThreadedExecutor here stalled the control clock for seconds on 2 cores (BENCHMARKS.md).
    executor = SingleThreadedExecutor()
    executor.add_node(holder.node)
    holder.inference.start()
    try:
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        ignore_interrupts()  # a second Ctrl-C (or launch's SIGTERM) must not cut the shutdown hold short
        try:
            executor.shutdown()
        finally:
            try:  # hold first: an inference still running is discarded (the hold bumps its generation)
                holder.stop_on_shutdown()
            except Exception as error:  # noqa: BLE001 - still release the node and the context
                print(f"policy_node: shutdown hold failed: {type(error).__name__}: {error}", file=sys.stderr,
                      flush=True)
            holder.inference.stop()
            holder.node.destroy_node()
            shutdown(rclpy)
    return 0


if __name__ == "__main__":
    sys.exit(main())
