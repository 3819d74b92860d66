"""Construction of the node's outgoing messages: JointTrajectory for a ros2_control
JointTrajectoryController, PoseStamped for Cartesian controllers, Float64MultiArray for forward
position controllers, and the predicted chunk for visualisation."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from real_robot.kinematics import PlanarCalibration


def duration(seconds: float):
    from builtin_interfaces.msg import Duration

    sec, nanosec = divmod(int(round(seconds * 1e9)), 1_000_000_000)
    return Duration(sec=sec, nanosec=nanosec)


class CommandBuilder:
    def __init__(self, calibration: PlanarCalibration, table_height: float, frame_id: str,
                 joint_names: Sequence[str]) -> None:
        self.calibration, self.table_height = calibration, table_height
        self.frame_id, self.joint_names = frame_id, list(joint_names)

    @staticmethod
    def trajectory_delay(pending, now: float, min_lead: float) -> float:
        """The shift of a trajectory's points: max(0, min_lead − (time_0 − now)). The controller interpolates
        from its current setpoint to the first point, which must not come sooner than ``min_lead``;
        points keep their scheduled times whenever that allows."""
        return max(0.0, min_lead - (pending[0].time - now))

    def trajectory(self, pending, now: float, delay: float, velocities=None):
        """JointTrajectory of the pending plan; header stamp 0 = start on receipt, point i at
        ``time_i − now + delay`` (strictly increasing), with ``velocities`` (N, dof) when given."""
        from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

        msg = JointTrajectory(joint_names=self.joint_names)
        for i, planned in enumerate(pending):
            point = JointTrajectoryPoint(positions=[float(v) for v in planned.joints],
                                         time_from_start=duration(planned.time - now + delay))
            if velocities is not None:
                point.velocities = [float(v) for v in velocities[i]]
            msg.points.append(point)
        return msg

    def hold_trajectory(self, joints, dt: float):
        """A one-point trajectory to ``joints`` (the current position) one period from now."""
        from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

        point = JointTrajectoryPoint(positions=[float(v) for v in joints], time_from_start=duration(dt))
        return JointTrajectory(joint_names=self.joint_names, points=[point])

    @staticmethod
    def float_array(values):
        from std_msgs.msg import Float64MultiArray

        return Float64MultiArray(data=[float(v) for v in np.ravel(values)])

    def pose_stamped(self, pixels, stamp: float):
        """Tool pose over ``pixels`` stamped with its execution time (0 = now)."""
        from geometry_msgs.msg import PoseStamped

        msg = PoseStamped()
        msg.header.frame_id = self.frame_id
        msg.header.stamp.sec = int(stamp)
        msg.header.stamp.nanosec = int((stamp % 1) * 1e9)
        self.fill_pose(msg.pose, pixels)
        return msg

    def fill_pose(self, pose, pixels) -> None:
        xy = self.calibration.to_table(pixels)
        pose.position.x, pose.position.y, pose.position.z = float(xy[0]), float(xy[1]), float(self.table_height)
        qx, qy, qz, qw = self.calibration.orientation
        pose.orientation.x, pose.orientation.y, pose.orientation.z, pose.orientation.w = qx, qy, qz, qw

    def chunk(self, actions, stamp):
        """The predicted chunk as a PoseArray in the table frame (for RViz)."""
        from geometry_msgs.msg import Pose, PoseArray

        msg = PoseArray()
        msg.header.frame_id = self.frame_id
        msg.header.stamp = stamp
        for action in actions:
            pose = Pose()
            self.fill_pose(pose, action)
            msg.poses.append(pose)
        return msg
