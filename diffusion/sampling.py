"""Sampling loops over a scheduler, inpainting, and classifier-free guidance (training-time condition dropout)."""
import torch

from .noise import randn


def sample_loop(model, scheduler, shape, num_inference_steps=None, *, generator=None, known=None, mask=None,
                noise_known=False, on_step=None, x_T=None, **step_kwargs) -> torch.Tensor:
    """Run the reverse chain: x_T ~ N(0, σ_init² I), then x ← scheduler.step(model(x, t), t, x) for t in the chain.

    DDPM ancestral sampling with respacing, or DDIM (pass ``eta`` in ``step_kwargs``), depending on the
    scheduler; ``num_inference_steps`` respaces the chain. Inpainting hook: where ``mask`` is True the sample
    is overwritten with ``known`` before every model call and at the end (Diffusion Policy's conditioning);
    with ``noise_known`` the known part is first diffused to the current level, x_t = √ᾱ_t known + √(1−ᾱ_t) ε.
    ``on_step(t, x_t, output)``, if given, sees each step's input and ``SchedulerOutput`` (x_{t−1}, x̂_0);
    ``x_T`` replaces the initial draw.
    """
    if num_inference_steps is not None:
        scheduler.set_timesteps(num_inference_steps)
    sample = randn(shape, generator) * scheduler.init_noise_sigma if x_T is None else x_T
    for t in scheduler.timesteps:
        if mask is not None:
            sample = torch.where(mask, _known_at(scheduler, known, t, noise_known, generator), sample)
        model_output = model(scheduler.scale_model_input(sample, t), t)
        output = scheduler.step(model_output, t, sample, generator=generator, **step_kwargs)
        if on_step is not None:
            on_step(t, sample, output)
        sample = output.prev_sample
    return sample if mask is None else torch.where(mask, known, sample)


def _known_at(scheduler, known, t, noise_known, generator):
    """The known values as they should appear at timestep t: clean, or diffused by q(x_t | x_0)."""
    if not noise_known:
        return known
    noise = randn(known.shape, generator, device=known.device, dtype=known.dtype)
    return scheduler.add_noise(known, noise, t.reshape(1))


def drop_conditions(condition: torch.Tensor, null_condition: torch.Tensor, p: float, generator=None) -> torch.Tensor:
    """Replace each sample's condition by the null condition ∅ with probability p (CFG training)."""
    keep = torch.rand(condition.shape[0], generator=generator, device=condition.device) >= p
    keep = keep.reshape(-1, *([1] * (condition.ndim - 1)))
    return torch.where(keep, condition, null_condition.to(condition).expand_as(condition))


def classifier_free_guidance(model, condition, null_condition, guidance_scale: float,
                             guided_channels: int | None = None):
    """Wrap ``model(x, t, cond)`` into ``f(x, t)`` returning ε̃ = ε(∅) + w·(ε(c) − ε(∅)).

    Both branches run as one batched call on [x; x] with [c; ∅]. w = 1 recovers the conditional model,
    w = 0 the unconditional one. With ``guided_channels`` k only the first k output channels are guided
    (the prediction); the rest (a learned variance) come from the conditional branch.
    """
    null_condition = null_condition.to(condition).expand_as(condition)
    both_conditions = torch.cat([condition, null_condition])

    def guided(x, t):
        conditional, unconditional = model(torch.cat([x, x]), t, both_conditions).chunk(2)
        k = guided_channels if guided_channels is not None else conditional.shape[1]
        mixed = torch.lerp(unconditional[:, :k], conditional[:, :k], guidance_scale)
        return torch.cat([mixed, conditional[:, k:]], dim=1) if k < conditional.shape[1] else mixed

    return guided
