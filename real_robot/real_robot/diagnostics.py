"""``/diagnostics`` for the policy node (diagnostic_msgs/DiagnosticArray, about once a second), the standard
place robot integrators watch (rqt_robot_monitor, diagnostic_aggregator).

Level: ERROR while e-stopped; WARN when, since the previous report, a chunk came late, an inference timed
out, observations went stale (a hold), or while observations are missing, no controller subscribes to the
commands, or the controller's speed scaling holds the node; OK otherwise. The values are the
node's counters (chunks, on time, late, dropped, timeouts, clamps, holds, IK failures, commands) and its
latest inference and end-to-end latencies.
"""
from __future__ import annotations

WARN_COUNTERS = ("late", "timeouts", "stale_chunks", "holds", "goals_rejected", "goals_failed")


class DiagnosticsReporter:
    def __init__(self, node, name: str, period_s: float = 1.0) -> None:
        from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

        self.DiagnosticArray, self.DiagnosticStatus, self.KeyValue = DiagnosticArray, DiagnosticStatus, KeyValue
        self.publisher = node.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.node, self.name, self.period_s = node, name, period_s
        self.last_time, self.last_counts = None, {}

    def level_and_message(self, state: str, stats: dict) -> tuple[int, str]:
        status = self.DiagnosticStatus
        if state == "estop":
            return status.ERROR, "e-stop latched"
        grown = [key for key in WARN_COUNTERS if stats.get(key, 0) > self.last_counts.get(key, 0)]
        if grown:
            return status.WARN, f"{state}; since the last report: {', '.join(grown)}"
        if state == "waiting_for_observations":
            return status.WARN, "waiting for observations"
        if state == "no_controller":
            return status.WARN, "enabled, but no controller subscribes to the command topic"
        if state == "speed_scaled":
            return status.WARN, "holding: the controller's speed scaling is below min_speed_scaling"
        return status.OK, state

    def maybe_publish(self, now: float, state: str, stats: dict, latencies: dict) -> bool:
        """Publish when ``period_s`` has passed since the last report; returns whether it did."""
        if self.last_time is not None and now - self.last_time < self.period_s:
            return False
        level, message = self.level_and_message(state, stats)
        values = [self.KeyValue(key=key, value=str(value)) for key, value in {**stats, **latencies}.items()]
        report = self.DiagnosticStatus(level=level, name=self.name, message=message, hardware_id="policy",
                                       values=values)
        self.publisher.publish(self.DiagnosticArray(header=self._header(), status=[report]))
        self.last_time, self.last_counts = now, dict(stats)
        return True

    def _header(self):
        from std_msgs.msg import Header

        return Header(stamp=self.node.get_clock().now().to_msg())
