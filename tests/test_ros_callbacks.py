"""The ROS 2 nodes' callbacks called in-process, without DDS: the policy node's holds keep the
commanded setpoint, the sim publishes the state before executing the command due, and its
auto-reset pauses before the next episode."""
import sys
import time

import numpy as np
import pytest
from ros_harness import PACKAGE

rclpy = pytest.importorskip("rclpy", reason="rclpy not importable (pip install ros-kilted-rclpy ...; see real_robot/README.md)")


class Recorder:
    """Stands in for the command publisher: keeps what the node publishes."""

    topic_name = "/recorded"

    def __init__(self):
        self.messages = []

    def publish(self, msg):
        self.messages.append(msg)

    def get_subscription_count(self):
        return 1  # a controller listens


def test_holds_keep_the_commanded_setpoint(checkpoint):
    """In-process, callbacks called directly: a stale-observation hold sends the arm to the
    published plan's current setpoint; an e-stop during that hold keeps the same setpoint
    instead of going back to the stale measurement (which the plan had left)."""
    from std_srvs.srv import Trigger

    from dpstack.envs.geometry import block_keypoints
    from dpstack.policy.checkpoint import load_policy

    sys.path.insert(0, str(PACKAGE))
    from real_robot.policy_node import PolicyNode

    rclpy.init(args=["--ros-args", "-p", f"checkpoint:={checkpoint}", "-p", "enabled:=true",
                     "-p", "max_step_px:=40.0"])
    try:
        holder = PolicyNode("hold_probe", policy=load_policy(checkpoint, optimize=True))
        holder.command_pub = recorder = Recorder()
        keypoints = block_keypoints(np.array([256.0, 300.0, 0.3])).ravel()

        def observe(agent, age=0.0):
            stamp = holder.now() - age
            holder.observations.add("agent", np.asarray(agent, dtype=np.float64), stamp)
            holder.observations.add("keypoints", keypoints, stamp)

        observe([200.0, 300.0])
        holder._control_tick()         # requests a chunk
        holder._run_inference()        # (the node's inference thread would run it)
        observe([200.0, 300.0])
        holder._control_tick()         # publishes the plan
        plan = recorder.messages[-1]
        assert len(plan.points) > 1

        holder.observations.parts.clear()
        observe([200.0, 300.0], age=1.0)  # the observations stopped a second ago
        holder._control_tick()
        stale_hold = recorder.messages[-1]
        assert len(recorder.messages) == 2 and len(stale_hold.points) == 1 and holder.holding
        setpoint = np.array(stale_hold.points[0].positions)
        planned = np.array([p.positions for p in plan.points[:2]])
        assert min(np.abs(setpoint - q).max() for q in planned) < 0.5  # on the plan, not elsewhere

        holder.agent_px = np.array([400.0, 150.0])  # a stale measurement the plan had long left
        holder._on_estop(Trigger.Request(), Trigger.Response())
        estop_hold = recorder.messages[-1]
        assert len(recorder.messages) == 3 and len(estop_hold.points) == 1
        np.testing.assert_allclose(estop_hold.points[0].positions, setpoint)
        holder.node.destroy_node()
    finally:
        rclpy.shutdown()


