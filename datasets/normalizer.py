"""Per-key affine normalisation ``y = x * scale + offset`` stored in a module's state dict.

Importable with only torch and numpy: the policy imports it.
"""
from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

NORMALIZER_MODES = ("limits", "gaussian")


class AffineMap(nn.Module):
    """One key's affine map; ``scale`` and ``offset`` broadcast over the last dimension."""

    def __init__(self, scale: torch.Tensor, offset: torch.Tensor):
        super().__init__()
        self.register_buffer("scale", torch.as_tensor(scale, dtype=torch.float32).clone())
        self.register_buffer("offset", torch.as_tensor(offset, dtype=torch.float32).clone())

    def normalize(self, x) -> torch.Tensor:
        """``x * scale + offset`` in the dtype and device of ``x``."""
        x = torch.as_tensor(x)
        return x * self.scale.to(x) + self.offset.to(x)

    def unnormalize(self, y) -> torch.Tensor:
        """Inverse map ``(y - offset) / scale``."""
        y = torch.as_tensor(y)
        return (y - self.offset.to(y)) / self.scale.to(y)


def fit_affine(data, mode: str = "limits", output_range: tuple[float, float] = (-1.0, 1.0),
               range_eps: float = 1e-4) -> AffineMap:
    """Affine map fitted per last-dimension feature of ``data``.

    ``limits`` sends each feature's [min, max] to ``output_range``; a feature whose range is
    below ``range_eps`` keeps scale 1 and is shifted so its minimum lands mid-range.
    ``gaussian`` gives zero mean and unit standard deviation; a feature with std below
    ``range_eps`` is only centred.
    """
    if mode not in NORMALIZER_MODES:
        raise ValueError(f"mode must be one of {NORMALIZER_MODES}, got {mode!r}")
    values = torch.as_tensor(data, dtype=torch.float32)
    values = values.reshape(-1, values.shape[-1]) if values.ndim > 1 else values.reshape(-1, 1)
    if mode == "limits":
        low, high = output_range
        data_min, data_max = values.min(dim=0).values, values.max(dim=0).values
        flat = (data_max - data_min) < range_eps
        scale = torch.where(flat, torch.ones_like(data_min), (high - low) / (data_max - data_min))
        offset = torch.where(flat, (high + low) / 2 - data_min, low - scale * data_min)
    else:
        mean, std = values.mean(dim=0), values.std(dim=0, unbiased=False)
        flat = std < range_eps
        scale = torch.where(flat, torch.ones_like(std), 1.0 / std)
        offset = -mean * scale
    return AffineMap(scale, offset)


def unit_range_to_symmetric() -> AffineMap:
    """Fixed map of data in [0, 1] (such as images) to [-1, 1]."""
    return AffineMap(torch.tensor(2.0), torch.tensor(-1.0))


class LinearNormalizer(nn.Module):
    """Named affine maps; ``normalize``/``unnormalize`` accept a dict (possibly nested) or a tensor.

    Its buffers live in the state dict as ``maps.<key>.scale`` / ``maps.<key>.offset``;
    loading a state dict into an unfitted normalizer creates the missing keys.
    """

    def __init__(self):
        super().__init__()
        self.maps = nn.ModuleDict()

    def fit(self, data: Mapping[str, object], mode: str = "limits",
            output_range: tuple[float, float] = (-1.0, 1.0), range_eps: float = 1e-4) -> "LinearNormalizer":
        """Fit one map per key of ``data`` (arrays or tensors whose last dim is the feature dim)."""
        for key, values in data.items():
            self.maps[key] = fit_affine(values, mode, output_range, range_eps)
        return self

    def __setitem__(self, key: str, affine: AffineMap) -> None:
        self.maps[key] = affine

    def __getitem__(self, key: str) -> AffineMap:
        if key not in self.maps:
            raise KeyError(f"normalizer has no key {key!r} (keys: {list(self.maps)})")
        return self.maps[key]

    def __contains__(self, key: str) -> bool:
        return key in self.maps

    def keys(self) -> list[str]:
        """Names of the fitted maps."""
        return list(self.maps)

    def normalize(self, data):
        """Normalised copy: every dict entry through its key's map; a bare tensor needs a single-key normalizer."""
        return self._transform(data, "normalize")

    def unnormalize(self, data):
        """Inverse of ``normalize``."""
        return self._transform(data, "unnormalize")

    def _transform(self, data, direction: str):
        """Apply ``direction`` of the matching maps to a dict (recursing into nested dicts) or tensor."""
        if isinstance(data, Mapping):
            return {key: (self._transform(value, direction) if isinstance(value, Mapping)
                          else getattr(self[key], direction)(value))
                    for key, value in data.items()}
        if len(self.maps) != 1:
            raise ValueError(f"a bare tensor is ambiguous with keys {self.keys()}; "
                             "pass a dict or use normalizer[key]")
        return getattr(next(iter(self.maps.values())), direction)(data)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        """Create maps for keys present in ``state_dict`` but not yet in this normalizer."""
        head = prefix + "maps."
        for name, value in state_dict.items():
            if name.startswith(head) and name.endswith(".scale"):
                key = name[len(head):-len(".scale")]
                offset = state_dict.get(f"{head}{key}.offset")
                if key not in self.maps and offset is not None:
                    self.maps[key] = AffineMap(torch.empty_like(value), torch.empty_like(offset))
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)
