"""The policy node's switches: enable / disable (service ``~/enable`` and the runtime parameter
``enabled``, kept in agreement), the latched e-stop (``~/estop``) and its reset (``~/reset_estop``).
Disabling and e-stopping always publish a hold: the controller would otherwise finish the last
trajectory."""
from __future__ import annotations

from real_robot.params import RUNTIME_PARAMETERS


class SafetySwitches:
    """Mixed into PolicyNode: uses its ``node``, ``lock``, ``enabled``, ``estopped``, ``state``,
    ``holding``, ``_hold`` and ``_drop_plan``."""

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
            self.holding = False
        response.success, response.message = True, "e-stop reset; node is disabled until ~/enable"
        return response

