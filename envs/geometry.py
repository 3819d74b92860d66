"""Push-T geometry: the T block, its keypoints, rigid transforms and goal coverage.

All coordinates are pixels in the 512x512 workspace with y pointing down. A pose is
(x, y, theta) of the block's body origin; a body-frame point v maps to the world as
``R(theta) v + (x, y)``.
"""
from __future__ import annotations

import math

import numba
import numpy as np

WORKSPACE_SIZE = 512
GOAL_POSE = np.array([256.0, 256.0, np.pi / 4])
SUCCESS_COVERAGE = 0.95

# The T, in body coordinates, as two convex polygons (counter-clockwise in the y-down frame,
# in the vertex order pymunk reports for them). Bar x in [-60, 60], y in [0, 30];
# stem x in [-15, 15], y in [30, 120]. Total area 3600 + 2700 = 6300 px^2.
TEE_BAR = np.array([[-60.0, 0.0], [60.0, 0.0], [60.0, 30.0], [-60.0, 30.0]])
TEE_STEM = np.array([[-15.0, 30.0], [15.0, 30.0], [15.0, 120.0], [-15.0, 120.0]])
TEE_POLYGONS = np.stack([TEE_BAR, TEE_STEM])  # (2, 4, 2)
TEE_MASS = 1.0
# The reference computes the moment as twice the bar's polygon moment (a bug the demos depend on).
TEE_MOMENT = 3000.0
# Plain mean of the two polygon centroids (0, 15) and (0, 75).
TEE_CENTER_OF_GRAVITY = (0.0, 45.0)

AGENT_RADIUS = 15.0
WALL_SEGMENTS = (((5, 506), (5, 5)), ((5, 5), (506, 5)), ((506, 5), (506, 506)), ((5, 506), (506, 506)))
WALL_RADIUS = 2.0

# The 9 body-frame keypoints in the dataset's ``data/keypoint`` order, recovered from the
# Push-T demonstrations as the median of R(-theta) (keypoint - block_xy) over all 25,650 steps
# (tests/test_env_fidelity.py checks them against the recorded keypoints).
TEE_KEYPOINTS = np.array([
    [9.26978651, 90.04097386],
    [-60.98347195, -1.18673018],
    [60.91275546, -1.39336347],
    [-0.27050367, 25.54362508],
    [-14.06492744, 122.81585387],
    [39.00273833, 32.85740441],
    [-39.9664144, 32.72965538],
    [-16.82434402, 62.86317907],
    [23.54146135, -1.70028786],
])


def transform_points(points: np.ndarray, pose: np.ndarray) -> np.ndarray:
    """World coordinates of body-frame ``points`` (..., 2): ``R(theta) p + t`` for pose (x, y, theta)."""
    x, y, theta = (float(v) for v in pose)
    cos, sin = math.cos(theta), math.sin(theta)
    return points @ np.array([[cos, sin], [-sin, cos]]) + np.array([x, y])


def block_keypoints(pose: np.ndarray) -> np.ndarray:
    """The 9 keypoints (9, 2) of a block at ``pose``."""
    return transform_points(TEE_KEYPOINTS, pose)


# Reflection across the goal T's axis of symmetry: the T is symmetric about its body y axis, which at
# the goal runs through (x_g, y_g) at angle α = θ_g + π/2. Reflecting across a line at angle α is
# S = [[cos 2α, sin 2α], [sin 2α, −cos 2α]]; for θ_g = π/4 the line is x + y = 512. Rounding makes the
# entries exactly 0 and ±1 (cos 3π/2 evaluates to −1.8e-16), so mirrored coordinates stay exact.
_AXIS_DOUBLE_ANGLE = 2 * GOAL_POSE[2] + np.pi
GOAL_REFLECTION = np.round(np.array([[np.cos(_AXIS_DOUBLE_ANGLE), np.sin(_AXIS_DOUBLE_ANGLE)],
                                     [np.sin(_AXIS_DOUBLE_ANGLE), -np.cos(_AXIS_DOUBLE_ANGLE)]]), 12)


def mirror_points(points: np.ndarray) -> np.ndarray:
    """World points (..., 2) reflected across the goal T's axis: p -> S (p − g) + g, which for the goal
    (256, 256, π/4) is (x, y) -> (512 − y, 512 − x).

    The goal maps onto itself, the workspace square too (its walls at 5 and 506 land at 6 and 507), and
    the physics has no handedness, so a mirrored demonstration is again a demonstration.
    """
    return (np.asarray(points) - GOAL_POSE[:2]) @ GOAL_REFLECTION.T + GOAL_POSE[:2]


def mirror_poses(poses: np.ndarray) -> np.ndarray:
    """Block poses (..., 3) reflected by ``mirror_points``: (x, y, θ) -> (S ((x, y) − g) + g, 2θ_g − θ).

    With M = diag(−1, 1) the T's own mirror symmetry, S R(θ) = R(2θ_g − θ) M, so the reflected block
    is the same T at angle 2θ_g − θ = π/2 − θ.
    """
    poses = np.asarray(poses)
    return np.concatenate([mirror_points(poses[..., :2]), 2 * GOAL_POSE[2] - poses[..., 2:3]], axis=-1)


def mirror_states(states: np.ndarray) -> np.ndarray:
    """Env states (..., 5) = [agent_x, agent_y, block_x, block_y, θ] reflected: agent by ``mirror_points``,
    block by ``mirror_poses``."""
    states = np.asarray(states)
    return np.concatenate([mirror_points(states[..., :2]), mirror_poses(states[..., 2:5])], axis=-1)


