"""The policy node's parameters: declaration (dynamically typed, so a DOUBLE given as ``10`` from
a launch argument is accepted), coercion and validation. A bad combination raises ConfigError,
which stops the node with a non-zero exit."""
from __future__ import annotations

from typing import Dict

from real_robot.arms import ARM_MODELS, make_arm
from real_robot.control import coerce

OUTPUT_MODES = ("joint_trajectory", "follow_joint_trajectory", "pose", "float_array")
AGENT_SOURCES = ("pose", "joint_states")
BLOCK_SOURCES = ("keypoints", "keypoints_stamped", "block_pose")
IMAGE_TRANSPORTS = ("raw", "compressed")

# name -> (kind, default); None = taken from the arm (joint_names, home_joints)
PARAMETERS = {
    "checkpoint": ("str", ""),
    "device": ("str", "cpu"),
    "robot": ("str", "ur"),
    "control_rate_hz": ("float", 10.0),
    "num_threads": ("int", 1),
    "seed": ("int", 0),
    "output_mode": ("str", "joint_trajectory"),
    "command_topic": ("str", "/scaled_joint_trajectory_controller/joint_trajectory"),
    "action_name": ("str", "/scaled_joint_trajectory_controller/follow_joint_trajectory"),  # follow_joint_trajectory
    "arm_model": ("str", "ur5e"),
    "ur_model": ("str", None),   # renamed to arm_model; still declared so an old params file fails loudly
    "joint_names": ("str_list", None),
    "home_joints": ("float_list", None),
    "agent_source": ("str", "pose"),
    "block_source": ("str", "keypoints"),
    "image_transport": ("str", "raw"),       # raw: sensor_msgs/Image; compressed: CompressedImage (JPEG / PNG)
    "image_crop": ("float_list", []),        # [x, y, width, height] of the camera frame showing the table; []: all
    "pixel_to_table": ("float_list", [0.0008, 0.0, 0.25, 0.0, -0.0008, 0.2]),
    "table_height": ("float", 0.15),
    "tool_orientation": ("float_list", [1.0, 0.0, 0.0, 0.0]),
    "frame_id": ("str", "base"),
    "workspace_min_px": ("float_list", [10.0, 10.0]),
    "workspace_max_px": ("float_list", [502.0, 502.0]),
    "max_step_px": ("float", 60.0),
    "max_velocity_px_s": ("float", 600.0),
    "max_tool_speed_m_s": ("float", 0.25),   # the original's real-robot cap; with the calibration it lowers the px limit
    "max_joint_velocity": ("float", 2.0),
    "stale_factor": ("float", 2.0),
    "inference_timeout_s": ("float", 1.0),
    "latency_margin_s": ("float", 0.01),
    "handover_margin_steps": ("int", 1),
    "schedule_full_horizon": ("bool", True),  # also schedule the prediction past Ta: a late chunk finds the arm moving
    "trajectory_velocities": ("bool", True),  # knot velocities on JointTrajectory points (cubic, not straight, segments)
    "float_array_rate_hz": ("float", 100.0),  # float_array: the planned path streamed at this rate (the controller's)
    "speed_scaling_topic": ("str", ""),     # std_msgs/Float64 in [0, 1] (UR: /speed_scaling_state_broadcaster/speed_scaling)
    "min_speed_scaling": ("float", 0.9),     # hold while the controller runs slower than this share of real time
    "simulated_inference_delay_s": ("float", 0.0),  # added to every inference after the warm-up: rehearse a slower computer
    "enabled": ("bool", False),
    "arming_window_s": ("float", 5.0),  # enabling needs ~/arm within this many seconds before (0: no arming step)
    "publish_hold": ("bool", True),
}
RUNTIME_PARAMETERS = ("enabled",)  # the only one `ros2 param set` may change; the rest need a restart


class ConfigError(ValueError):
    """An invalid parameter combination; the node exits with it."""


