"""Exported policies (ONNX through onnxruntime, TorchScript) compute what the PyTorch policy computes, carry
their config, load through ``load_policy`` and drive the simulator runner and the robot node's interface."""
import numpy as np
import pytest
import torch

from dpstack.policy.checkpoint import export_for_inference, load_policy
from dpstack.policy.export import ExportedPolicy, example_inputs, export, main, observation_names

TOLERANCE_PX = 1e-3  # env units (pixels of the 512 × 512 workspace); measured 1e-4 on the shipped files


def random_observation(config, batch=3, seed=0):
    generator = torch.Generator().manual_seed(seed)
    inputs = example_inputs(config, batch)[:len(observation_names(config))]
    return dict(zip(observation_names(config), (torch.randn(x.shape, generator=generator) for x in inputs)))


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_exported_policy_matches_pytorch(tmp_path, checkpoint, fmt):
    pytest.importorskip("onnxruntime") if fmt == "onnx" else None
    ddim = export_for_inference(checkpoint, tmp_path / "ddim.ckpt", sampler="ddim", num_inference_steps=8)
    policy = load_policy(ddim)
    path = export(policy, tmp_path / ("policy.onnx" if fmt == "onnx" else "policy.pt"), fmt)
    exported = load_policy(path)
    assert isinstance(exported, ExportedPolicy) and exported.config == policy.config
    obs = random_observation(policy.config)
    ours = exported.predict_action(obs, torch.Generator().manual_seed(7))
    reference = policy.predict_action(obs, torch.Generator().manual_seed(7))
    for key in ("action", "action_pred"):
        assert ours[key].shape == reference[key].shape
        assert float((ours[key] - reference[key]).abs().max()) < TOLERANCE_PX
    rows = [torch.Generator().manual_seed(i) for i in range(3)]  # one generator per row, as the runner passes
    assert exported.predict_action(obs, rows)["action"].shape == (3, policy.config.n_action_steps, 2)


def test_sampling_temperature_scales_the_initial_noise_in_the_policy_and_the_export(tmp_path, checkpoint):
    """``init_noise_scale`` τ: the chain starts from A^K = τ ξ; the exported graph applies the same τ."""
    cold = load_policy(export_for_inference(checkpoint, tmp_path / "cold.ckpt", sampler="ddim", num_inference_steps=4,
                                            init_noise_scale=0.5))
    assert cold.config.init_noise_scale == 0.5
    obs = random_observation(cold.config)
    cond = cold._global_condition(obs)
    sample = 0.5 * torch.randn(3, cold.config.horizon, cold.config.action_dim, generator=torch.Generator().manual_seed(7))
    for t in cold.inference_scheduler.timesteps:
        sample = cold.inference_scheduler.step(cold.model(sample, t, cond), t, sample).prev_sample
    torch.testing.assert_close(cold.sample_actions(cond, torch.Generator().manual_seed(7)), sample)
    warm = cold.sample_actions(cond, torch.Generator().manual_seed(7))
    cold.reconfigure(init_noise_scale=1.0)
    assert not torch.allclose(cold.sample_actions(cond, torch.Generator().manual_seed(7)), warm)
    cold.reconfigure(init_noise_scale=0.5)
    exported = load_policy(export(cold, tmp_path / "cold.pt", "torchscript"))
    assert exported.config.init_noise_scale == 0.5
    ours = exported.predict_action(obs, torch.Generator().manual_seed(7))["action_pred"]
    assert float((ours - cold.predict_action(obs, torch.Generator().manual_seed(7))["action_pred"]).abs().max()) < TOLERANCE_PX
    with pytest.raises(ValueError, match="init_noise_scale"):
        cold.reconfigure(init_noise_scale=0.0)


