"""The project installs as one import package, ``dpstack``, and lives beside Hugging Face ``datasets``
and LeRobot: nothing of ours lands in site-packages under a name another project owns, and from the
repository root ``import datasets`` still finds Hugging Face's package.

``.ci/run`` also runs this file in a second environment with the real ``datasets`` and ``lerobot``
installed and ``DP_REQUIRE_LEROBOT=1``, where the last test must run, not skip."""
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def python(code: str, cwd: Path, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=dict(os.environ, **env),
                          capture_output=True, text=True, timeout=300)


def test_the_wheel_holds_only_dpstack(tmp_path):
    source = tmp_path / "source"  # a copy: building writes build/ and *.egg-info/ into the tree
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    for name in tracked.splitlines():
        if (REPO / name).is_file() and not name.startswith("pretrained/"):
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, source / name)
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(tmp_path), str(source)], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr
    (wheel,) = tmp_path.glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/")[0] for name in names if ".dist-info/" not in name}
    assert tops == {"dpstack"}
    for package in ("datasets", "diffusion", "envs", "evaluation", "policy", "training"):
        assert any(name.startswith(f"dpstack/{package}/") for name in names), package
    assert "dpstack/datasets/checksums/pusht.sha256" in names


def test_another_datasets_package_wins_the_name_even_from_the_repository_root(tmp_path):
    """A regular package called ``datasets`` (as Hugging Face's is) earlier on the path than site-packages."""
    (tmp_path / "datasets").mkdir()
    (tmp_path / "datasets" / "__init__.py").write_text("OWNER = 'someone else'\n")
    code = ("import datasets; assert datasets.OWNER == 'someone else', datasets.__file__\n"
            "from dpstack.datasets.replay_buffer import ReplayBuffer\n"
            "from dpstack.policy import load_policy\n"
            "policy = load_policy('pretrained/pusht_lowdim_small.ckpt')\n"
            "print(type(policy).__name__)")
    result = python(code, cwd=REPO, PYTHONPATH=str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "DiffusionUnetPolicy"


def test_beside_hugging_face_datasets_and_lerobot(tmp_path):
    try:
        import datasets  # noqa: F401
        import lerobot  # noqa: F401
    except ImportError:
        if os.environ.get("DP_REQUIRE_LEROBOT") == "1":
            raise
        pytest.skip("datasets / lerobot not installed here; .ci/run installs them in its second environment")
    code = ("import datasets, lerobot, torch\n"
            "from lerobot.datasets.lerobot_dataset import LeRobotDataset\n"
            "assert hasattr(datasets, 'load_dataset'), datasets.__file__\n"
            "from dpstack.policy import load_policy\n"
            "from dpstack.datasets.pusht import PushTLowdimDataset\n"
            "from dpstack.datasets.paths import pusht_zarr_path\n"
            f"policy = load_policy({str(REPO / 'pretrained' / 'pusht_lowdim_small.ckpt')!r})\n"
            "batch = torch.zeros(1, 2, 20)\n"
            "print(tuple(policy.predict_action({'obs': batch})['action'].shape))\n"
            "if pusht_zarr_path().exists():\n"
            "    print(len(PushTLowdimDataset(max_train_episodes=2)) > 0)\n")
    for cwd in (REPO, tmp_path):  # from the repository root and from elsewhere
        result = python(code, cwd=cwd)
        assert result.returncode == 0, result.stderr
        assert result.stdout.splitlines()[0] == "(1, 8, 2)"
