"""Run the Diffusion Policy node against a robot.

    ros2 launch real_robot policy.launch.py checkpoint:=/path/to/latest.ckpt robot:=ur

``robot`` selects ``config/<robot>.yaml`` (ur | franka | sim); the other arguments override it.
``robot:=sim`` is the preset ``sim.launch.py`` starts next to a ``sim_robot``; to pair this file with a
``sim_robot`` started on its own, point the topic arguments at the sim's topics (``agent_pose_topic:=/sim/agent_pose``
``keypoints_topic:=/sim/block_keypoints`` ``namespace:=sim``).
The node starts disabled (dry run): arm, then enable within 5 s (``arming_window_s``):
``ros2 service call /<namespace>/policy_node/arm std_srvs/srv/Trigger`` and
``ros2 service call /<namespace>/policy_node/enable std_srvs/srv/SetBool "{data: true}"``.
"""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare

ROBOTS = ("ur", "franka", "sim")
ARGUMENTS = (
    ("checkpoint", None, "Path of the policy checkpoint (.ckpt written by train.py)"),
    ("robot", "ur", "Robot preset: ur | franka | sim (selects config/<robot>.yaml)"),
    ("namespace", "", "Namespace of the policy node"),
    ("node_name", "policy_node", "Name of the policy node"),
    ("device", "cpu", "Torch device for inference (cpu, cuda, cuda:0)"),
    ("control_rate_hz", "10.0", "Control rate in Hz"),
    ("inference_timeout_s", "1.0", "Discard inference results later than this (seconds)"),
    ("enabled", "false", "Start enabled (true) instead of dry run (false)"),
    ("agent_pose_topic", "/tcp_pose_broadcaster/pose", "PoseStamped of the tool (agent_source: pose)"),
    ("joint_states_topic", "/joint_states", "JointState of the arm (agent_source: joint_states)"),
    ("keypoints_topic", "/block_keypoints", "the 9 block keypoints in pixels (Float64MultiArray, or PolygonStamped with block_source keypoints_stamped)"),
    ("image_topic", "/camera/color/image_raw", "sensor_msgs/Image (or CompressedImage with image_transport compressed) for image policies"),
)


def generate_launch_description():
    declared = []
    for name, default, description in ARGUMENTS:
        options = {"choices": list(ROBOTS)} if name == "robot" else {}  # a typo fails at launch, naming the presets
        if default is not None:
            options["default_value"] = default
        declared.append(DeclareLaunchArgument(name, description=description, **options))
    config = [FindPackageShare("real_robot"), "/config/", LaunchConfiguration("robot"), ".yaml"]
    overrides = {
        # Typed: a path or device must stay a string whatever it looks like, and
        # `control_rate_hz:=10` must still be a DOUBLE parameter.
        "checkpoint": ParameterValue(LaunchConfiguration("checkpoint"), value_type=str),
        "device": ParameterValue(LaunchConfiguration("device"), value_type=str),
        "control_rate_hz": ParameterValue(LaunchConfiguration("control_rate_hz"), value_type=float),
        "inference_timeout_s": ParameterValue(LaunchConfiguration("inference_timeout_s"), value_type=float),
        "enabled": ParameterValue(LaunchConfiguration("enabled"), value_type=bool),
    }
    node = Node(
        package="real_robot",
        executable="policy_node",
        name=LaunchConfiguration("node_name"),
        namespace=LaunchConfiguration("namespace"),
        parameters=[config, overrides],
        remappings=[
            ("agent_pose", LaunchConfiguration("agent_pose_topic")),
            ("joint_states", LaunchConfiguration("joint_states_topic")),
            ("block_keypoints", LaunchConfiguration("keypoints_topic")),
            ("image", LaunchConfiguration("image_topic")),
        ],
        output="screen",
        emulate_tty=True,
    )
    return LaunchDescription(declared + [node])
