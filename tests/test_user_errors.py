"""A user's mistakes end in one clear message and exit status 2: no traceback, no empty run folder.

Missing data, an unknown config key, a missing, corrupt or foreign checkpoint; plus ``--help`` of both
entry points, and where the data setting looked."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dpstack.datasets import paths
from dpstack.training.cli import remove_if_unused

REPO = Path(__file__).resolve().parent.parent


def run(script, *arguments, cwd, env=None):
    environment = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, str(REPO / script), *arguments], cwd=cwd, env=environment,
                          capture_output=True, text=True, timeout=300)


def assert_user_error(result, *fragments):
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr


def test_train_without_data_lists_where_it_looked_and_leaves_no_run_folder(tmp_path):
    missing = tmp_path / "no_data_here"
    result = run("train.py", "training.num_epochs=1", cwd=tmp_path, env={"DP_DATA_DIR": str(missing)})
    assert_user_error(result, "Push-T demonstrations not found",
                      str(missing / "pusht" / "pusht_cchi_v7_replay.zarr"),
                      f"python -m dpstack.datasets.download pusht --root {missing}",
                      "python train.py allow_download=true")
    assert not (tmp_path / "data").exists()  # hydra's data/outputs/<date>/<time>_... is removed again


def test_unknown_config_key_is_refused_with_a_suggestion(tmp_path):
    result = run("train.py", "+training.sed=1", "+task.dataset.mirorr=true", cwd=tmp_path)
    assert_user_error(result, "unknown key training.sed (did you mean training.seed?)",
                      "unknown key task.dataset.mirorr (did you mean task.dataset.mirror?)")
    assert not (tmp_path / "data").exists()


def test_every_shipped_config_passes_the_schema():
    from hydra import compose, initialize_config_dir

    from dpstack.training.config import validate_config

    for path in sorted((REPO / "configs").glob("*.yaml")):
        with initialize_config_dir(config_dir=str(REPO / "configs"), version_base=None):
            validate_config(compose(config_name=path.stem, overrides=["training.device=cpu"]))


def test_train_help_lists_the_configs(tmp_path):
    result = run("train.py", "--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for path in (REPO / "configs").glob("*.yaml"):
        assert f"  {path.stem}" in result.stdout
    assert "pusht_lowdim_quickstart (the default)" in result.stdout


def test_eval_help_shows_defaults(tmp_path):
    result = run("eval.py", "--help", cwd=tmp_path)
    assert result.returncode == 0
    text = " ".join(result.stdout.split())  # argparse wraps lines
    assert "(default: 100000)" in text and "(default: 50)" in text and "(default: disabled)" in text


@pytest.mark.parametrize("kind", ["missing", "text", "truncated", "foreign"])
def test_eval_with_a_bad_checkpoint_says_why_in_full(tmp_path, kind):
    checkpoint = tmp_path / f"{kind}.ckpt"
    if kind == "text":
        checkpoint.write_text("not a checkpoint\n")
    elif kind == "truncated":
        checkpoint.write_bytes((REPO / "pretrained" / "pusht_lowdim_small.ckpt").read_bytes()[:50_000])
    elif kind == "foreign":
        torch.save({"weights": torch.zeros(2), "note": Path("x")}, checkpoint)  # a pickled object
    result = run("eval.py", "--checkpoint", str(checkpoint), "--output_dir", str(tmp_path / "out"), cwd=tmp_path)
    expected = {"missing": "does not exist", "text": "or another kind of file. Copy it again",
                "truncated": "truncated (an interrupted copy)", "foreign": "this project did not write it"}
    assert_user_error(result, str(checkpoint), expected[kind])
    assert result.stderr.rstrip().endswith(("exist", "dpstack.policy.checkpoint", ")"))  # a whole sentence
    assert not (tmp_path / "out").exists()


def test_eval_refuses_an_impossible_inference_setting(tmp_path):
    result = run("eval.py", "--checkpoint", str(REPO / "pretrained" / "pusht_lowdim_small.ckpt"),
                 "--output_dir", str(tmp_path / "out"), "--num_inference_steps", "1000", cwd=tmp_path)
    assert_user_error(result, "num_inference_steps must be in [1, num_train_timesteps=100]")


def test_missing_data_message_names_the_shared_folder_and_the_download_default(monkeypatch, tmp_path):
    monkeypatch.delenv(paths.DATA_DIR_ENV, raising=False)
    monkeypatch.setattr(paths, "SHARED_DATA_DIR", tmp_path / "shared" / "data")
    message = paths.missing_pusht_message()
    assert str(tmp_path / "shared" / "data" / "pusht" / "pusht_cchi_v7_replay.zarr") + ": no such folder" in message
    assert str(Path("data").absolute() / "pusht" / "pusht_cchi_v7_replay.zarr") + ": not found" in message
    assert paths.data_root() == Path("data")


def test_a_run_folder_with_work_in_it_is_kept(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    started = tmp_path / "data" / "outputs" / "day" / "run"
    (started / ".hydra").mkdir(parents=True)
    (started / "checkpoints").mkdir()
    remove_if_unused(started)
    assert started.is_dir()
    (started / "checkpoints").rmdir()
    remove_if_unused(started)
    assert not (tmp_path / "data").exists() and tmp_path.is_dir()
