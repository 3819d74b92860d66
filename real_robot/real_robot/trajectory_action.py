"""``output_mode: follow_joint_trajectory``: the node's JointTrajectory messages sent as goals of a
FollowJointTrajectory action server (control_msgs; a ros2_control JointTrajectoryController, the UR's scaled
one, MoveIt's controller manager bridges) instead of published on its topic.

``ActionCommander`` stands where the topic publisher stands (``publish``, ``get_subscription_count``): each
message becomes a goal, which the controller lets preempt the running one, exactly as a new message on the
topic replaces the trajectory. It reads the feedback (the newest goal's tracking error) and the results: a
preempted goal ending early is expected; the newest goal rejected, aborted or ending with an error code is
counted and logged (``goals_rejected``, ``goals_failed`` in ``~/status`` and ``/diagnostics``).
"""
from __future__ import annotations

# control_msgs/action/FollowJointTrajectory result codes
ERROR_CODES = {-1: "INVALID_GOAL", -2: "INVALID_JOINTS", -3: "OLD_HEADER_TIMESTAMP", -4: "PATH_TOLERANCE_VIOLATED",
               -5: "GOAL_TOLERANCE_VIOLATED"}


def follow_joint_trajectory_goal(action_type, trajectory):
    return action_type.Goal(trajectory=trajectory)


def joint_tracking_error(feedback) -> float:
    """The largest joint position error (rad) of a FollowJointTrajectory feedback."""
    errors = list(feedback.error.positions)
    return max(abs(e) for e in errors) if errors else 0.0


def result_failure(result):
    """None for a successful FollowJointTrajectory result, else its code's name and message."""
    code = getattr(result, "error_code", 0)
    return None if code == 0 else f"{ERROR_CODES.get(code, code)} {getattr(result, 'error_string', '')}".strip()


class ActionCommander:
    def __init__(self, node, action_type, name: str, make_goal=follow_joint_trajectory_goal,
                 tracking_error=joint_tracking_error, failure=result_failure) -> None:
        from rclpy.action import ActionClient

        self.node, self.action_type = node, action_type
        self.client = ActionClient(node, action_type, name)
        self.topic_name = name
        self.make_goal, self.tracking_error, self.failure = make_goal, tracking_error, failure
        self.sent = 0
        self.stats = dict(goals_sent=0, goals_rejected=0, goals_failed=0, tracking_error=None)

    def get_subscription_count(self) -> int:
        """1 while the action server is there (the node's controller check), else 0."""
        return int(self.client.server_is_ready())

    def publish(self, trajectory) -> None:
        """Send ``trajectory`` as the newest goal (callbacks run on the node's executor)."""
        self.sent += 1
        number = self.sent
        future = self.client.send_goal_async(self.make_goal(self.action_type, trajectory),
                                             feedback_callback=lambda message: self._feedback(number, message))
        future.add_done_callback(lambda done: self._accepted(number, done))
        self.stats["goals_sent"] += 1

    def _accepted(self, number: int, future) -> None:
        handle = future.result()
        if handle is None or not handle.accepted:
            self.stats["goals_rejected"] += 1
            self.node.get_logger().warning("the controller rejected a trajectory goal", throttle_duration_sec=2.0)
            return
        handle.get_result_async().add_done_callback(lambda done: self._finished(number, done))

    def _feedback(self, number: int, message) -> None:
        if number == self.sent:
            self.stats["tracking_error"] = self.tracking_error(message.feedback)

    def _finished(self, number: int, future) -> None:
        from action_msgs.msg import GoalStatus

        if number != self.sent:
            return  # preempted by a newer goal: expected
        response = future.result()
        failure = self.failure(response.result)
        if response.status != GoalStatus.STATUS_SUCCEEDED or failure:
            self.stats["goals_failed"] += 1
            self.node.get_logger().warning(f"trajectory goal ended with status {response.status}"
                                           + (f": {failure}" if failure else ""), throttle_duration_sec=2.0)
