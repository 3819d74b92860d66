"""Franka Research 3 (7-DoF) forward kinematics, geometric Jacobian and numerical inverse
kinematics of the flange (``fr3_link8``), so Push-T actions can be sent to the stock
``fr3_arm_controller`` as joint trajectories.

Kinematics in Craig's modified Denavit-Hartenberg convention, as Franka publishes it:
``T_i = Rx(alpha_i) Tx(a_i) Rz(q_i) Tz(d_i)``, then the flange ``Tz(0.107)``. Joint limits
are the FR3 datasheet's. Plain NumPy, testable without ROS.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import numpy as np

FR3_A = (0.0, 0.0, 0.0, 0.0825, -0.0825, 0.0, 0.088)
FR3_D = (0.333, 0.0, 0.316, 0.0, 0.384, 0.0, 0.0)
FR3_ALPHA = (0.0, -math.pi / 2, math.pi / 2, math.pi / 2, -math.pi / 2, math.pi / 2, math.pi / 2)
FR3_FLANGE_D = 0.107
FR3_LOWER = np.array([-2.7437, -1.7837, -2.9007, -3.0421, -2.8065, 0.5445, -3.0159])
FR3_UPPER = np.array([2.7437, 1.7837, 2.9007, -0.1518, 2.8065, 4.5169, 3.0159])
FR3_READY = (0.0, -math.pi / 4, 0.0, -3 * math.pi / 4, 0.0, math.pi / 2, math.pi / 4)
FR3_JOINT_NAMES = tuple(f"fr3_joint{i}" for i in range(1, 8))


def modified_dh_matrix(alpha: float, a: float, theta: float, d: float) -> np.ndarray:
    """Rx(alpha) Tx(a) Rz(theta) Tz(d)."""
    ct, st, ca, sa = math.cos(theta), math.sin(theta), math.cos(alpha), math.sin(alpha)
    return np.array([[ct, -st, 0.0, a],
                     [st * ca, ct * ca, -sa, -d * sa],
                     [st * sa, ct * sa, ca, d * ca],
                     [0.0, 0.0, 0.0, 1.0]])


def rotation_log(r: np.ndarray) -> np.ndarray:
    """Rotation vector w (axis * angle) with exp([w]x) = r; accurate near 0 and near pi."""
    cos_angle = max(-1.0, min(1.0, (np.trace(r) - 1.0) / 2.0))
    angle = math.acos(cos_angle)
    skew = np.array([r[2, 1] - r[1, 2], r[0, 2] - r[2, 0], r[1, 0] - r[0, 1]])
    if angle < 1e-6:
        return skew / 2.0
    if math.pi - angle < 1e-4:  # axis from the symmetric part: r = 2 n n^T - I
        n = np.sqrt(np.clip((np.diag(r) + 1.0) / 2.0, 0.0, None))
        i = int(np.argmax(n))
        n = (r[i] + r[:, i]) / (4.0 * n[i]) if n[i] > 0 else n
        n[i] = math.sqrt(max((r[i, i] + 1.0) / 2.0, 0.0))
        if np.dot(skew, n) < 0:
            n = -n
        return angle * n / np.linalg.norm(n)
    return angle * skew / (2.0 * math.sin(angle))


class FR3Kinematics:
    """FK, Jacobian and damped-least-squares IK of the FR3 flange in ``fr3_link0``."""

    model = "fr3"
    joint_names = FR3_JOINT_NAMES
    home = FR3_READY
    lower, upper = FR3_LOWER, FR3_UPPER

    def frames(self, joints: Sequence[float]) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Flange pose, and each joint's axis z_i and origin p_i in the base frame."""
        pose = np.eye(4)
        axes, origins = np.empty((7, 3)), np.empty((7, 3))
        for i, q in enumerate(joints):
            pose = pose @ modified_dh_matrix(FR3_ALPHA[i], FR3_A[i], float(q), FR3_D[i])
            axes[i], origins[i] = pose[:3, 2], pose[:3, 3]
        flange = pose.copy()
        flange[:3, 3] += FR3_FLANGE_D * pose[:3, 2]
        return flange, axes, origins

    def forward(self, joints: Sequence[float]) -> np.ndarray:
        """4x4 pose of the flange in the base frame."""
        return self.frames(joints)[0]

    def jacobian(self, joints: Sequence[float]) -> np.ndarray:
        """Geometric Jacobian (6, 7): rows v then w; column i = [z_i x (p_e - p_i); z_i]."""
        flange, axes, origins = self.frames(joints)
        return np.vstack([np.cross(axes, flange[:3, 3] - origins).T, axes.T])

    def inverse(self, pose: np.ndarray, seed: Sequence[float], iterations: int = 200,
                damping: float = 1e-3, tolerance: float = 1e-6) -> Optional[np.ndarray]:
        """Joints within the limits that put the flange at ``pose``, found from ``seed`` by
        damped least squares, dq = J^T (J J^T + λ² I)^-1 e + (I - J⁺ J)(seed - q) · ½, where
        e stacks the position error and the rotation vector of R_target R^T; the null-space term
        keeps the redundant joint near the seed so consecutive targets give continuous joints.
        Returns None when it does not converge (out of reach or against a limit)."""
        pose = np.asarray(pose, dtype=np.float64)
        seed = np.clip(np.asarray(seed, dtype=np.float64), self.lower, self.upper)
        q = seed.copy()
        for _ in range(iterations):
            flange, axes, origins = self.frames(q)
            error = np.concatenate([pose[:3, 3] - flange[:3, 3], rotation_log(pose[:3, :3] @ flange[:3, :3].T)])
            if np.abs(error).max() < tolerance:
                return q
            jac = np.vstack([np.cross(axes, flange[:3, 3] - origins).T, axes.T])
            solve = jac.T @ np.linalg.inv(jac @ jac.T + damping ** 2 * np.eye(6))
            null_space = np.eye(7) - np.linalg.pinv(jac, rcond=1e-6) @ jac  # exact projector: no task leak
            step = solve @ error + null_space @ (0.5 * (seed - q))
            scale = min(1.0, 0.5 / max(np.abs(step).max(), 1e-12))  # at most 0.5 rad per iteration
            q = np.clip(q + scale * step, self.lower, self.upper)
        return None
