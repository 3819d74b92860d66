"""The policy node's switches, clamps and holds: enable / disable (service ``~/enable`` and the runtime
parameter ``enabled``, kept in agreement), the latched e-stop (``~/estop``) and its reset
(``~/reset_estop``). Disabling, e-stopping, stale observations and shutting down publish a hold at
the commanded setpoint: the controller would otherwise finish the last trajectory. Each trajectory
is timed so the controller's move from that setpoint to its first point respects the speed limit.
Every chunk is clipped to the workspace and step-limited from where the arm was sent; step setpoints are
step-limited again from the last one sent."""
from __future__ import annotations

import time

import numpy as np

from real_robot.control import clamp_actions, first_point_lead, knot_velocities, limit_step, sample_trajectory
from real_robot.params import RUNTIME_PARAMETERS


class SafetySwitches:
    """Mixed into PolicyNode: works on the state its ``__init__`` sets (``lock``, ``p``, ``enabled``,
    ``estopped``, ``hold_setpoint``, the plan and its bookkeeping, the publishers, arm and calibration)."""

    @property
    def holding(self) -> bool:
        return self.hold_setpoint is not None

    def _on_parameters(self, parameters):
        """``ros2 param set`` of ``enabled`` switches like ``~/enable``; the rest need a restart."""
        from rcl_interfaces.msg import SetParametersResult

        for parameter in parameters:  # all checked before any is applied: a request succeeds or changes nothing
            if parameter.name not in RUNTIME_PARAMETERS:
                return SetParametersResult(successful=False,
                                           reason=f"{parameter.name} is read at start-up only; restart the node")
            if not isinstance(parameter.value, bool):
                return SetParametersResult(successful=False, reason="enabled must be true or false")
        for parameter in parameters:
            with self.lock:
                if parameter.value and self.estopped:
                    return SetParametersResult(successful=False, reason="e-stop latched; call ~/reset_estop first")
                window = self.p["arming_window_s"]
                if parameter.value and not self.enabled and window > 0:
                    if time.monotonic() > self.armed_until:
                        return SetParametersResult(successful=False, reason=(
                            f"not armed: call ~/arm first, then enable within {window:g} s (arming_window_s)"))
                    self.armed_until = 0.0  # one arming, one enable
                if self.enabled and not parameter.value:
                    self._hold("disabled", force=True)  # the controller would otherwise finish the last trajectory
                if parameter.value and not self.enabled:
                    # The dry-run plan was chained from its own points, not from where the arm is:
                    # the first enabled chunk starts again from the measured position.
                    self._drop_plan()
                if self.enabled != parameter.value:
                    self.node.get_logger().info("enabled" if parameter.value else "disabled (dry run)")
                self.enabled = parameter.value
        return SetParametersResult(successful=True)

    def _set_enabled_parameter(self, value: bool):
        from rclpy.parameter import Parameter

        return self.node.set_parameters([Parameter("enabled", value=value)])[0]

    def _on_enable(self, request, response):
        result = self._set_enabled_parameter(bool(request.data))  # the parameter always shows the state
        response.success = result.successful
        response.message = result.reason or ("enabled" if self.enabled else "disabled (dry run)")
        return response

    def _on_arm(self, request, response):
        """The first of the two deliberate steps to enable: ``~/arm``, then ``~/enable`` (or ``ros2 param set
        enabled true``) within ``arming_window_s``; a lone, accidental enable call is refused."""
        with self.lock:
            if self.estopped:
                response.success, response.message = False, "e-stop latched; call ~/reset_estop first"
                return response
            self.armed_until = time.monotonic() + self.p["arming_window_s"]
        response.success = True
        response.message = f"armed: enable within {self.p['arming_window_s']:g} s"
        return response

    def _on_estop(self, request, response):
        with self.lock:
            if not self.estopped:
                self._hold("e-stop", force=True)
            self.estopped = True
            self.enabled = False
            self.state = "estop"
        self._set_enabled_parameter(False)
        response.success, response.message = True, "e-stop latched; commands stopped"
        self.node.get_logger().error(response.message)
        return response

    def _on_reset_estop(self, request, response):
        with self.lock:
            self.estopped = False
            self.hold_setpoint = None
        response.success, response.message = True, "e-stop reset; node is disabled until ~/enable"
        return response

    # --- clamps -------------------------------------------------------------------------
    def _clamp_pixels(self, timed, now: float):
        """Workspace / per-step clamps in pixels (in place). For joint outputs, returns where IK starts:
        (seed, check_speed, previous_time); the seed is the previous planned point, else the measured
        joints; failing both, the last command or home_joints only pick the IK branch (no speed check
        against them: the pixel step from the measured position bounds that first move)."""
        p = self.p
        previous = self.schedule.anchor_before(timed[0].time)  # the first step is limited by the time from it
        start = previous.pixels if previous is not None else self.agent_px
        max_step = min(p["max_step_px"], p["max_velocity_px_s"] * self.dt)
        first_step = max_step * min(1.0, (timed[0].time - previous.time) / self.dt) if previous is not None else None
        clamped, n = clamp_actions(np.array([t.pixels for t in timed]), start, np.array(p["workspace_min_px"]),
                                   np.array(p["workspace_max_px"]), max_step, first_step)
        self.stats["clamped"] += n
        for planned, pixels in zip(timed, clamped):
            planned.pixels = pixels
        if p["output_mode"] == "pose":
            return None
        seed = previous.joints if previous is not None and previous.joints is not None else None
        if seed is None:
            seed = self.observations.newest_value("joints")
        check = seed is not None
        if seed is None:  # after a dropped plan the last command is no longer where the arm is
            seed = self.last_joints if self.last_joints is not None else np.asarray(p["home_joints"])
        return seed, check, previous.time if previous is not None else now

    def _limited_setpoint(self, point):
        """A pose setpoint at most one period's step from the last one sent, scaled by the time between them:
        a chunk that replaced the point sent a tick ago may start farther away."""
        if self.last_sent is None:
            return point.pixels
        periods = max(1.0, (point.time - self.last_sent_time) / self.dt)
        step = min(self.p["max_step_px"], self.p["max_velocity_px_s"] * self.dt) * periods
        pixels, changed = limit_step(self.last_sent[0], point.pixels, step)
        self.stats["clamped"] += int(changed)
        return pixels

    # --- holds ----------------------------------------------------------------------------
    def _drop_plan(self) -> None:
        """Forget the plan and any inference in flight (its result will be discarded)."""
        self.schedule.clear()
        self.published_path = None
        self.last_sent = None
        self.generation += 1
        self.inference_in_flight = False
        self.request = None

    def _hold(self, reason: str, force: bool = False) -> None:
        """Drop the plan and (once) command the arm to stay at its current setpoint; nothing new
        follows. ``force`` publishes the hold even with ``publish_hold: false`` (disable and e-stop
        must stop motion)."""
        setpoint_px, setpoint_joints = self.hold_setpoint = self._commanded_setpoint(self.now())
        self._drop_plan()
        self.stats["holds"] += 1
        self.node.get_logger().warning(f"holding position: {reason}")
        if not (self.enabled and (self.p["publish_hold"] or force)):
            return
        mode = self.p["output_mode"]
        if mode == "pose":
            if setpoint_px is not None:
                self.command_pub.publish(self.commands.pose_stamped(setpoint_px, 0.0))
            return
        joints = setpoint_joints
        if joints is None and setpoint_px is not None:
            seed = self.last_joints if self.last_joints is not None else self.p["home_joints"]
            joints = self.arm.inverse(self.calibration.tool_pose(setpoint_px), seed)
        if joints is None:
            return
        if mode in ("joint_trajectory", "follow_joint_trajectory"):
            self.command_pub.publish(self.commands.hold_trajectory(joints, self.dt))
            if setpoint_px is not None:  # the controller now holds there: a later plan starts from it
                now = self.now()
                self.published_path = (np.array([now, now + self.dt]), np.array([setpoint_px] * 2),
                                       np.array([joints] * 2))
        else:  # a forward controller keeps its last command: the setpoint the stream had reached
            self.command_pub.publish(self.commands.float_array(joints))

    def _hold_if_slowed(self) -> bool:
        """The controller runs trajectories slower than real time (UR speed slider, a safeguard slow-down, a
        pause): speed scaling below ``min_speed_scaling``. The schedule's latency compensation assumes real
        time, so hold (once) until the scaling is back; the next plan then starts from the held setpoint."""
        scaling = self.speed_scaling
        if scaling is None or scaling >= self.p["min_speed_scaling"]:
            return False
        if not self.holding:
            self._hold(f"speed scaling {scaling:.2f} < min_speed_scaling {self.p['min_speed_scaling']:.2f}")
        self.state = "speed_scaled"
        return True

    def _hold_if_stale(self, now: float, t_obs: float) -> bool:
        """Newest observation older than stale_factor·dt: hold (once) and say so. Under the lock."""
        if -self.dt <= now - t_obs <= self.p["stale_factor"] * self.dt:  # (stamps beyond +dt are refused)
            return False
        if not self.holding:
            self._hold("stale observation")
        self.state = "stale_observation"
        return True

    def _commanded_setpoint(self, now: float):
        """Where the arm is being sent right now, as (pixels, joints): the last published trajectory
        sampled at ``now`` (a controller interpolates between its points, starting from its setpoint
        on receipt; for step outputs the last setpoint sent), else the latest measurement. The measurement can be stale when a hold is due, and
        holding there would pull the arm back."""
        if self.holding:
            return self.hold_setpoint  # a second hold (e-stop during a stale hold) stays where the first sent it
        if self.p["output_mode"] == "pose" and self.last_sent is not None:
            return self.last_sent  # step setpoints: the arm was sent to the last one
        if self.published_path is not None:  # a trajectory the controller follows (implies enabled)
            times, pixels, joints = self.published_path
            return (sample_trajectory(times, pixels, now),
                    None if joints is None else sample_trajectory(times, joints, now))
        return self.agent_px, self.observations.newest_value("joints")

    def _limited_trajectory(self, points, now: float):
        """``points`` as a JointTrajectory, remembered as the controller will follow it (from its
        setpoint at ``now``); the first point comes no sooner than the speed limits allow from that
        setpoint (``first_point_lead``): while a trajectory runs, at its scheduled time (no lag)."""
        following = self.published_path is not None
        setpoint_px, setpoint_joints = self._commanded_setpoint(now)
        max_speed_px = min(self.p["max_velocity_px_s"], self.p["max_step_px"] / self.dt)
        lead = first_point_lead(points[0], setpoint_px, setpoint_joints, following, max_speed_px,
                                self.p["max_joint_velocity"], self.dt)
        delay = self.commands.trajectory_delay(points, now, lead)
        times = np.array([now] + [p.time + delay for p in points])
        if setpoint_joints is None and self.p["output_mode"] == "float_array":
            setpoint_joints = points[0].joints  # no joint state yet: the stream starts at the first point
        joints = None if setpoint_joints is None else np.array([setpoint_joints] + [p.joints for p in points])
        self.published_path = (times, np.array([setpoint_px] + [p.pixels for p in points]), joints)
        if self.p["output_mode"] == "float_array":
            return None  # the node streams the path itself (``_stream_tick``)
        velocities = None
        if self.p["trajectory_velocities"]:  # the setpoint's joints unknown (no joint states): start at the first point
            path = joints if joints is not None else np.array([points[0].joints] + [p.joints for p in points])
            velocities = knot_velocities(times, path, self.p["max_joint_velocity"])
        return self.commands.trajectory(points, now, delay, velocities)

    def stop_on_shutdown(self) -> None:
        """On the way out, an enabled node commands a hold: the controller would otherwise finish
        the last trajectory (up to a chunk of motion) with nobody watching."""
        import rclpy
        from rclpy.duration import Duration

        if not rclpy.ok():
            return
        with self.lock:
            if not self.enabled or self.estopped:
                return
            self._hold("node shutting down", force=True)
        try:
            self.command_pub.wait_for_all_acked(Duration(seconds=1.0))
        except Exception:  # noqa: BLE001 - best effort: an older rclpy, or no subscriber left
            time.sleep(0.1)