@pytest.mark.parametrize("fmt, steps", [("onnx", 2), ("torchscript", 1), ("torchscript", 3)])
def test_exported_consistency_policy_matches_pytorch(tmp_path, checkpoint, fmt, steps):
    """A distilled policy's chain re-noises between calls: the draws come in as ``step_noise``, in the order
    the PyTorch policy draws them, so the same generator gives the same actions."""
    pytest.importorskip("onnxruntime") if fmt == "onnx" else None
    from dpstack.policy.distillation import ConsistencyStudent

    policy = ConsistencyStudent(load_policy(checkpoint), skip_steps=10, num_inference_steps=steps).eval()
    exported = load_policy(export(policy, tmp_path / ("policy.onnx" if fmt == "onnx" else "policy.pt"), fmt))
    assert exported.config == policy.config
    obs = random_observation(policy.config)
    ours = exported.predict_action(obs, [torch.Generator().manual_seed(i) for i in range(3)])
    reference = policy.predict_action(obs, [torch.Generator().manual_seed(i) for i in range(3)])
    # x̂_0 = (x_90 − √(1 − ᾱ_90) ε̂)/√ᾱ_90 multiplies the runtimes' float32 rounding of ε̂ by √(1/ᾱ_90 − 1) ≈ 6.3
    # (measured up to 1.07e-3 px with onnxruntime), where the DDIM chain's last steps scale it by about 1.
    assert float((ours["action_pred"] - reference["action_pred"]).abs().max()) < 10 * TOLERANCE_PX


def test_exported_progressive_student_keeps_its_shifted_ddim_chain(tmp_path, checkpoint):
    """A progressive student samples DDIM-2 at t = 90, 40 (``ddim_steps_offset``); the export runs that chain."""
    pytest.importorskip("onnxruntime")
    from dpstack.policy.distillation import ConsistencyStudent

    policy = ConsistencyStudent(load_policy(checkpoint), skip_steps=10, num_inference_steps=2, objective="progressive").eval()
    exported = load_policy(export(policy, tmp_path / "policy.onnx", "onnx"))
    assert exported.config == policy.config and exported.config.ddim_steps_offset == 40
    obs = random_observation(policy.config)
    ours = exported.predict_action(obs, torch.Generator().manual_seed(0))
    reference = policy.predict_action(obs, torch.Generator().manual_seed(0))
    # the first call's x̂_0 at t = 90 scales float32 rounding by √(1/ᾱ_90 − 1) ≈ 6.3, as for consistency students
    assert float((ours["action_pred"] - reference["action_pred"]).abs().max()) < 10 * TOLERANCE_PX


def test_export_refuses_the_stochastic_sampler_and_cuda(tmp_path, checkpoint):
    ddpm = export_for_inference(checkpoint, tmp_path / "ddpm.ckpt", sampler="ddpm", num_inference_steps=4)
    with pytest.raises(ValueError, match="unrolls the deterministic DDIM .*chain or a consistency chain"):
        export(load_policy(ddpm), tmp_path / "x.pt", "torchscript")
    assert main([str(ddpm), "--format", "torchscript", "--out", str(tmp_path / "x.pt")]) == 2
    ddim = export_for_inference(checkpoint, tmp_path / "ddim.ckpt", sampler="ddim", num_inference_steps=4)
    exported = export(load_policy(ddim), tmp_path / "p.pt", "torchscript")
    from dpstack.diffusion.checkpoint_io import CheckpointError

    with pytest.raises(CheckpointError, match="runs on the CPU"):
        load_policy(exported, device="cuda")


def test_checkpoints_are_told_apart_from_exports_by_content(tmp_path, checkpoint):
    import shutil

    renamed = shutil.copy(checkpoint, tmp_path / "a_checkpoint_named.pt")  # a training checkpoint named .pt
    assert not isinstance(load_policy(renamed), ExportedPolicy)
    from dpstack.diffusion.checkpoint_io import CheckpointError

    (tmp_path / "broken.onnx").write_bytes(b"not onnx")
    with pytest.raises(CheckpointError, match="could not be opened as an exported policy"):
        load_policy(tmp_path / "broken.onnx")