def test_a_distilled_policy_drives_the_node(checkpoint, tmp_path):
    """A consistency-distilled policy (policy.distillation) is a checkpoint like any other for the node: it
    loads, is traced, and one inference (two U-Net calls) gives the plan the node publishes."""
    from dpstack.envs.geometry import block_keypoints
    from dpstack.policy.checkpoint import load_checkpoint, load_policy, save_checkpoint
    from dpstack.policy.distillation import ConsistencyStudent

    sys.path.insert(0, str(PACKAGE))
    from real_robot.policy_node import PolicyNode

    student = ConsistencyStudent(load_policy(checkpoint), skip_steps=10, num_inference_steps=2)
    path = save_checkpoint({"config": load_checkpoint(checkpoint)["config"], "policy_config": student.config.to_dict(),
                            "state_dicts": {"model": student.state_dict()}}, tmp_path / "distilled.ckpt")
    rclpy.init(args=["--ros-args", "-p", f"checkpoint:={path}", "-p", "enabled:=true"])
    try:
        policy = load_policy(path, optimize=True)
        assert policy.config.sampler == "consistency" and policy.inference_scheduler.timesteps.tolist() == [90, 45]
        node = PolicyNode("distilled_probe", policy=policy)
        node.command_pub = recorder = Recorder()
        keypoints = block_keypoints(np.array([256.0, 300.0, 0.3])).ravel()
        for _ in range(2):  # request a chunk, run it (the inference thread's job), publish it
            node.observations.add("agent", np.array([200.0, 300.0]), node.now())
            node.observations.add("keypoints", keypoints, node.now())
            node._control_tick()
            node._run_inference()
        assert recorder.messages and len(recorder.messages[-1].points) > 1
        assert np.isfinite([p.positions for p in recorder.messages[-1].points]).all()
        node.node.destroy_node()
    finally:
        rclpy.shutdown()


def test_sensor_subscriptions_are_best_effort_and_bad_messages_count_as_missing(checkpoint):
    """Sensor topics subscribe BEST_EFFORT (matching best-effort drivers and RELIABLE publishers, which the
    closed-loop tests use). A NaN/inf pose or keypoint array, or a message a decoder chokes on, is logged
    and dropped, never stored: the stale-observation watchdog then holds the arm."""
    from geometry_msgs.msg import PoseStamped
    from std_msgs.msg import Float64MultiArray

    from dpstack.policy.checkpoint import load_policy

    sys.path.insert(0, str(PACKAGE))
    from real_robot.observations import agent_from_pose, keypoints_from_array
    from real_robot.policy_node import PolicyNode

    rclpy.init(args=["--ros-args", "-p", f"checkpoint:={checkpoint}"])
    try:
        node = PolicyNode("nan_probe", policy=load_policy(checkpoint))
        from rclpy.qos import ReliabilityPolicy

        sensors = [sub for sub in node.node.subscriptions if sub.topic_name.split("/")[-1] in
                   ("agent_pose", "joint_states", "block_keypoints", "block_pose", "image")]
        assert len(sensors) >= 2 and all(sub.qos_profile.reliability == ReliabilityPolicy.BEST_EFFORT for sub in sensors)
        store_agent = node._store("agent", lambda m: agent_from_pose(m, node.calibration))
        store_keypoints = node._store("keypoints", keypoints_from_array)
        pose = PoseStamped()
        pose.pose.position.x = float("nan")
        store_agent(pose)
        store_keypoints(Float64MultiArray(data=[float("inf")] * 18))
        store_keypoints(object())  # not a message at all: the decoder raises AttributeError
        assert node.observations.newest() == {}
        pose.pose.position.x = 0.1
        store_agent(pose)
        assert set(node.observations.newest()) == {"agent"}
        node.node.destroy_node()
    finally:
        rclpy.shutdown()


def test_sim_publishes_the_state_before_executing_the_command():
    """A tick publishes the state at its time, then executes the command due then for one period:
    an observation stamped t is the state at t, and the action due at t acts on it."""
    sys.path.insert(0, str(PACKAGE))
    from real_robot.sim_robot import SimRobot

    rclpy.init(args=["--ros-args", "-p", "seed:=100000"])
    try:
        sim = SimRobot("sim_probe")
        sim.pub_agent = recorder = Recorder()

        def published():
            pose = recorder.messages[-1].pose.position
            return sim.calibration.to_pixels(np.array([pose.x, pose.y]))

        start = np.array(sim.env.physics.agent_position, dtype=np.float64)
        sim.points = [(sim.now(), start + [40.0, 0.0])]  # due now
        sim._tick()
        np.testing.assert_allclose(published(), start, atol=1e-6)  # the state before the step
        moved = np.array(sim.env.physics.agent_position, dtype=np.float64)
        assert moved[0] > start[0] + 5 and sim.step_count == 1  # ... then the command acted on it
        sim._tick()
        np.testing.assert_allclose(published(), moved, atol=1e-6)
        sim.node.destroy_node()
    finally:
        rclpy.shutdown()