def move_points(points: np.ndarray, from_pose: np.ndarray, to_pose: np.ndarray) -> np.ndarray:
    """World points (..., 2) under the rigid motion that carries block pose ``from_pose`` onto ``to_pose``:
    p -> R(Δθ) (p − t_from) + t_to with Δθ = θ_to − θ_from."""
    delta = float(to_pose[2] - from_pose[2])
    cos, sin = math.cos(delta), math.sin(delta)
    return (np.asarray(points) - from_pose[:2]) @ np.array([[cos, sin], [-sin, cos]]) + to_pose[:2]


def move_states(states: np.ndarray, from_pose: np.ndarray, to_pose: np.ndarray) -> np.ndarray:
    """Env states (..., 5) under ``move_points``' rigid motion: agent and block position moved, block angle
    θ -> θ + Δθ. The physics has no preferred place or direction, so away from the walls a moved
    demonstration is again a demonstration."""
    states = np.asarray(states)
    return np.concatenate([move_points(states[..., :2], from_pose, to_pose),
                           move_points(states[..., 2:4], from_pose, to_pose),
                           states[..., 4:5] + (to_pose[2] - from_pose[2])], axis=-1)


def clear_of_walls(states: np.ndarray) -> bool:
    """Whether no state (..., 5) has a block corner or the agent's disc reaching a wall (inner faces at 7 and
    504). Only the block collides with the walls; the agent is kept off them as a cautious extra."""
    states = np.asarray(states, dtype=np.float64).reshape(-1, 5)
    inner_low, inner_high = 5 + WALL_RADIUS, 506 - WALL_RADIUS
    agent = states[:, :2]
    if (agent.min() <= inner_low + AGENT_RADIUS) or (agent.max() >= inner_high - AGENT_RADIUS):
        return False
    corners = body_points_batch(TEE_POLYGONS.reshape(-1, 2), states[:, 2:5])
    return bool(corners.min() > inner_low and corners.max() < inner_high)


def body_points_batch(points: np.ndarray, poses: np.ndarray) -> np.ndarray:
    """Body-frame ``points`` (K, 2) in the world for each of ``poses`` (N, 3): (N, K, 2) = R(θ_n) p + t_n."""
    cos, sin = np.cos(poses[:, 2, None]), np.sin(poses[:, 2, None])
    x, y = points[:, 0], points[:, 1]
    return np.stack([x * cos - y * sin + poses[:, 0, None], x * sin + y * cos + poses[:, 1, None]], axis=-1)


def block_keypoints_batch(poses: np.ndarray) -> np.ndarray:
    """The 9 keypoints (N, 9, 2) of blocks at ``poses`` (N, 3): R(θ_n) k + t_n, as ``block_keypoints``."""
    return body_points_batch(TEE_KEYPOINTS, poses)


GOAL_POLYGONS = transform_points(TEE_POLYGONS, GOAL_POSE)
TEE_AREA = 6300.0


@numba.njit(cache=True)
def _clip_polygon_area(subject: np.ndarray, clip: np.ndarray) -> float:
    """Area of ``subject`` ∩ ``clip`` for convex counter-clockwise polygons (Sutherland–Hodgman).

    Each clip edge a→b keeps the half-plane where cross(b − a, p − a) >= 0; the area of the
    result is the shoelace sum ½ Σ (x_i y_{i+1} − x_{i+1} y_i).
    """
    capacity = subject.shape[0] + clip.shape[0] + 2
    current = np.empty((capacity, 2))
    scratch = np.empty((capacity, 2))
    n = subject.shape[0]
    current[:n] = subject
    m = clip.shape[0]
    for e in range(m):
        ax, ay = clip[e, 0], clip[e, 1]
        bx, by = clip[(e + 1) % m, 0], clip[(e + 1) % m, 1]
        ex, ey = bx - ax, by - ay
        count = 0
        for i in range(n):
            px, py = current[i, 0], current[i, 1]
            qx, qy = current[(i + 1) % n, 0], current[(i + 1) % n, 1]
            side_p = ex * (py - ay) - ey * (px - ax)
            side_q = ex * (qy - ay) - ey * (qx - ax)
            if side_p >= 0.0:
                scratch[count, 0] = px
                scratch[count, 1] = py
                count += 1
            if (side_p >= 0.0) != (side_q >= 0.0):
                s = side_p / (side_p - side_q)
                scratch[count, 0] = px + s * (qx - px)
                scratch[count, 1] = py + s * (qy - py)
                count += 1
        current, scratch = scratch, current
        n = count
        if n == 0:
            return 0.0
    area = 0.0
    for i in range(n):
        j = (i + 1) % n
        area += current[i, 0] * current[j, 1] - current[j, 0] * current[i, 1]
    return 0.5 * abs(area)


@numba.njit(cache=True)
def _union_intersection_area(polygons_a: np.ndarray, polygons_b: np.ndarray) -> float:
    """Area of (∪ A_i) ∩ (∪ B_j) for interior-disjoint convex pieces: Σ_ij |A_i ∩ B_j|."""
    total = 0.0
    for i in range(polygons_a.shape[0]):
        for j in range(polygons_b.shape[0]):
            total += _clip_polygon_area(polygons_a[i], polygons_b[j])
    return total


def goal_coverage(block_pose: np.ndarray) -> float:
    """coverage = area(goal ∩ block) / area(goal), both T's made of the bar and stem pieces."""
    block_polygons = transform_points(TEE_POLYGONS, np.asarray(block_pose, dtype=np.float64))
    return _union_intersection_area(block_polygons, GOAL_POLYGONS) / TEE_AREA


def reward_from_coverage(coverage: float) -> float:
    """reward = clip(coverage / 0.95, 0, 1)."""
    return min(max(coverage / SUCCESS_COVERAGE, 0.0), 1.0)
