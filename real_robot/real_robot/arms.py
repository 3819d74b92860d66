"""The arms whose joint-space commands the node can compute: UR5 / UR5e (closed-form IK) and
Franka FR3 (numerical IK). Each kinematics object has ``joint_names``, ``home``,
``forward(joints) -> 4x4`` and ``inverse(pose, seed) -> joints | None``."""
from __future__ import annotations

from real_robot.kinematics import UR_DH, URKinematics
from real_robot.kinematics_fr3 import FR3Kinematics

ARM_MODELS = tuple(sorted(UR_DH)) + ("fr3",)


def make_arm(model: str):
    """Kinematics of ``model`` (one of ARM_MODELS); ValueError naming the choices otherwise."""
    if model == "fr3":
        return FR3Kinematics()
    if model in UR_DH:
        return URKinematics(model)
    raise ValueError(f"unknown arm_model {model!r}; expected one of {ARM_MODELS}")
