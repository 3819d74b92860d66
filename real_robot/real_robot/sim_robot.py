"""``sim_robot``: the Push-T simulation behind the same topics as the real setup.

Every control period it publishes the state at that time, then executes the command due then for
one period (a step of ``envs.pusht_env.PushTEnv``). The state: the agent pose (``agent_pose``,
PoseStamped, table frame), the block pose (``block_pose``) and keypoints (``block_keypoints``, 18 pixel values), joint states
(``joint_states``: IK of the tool over the agent for ``arm_model`` ur5 | ur5e | fr3), an optional
camera image (``image``, rgb8) and ``~/score`` (Float64MultiArray: step, reward, max reward,
coverage, done). With ``auto_reset`` the next seed follows each episode after ``reset_pause_s`` of
standing still (the new state is published, commands are ignored), so the policy's observation history
and plan hold only the new episode when it starts.

Commands: ``command_pose`` (PoseStamped; executed at its header stamp, 0 = now) and
``joint_trajectory`` (JointTrajectory; stamp 0 = receipt, points at time_from_start). As a
JointTrajectoryController does, a new trajectory replaces the old one and is followed by linear
interpolation from the position commanded at its receipt, so a stream of trajectories each
replacing the last moves the arm continuously. The points are mapped to pixels by FK and interpolated
there (for the table-plane motions of Push-T, joint-space interpolation between points 0.1 s apart
differs by well under a pixel); each tick executes the position the trajectory has at that time.
"""
from __future__ import annotations

import sys
import threading

import numpy as np

from real_robot.control import sample_trajectory
from real_robot.arms import make_arm
from real_robot.kinematics import PlanarCalibration, quaternion_from_yaw
from real_robot.params import read_parameters
from real_robot.signals import run_node

PARAMETERS = {
    "seed": ("int", 100000),
    "max_steps": ("int", 300),
    "control_rate_hz": ("float", 10.0),
    "publish_images": ("bool", False),
    "image_size": ("int", 96),
    "pixel_to_table": ("float_list", [0.0008, 0.0, 0.25, 0.0, -0.0008, 0.2]),
    "table_height": ("float", 0.15),
    "tool_orientation": ("float_list", [1.0, 0.0, 0.0, 0.0]),
    "arm_model": ("str", "ur5e"),
    "ur_model": ("str", None),             # renamed to arm_model: refused with a clear error
    "home_joints": ("float_list", None),   # None: the arm's home
    "frame_id": ("str", "base"),
    "auto_reset": ("bool", False),
    "reset_pause_s": ("float", 1.5),
}


