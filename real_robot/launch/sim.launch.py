"""Policy node + Push-T sim robot, talking over the same topics as the real UR setup.

    ros2 launch real_robot sim.launch.py checkpoint:=/path/to/latest.ckpt seed:=100000
"""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare


def generate_launch_description():
    arguments = [
        DeclareLaunchArgument("checkpoint", description="Path of the policy checkpoint"),
        DeclareLaunchArgument("namespace", default_value="sim", description="Namespace of both nodes"),
        DeclareLaunchArgument("seed", default_value="100000", description="Push-T episode seed"),
        DeclareLaunchArgument("max_steps", default_value="300", description="Episode length (steps)"),
        DeclareLaunchArgument("control_rate_hz", default_value="10.0", description="Control rate in Hz"),
        DeclareLaunchArgument("publish_images", default_value="false", description="Publish camera images"),
        DeclareLaunchArgument("enabled", default_value="true", description="Start the policy enabled"),
    ]
    namespace = LaunchConfiguration("namespace")
    rate = ParameterValue(LaunchConfiguration("control_rate_hz"), value_type=float)
    # Both nodes read config/sim.yaml: the calibration, table height and arm model they share
    # (the sim ignores the policy node's other keys) cannot drift apart when it is edited.
    preset = [FindPackageShare("real_robot"), "/config/sim.yaml"]
    sim = Node(
        package="real_robot",
        executable="sim_robot",
        name="sim_robot",
        namespace=namespace,
        parameters=[preset, {
            "seed": ParameterValue(LaunchConfiguration("seed"), value_type=int),
            "max_steps": ParameterValue(LaunchConfiguration("max_steps"), value_type=int),
            "control_rate_hz": rate,
            "publish_images": ParameterValue(LaunchConfiguration("publish_images"), value_type=bool),
        }],
        output="screen",
    )
    policy = Node(
        package="real_robot",
        executable="policy_node",
        name="policy_node",
        namespace=namespace,
        parameters=[
            preset,
            {
                "checkpoint": ParameterValue(LaunchConfiguration("checkpoint"), value_type=str),
                "control_rate_hz": rate,
                "enabled": ParameterValue(LaunchConfiguration("enabled"), value_type=bool),
            },
        ],
        output="screen",
        emulate_tty=True,
    )
    return LaunchDescription(arguments + [sim, policy])
