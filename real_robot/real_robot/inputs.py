"""The policy node's observation side, mixed into PolicyNode: decoding callbacks that file each message
under its capture stamp, the controller's speed scaling, and the policy input built from the stamped
buffer (``observations.TimedObservations``)."""
from __future__ import annotations

import math

import numpy as np

from real_robot.observations import compose_observation


class ObservationInputs:
    """Works on the state PolicyNode's ``__init__`` sets (``node``, ``lock``, ``p``, ``dt``, ``observations``,
    ``obs_type``, ``arm``, ``calibration``, ``n_obs_steps``)."""

    def now(self) -> float:
        return self.node.get_clock().now().nanoseconds * 1e-9

    def _store(self, key, decode):
        def callback(msg):
            try:
                value = decode(msg)
                if not np.isfinite(value).all():  # NaN/inf counts as missing: the stale watchdog then holds
                    raise ValueError("it holds non-finite values (NaN or inf)")
            except Exception as error:  # noqa: BLE001 - a malformed message must never stop the controller
                self.node.get_logger().warning(f"ignoring {key} message: {error}", throttle_duration_sec=2.0)
                return
            header = getattr(msg, "header", None)
            stamp = header.stamp.sec + header.stamp.nanosec * 1e-9 if header is not None else 0.0
            now = self.now()
            if stamp == 0.0:
                stamp = now
            elif stamp > now + self.dt:
                self.node.get_logger().warning(f"ignoring {key} message stamped {stamp - now:.3f} s in the future: "
                                               "synchronise the clocks (chrony / NTP)", throttle_duration_sec=2.0)
                return
            with self.lock:
                self.observations.add(key, value, stamp)
        return callback

    def _on_speed_scaling(self, msg) -> None:
        value = float(msg.data)
        if math.isfinite(value):
            self.speed_scaling = value / 100.0 if value > 1.0 else value  # older UR drivers sent percent

    def _compose(self, parts):
        return compose_observation(parts, self.obs_type, self.p["agent_source"] == "joint_states",
                                   self.arm, self.calibration)

    def _sample(self):
        """The newest complete observation, its time (the oldest stamp of its parts), the agent."""
        with self.lock:
            newest = self.observations.newest()
        return self._compose(newest)

    def _stacked_history(self, t_obs: float):
        """The policy input: n_obs_steps frames one period apart ending at t_obs, picked by stamp
        (each (1, n_obs_steps, ...)). Under the lock."""
        frames = [self._compose(parts)[0] for parts in self.observations.history(
            t_obs, self.n_obs_steps, self.dt, max_hold=self.p["stale_factor"] * self.dt)]
        return {key: np.stack([frame[key] for frame in frames], axis=1) for key in frames[-1]}
