"""Exponential moving average of model weights with the Diffusion Policy warm-up schedule."""
import copy

import torch
from torch.nn.modules.batchnorm import _BatchNorm


class EMAModel:
    """Holds ``averaged_model``, an EMA copy of a module: θ̄ ← δ θ̄ + (1 − δ) θ after every optimiser step.

    The decay warms up as δ(k) = 1 − (1 + k/inv_gamma)^(−power), clamped to [min_value, max_value], where
    k = step − update_after_step − 1 as in Diffusion Policy (δ = 0 for k ≤ 0, i.e. a plain copy). Parameters that do not
    require grad and BatchNorm parameters are copied, as in Diffusion Policy; all buffers (e.g. BatchNorm
    running statistics) are copied too. GroupNorm has no buffers; its affine parameters are averaged.
    """

    def __init__(self, model: torch.nn.Module, update_after_step: int = 0, inv_gamma: float = 1.0,
                 power: float = 0.75, min_value: float = 0.0, max_value: float = 0.9999):
        self.averaged_model = copy.deepcopy(model).eval().requires_grad_(False)
        self.update_after_step, self.inv_gamma, self.power = update_after_step, inv_gamma, power
        self.min_value, self.max_value = min_value, max_value
        self.optimization_step = 0
        self.decay = 0.0
        self._in_batchnorm = [
            isinstance(module, _BatchNorm) for module in model.modules() for _ in module.parameters(recurse=False)
        ]

    def get_decay(self, optimization_step: int) -> float:
        """δ(k) = clamp(1 − (1 + k/inv_gamma)^(−power), min_value, max_value), k = step − update_after_step − 1."""
        k = optimization_step - self.update_after_step - 1
        if k <= 0:
            return 0.0
        return min(max(1 - (1 + k / self.inv_gamma) ** -self.power, self.min_value), self.max_value)

    @torch.no_grad()
    def step(self, model: torch.nn.Module):
        """Fold the current weights of ``model`` into the average (torch._foreach ops, one call per group)."""
        self.decay = self.get_decay(self.optimization_step)
        averaged, copied_to, copied_from = [], [], []
        live_params = [p for module in model.modules() for p in module.parameters(recurse=False)]
        ema_params = [p for module in self.averaged_model.modules() for p in module.parameters(recurse=False)]
        for ema, live, in_batchnorm in zip(ema_params, live_params, self._in_batchnorm):
            if in_batchnorm or not live.requires_grad:
                copied_to.append(ema), copied_from.append(live)
            else:
                averaged.append((ema, live))
        if averaged:
            ema, live = zip(*averaged)
            torch._foreach_lerp_(list(ema), list(live), 1.0 - self.decay)
        copied_to += list(self.averaged_model.buffers())
        copied_from += list(model.buffers())
        if copied_to:
            torch._foreach_copy_(copied_to, copied_from)
        self.optimization_step += 1

    def state_dict(self) -> dict:
        """Averaged weights plus the schedule position."""
        return {"averaged_model": self.averaged_model.state_dict(), "optimization_step": self.optimization_step,
                "decay": self.decay}

    def load_state_dict(self, state: dict):
        self.averaged_model.load_state_dict(state["averaged_model"])
        self.optimization_step = state["optimization_step"]
        self.decay = state["decay"]