def test_sim_auto_reset_pauses_before_the_next_episode():
    """After an episode ends with ``auto_reset``, the sim publishes the next seed's state but executes
    no command for ``reset_pause_s``: the policy's history and plan refill from the new scene first."""
    from builtin_interfaces.msg import Duration
    from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

    from dpstack.envs.pusht_env import PushTEnv

    sys.path.insert(0, str(PACKAGE))
    from real_robot.sim_robot import SimRobot

    rclpy.init(args=["--ros-args", "-p", "seed:=100000", "-p", "max_steps:=1", "-p", "auto_reset:=true",
                     "-p", "reset_pause_s:=0.3"])
    sim = None
    try:
        sim = SimRobot("sim_reset_probe")
        sim.pub_agent = recorder = Recorder()
        start = np.array(sim.env.physics.agent_position, dtype=np.float64)
        sim.points = [(sim.now(), start + [40.0, 0.0])]
        sim._tick()  # the one step of episode 100000, then the reset to 100001
        fresh = PushTEnv(obs_type="keypoints")
        fresh.reset(seed=100001)
        next_start = np.array(fresh.physics.agent_position, dtype=np.float64)
        assert sim.p["seed"] == 100001 and sim.step_count == 0
        sim.p["max_steps"] = 300  # the next episode runs on
        joints = sim.arm.inverse(sim.calibration.tool_pose(next_start + [40.0, 0.0]), sim.joints)
        trajectory = JointTrajectory(joint_names=list(sim.arm.joint_names), points=[
            JointTrajectoryPoint(positions=list(joints), time_from_start=Duration(sec=0, nanosec=50_000_000))])
        for _ in range(2):  # paused: neither a pose command due now nor a trajectory is executed
            sim.points = [(sim.now(), next_start + [40.0, 0.0])]
            sim._on_trajectory(trajectory)
            sim._tick()
            pose = recorder.messages[-1].pose.position
            np.testing.assert_allclose(sim.calibration.to_pixels(np.array([pose.x, pose.y])), next_start, atol=1e-6)
            np.testing.assert_allclose(sim.env.physics.agent_position, next_start, atol=1e-9)
            assert sim.step_count == 0
        time.sleep(0.3)
        sim.points = [(sim.now(), next_start + [40.0, 0.0])]
        sim._tick()  # the pause is over: the first command starts the episode
        assert sim.step_count == 1 and sim.env.physics.agent_position[0] > next_start[0] + 5
    finally:
        if sim is not None:
            sim.node.destroy_node()
        rclpy.shutdown()


