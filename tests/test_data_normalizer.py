"""LinearNormalizer: fitting modes, inversion, nested dicts and state-dict round trips."""
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from dpstack.datasets.normalizer import LinearNormalizer, fit_affine, unit_range_to_symmetric


def sample_data():
    rng = np.random.default_rng(0)
    action = rng.uniform([-3.0, 10.0], [5.0, 12.0], size=(500, 2)).astype(np.float32)
    obs = np.concatenate([rng.normal(4.0, 2.0, size=(500, 3)), np.full((500, 1), 7.0)], axis=1).astype(np.float32)
    return {"action": action, "obs": obs}


def test_limits_mode_maps_min_max_to_unit_interval_and_centres_constant_dims():
    data = sample_data()
    normalizer = LinearNormalizer().fit(data, mode="limits")
    out = normalizer.normalize({key: torch.from_numpy(value) for key, value in data.items()})
    torch.testing.assert_close(out["action"].min(0).values, torch.tensor([-1.0, -1.0]))
    torch.testing.assert_close(out["action"].max(0).values, torch.tensor([1.0, 1.0]))
    assert torch.all(out["obs"][:, 3] == 0.0)  # constant dimension: scale 1, centred
    assert normalizer["obs"].scale[3] == 1.0


def test_gaussian_mode_gives_zero_mean_unit_std():
    data = sample_data()
    normalizer = LinearNormalizer().fit({"obs": data["obs"][:, :3]}, mode="gaussian")
    out = normalizer.normalize(torch.from_numpy(data["obs"][:, :3]))  # single key: bare tensor allowed
    torch.testing.assert_close(out.mean(0), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.std(0, unbiased=False), torch.ones(3), atol=1e-5, rtol=0)


def test_unnormalize_inverts_normalize_on_batched_windows():
    data = sample_data()
    normalizer = LinearNormalizer().fit(data)
    windows = torch.from_numpy(data["action"][:480].reshape(30, 16, 2))
    torch.testing.assert_close(normalizer["action"].unnormalize(normalizer["action"].normalize(windows)), windows)


def test_image_map_and_nested_dicts():
    normalizer = LinearNormalizer().fit({"agent_pos": np.array([[0.0, 0.0], [512.0, 256.0]])})
    normalizer["image"] = unit_range_to_symmetric()
    image = torch.rand(2, 16, 3, 96, 96)
    out = normalizer.normalize({"image": image, "agent_pos": torch.tensor([[512.0, 0.0]])})
    torch.testing.assert_close(out["image"], image * 2 - 1)
    torch.testing.assert_close(out["agent_pos"], torch.tensor([[1.0, -1.0]]))
    nested = normalizer.unnormalize({"obs": {"image": torch.zeros(1, 3, 2, 2)}})
    assert torch.all(nested["obs"]["image"] == 0.5)
    with pytest.raises(KeyError, match="no key 'depth'"):
        normalizer.normalize({"depth": image})
    with pytest.raises(ValueError, match="ambiguous"):
        normalizer.normalize(image)


def test_follows_input_dtype():
    normalizer = LinearNormalizer().fit({"a": np.array([[0.0], [2.0]])})
    assert normalizer["a"].normalize(torch.ones(3, 1, dtype=torch.float64)).dtype == torch.float64


def test_unknown_mode_is_rejected():
    with pytest.raises(ValueError, match="mode must be one of"):
        fit_affine(np.zeros((3, 2)), mode="minmax")


def test_state_dict_round_trip_into_fresh_normalizer_inside_a_policy():
    class Policy(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = nn.Linear(2, 2)
            self.normalizer = LinearNormalizer()

    trained = Policy()
    trained.normalizer.fit(sample_data())
    trained.normalizer["image"] = unit_range_to_symmetric()
    state = trained.state_dict()
    assert "normalizer.maps.action.scale" in state and "normalizer.maps.image.offset" in state
    restored = Policy()
    restored.load_state_dict(state)  # strict: keys are created from the state dict
    assert sorted(restored.normalizer.keys()) == ["action", "image", "obs"]
    probe = {"action": torch.randn(4, 2), "obs": torch.randn(4, 4), "image": torch.rand(4, 3, 2, 2)}
    for key, value in trained.normalizer.normalize(probe).items():
        torch.testing.assert_close(restored.normalizer.normalize(probe)[key], value)
    fitted_again = LinearNormalizer().fit({"action": np.zeros((2, 2))})
    fitted_again.load_state_dict(trained.normalizer.state_dict())  # overwrite an existing key, add others
    torch.testing.assert_close(fitted_again["action"].scale, trained.normalizer["action"].scale)


def test_normalizer_import_does_not_pull_zarr_or_numba():
    code = "import sys; from datasets.normalizer import LinearNormalizer; import datasets; " \
           "print(int('zarr' in sys.modules), int('numba' in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            cwd=__file__.rsplit("/tests/", 1)[0])
    assert result.stdout.split() == ["0", "0"]


def test_normalizer_moves_with_its_module_and_keeps_maps():
    normalizer = LinearNormalizer().fit({"action": np.array([[0.0, 1.0], [2.0, 5.0]], dtype=np.float32)})
    wrapper = torch.nn.Module()
    wrapper.normalizer = normalizer
    wrapper.to(torch.float64).to("cpu")
    assert normalizer["action"].scale.dtype == torch.float64
    x = torch.tensor([[1.0, 3.0]], dtype=torch.float64)
    torch.testing.assert_close(normalizer.unnormalize({"action": normalizer.normalize({"action": x})["action"]})["action"], x)
