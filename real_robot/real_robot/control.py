"""ROS-free parts of the policy node: the latency-compensated action schedule, the safety
clamps and parameter coercion. Kept apart from rclpy so they are unit-testable anywhere.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

import numpy as np


@dataclass
class PlannedAction:
    time: float                       # scheduled execution time (seconds, node clock)
    pixels: np.ndarray                # (2,) policy-frame target
    joints: Optional[np.ndarray] = None
    tail: bool = False                # predicted beyond the Ta executed actions: followed only while the next chunk is late


@dataclass
class ChunkReport:
    n_actions: int
    n_dropped: int                    # already due when the chunk arrived
    handed_over_on_time: Optional[bool]  # None for the first chunk after a (re)start
    all_stale: bool


@dataclass
class ActionSchedule:
    """Diffusion Policy's receding horizon with latency compensation, over the whole predicted horizon.

    Action i of a chunk predicted from the observation taken at ``t_obs`` is due at
    ``t_obs + i * dt``. The first ``n_execute`` (Ta) are the plan; the rest of the horizon is its *tail*,
    scheduled too, so that a late next chunk finds the arm still moving along its prediction instead of
    stopping (replanning is timed by the Ta actions alone). Actions due before ``now + margin`` are dropped;
    when all are, only the last one is kept, moved to the next control slot. A new chunk replaces the
    pending part of the old plan (tail included) from its first action on.
    """

    dt: float
    margin: float = 0.01
    plan: List[PlannedAction] = field(default_factory=list)

    def clear(self) -> None:
        self.plan.clear()

    def pending(self, now: float) -> List[PlannedAction]:
        return [p for p in self.plan if p.time > now + self.margin]

    def ahead(self, now: float) -> List[PlannedAction]:
        """Points not yet due (a trajectory may include those within the margin: the controller
        interpolates to them from its setpoint)."""
        return [p for p in self.plan if p.time > now]

    def prune(self, now: float) -> None:
        """Forget actions whose time has passed (keeps the most recent one as 'last commanded')."""
        past = [i for i, p in enumerate(self.plan) if p.time <= now]
        if len(past) > 1:
            del self.plan[:past[-1]]

    def _kept_before(self, start: float) -> List[PlannedAction]:
        """Old points a chunk starting at ``start`` keeps: those at least one period earlier, so
        consecutive points of the merged plan are never closer than dt (speed checks assume dt)."""
        return [p for p in self.plan if p.time <= start - self.dt + 1e-9]

    def anchor_before(self, time: float) -> Optional[PlannedAction]:
        """The newest planned point due before ``time``: where the arm has been sent when a chunk starting at
        ``time`` takes over (it may already have been published even if ``commit`` then drops it)."""
        earlier = [p for p in self.plan if p.time < time - 1e-9]
        return earlier[-1] if earlier else None

    def schedule(self, actions: np.ndarray, t_obs: float, now: float,
                 n_execute: Optional[int] = None) -> Tuple[List[PlannedAction], ChunkReport]:
        """Timed, not yet clamped actions of a new chunk (see ``commit``); actions past the first
        ``n_execute`` (default: all) are its tail."""
        actions = np.asarray(actions, dtype=np.float64)
        n_execute = len(actions) if n_execute is None else min(n_execute, len(actions))
        times = t_obs + np.arange(len(actions)) * self.dt
        tail = np.arange(len(actions)) >= n_execute
        fresh = times > now + self.margin
        all_stale = not fresh.any()
        if all_stale:
            # Everything is late: execute only the last action, at the next control slot.
            next_slot = t_obs + math.floor((now + self.margin - t_obs) / self.dt + 1) * self.dt
            timed = [PlannedAction(float(next_slot), actions[-1].copy())]
        else:
            timed = [PlannedAction(float(t), a.copy(), tail=bool(is_tail))
                     for t, a, is_tail in zip(times[fresh], actions[fresh], tail[fresh])]
        on_time = None
        if self.plan:  # on time: the new chunk starts before the old plan's Ta actions run out
            old_pending = [p for p in self.pending(now) if not p.tail]
            old_end = old_pending[-1].time if old_pending else None
            on_time = old_end is not None and timed[0].time <= old_end + self.dt + 1e-6
        dropped = int((~fresh & ~tail).sum()) - (1 if all_stale and not tail.any() else 0)
        report = ChunkReport(len(actions), max(0, dropped), on_time, all_stale)
        return timed, report

    def commit(self, timed: List[PlannedAction]) -> None:
        if not timed:
            return
        self.plan = self._kept_before(timed[0].time) + list(timed)

    def needs_replan(self, now: float, latency: float, margin_steps: int) -> bool:
        """Start the next inference when what is left of the plan's Ta actions (not its tail) covers only
        the expected inference latency plus ``margin_steps`` control periods (n_a - ceil(L/dt) steps in)."""
        remaining = sum(not p.tail for p in self.pending(now))
        return remaining <= math.ceil(latency / self.dt) + margin_steps


def clamp_actions(actions: np.ndarray, start: Optional[np.ndarray], low: np.ndarray, high: np.ndarray,
                  max_step: float, first_max_step: Optional[float] = None) -> Tuple[np.ndarray, int]:
    """Clip to the workspace box, then limit each step (from ``start``, then from the previous
    action) to ``max_step`` in Euclidean norm (the first one, from ``start``, to ``first_max_step`` when
    given: a start less than a period earlier). Returns the clamped actions and how many changed.

    A non-finite action is replaced by the point before it (a hold; counted as changed); a non-finite
    ``start`` raises ValueError, since no step from an unknown point can be bounded."""
    actions = np.asarray(actions, dtype=np.float64)
    non_finite = ~np.isfinite(actions).all(axis=-1)  # before clipping, which would turn ±inf into an edge
    out = np.clip(actions, low, high)
    changed = np.any(out != actions, axis=-1)
    if start is not None and not np.isfinite(start).all():
        raise ValueError(f"start point {start} is not finite: the first step cannot be bounded")
    previous = None if start is None else np.clip(np.asarray(start, dtype=np.float64), low, high)
    for i in range(len(out)):
        if non_finite[i]:
            if previous is None:
                raise ValueError("the first action is not finite and there is no start point to hold")
            out[i], changed[i] = previous, True
        limit = first_max_step if i == 0 and first_max_step is not None else max_step
        if previous is not None and math.isfinite(limit):
            step = out[i] - previous
            norm = float(np.linalg.norm(step))
            if norm > limit:
                out[i] = previous + step * (limit / max(norm, 1e-12))
                changed[i] = True
        previous = out[i]
    return out, int(changed.sum())


def limit_step(previous: np.ndarray, target: np.ndarray, limit: float, norm=np.linalg.norm) -> Tuple[np.ndarray, bool]:
    """``target`` moved toward ``previous`` until ``norm(target − previous) ≤ limit`` (direction kept);
    whether it had to move."""
    step = np.asarray(target, dtype=np.float64) - previous
    size = float(norm(step))
    if size <= limit:
        return np.asarray(target, dtype=np.float64), False
    return previous + step * (limit / size), True


def coerce(name: str, value, kind: str):
    """Coerce a parameter value to ``kind`` ('float', 'int', 'bool', 'str', 'float_list',
    'str_list'), accepting an INTEGER where a DOUBLE is expected. Raises ValueError naming it."""
    try:
        if kind == "float":
            if isinstance(value, bool):
                raise TypeError
            return float(value)
        if kind == "int":
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise TypeError
            return int(value)
        if kind == "bool":
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "false"):
                return value.lower() == "true"
            raise TypeError
        if kind == "str":
            if not isinstance(value, str):
                raise TypeError
            return value
        if kind == "float_list":
            return [coerce(name, v, "float") for v in list(value)]
        if kind == "str_list":
            return [coerce(name, v, "str") for v in list(value)]
    except (TypeError, ValueError):
        raise ValueError(f"parameter {name!r} must be {kind.replace('_', ' ')}, got {value!r}") from None
    raise ValueError(f"unknown parameter kind {kind!r}")


def joint_speed_ok(previous: Optional[np.ndarray], joints: np.ndarray, seconds: float, limit: float) -> bool:
    if previous is None or seconds <= 0:
        return True
    return float(np.abs(np.asarray(joints) - np.asarray(previous)).max()) / seconds <= limit


def percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if len(values) else float("nan")


def sample_trajectory(times: np.ndarray, positions: np.ndarray, t: float) -> np.ndarray:
    """Position at time ``t`` of a piecewise-linear trajectory through ``positions`` (N, D) at
    increasing ``times`` (N,): q(t) = q_i + (t - t_i)/(t_{i+1} - t_i) (q_{i+1} - q_i), held
    constant before the first and after the last point — how a JointTrajectoryController
    interpolates from the state it had when a trajectory arrived (with knot velocities it follows a
    cubic through the same points instead; this is the setpoint to within that curve's bulge)."""
    times = np.asarray(times, dtype=np.float64)
    positions = np.asarray(positions, dtype=np.float64)
    return np.array([np.interp(t, times, positions[:, d]) for d in range(positions.shape[1])])


def knot_velocities(times: np.ndarray, positions: np.ndarray, max_velocity: float) -> np.ndarray:
    """Velocities at the points 1..N−1 of a path whose row 0 is the controller's setpoint now: central
    differences v_i = (q_{i+1} − q_{i−1}) / (t_{i+1} − t_{i−1}), zero at the last point (the path ends at
    rest), each joint clipped to ±max_velocity. With them a JointTrajectoryController interpolates a cubic
    Hermite spline (continuous velocity) instead of straight segments (a velocity jump at every point)."""
    times = np.asarray(times, dtype=np.float64)
    positions = np.asarray(positions, dtype=np.float64)
    velocities = np.zeros_like(positions[1:])
    if len(positions) > 2:
        velocities[:-1] = (positions[2:] - positions[:-2]) / (times[2:] - times[:-2])[:, None]
    return np.clip(velocities, -max_velocity, max_velocity)


def first_point_lead(first: PlannedAction, setpoint_px: np.ndarray, setpoint_joints: Optional[np.ndarray],
                     following: bool, max_speed_px: float, max_joint_velocity: float, dt: float) -> float:
    """Earliest time_from_start of a trajectory's first point: the controller moves there from its
    setpoint, so lead >= |p_0 - s| / v_px and, with joints known, max_j |q_0j - s_j| / v_q. From a
    standstill (``following`` False: the setpoint is a measurement) at least one period as well."""
    lead = float(np.linalg.norm(np.asarray(first.pixels) - setpoint_px)) / max_speed_px
    if setpoint_joints is not None and first.joints is not None:
        lead = max(lead, float(np.abs(np.asarray(first.joints) - setpoint_joints).max()) / max_joint_velocity)
    return lead if following else max(lead, dt)


def attach_joints(timed: List[PlannedAction], arm, calibration, seed: np.ndarray, check_speed: bool,
                  previous_time: float, dt: float, max_joint_velocity: float) -> bool:
    """Solve IK for each planned action in turn, each seeded by the previous solution, and cut the
    plan at the first unreachable target or joint-speed violation (|Δq| / Δt > limit, Δt at least
    one period for the first point, whose timing ``first_point_lead`` bounds when it is published).
    ``check_speed`` False skips the check against ``seed`` (a branch preference, not the arm's
    position). True if it had to cut."""
    for i, planned in enumerate(timed):
        joints = arm.inverse(calibration.tool_pose(planned.pixels), seed)
        seconds = max(planned.time - previous_time, dt)
        if joints is None or (check_speed and not joint_speed_ok(seed, joints, seconds, max_joint_velocity)):
            del timed[i:]
            return True
        planned.joints, seed, previous_time, check_speed = joints, joints, planned.time, True
    return False