@pytest.mark.parametrize("signal_name", ["SIGINT", "SIGTERM"])
def test_sim_robot_stops_cleanly_on_a_signal(signal_name):
    """Ctrl-C (launch's SIGINT) or SIGTERM: exit status 0, no KeyboardInterrupt traceback."""
    import os
    import signal
    import subprocess

    env = dict(os.environ, ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST", SDL_VIDEODRIVER="dummy")
    process = subprocess.Popen([sys.executable, "-m", "real_robot.sim_robot"], cwd=PACKAGE, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(4)  # up and spinning
    process.send_signal(getattr(signal, signal_name))
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 0 and "Traceback" not in stderr, stderr


def test_diagnostics_report_levels_and_counters(checkpoint):
    """The default tool-speed cap lowers the pixel-speed clamp. /diagnostics: WARN while observations are missing and when late chunks or holds grew since the last
    report, OK otherwise, ERROR while e-stopped; the counters and latencies travel as key/values, ~1 Hz."""
    from diagnostic_msgs.msg import DiagnosticStatus

    from dpstack.policy.checkpoint import load_policy

    sys.path.insert(0, str(PACKAGE))
    from real_robot.policy_node import PolicyNode

    rclpy.init(args=["--ros-args", "-p", f"checkpoint:={checkpoint}"])
    try:
        node = PolicyNode("diagnostics_probe", policy=load_policy(checkpoint))
        assert node.p["max_velocity_px_s"] == pytest.approx(0.25 / 0.0008)  # the 0.25 m/s cap at 0.8 mm/px
        reporter = node.diagnostics
        reporter.publisher = recorder = Recorder()
        node._control_tick()  # no observations yet
        first = recorder.messages[-1].status[0]
        assert first.level == DiagnosticStatus.WARN and "waiting for observations" in first.message
        assert {kv.key for kv in first.values} >= {"late", "holds", "clamped", "last_inference_s"}
        stats = dict(node.stats)
        assert not reporter.maybe_publish(reporter.last_time + 0.5, "running", stats, {})  # ~1 Hz
        assert reporter.maybe_publish(reporter.last_time + 1.0, "running", stats, {})
        assert recorder.messages[-1].status[0].level == DiagnosticStatus.OK
        stats["late"] += 1
        reporter.maybe_publish(reporter.last_time + 1.0, "running", stats, {})
        assert recorder.messages[-1].status[0].level == DiagnosticStatus.WARN
        assert "late" in recorder.messages[-1].status[0].message
        reporter.maybe_publish(reporter.last_time + 1.0, "estop", stats, {})
        assert recorder.messages[-1].status[0].level == DiagnosticStatus.ERROR
        node.node.destroy_node()
    finally:
        rclpy.shutdown()


class SlowPolicy:
    """The policy with ``delay`` seconds added to every inference after the warm-up."""

    def __init__(self, policy, delay: float):
        self.policy, self.delay, self.calls = policy, delay, 0
        self.config = policy.config

    def predict_action(self, obs, generator=None):
        self.calls += 1
        if self.calls > 1:
            time.sleep(self.delay)
        return self.policy.predict_action(obs, generator=generator)


def ticks_with_a_command(checkpoint, full_horizon: bool, delay: float = 0.5, seconds: float = 4.0):
    """Run the node in real time (10 Hz ticks, inference in its thread) with a slow policy and an ideal arm
    that is wherever it was last sent; per tick after the first chunk: whether a command went out, and where."""
    from dpstack.envs.geometry import block_keypoints
    from dpstack.policy.checkpoint import load_policy

    sys.path.insert(0, str(PACKAGE))
    from real_robot.policy_node import PolicyNode

    rclpy.init(args=["--ros-args", "-p", f"checkpoint:={checkpoint}", "-p", "enabled:=true", "-p", "output_mode:=pose",
                     "-p", f"schedule_full_horizon:={str(full_horizon).lower()}", "-p", "inference_timeout_s:=3.0"])
    try:
        node = PolicyNode("slow_probe", policy=SlowPolicy(load_policy(checkpoint, optimize=True), delay))
        node.command_pub = recorder = Recorder()
        keypoints = block_keypoints(np.array([256.0, 300.0, 0.3])).ravel()
        agent, ticks = np.array([200.0, 300.0]), []
        node.inference.start()
        started = time.monotonic()
        for k in range(int(seconds * 10)):
            time.sleep(max(0.0, started + 0.1 * k - time.monotonic()))
            stamp = node.now()
            node.observations.add("agent", agent.copy(), stamp)
            node.observations.add("keypoints", keypoints, stamp)
            before = len(recorder.messages)
            node._control_tick()
            if node.last_sent is not None:
                agent = np.asarray(node.last_sent[0], dtype=np.float64)
            if node.stats["chunks"]:
                ticks.append((len(recorder.messages) > before, agent.copy()))
        node.inference.stop()
        stats = dict(node.stats)
        node.node.destroy_node()
    finally:
        rclpy.shutdown()
    return ticks, stats


def test_a_slow_policy_keeps_the_arm_moving_on_the_full_horizon(checkpoint):
    """Inference 0.5 s slower than the warm-up said: every chunk is late for its Ta = 8 actions (0.8 s of plan
    cannot cover two inference latencies). Scheduling the rest of the predicted horizon keeps a command going
    out at every tick, in steps within the clamp; with Ta alone the arm stops and waits between chunks."""
    full, full_stats = ticks_with_a_command(checkpoint, full_horizon=True)
    ta_only, ta_stats = ticks_with_a_command(checkpoint, full_horizon=False)
    assert ta_stats["late"] >= 2 and sum(not sent for sent, _ in ta_only) >= 5  # stop-and-go
    assert full_stats["late"] >= 2 and full_stats["tail_steps"] >= 5  # late chunks too, but it rode the tails
    assert sum(not sent for sent, _ in full) <= 1, [sent for sent, _ in full]
    steps = np.linalg.norm(np.diff([where for _, where in full], axis=0), axis=1)
    assert steps.max() <= 60.0 + 1e-6  # the per-step clamp (max_step_px), never a jump


def test_trajectory_points_carry_velocities_and_float_array_streams_the_path(checkpoint):
    """joint_trajectory: every point has knot velocities within the joint limit, zero at the end.
    float_array: between control ticks the node streams joint positions along the planned path at
    float_array_rate_hz, each within the joint-speed limit of the one before."""
    from dpstack.envs.geometry import block_keypoints
    from dpstack.policy.checkpoint import load_policy

    sys.path.insert(0, str(PACKAGE))
    from real_robot.policy_node import PolicyNode

    policy = load_policy(checkpoint, optimize=True)
    keypoints = block_keypoints(np.array([256.0, 300.0, 0.3])).ravel()
    for mode in ("joint_trajectory", "float_array"):
        rclpy.init(args=["--ros-args", "-p", f"checkpoint:={checkpoint}", "-p", "enabled:=true",
                         "-p", f"output_mode:={mode}", "-p", "float_array_rate_hz:=100.0"])
        try:
            node = PolicyNode(f"{mode}_probe", policy=policy)
            node.command_pub = recorder = Recorder()
            agent = np.array([200.0, 300.0])
            joints = node.arm.inverse(node.calibration.tool_pose(agent), np.asarray(node.p["home_joints"]))
            stamp = node.now()
            for key, value in (("agent", agent), ("keypoints", keypoints), ("joints", joints)):
                node.observations.add(key, value, stamp)
            node._control_tick()
            node._run_inference()
            node._control_tick()
            if mode == "joint_trajectory":
                trajectory = recorder.messages[-1]
                velocities = np.array([point.velocities for point in trajectory.points])
                assert velocities.shape == (len(trajectory.points), 6) and np.abs(velocities).max() > 0
                assert np.abs(velocities).max() <= node.p["max_joint_velocity"] + 1e-9
                np.testing.assert_allclose(velocities[-1], 0.0)
            else:
                assert not recorder.messages  # the control tick only plans; the stream publishes
                for _ in range(30):
                    time.sleep(0.01)
                    node._stream_tick()
                streamed = np.array([msg.data for msg in recorder.messages])
                assert len(streamed) == 30 and streamed.shape[1] == 6
                steps = np.abs(np.diff(streamed, axis=0)).max(axis=1)
                assert steps.max() > 0  # it moves between control ticks
                # ≤ v_max · Δt for the ~10 ms between samples (a generous 3× for a busy machine's sleep)
                assert steps.max() <= node.p["max_joint_velocity"] * 0.03
            node.node.destroy_node()
        finally:
            rclpy.shutdown()
