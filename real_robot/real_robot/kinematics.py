"""Kinematics for the deployment node: UR5 / UR5e forward and analytic inverse kinematics
(standard Denavit-Hartenberg parameters) and the planar pixel <-> table-metre calibration.

Everything here is plain NumPy so it runs (and is tested) without ROS.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Sequence

import numpy as np

# Standard DH parameters (d, a, alpha) per joint, from Universal Robots' published tables.
UR_DH = {
    "ur5": dict(d=(0.089159, 0.0, 0.0, 0.10915, 0.09465, 0.0823),
                a=(0.0, -0.425, -0.39225, 0.0, 0.0, 0.0)),
    "ur5e": dict(d=(0.1625, 0.0, 0.0, 0.1333, 0.0997, 0.0996),
                 a=(0.0, -0.425, -0.3922, 0.0, 0.0, 0.0)),
}
UR_ALPHA = (math.pi / 2, 0.0, 0.0, math.pi / 2, -math.pi / 2, 0.0)
UR_JOINT_NAMES = ("shoulder_pan_joint", "shoulder_lift_joint", "elbow_joint",
                  "wrist_1_joint", "wrist_2_joint", "wrist_3_joint")


def dh_matrix(theta: float, d: float, a: float, alpha: float) -> np.ndarray:
    """Rz(theta) Tz(d) Tx(a) Rx(alpha)."""
    ct, st, ca, sa = math.cos(theta), math.sin(theta), math.cos(alpha), math.sin(alpha)
    return np.array([[ct, -st * ca, st * sa, a * ct],
                     [st, ct * ca, -ct * sa, a * st],
                     [0.0, sa, ca, d],
                     [0.0, 0.0, 0.0, 1.0]])


def quaternion_to_matrix(q: Sequence[float]) -> np.ndarray:
    """Rotation matrix of a quaternion (x, y, z, w); normalises it first."""
    x, y, z, w = np.asarray(q, dtype=np.float64) / np.linalg.norm(q)
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def matrix_to_quaternion(r: np.ndarray) -> np.ndarray:
    """Quaternion (x, y, z, w) with w >= 0 of a rotation matrix."""
    m = np.asarray(r, dtype=np.float64)
    trace = m[0, 0] + m[1, 1] + m[2, 2]
    if trace > 0:
        s = 2.0 * math.sqrt(trace + 1.0)
        q = [(m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s, 0.25 * s]
    else:
        i = int(np.argmax([m[0, 0], m[1, 1], m[2, 2]]))
        j, k = (i + 1) % 3, (i + 2) % 3
        s = 2.0 * math.sqrt(max(1.0 + m[i, i] - m[j, j] - m[k, k], 1e-12))
        q = [0.0, 0.0, 0.0, 0.0]
        q[i] = 0.25 * s
        q[j] = (m[j, i] + m[i, j]) / s
        q[k] = (m[k, i] + m[i, k]) / s
        q[3] = (m[k, j] - m[j, k]) / s
    q = np.array(q)
    return q if q[3] >= 0 else -q


def yaw_of_quaternion(q: Sequence[float]) -> float:
    x, y, z, w = q
    return math.atan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z))


def quaternion_from_yaw(yaw: float) -> np.ndarray:
    return np.array([0.0, 0.0, math.sin(yaw / 2), math.cos(yaw / 2)])


class URKinematics:
    """FK and closed-form IK (up to 8 solutions) of a UR5 / UR5e flange in the base frame."""

    joint_names = UR_JOINT_NAMES
    home = (0.0, -math.pi / 2, math.pi / 2, -math.pi / 2, -math.pi / 2, 0.0)

    def __init__(self, model: str = "ur5e") -> None:
        if model not in UR_DH:
            raise ValueError(f"unknown UR model {model!r}; expected one of {sorted(UR_DH)}")
        self.model = model
        self.d = UR_DH[model]["d"]
        self.a = UR_DH[model]["a"]
        self.alpha = UR_ALPHA

    def link(self, i: int, theta: float) -> np.ndarray:
        return dh_matrix(theta, self.d[i], self.a[i], self.alpha[i])

    def forward(self, joints: Sequence[float]) -> np.ndarray:
        """4x4 pose of the flange (tool0) in the base frame."""
        pose = np.eye(4)
        for i, theta in enumerate(joints):
            pose = pose @ self.link(i, float(theta))
        return pose

    def inverse_all(self, pose: np.ndarray, tolerance: float = 1e-6) -> List[np.ndarray]:
        """All closed-form solutions in (-pi, pi] that reproduce ``pose`` (checked through FK)."""
        pose = np.asarray(pose, dtype=np.float64)
        d1, _, _, d4, _, d6 = self.d
        a2, a3 = self.a[1], self.a[2]
        wrist = pose @ np.array([0.0, 0.0, -d6, 1.0])  # origin of frame 5
        radius = math.hypot(wrist[0], wrist[1])
        if radius < abs(d4) - 1e-12:
            return []
        psi = math.atan2(wrist[1], wrist[0])
        phi = math.acos(min(1.0, d4 / radius))
        solutions = []
        for theta1 in (psi + phi + math.pi / 2, psi - phi + math.pi / 2):
            t16 = np.linalg.inv(self.link(0, theta1)) @ pose
            r = t16[:3, :3]
            # R16 = Rz(theta2+theta3+theta4) . Ry(-theta5) . Rz(theta6)  (ZYZ Euler angles).
            c5 = max(-1.0, min(1.0, r[2, 2]))
            for theta5 in (math.acos(c5), -math.acos(c5)):
                sb = -math.sin(theta5)
                if abs(sb) < 1e-9:  # wrist singularity: theta6 arbitrary, keep 0
                    theta6, sum234 = 0.0, math.atan2(r[1, 0], r[0, 0])
                else:
                    sum234 = math.atan2(r[1, 2] / sb, r[0, 2] / sb)
                    theta6 = math.atan2(r[2, 1] / sb, -r[2, 0] / sb)
                t14 = t16 @ np.linalg.inv(self.link(4, theta5) @ self.link(5, theta6))
                x, y = t14[0, 3], t14[1, 3]  # p13 = p14 - d4 z1, planar in frame 1
                c3 = (x * x + y * y - a2 * a2 - a3 * a3) / (2 * a2 * a3)
                if abs(c3) > 1.0 + 1e-9:
                    continue
                c3 = max(-1.0, min(1.0, c3))
                for theta3 in (math.acos(c3), -math.acos(c3)):
                    theta2 = math.atan2(y, x) - math.atan2(a3 * math.sin(theta3), a2 + a3 * math.cos(theta3))
                    theta4 = sum234 - theta2 - theta3
                    q = np.array([theta1, theta2, theta3, theta4, theta5, theta6])
                    q = np.arctan2(np.sin(q), np.cos(q))
                    if np.abs(self.forward(q) - pose).max() < tolerance:
                        solutions.append(q)
        return solutions

    def inverse(self, pose: np.ndarray, seed: Sequence[float]) -> Optional[np.ndarray]:
        """The solution nearest to ``seed`` (each joint unwrapped to within pi of the seed), or None."""
        seed = np.asarray(seed, dtype=np.float64)
        best, best_distance = None, math.inf
        for q in self.inverse_all(pose):
            q = seed + np.arctan2(np.sin(q - seed), np.cos(q - seed))  # nearest 2*pi-equivalent
            distance = float(np.abs(q - seed).max())
            if distance < best_distance:
                best, best_distance = q, distance
        return best


@dataclass
class PlanarCalibration:
    """Affine map between the policy's pixel plane and the table plane of the robot base frame.

    ``[x_m, y_m] = A @ [u_px, v_px] + t`` with ``affine = [A00, A01, t0, A10, A11, t1]``; the tool
    is held at ``height`` with the fixed orientation ``orientation`` (quaternion x, y, z, w).
    """

    affine: Sequence[float]
    height: float
    orientation: Sequence[float] = (1.0, 0.0, 0.0, 0.0)

    def __post_init__(self) -> None:
        values = np.asarray(self.affine, dtype=np.float64)
        if values.shape != (6,) or not np.all(np.isfinite(values)):
            raise ValueError(f"pixel_to_table must be 6 finite numbers [A00, A01, t0, A10, A11, t1], got {list(self.affine)}")
        self.matrix = values.reshape(2, 3)[:, :2]
        self.offset = values.reshape(2, 3)[:, 2]
        if abs(np.linalg.det(self.matrix)) < 1e-12:
            raise ValueError("pixel_to_table is singular (its 2x2 part has determinant 0)")
        self.inverse_matrix = np.linalg.inv(self.matrix)
        quaternion = np.asarray(self.orientation, dtype=np.float64)
        if quaternion.shape != (4,) or not np.isfinite(quaternion).all() or np.linalg.norm(quaternion) < 1e-9:
            raise ValueError(f"tool_orientation must be a non-zero quaternion [x, y, z, w], got {list(self.orientation)}")
        self.orientation = tuple(quaternion / np.linalg.norm(quaternion))
        self.rotation = quaternion_to_matrix(self.orientation)

    @property
    def metres_per_pixel(self) -> float:
        """The largest stretch of the pixel → table map (its spectral norm): a pixel speed v moves the tool
        at most v · metres_per_pixel."""
        return float(np.linalg.norm(self.matrix, 2))

    def to_table(self, pixels: np.ndarray) -> np.ndarray:
        return np.asarray(pixels, dtype=np.float64) @ self.matrix.T + self.offset

    def to_pixels(self, metres: np.ndarray) -> np.ndarray:
        return (np.asarray(metres, dtype=np.float64) - self.offset) @ self.inverse_matrix.T

    def tool_pose(self, pixels: np.ndarray) -> np.ndarray:
        """4x4 tool pose over pixel position ``pixels``."""
        pose = np.eye(4)
        pose[:3, :3] = self.rotation
        pose[:2, 3] = self.to_table(pixels)
        pose[2, 3] = self.height
        return pose

    def angle_to_table(self, theta_px: float) -> float:
        direction = self.matrix @ np.array([math.cos(theta_px), math.sin(theta_px)])
        return math.atan2(direction[1], direction[0])

    def angle_to_pixels(self, yaw: float) -> float:
        direction = self.inverse_matrix @ np.array([math.cos(yaw), math.sin(yaw)])
        return math.atan2(direction[1], direction[0])