def test_export_command_reports_the_difference(tmp_path, checkpoint, capsys):
    ddim = export_for_inference(checkpoint, tmp_path / "ddim.ckpt", sampler="ddim", num_inference_steps=4)
    assert main([str(ddim), "--format", "torchscript", "--out", str(tmp_path / "p.pt")]) == 0
    assert "differ from the PyTorch policy's by at most" in capsys.readouterr().out
    from dpstack.diffusion.checkpoint_io import CheckpointError

    with pytest.raises(CheckpointError, match="does not exist"):
        load_policy(tmp_path / "missing.onnx")


def test_exported_policy_runs_in_the_simulator(tmp_path, checkpoint):
    from dpstack.evaluation.runner import PushTRunner, RunnerConfig
    from dpstack.policy.executor import torch_predictor

    ddim = export_for_inference(checkpoint, tmp_path / "ddim.ckpt", sampler="ddim", num_inference_steps=4)
    exported = load_policy(export(load_policy(ddim), tmp_path / "p.pt", "torchscript"))
    runner = PushTRunner(RunnerConfig(n_test=2, n_train=0, n_envs=2, n_workers=0, max_steps=24, n_test_videos=0,
                                      n_train_videos=0), exported.config.n_obs_steps, exported.config.n_action_steps)
    result = runner.run(torch_predictor(exported, "cpu", episode_seed=0), progress=False)
    assert np.isfinite(result.metrics()["test/mean_score"])


def test_robot_node_loads_an_exported_policy(tmp_path, checkpoint):
    """The policy node, given an exported file as its checkpoint parameter, loads it and plans from it."""
    import sys

    rclpy = pytest.importorskip("rclpy", reason="rclpy not importable (see real_robot/README.md)")
    from ros_harness import PACKAGE

    from dpstack.envs.geometry import block_keypoints

    ddim = export_for_inference(checkpoint, tmp_path / "ddim.ckpt", sampler="ddim", num_inference_steps=4)
    exported = export(load_policy(ddim), tmp_path / "policy.pt", "torchscript")
    sys.path.insert(0, str(PACKAGE))
    from real_robot.policy_node import PolicyNode

    published = []
    rclpy.init(args=["--ros-args", "-p", f"checkpoint:={exported}", "-p", "enabled:=true"])
    try:
        node = PolicyNode("exported_probe")
        assert isinstance(node.policy, ExportedPolicy)
        node.command_pub = type("Recorder", (), {"topic_name": "/recorded", "publish": lambda _, m: published.append(m),
                                                 "get_subscription_count": lambda _: 1})()
        keypoints = block_keypoints(np.array([256.0, 300.0, 0.3])).ravel()
        for _ in range(2):
            node.observations.add("agent", np.array([200.0, 300.0]), node.now())
            node.observations.add("keypoints", keypoints, node.now())
            node._control_tick()
            node._run_inference()
        assert published and len(published[-1].points) > 1
        node.node.destroy_node()
    finally:
        rclpy.shutdown()


def test_eval_reports_max_and_mean_over_checkpoints_including_an_export(tmp_path, checkpoint):
    """The paper's "max / avg of the last checkpoints": eval.py takes several files, an exported one too."""
    import json

    from eval import main as eval_main

    ddim = export_for_inference(checkpoint, tmp_path / "ddim.ckpt", sampler="ddim", num_inference_steps=4)
    exported = export(load_policy(ddim), tmp_path / "ddim_export.pt", "torchscript")
    summary = eval_main(["--checkpoint", str(ddim), str(exported), "--output_dir", str(tmp_path / "eval"),
                         "--n_test", "2", "--n_train", "0", "--n_envs", "2", "--n_workers", "0",
                         "--n_test_videos", "0", "--n_train_videos", "0"])
    each = summary["test/mean_score"]["each"]
    assert len(each) == 2 and each[0] == pytest.approx(each[1], abs=1e-6)  # the export acts as its checkpoint
    assert summary["test/mean_score"]["max"] == max(each)
    saved = json.loads((tmp_path / "eval" / "eval_summary.json").read_text())
    assert saved["checkpoints"] == [str(ddim), str(exported)]
    assert (tmp_path / "eval" / "ddim_export" / "eval_log.json").exists()
    with pytest.raises(ValueError, match="export the checkpoint again"):
        load_policy(exported).reconfigure(num_inference_steps=8)
