"""Standard normal noise from one generator or from one generator per batch row.

With a list of generators (as diffusers' ``randn_tensor`` accepts) row i is drawn from
generator i alone, so a sample's noise does not depend on which other samples share its batch.
"""
from __future__ import annotations

from typing import Sequence

import torch

Generators = torch.Generator | Sequence[torch.Generator] | None


def randn(shape, generator: Generators = None, device=None, dtype=None) -> torch.Tensor:
    """z ~ N(0, I) of ``shape``, drawn on the generator's device (as diffusers does), then moved to ``device``."""
    if isinstance(generator, (list, tuple)):
        if len(generator) != shape[0]:
            raise ValueError(f"{len(generator)} generators for a batch of {shape[0]}: pass one per row")
        rows = [torch.randn((1, *shape[1:]), generator=g, device=g.device, dtype=dtype) for g in generator]
        return torch.cat(rows).to(device if device is not None else rows[0].device)
    source = generator.device if generator is not None else device
    noise = torch.randn(shape, generator=generator, device=source, dtype=dtype)
    return noise if device is None else noise.to(device)