def read_parameters(node, parameters: Dict[str, tuple] = PARAMETERS) -> Dict[str, object]:
    """Declare every parameter of ``parameters`` (name -> (kind, default); the policy node's by default) on
    ``node`` and return their coerced values."""
    from rcl_interfaces.msg import ParameterDescriptor

    values = {}
    for name, (kind, default) in parameters.items():
        node.declare_parameter(name, default, ParameterDescriptor(dynamic_typing=True))
        raw = node.get_parameter(name).value
        value = default if raw is None else raw
        values[name] = None if value is None else coerce(name, value, kind)
    return values


def validate(p: Dict[str, object]):
    """Check ``p`` (filling joint_names / home_joints from the arm); returns the arm's kinematics."""
    problems = []
    if not p["checkpoint"]:
        problems.append("parameter 'checkpoint' is required (a .ckpt written by train.py)")
    if not 0 < p["control_rate_hz"] <= 1000:
        problems.append(f"control_rate_hz must be in (0, 1000], got {p['control_rate_hz']}")
    for name, choices in (("output_mode", OUTPUT_MODES), ("agent_source", AGENT_SOURCES),
                          ("block_source", BLOCK_SOURCES), ("arm_model", ARM_MODELS),
                          ("image_transport", IMAGE_TRANSPORTS)):
        if p[name] not in choices:
            problems.append(f"{name} must be one of {choices}, got {p[name]!r}")
    if len(p["image_crop"]) not in (0, 4) or (len(p["image_crop"]) == 4 and min(p["image_crop"][2:]) <= 0):
        problems.append(f"image_crop must be [] or [x, y, width, height] with a positive size, got {p['image_crop']}")
    if not 0 < p["min_speed_scaling"] <= 1:
        problems.append(f"min_speed_scaling must be in (0, 1], got {p['min_speed_scaling']}")
    if p["simulated_inference_delay_s"] < 0:
        problems.append(f"simulated_inference_delay_s must be >= 0, got {p['simulated_inference_delay_s']}")
    if p["arming_window_s"] < 0:
        problems.append(f"arming_window_s must be >= 0 (0: no arming step), got {p['arming_window_s']}")
    if not p["control_rate_hz"] <= p["float_array_rate_hz"] <= 2000:
        problems.append(f"float_array_rate_hz must be in [control_rate_hz, 2000], got {p['float_array_rate_hz']}")
    if len(p["workspace_min_px"]) != 2 or len(p["workspace_max_px"]) != 2 or \
            not all(a < b for a, b in zip(p["workspace_min_px"], p["workspace_max_px"])):
        problems.append("workspace_min_px / workspace_max_px must be [x, y] with min < max")
    for name in ("max_step_px", "max_velocity_px_s", "max_tool_speed_m_s", "max_joint_velocity", "stale_factor",
                 "inference_timeout_s"):
        if not p[name] > 0:
            problems.append(f"{name} must be > 0, got {p[name]}")
    if p["ur_model"] is not None:
        problems.append(f"parameter 'ur_model' was renamed: set arm_model: {p['ur_model']} (ur5 | ur5e | fr3) instead")
    arm = make_arm(p["arm_model"]) if p["arm_model"] in ARM_MODELS else None
    # Joint names and home only matter where joints are commanded or measured (pose output drives any arm).
    needs_joints = p["output_mode"] != "pose" or p["agent_source"] == "joint_states"
    if arm is not None:
        p["joint_names"] = list(arm.joint_names) if p["joint_names"] is None else p["joint_names"]
        p["home_joints"] = list(arm.home) if p["home_joints"] is None else p["home_joints"]
        dof = len(arm.joint_names)
        if needs_joints and len(p["joint_names"]) != dof:
            problems.append(f"joint_names must name the {dof} joints of arm_model {p['arm_model']!r}, "
                            f"got {p['joint_names']} (output_mode: pose drives other arms)")
        if needs_joints and len(p["home_joints"]) != dof:
            problems.append(f"home_joints must have {dof} values for arm_model {p['arm_model']!r}")
    if problems:
        raise ConfigError("; ".join(problems))
    return arm
