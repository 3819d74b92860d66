"""Training end to end on tiny settings: train → checkpoint → exact resume → eval, CLI and errors."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from dpstack.policy.checkpoint import CheckpointError, export_for_inference, load_checkpoint, load_policy, save_checkpoint
from dpstack.policy.checkpoint import main as export_main
from dpstack.training.config import validate_config
from dpstack.training.workspace import TrainingWorkspace, warmup_cosine

REPO = Path(__file__).resolve().parent.parent
TINY_OVERRIDES = [
    "policy.down_dims=[16,32,64]", "policy.diffusion_step_embed_dim=16", "policy.num_inference_steps=3",
    "task.dataset.max_train_episodes=4", "training.batch_size=128", "training.lr_warmup_steps=2",
    "training.rollout_every=2", "training.checkpoint_every=1", "training.progress=false", "training.num_threads=1",
    "eval.n_test=2", "eval.n_train=1", "eval.n_envs=3", "eval.n_workers=0", "eval.max_steps=16",
    "eval.n_test_videos=1", "eval.n_train_videos=0", "logging.mode=disabled",
]


def tiny_config(*extra):
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base=None):
        cfg = compose(config_name="pusht_lowdim_cpu", overrides=TINY_OVERRIDES + list(extra))
    validate_config(cfg)
    return cfg


def weights(path):
    return load_checkpoint(path)["state_dicts"]["model"]


def test_warmup_cosine_schedule():
    factor = warmup_cosine(10, 110)
    assert factor(0) == 0 and factor(5) == 0.5 and factor(10) == 1.0
    assert factor(60) == pytest.approx(0.5) and factor(110) == pytest.approx(0.0)


def test_train_checkpoint_resume_exactly_and_eval(tmp_path, pusht_zarr):
    straight = tmp_path / "straight"
    metrics = TrainingWorkspace(tiny_config("training.num_epochs=2"), straight).run()
    assert metrics["epoch"] == 2 and "test/mean_score" in metrics and "val_loss" in metrics
    assert (straight / "checkpoints" / "latest.ckpt").exists()
    assert len(list((straight / "checkpoints").glob("epoch=*-test_mean_score=*.ckpt"))) == 1
    assert list((straight / "media").rglob("*.mp4"))
    log_lines = (straight / "logs.json.txt").read_text().splitlines()
    assert json.loads(log_lines[0])["train_loss"] > 0

    resumed = tmp_path / "resumed"
    steps_per_epoch = metrics["global_step"] // 2
    assert steps_per_epoch >= 2
    # Interrupted one step into the second epoch, then continued (resume=true picks up latest.ckpt):
    # the rest of that epoch is trained in the same order, so the weights equal the straight run's.
    stopped = TrainingWorkspace(tiny_config("training.num_epochs=2", f"training.max_train_steps={steps_per_epoch + 1}"),
                                resumed).run()
    assert stopped["epoch"] == 1 and stopped["global_step"] == steps_per_epoch + 1
    finished = TrainingWorkspace(tiny_config("training.num_epochs=2"), resumed).run()
    assert finished["epoch"] == 2 and finished["global_step"] == 2 * steps_per_epoch
    assert finished["cpu_minutes"] > stopped["cpu_minutes"]  # CPU time adds up over resumed runs
    a, b = weights(straight / "checkpoints" / "latest.ckpt"), weights(resumed / "checkpoints" / "latest.ckpt")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)

    policy = load_policy(straight / "checkpoints" / "latest.ckpt")
    assert not policy.training and policy.config.num_inference_steps == 3
    slim = export_for_inference(straight / "checkpoints" / "latest.ckpt", tmp_path / "slim.ckpt")
    assert slim.stat().st_size < (straight / "checkpoints" / "latest.ckpt").stat().st_size / 2
    exported = load_policy(slim)
    for key, value in policy.state_dict().items():
        torch.testing.assert_close(exported.state_dict()[key], value, rtol=0, atol=0)
    half = export_main([str(straight / "checkpoints" / "latest.ckpt"), str(tmp_path / "half.ckpt"),
                        "--weights-dtype", "float16"])
    assert half.stat().st_size < 0.75 * slim.stat().st_size
    from_half = load_policy(half)
    for key, value in policy.state_dict().items():  # float32 again, each weight within half-precision rounding
        assert from_half.state_dict()[key].dtype == value.dtype
        torch.testing.assert_close(from_half.state_dict()[key], value, rtol=2**-11, atol=1e-7, msg=key)
    obs = {"obs": torch.rand(3, 2, 20) * 512}  # keypoints and agent position in pixels
    actions = [p.predict_action(obs, generator=torch.Generator().manual_seed(0))["action"] for p in (policy, from_half)]
    torch.testing.assert_close(actions[1], actions[0], rtol=0, atol=0.5)  # pixels of the 512-px workspace
    with pytest.raises(ValueError, match="weights_dtype"):
        export_for_inference(straight / "checkpoints" / "latest.ckpt", tmp_path / "x.ckpt", "int8")
    # Inference settings written into the copy reach every loader; training settings cannot change.
    ta10 = export_main([str(straight / "checkpoints" / "latest.ckpt"), str(tmp_path / "ta10.ckpt"),
                        "--n-action-steps", "10", "--num-inference-steps", "5"])
    assert load_policy(ta10).predict_action(obs)["action"].shape == (3, 10, 2)
    assert load_policy(ta10).config.num_inference_steps == 5
    assert load_checkpoint(ta10)["config"] == load_checkpoint(straight / "checkpoints" / "latest.ckpt")["config"]
    with pytest.raises(ValueError, match="can change after training"):
        export_for_inference(straight / "checkpoints" / "latest.ckpt", tmp_path / "x.ckpt", horizon=32)
    with pytest.raises(SystemExit):
        export_main([str(straight / "checkpoints" / "latest.ckpt"), str(tmp_path / "x.ckpt"), "--n-action-steps", "20"])

    from eval import main as eval_main

    log = eval_main(["--checkpoint", str(straight / "checkpoints" / "latest.ckpt"), "--output_dir",
                     str(tmp_path / "eval"), "--n_test", "2", "--n_train", "0", "--n_envs", "2", "--n_workers", "0",
                     "--n_test_videos", "1"])
    saved = json.loads((tmp_path / "eval" / "eval_log.json").read_text())
    assert saved["test/mean_score"] == log["test/mean_score"] and len(saved["episodes"]) == 2
    assert {"seed", "max_reward", "max_coverage", "success"} <= set(saved["episodes"][0])
    assert list((tmp_path / "eval" / "media").glob("*.mp4"))


def test_resume_with_another_architecture_is_refused(tmp_path, pusht_zarr):
    TrainingWorkspace(tiny_config("training.num_epochs=1", "training.rollout_every=0"), tmp_path).run()
    with pytest.raises(CheckpointError, match="different policy"):
        TrainingWorkspace(tiny_config("training.num_epochs=2", "policy.down_dims=[8,16,32]"), tmp_path).run()
    with pytest.raises(CheckpointError, match="different task"):
        TrainingWorkspace(tiny_config("training.num_epochs=2", "task.dataset.mirror=false"), tmp_path).run()


def test_checkpoints_older_than_later_settings_still_resume(tmp_path, pusht_zarr):
    """A checkpoint written before ``policy.cond_noise_std``, ``task.dataset.mirror`` and
    ``task.dataset.align_to_goal`` existed resumes under a config that holds them at the values such a
    checkpoint implies (no noise, no mirror, no alignment)."""
    before = ("training.rollout_every=0", "policy.cond_noise_std=0.0", "task.dataset.mirror=false",
              "task.dataset.align_to_goal=false")
    TrainingWorkspace(tiny_config("training.num_epochs=1", *before), tmp_path).run()
    latest = tmp_path / "checkpoints" / "latest.ckpt"
    payload = load_checkpoint(latest)
    del payload["config"]["policy"]["cond_noise_std"], payload["config"]["task"]["dataset"]["mirror"]
    del payload["config"]["task"]["dataset"]["align_to_goal"]
    save_checkpoint(payload, latest)
    metrics = TrainingWorkspace(tiny_config("training.num_epochs=2", *before), tmp_path).run()
    assert metrics["epoch"] == 2


def test_corrupted_and_foreign_checkpoints_are_named(tmp_path):
    corrupted = tmp_path / "bad.ckpt"
    corrupted.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="corrupted"):
        load_policy(corrupted)
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(CheckpointError, match="not a checkpoint of this project"):
        load_policy(foreign)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_policy(tmp_path / "missing.ckpt")
    incomplete = save_checkpoint({"config": {}}, tmp_path / "incomplete.ckpt")
    with pytest.raises(CheckpointError, match="lacks 'state_dicts'"):
        load_policy(incomplete)
    configless = save_checkpoint({"config": {}, "state_dicts": {}}, tmp_path / "configless.ckpt")
    with pytest.raises(CheckpointError, match="lacks its model config"):
        load_policy(configless)
    image_model = save_checkpoint({"config": {"recipe": "image_diffusion"}, "model_config": {}, "state_dicts": {}},
                                  tmp_path / "image.ckpt")
    with pytest.raises(CheckpointError, match="recipe 'image_diffusion', not a policy"):
        load_policy(image_model)


def test_export_command_names_a_bad_source(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        export_main([str(tmp_path / "missing.ckpt"), str(tmp_path / "out.ckpt")])
    assert exit_info.value.code == 2 and "missing.ckpt does not exist" in capsys.readouterr().err
    assert not (tmp_path / "out.ckpt").exists()
    huge = save_checkpoint({"config": {}, "policy_config": {}, "state_dicts": {"model": {"w": torch.full((2,), 1e6)}}},
                           tmp_path / "huge.ckpt")
    with pytest.raises(ValueError, match="not finite at float16"):
        export_for_inference(huge, tmp_path / "out.ckpt", "float16")


def test_missing_dataset_error_says_where_to_get_it(tmp_path):
    cfg = tiny_config(f"data_root={tmp_path / 'nowhere'}")
    with pytest.raises(Exception, match="dpstack.datasets.download"):
        TrainingWorkspace(cfg, tmp_path / "out").run()


def test_invalid_config_values_are_rejected():
    with pytest.raises(ValueError, match="num_epochs"):
        tiny_config("training.num_epochs=0")
    with pytest.raises(ValueError, match="sampler"):
        tiny_config("policy.sampler=heun")
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base=None):
        image = compose(config_name="pusht_image_cpu", overrides=["+task.dataset.align_to_goal=true"])
    with pytest.raises(ValueError, match="align_to_goal is implemented for keypoint observations only"):
        validate_config(image)


def test_cli_overrides_like_the_reference(tmp_path, pusht_zarr):
    env = dict(os.environ, SDL_VIDEODRIVER="dummy", OMP_NUM_THREADS="1")
    command = [sys.executable, "train.py", "--config-name=pusht_lowdim_cpu", "training.seed=42",
               "training.device=cpu", "training.num_epochs=1", "training.rollout_every=0",
               "policy.cond_noise_std=0.05", "task.dataset.mirror=false", "task.dataset.align_to_goal=true",
               f"hydra.run.dir={tmp_path}"]
    command += [o for o in TINY_OVERRIDES if not o.startswith("training.rollout")]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    saved = load_checkpoint(tmp_path / "checkpoints" / "latest.ckpt")
    assert saved["config"]["training"]["seed"] == 42 and saved["config"]["training"]["device"] == "cpu"
    assert saved["config"]["policy"]["down_dims"] == [16, 32, 64]
    assert saved["config"]["policy"]["cond_noise_std"] == 0.05 and not saved["config"]["task"]["dataset"]["mirror"]
    assert saved["config"]["task"]["dataset"]["align_to_goal"]


def test_wandb_offline_run_logs_metrics_and_videos_without_an_account(tmp_path, pusht_zarr, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "")
    monkeypatch.setenv("WANDB_SILENT", "true")
    TrainingWorkspace(tiny_config("training.num_epochs=1", "training.rollout_every=1", "logging.mode=offline"),
                      tmp_path).run()
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    history = list(runs[0].glob("*.wandb"))
    assert history and history[0].stat().st_size > 0
    assert list(runs[0].rglob("*.mp4"))  # the rollout video was handed to wandb


def test_topk_keeps_the_lowest_in_min_mode(tmp_path):
    from dpstack.training.topk import TopKCheckpoints

    best = TopKCheckpoints(tmp_path, 2, "test/bits_per_dim", mode="min")
    for epoch, value in enumerate([3.0, 1.0, 2.0, 4.0]):
        best.admit(value, epoch)
    assert [score for score, _ in best.entries] == [1.0, 2.0]
    assert all("/" not in name for _, name in best.entries)
