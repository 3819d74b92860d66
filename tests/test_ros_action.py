"""``output_mode: follow_joint_trajectory``: the action commander over real rclpy + Fast DDS on loopback.

control_msgs (FollowJointTrajectory) is not on PyPI, so the commander's goal / feedback / result handling is
exercised with test_msgs' Fibonacci action and a real action server in this process; the
FollowJointTrajectory-specific helpers are checked on stand-in messages, and the node's refusal of the mode
where control_msgs is missing is checked as it happens here."""
import sys
import threading
import time
from types import SimpleNamespace

import pytest
from ros_harness import PACKAGE
from waiting import wait_for

rclpy = pytest.importorskip("rclpy", reason="rclpy not importable (pip install ros-kilted-rclpy ...; see real_robot/README.md)")
pytest.importorskip("test_msgs", reason="test_msgs not importable (pip install ros-kilted-test-msgs)")
sys.path.insert(0, str(PACKAGE))


def test_follow_joint_trajectory_helpers():
    from real_robot.trajectory_action import follow_joint_trajectory_goal, joint_tracking_error, result_failure

    class Action:
        class Goal(SimpleNamespace):
            pass

    trajectory = object()
    assert follow_joint_trajectory_goal(Action, trajectory).trajectory is trajectory
    assert joint_tracking_error(SimpleNamespace(error=SimpleNamespace(positions=[0.01, -0.2, 0.05]))) == 0.2
    assert joint_tracking_error(SimpleNamespace(error=SimpleNamespace(positions=[]))) == 0.0
    assert result_failure(SimpleNamespace(error_code=0, error_string="")) is None
    assert result_failure(SimpleNamespace(error_code=-4, error_string="joint 3")) == "PATH_TOLERANCE_VIOLATED joint 3"


def test_commander_sends_goals_ignores_preempted_ones_and_counts_failures():
    """An action server that preempts the running goal when a new one comes (as a JointTrajectoryController
    does), gives feedback, and aborts goals of order 13: the commander is ready only once the server is up,
    every publish is a goal, preempted goals are not failures, the newest goal's abort is, a rejection is
    counted, and the newest goal's feedback is read."""
    from rclpy.action import ActionServer, CancelResponse, GoalResponse
    from rclpy.executors import MultiThreadedExecutor
    from test_msgs.action import Fibonacci

    from real_robot.trajectory_action import ActionCommander

    rclpy.init()
    try:
        client_node, server_node = rclpy.create_node("commander_probe"), rclpy.create_node("fake_controller")
        commander = ActionCommander(
            client_node, Fibonacci, "/fake_controller/follow", make_goal=lambda action, order: action.Goal(order=order),
            tracking_error=lambda feedback: float(len(feedback.sequence)),
            failure=lambda result: "aborted" if list(result.sequence) == [-1] else None)
        executor = MultiThreadedExecutor(num_threads=4)
        executor.add_node(client_node)
        spinner = threading.Thread(target=executor.spin, daemon=True)
        spinner.start()
        assert commander.get_subscription_count() == 0  # no controller yet

        newest = {"handle": None}

        def execute(handle):
            newest["handle"] = handle
            order = handle.request.order
            handle.publish_feedback(Fibonacci.Feedback(sequence=list(range(order))))
            deadline = time.monotonic() + 0.5
            while time.monotonic() < deadline and newest["handle"] is handle:
                time.sleep(0.01)
            if newest["handle"] is not handle:  # preempted by a newer goal
                handle.abort()
                return Fibonacci.Result(sequence=[-2])
            if order == 13:
                handle.abort()
                return Fibonacci.Result(sequence=[-1])
            handle.succeed()
            return Fibonacci.Result(sequence=[order])

        ActionServer(server_node, Fibonacci, "/fake_controller/follow", execute_callback=execute,
                     goal_callback=lambda goal: GoalResponse.REJECT if goal.order < 0 else GoalResponse.ACCEPT,
                     cancel_callback=lambda handle: CancelResponse.ACCEPT)
        executor.add_node(server_node)
        assert wait_for(lambda: commander.get_subscription_count() == 1, 10)

        for order in (3, 4, 5):  # three goals in quick succession: the first two are preempted
            commander.publish(order)
            time.sleep(0.05)
        assert wait_for(lambda: commander.stats["tracking_error"] == 5.0, 5)
        time.sleep(0.8)
        assert commander.stats["goals_sent"] == 3 and commander.stats["goals_failed"] == 0
        commander.publish(13)  # the newest goal ends aborted: a failure
        assert wait_for(lambda: commander.stats["goals_failed"] == 1, 5)
        commander.publish(-1)  # rejected by the server
        assert wait_for(lambda: commander.stats["goals_rejected"] == 1, 5)
        executor.shutdown()
    finally:
        rclpy.shutdown()


def test_node_refuses_the_action_mode_without_control_msgs(checkpoint):
    if "control_msgs" in sys.modules or _importable("control_msgs"):
        pytest.skip("control_msgs is installed here: the mode is available")
    from dpstack.policy.checkpoint import load_policy
    from real_robot.params import ConfigError
    from real_robot.policy_node import PolicyNode

    rclpy.init(args=["--ros-args", "-p", f"checkpoint:={checkpoint}", "-p", "output_mode:=follow_joint_trajectory"])
    try:
        with pytest.raises(ConfigError, match="control_msgs"):
            PolicyNode("action_probe", policy=load_policy(checkpoint))
    finally:
        rclpy.shutdown()


def _importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None
