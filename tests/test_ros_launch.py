"""The launch files, loaded with stand-in ``launch`` / ``launch_ros`` modules (neither is on
PyPI): packages, executables, names, namespaces, typed parameters, remappings, arguments."""
import importlib.util
import sys
import types
from pathlib import Path

import pytest

LAUNCH_DIR = Path(__file__).resolve().parent.parent / "real_robot" / "launch"


class Recorder:
    """Stores its constructor arguments, like the real launch actions/substitutions hold them."""

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs

    def __repr__(self):
        return f"{type(self).__name__}{self.args}{self.kwargs}"


def stand_in_modules():
    classes = {name: type(name, (Recorder,), {}) for name in (
        "LaunchDescription", "DeclareLaunchArgument", "LaunchConfiguration", "Node", "ParameterValue",
        "FindPackageShare", "PathJoinSubstitution", "TextSubstitution")}
    modules = {
        "launch": dict(LaunchDescription=classes["LaunchDescription"]),
        "launch.actions": dict(DeclareLaunchArgument=classes["DeclareLaunchArgument"]),
        "launch.substitutions": dict(LaunchConfiguration=classes["LaunchConfiguration"],
                                     PathJoinSubstitution=classes["PathJoinSubstitution"],
                                     TextSubstitution=classes["TextSubstitution"]),
        "launch_ros": {},
        "launch_ros.actions": dict(Node=classes["Node"]),
        "launch_ros.parameter_descriptions": dict(ParameterValue=classes["ParameterValue"]),
        "launch_ros.substitutions": dict(FindPackageShare=classes["FindPackageShare"]),
    }
    result = {}
    for name, attributes in modules.items():
        module = types.ModuleType(name)
        module.__dict__.update(attributes)
        result[name] = module
    return result


def load(filename, monkeypatch):
    for name, module in stand_in_modules().items():
        monkeypatch.setitem(sys.modules, name, module)
    spec = importlib.util.spec_from_file_location(filename.replace(".", "_"), LAUNCH_DIR / filename)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    description = module.generate_launch_description()
    entities = description.args[0]
    arguments = {e.args[0]: e.kwargs for e in entities if type(e).__name__ == "DeclareLaunchArgument"}
    nodes = {e.kwargs["executable"]: e.kwargs for e in entities if type(e).__name__ == "Node"}
    return arguments, nodes


def config_name(value):
    """The LaunchConfiguration name behind a stand-in substitution."""
    assert type(value).__name__ == "LaunchConfiguration", value
    return value.args[0]


def typed(value):
    assert type(value).__name__ == "ParameterValue", f"{value} must be a typed ParameterValue"
    return config_name(value.args[0]), value.kwargs["value_type"]


def test_policy_launch(monkeypatch):
    arguments, nodes = load("policy.launch.py", monkeypatch)
    assert "default_value" not in arguments["checkpoint"]  # required
    assert arguments["robot"]["default_value"] == "ur" and arguments["robot"]["choices"] == ["ur", "franka", "sim"]
    assert arguments["enabled"]["default_value"] == "false"  # safe default: dry run
    for name in ("namespace", "device", "control_rate_hz", "inference_timeout_s", "agent_pose_topic",
                 "joint_states_topic", "keypoints_topic", "image_topic", "node_name"):
        assert name in arguments and arguments[name]["description"]
    node = nodes["policy_node"]
    assert set(nodes) == {"policy_node"}
    assert node["package"] == "real_robot"
    assert config_name(node["name"]) == "node_name" and arguments["node_name"]["default_value"] == "policy_node"
    assert config_name(node["namespace"]) == "namespace"
    config_file, overrides = node["parameters"]
    assert type(config_file[0]).__name__ == "FindPackageShare" and config_file[0].args == ("real_robot",)
    assert config_file[1] == "/config/" and config_name(config_file[2]) == "robot" and config_file[3] == ".yaml"
    assert typed(overrides["checkpoint"]) == ("checkpoint", str) and typed(overrides["device"]) == ("device", str)
    assert typed(overrides["control_rate_hz"]) == ("control_rate_hz", float)
    assert typed(overrides["inference_timeout_s"]) == ("inference_timeout_s", float)
    assert typed(overrides["enabled"]) == ("enabled", bool)
    remaps = {source: config_name(target) for source, target in node["remappings"]}
    assert remaps == {"agent_pose": "agent_pose_topic", "joint_states": "joint_states_topic",
                      "block_keypoints": "keypoints_topic", "image": "image_topic"}
    # Every robot preset a user can pick exists and is installed (setup.py globs config/*.yaml).
    for robot in ("ur", "franka", "sim"):
        assert (LAUNCH_DIR.parent / "config" / f"{robot}.yaml").is_file()


