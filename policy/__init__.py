"""Diffusion Policy: the conditional 1-D U-Net, observation encoders, the policy, receding-horizon execution
and checkpoints. The names most users need are here::

    from dpstack.policy import load_policy
    policy = load_policy("pretrained/pusht_lowdim.ckpt")          # EMA weights, eval mode
    policy.predict_action({"obs": obs})                            # obs (B, 2, 20) -> action (B, Ta, 2)
"""
from dpstack.policy.checkpoint import (
    CheckpointError,
    export_for_inference,
    load_checkpoint,
    load_policy,
    save_checkpoint,
)
from dpstack.policy.diffusion_policy import DiffusionPolicyConfig, DiffusionUnetPolicy, with_inference_settings
from dpstack.policy.executor import ObservationHistory, RecedingHorizonExecutor

__all__ = [
    "CheckpointError",
    "DiffusionPolicyConfig",
    "DiffusionUnetPolicy",
    "ObservationHistory",
    "RecedingHorizonExecutor",
    "export_for_inference",
    "load_checkpoint",
    "load_policy",
    "save_checkpoint",
    "with_inference_settings",
]