class SimRobot:
    def __init__(self, node_name: str = "sim_robot") -> None:
        from rclpy.node import Node
        from geometry_msgs.msg import PoseStamped
        from sensor_msgs.msg import Image, JointState
        from std_msgs.msg import Float64MultiArray
        from trajectory_msgs.msg import JointTrajectory

        from dpstack.envs.pusht_env import PushTEnv

        self.node = node = Node(node_name)
        self.p = p = read_parameters(node, PARAMETERS)
        if p["ur_model"] is not None:
            raise ValueError(f"parameter 'ur_model' was renamed: set arm_model: {p['ur_model']} instead")
        self.calibration = PlanarCalibration(p["pixel_to_table"], p["table_height"], p["tool_orientation"])
        self.arm = make_arm(p["arm_model"])
        self.env = PushTEnv(obs_type="image" if p["publish_images"] else "keypoints", obs_image_size=p["image_size"])
        self.env.reset(seed=p["seed"])
        self.lock = threading.Lock()
        self.points = []            # command_pose: (execution time, target pixels)
        self.trajectory = None      # joint_trajectory: (times (N,), pixels (N, 2)), first = state at receipt
        self.target = None
        self.step_count = 0
        self.max_reward = 0.0
        self.done = False
        self.paused_until = 0.0     # after an auto-reset: publish the new state, execute nothing until then
        self.joints = np.asarray(self.arm.home if p["home_joints"] is None else p["home_joints"], dtype=np.float64)
        self.msgs = dict(PoseStamped=PoseStamped, Image=Image, JointState=JointState, F64=Float64MultiArray)
        self.pub_agent = node.create_publisher(PoseStamped, "agent_pose", 10)
        self.pub_block = node.create_publisher(PoseStamped, "block_pose", 10)
        self.pub_keypoints = node.create_publisher(Float64MultiArray, "block_keypoints", 10)
        self.pub_joints = node.create_publisher(JointState, "joint_states", 10)
        self.pub_score = node.create_publisher(Float64MultiArray, "~/score", 10)
        self.pub_image = node.create_publisher(Image, "image", 5) if p["publish_images"] else None
        node.create_subscription(PoseStamped, "command_pose", self._on_pose, 10)
        node.create_subscription(JointTrajectory, "joint_trajectory", self._on_trajectory, 10)
        self.dt = 1.0 / p["control_rate_hz"]
        self.timer = node.create_timer(self.dt, self._tick)
        self._publish_state(self.now(), self.env.physics.agent_position)

    def now(self) -> float:
        return self.node.get_clock().now().nanoseconds * 1e-9

    def _on_pose(self, msg) -> None:
        stamp = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
        pixels = self.calibration.to_pixels(np.array([msg.pose.position.x, msg.pose.position.y]))
        with self.lock:
            when = stamp if stamp > 0 else self.now()
            self.trajectory = None
            self.points = [pt for pt in self.points if pt[0] < when] + [(when, pixels)]

    def _on_trajectory(self, msg) -> None:
        received = self.now()
        names = list(msg.joint_names)
        times = [p.time_from_start.sec + p.time_from_start.nanosec * 1e-9 for p in msg.points]
        problem = (f"joint_names {names} lack {self.arm.joint_names}" if not set(self.arm.joint_names) <= set(names)
                   else "a point has fewer positions than joint_names" if any(len(p.positions) != len(names)
                                                                              for p in msg.points)
                   else "time_from_start is not strictly increasing" if np.any(np.diff(times) <= 0) else None)
        if problem:  # a JointTrajectoryController rejects such goals too
            self.node.get_logger().warning(f"trajectory ignored: {problem}", throttle_duration_sec=2.0)
            return
        new = []
        for point in msg.points:
            joints = np.array([point.positions[names.index(n)] for n in self.arm.joint_names])
            pixels = self.calibration.to_pixels(self.arm.forward(joints)[:2, 3])
            new.append((received + point.time_from_start.sec + point.time_from_start.nanosec * 1e-9, pixels))
        with self.lock:
            if self.trajectory is not None:  # the desired position right now, as the controller's
                start = sample_trajectory(*self.trajectory, received)
            else:
                start = self.target if self.target is not None else self.env.physics.agent_position
            times = np.array([received] + [t for t, _ in new])
            pixels = np.array([np.asarray(start, dtype=np.float64)] + [px for _, px in new])
            self.trajectory = (times, pixels)  # replaces the current one
            self.points = []

    def _tick(self) -> None:
        """Publish the state at ``now`` (the result of the previous step), then execute the command
        due now over the next period: an observation stamped t is the state at t, as a real arm's,
        and the action scheduled at t acts on it (the order of the in-process evaluation)."""
        now = self.now()
        if now < self.paused_until:
            self._publish_state(now, self.env.physics.agent_position)
            self._drop_commands()
            return
        with self.lock:
            due = [pt for pt in self.points if pt[0] <= now + self.dt / 2]
            if due:
                self.target = due[-1][1]
                self.points = [pt for pt in self.points if pt[0] > now + self.dt / 2]
            elif self.trajectory is not None:
                self.target = sample_trajectory(*self.trajectory, now)
        if self.done:
            return
        self._publish_state(now, self.env.physics.agent_position)
        if self.target is None:
            return  # before the first command the episode has not started
        _, reward, terminated, _, info = self.env.step(np.clip(self.target, 0, 512))
        self.step_count += 1
        self.max_reward = max(self.max_reward, float(reward))
        self.done = bool(terminated) or self.step_count >= self.p["max_steps"]
        self.pub_score.publish(self.msgs["F64"](data=[float(self.step_count), float(reward), self.max_reward,
                                                     float(info["coverage"]), float(self.done)]))
        if self.done and self.p["auto_reset"]:  # endless operation (benchmarks): next seed
            self.p["seed"] += 1
            self.env.reset(seed=self.p["seed"])
            self.step_count, self.max_reward, self.done = 0, 0.0, False
            # The new episode starts with the first command after a pause in which the policy's history
            # and plan refill from the new scene (as an operator resets a real one): not with the rest of
            # the old plan, or a chunk planned from frames on both sides of the reset.
            self.paused_until = now + self.p["reset_pause_s"]
            self._drop_commands()

    def _drop_commands(self) -> None:
        """Forget the commanded target and any pending command: the next command starts afresh."""
        with self.lock:
            self.target, self.trajectory, self.points = None, None, []

    def _publish_state(self, stamp: float, agent_px) -> None:
        from dpstack.envs.geometry import block_keypoints

        sec, nanosec = int(stamp), int((stamp % 1) * 1e9)
        block = self.env.physics.block_pose
        agent_pose = self._pose(agent_px, self.p["table_height"], self.calibration.orientation, sec, nanosec)
        yaw = self.calibration.angle_to_table(block[2])
        block_pose = self._pose(block[:2], 0.0, quaternion_from_yaw(yaw), sec, nanosec)
        seed = self.joints
        joints = self.arm.inverse(self.calibration.tool_pose(agent_px), seed)
        if joints is not None:
            self.joints = joints
        state = self.msgs["JointState"](name=list(self.arm.joint_names), position=[float(v) for v in self.joints])
        state.header.stamp.sec, state.header.stamp.nanosec = sec, nanosec
        self.pub_agent.publish(agent_pose)
        self.pub_block.publish(block_pose)
        self.pub_keypoints.publish(self.msgs["F64"](data=[float(v) for v in block_keypoints(block).ravel()]))
        self.pub_joints.publish(state)
        if self.pub_image is not None:
            frame = self.env._draw().observation_image()  # (3, H, W) uint8
            hwc = np.ascontiguousarray(np.asarray(frame).transpose(1, 2, 0), dtype=np.uint8)
            image = self.msgs["Image"](height=hwc.shape[0], width=hwc.shape[1], encoding="rgb8",
                                       step=hwc.shape[1] * 3, data=hwc.tobytes())
            image.header.stamp.sec, image.header.stamp.nanosec = sec, nanosec
            self.pub_image.publish(image)

    def _pose(self, pixels, z, quaternion, sec, nanosec):
        msg = self.msgs["PoseStamped"]()
        msg.header.frame_id = self.p["frame_id"]
        msg.header.stamp.sec, msg.header.stamp.nanosec = sec, nanosec
        xy = self.calibration.to_table(pixels)
        msg.pose.position.x, msg.pose.position.y, msg.pose.position.z = float(xy[0]), float(xy[1]), float(z)
        (msg.pose.orientation.x, msg.pose.orientation.y,
         msg.pose.orientation.z, msg.pose.orientation.w) = (float(v) for v in quaternion)
        return msg


def main(args=None) -> int:
    return run_node(SimRobot, "sim_robot", args)


if __name__ == "__main__":
    sys.exit(main())