def test_sim_launch(monkeypatch):
    arguments, nodes = load("sim.launch.py", monkeypatch)
    assert set(nodes) == {"policy_node", "sim_robot"}
    assert "default_value" not in arguments["checkpoint"]
    assert arguments["namespace"]["default_value"] == "sim"
    for node in nodes.values():
        assert node["package"] == "real_robot" and config_name(node["namespace"]) == "namespace"
    assert nodes["sim_robot"]["name"] == "sim_robot" and nodes["policy_node"]["name"] == "policy_node"
    sim_config, sim_params = nodes["sim_robot"]["parameters"]
    assert sim_config[1] == "/config/sim.yaml"  # shares calibration and arm with the policy node
    assert typed(sim_params["seed"]) == ("seed", int) and typed(sim_params["max_steps"]) == ("max_steps", int)
    assert typed(sim_params["control_rate_hz"]) == ("control_rate_hz", float)
    config_file, overrides = nodes["policy_node"]["parameters"]
    assert config_file[1] == "/config/sim.yaml"
    assert typed(overrides["control_rate_hz"]) == ("control_rate_hz", float)
    assert typed(overrides["checkpoint"]) == ("checkpoint", str)


@pytest.mark.parametrize("robot,topic", [("ur", "/scaled_joint_trajectory_controller/joint_trajectory"),
                                         ("franka", "/fr3_arm_controller/joint_trajectory"),
                                         ("sim", "joint_trajectory")])
def test_robot_presets(robot, topic):
    """Each preset passes the node's validation, and its whole table workspace is reachable by the
    arm's IK along a continuous path: a serpentine sweep in 16 px steps moves no joint > 0.3 rad."""
    import numpy as np
    import yaml

    sys.path.insert(0, str(LAUNCH_DIR.parent))
    from real_robot.kinematics import PlanarCalibration
    from real_robot.params import PARAMETERS, validate

    params = yaml.safe_load((LAUNCH_DIR.parent / "config" / f"{robot}.yaml").read_text())["/**"]["ros__parameters"]
    assert params["command_topic"] == topic and params["output_mode"] == "joint_trajectory"
    values = {name: default for name, (_, default) in PARAMETERS.items()}
    values.update(params, checkpoint="model.ckpt")
    arm = validate(values)
    calibration = PlanarCalibration(values["pixel_to_table"], values["table_height"], values["tool_orientation"])
    (u0, v0), (u1, v1) = values["workspace_min_px"], values["workspace_max_px"]
    columns = np.linspace(u0, u1, int((u1 - u0) // 16) + 1)
    seed = np.asarray(values["home_joints"], dtype=np.float64)
    for i, v in enumerate(np.linspace(v0, v1, int((v1 - v0) // 16) + 1)):
        for u in columns if i % 2 == 0 else columns[::-1]:
            joints = arm.inverse(calibration.tool_pose(np.array([u, v])), seed)
            assert joints is not None, (robot, u, v)
            assert np.abs(arm.forward(joints)[:3, 3] - calibration.tool_pose(np.array([u, v]))[:3, 3]).max() < 1e-5
            if i or u != columns[0]:
                assert np.abs(joints - seed).max() < 0.3, (robot, u, v, joints - seed)
            seed = joints
