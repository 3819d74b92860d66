"""Equivalence of diffusion.schedulers with diffusers' DDPMScheduler / DDIMScheduler (test-only dependency).

Precision note. diffusers stores ᾱ_t in float32 and forms β = 1 − ᾱ_t/ᾱ_prev in float32 inside ``step``;
for closely spaced timesteps that ratio is ≈ 1 and the subtraction loses about three digits, so stock
diffusers is itself off by up to ~1e-4 from the exact step. Our tables are float64. To test the *step
logic* at 1e-5 we therefore hand diffusers our float64 ᾱ table (``_float64_tables``), which makes its own
coefficient arithmetic exact; separately we check the tables agree with stock diffusers to float32 accuracy
and that ours is at least as close to a float64 reference as stock diffusers is.
"""
import itertools

import diffusers
import pytest
import torch

from dpstack.diffusion.schedulers import DDIMScheduler, DDPMScheduler

SCHEDULES = ["linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid"]
SPACINGS = ["linspace", "leading", "trailing"]
INFERENCE_STEPS = [10, 16, 100]
TOL = dict(rtol=1e-5, atol=1e-5)


def _float64_tables(theirs, ours):
    """Give a diffusers scheduler our exact float64 ᾱ table (see module docstring)."""
    theirs.alphas_cumprod = ours.schedule.alphas_cumprod.clone()
    theirs.one = torch.tensor(1.0, dtype=torch.float64)
    if hasattr(theirs, "final_alpha_cumprod"):
        theirs.final_alpha_cumprod = torch.tensor(ours.final_alpha_cumprod, dtype=torch.float64)
    return theirs


def _conditioning(ours, t):
    """Float32 error amplification of x̂_0 = (x_t − √(1−ᾱ_t) ε)/√ᾱ_t, κ = 1/√ᾱ_t (≈ 2·10⁴ at the end of the
    cosine schedule), and of the next sample, which carries x̂_0 with weight ≤ √ᾱ_prev. Tolerances are
    1e-5·max(1, κ) and 1e-5·max(1, κ√ᾱ_prev)."""
    ac, prev = ours.schedule.alphas_cumprod, ours.previous_timestep(t)
    a_prev = float(ac[prev]) if prev >= 0 else ours.final_alpha_cumprod
    kappa = float(ac[int(t)]) ** -0.5
    return max(1.0, kappa), max(1.0, kappa * a_prev**0.5)


def _diffusers_ddim(**kwargs):
    """diffusers' DDIM has no sigmoid schedule; feed it the sigmoid betas of its own DDPM instead."""
    if kwargs.get("beta_schedule") == "sigmoid":
        kwargs["trained_betas"] = diffusers.DDPMScheduler(**{k: kwargs[k] for k in ("num_train_timesteps", "beta_schedule")}).betas.numpy()
    return diffusers.DDIMScheduler(**kwargs)


def _inputs(seed, shape=(4, 16, 2)):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g), torch.randn(shape, generator=g), g


@pytest.mark.parametrize("num_train_timesteps", [100, 1000])
@pytest.mark.parametrize("beta_schedule", SCHEDULES)
def test_tables_and_add_noise_match_stock_diffusers(num_train_timesteps, beta_schedule):
    ours = DDPMScheduler(num_train_timesteps=num_train_timesteps, beta_schedule=beta_schedule)
    theirs = diffusers.DDPMScheduler(num_train_timesteps=num_train_timesteps, beta_schedule=beta_schedule)
    torch.testing.assert_close(ours.betas, theirs.betas, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(ours.alphas_cumprod, theirs.alphas_cumprod, rtol=2e-5, atol=1e-9)
    x0, noise, _ = _inputs(0, (num_train_timesteps, 8, 2))
    t = torch.arange(num_train_timesteps)  # every training timestep at once
    torch.testing.assert_close(ours.add_noise(x0, noise, t), theirs.add_noise(x0, noise, t), **TOL)
    torch.testing.assert_close(ours.get_velocity(x0, noise, t), theirs.get_velocity(x0, noise, t), **TOL)
    ddim = DDIMScheduler(num_train_timesteps=num_train_timesteps, beta_schedule=beta_schedule)
    torch.testing.assert_close(ddim.add_noise(x0, noise, t), theirs.add_noise(x0, noise, t), **TOL)


def _ddpm_configs():
    """Each prediction type, both clip settings, each variance type and dynamic thresholding at least once."""
    yield dict(prediction_type="epsilon", clip_sample=True, variance_type="fixed_small")
    yield dict(prediction_type="epsilon", clip_sample=False, variance_type="fixed_small_log")
    yield dict(prediction_type="sample", clip_sample=True, variance_type="fixed_large", clip_sample_range=0.5)
    yield dict(prediction_type="v_prediction", clip_sample=False, variance_type="learned")
    yield dict(prediction_type="v_prediction", clip_sample=True, variance_type="learned_range")
    yield dict(prediction_type="sample", thresholding=True, sample_max_value=3.0)


def _model_output(sample, variance_type, g):
    """Random network output; learned variance types get a second half of channels (σ² > 0 or v ∈ [−1, 1])."""
    out = torch.randn(sample.shape, generator=g)
    if variance_type == "learned":
        return torch.cat([out, 0.001 + 0.02 * torch.rand(sample.shape, generator=g)], dim=1)
    if variance_type == "learned_range":
        return torch.cat([out, 2 * torch.rand(sample.shape, generator=g) - 1], dim=1)
    return out


@pytest.mark.parametrize("num_train_timesteps", [100, 1000])
@pytest.mark.parametrize("beta_schedule", SCHEDULES)
@pytest.mark.parametrize("timestep_spacing", SPACINGS)
def test_ddpm_step_matches_diffusers(num_train_timesteps, beta_schedule, timestep_spacing):
    base = dict(num_train_timesteps=num_train_timesteps, beta_schedule=beta_schedule, timestep_spacing=timestep_spacing)
    for n, config in itertools.product(INFERENCE_STEPS, _ddpm_configs()):
        ours = DDPMScheduler(**base, **config)
        theirs = _float64_tables(diffusers.DDPMScheduler(**base, **config), ours)
        ours.set_timesteps(n)
        theirs.set_timesteps(n)
        assert torch.equal(ours.timesteps, theirs.timesteps) and ours.timesteps.dtype == torch.int64
        sample, _, g = _inputs(n)
        for t in ours.timesteps:  # every timestep of the chain, with identically seeded noise
            output = _model_output(sample, ours.variance_type, g)
            a = ours.step(output, t, sample, generator=torch.Generator().manual_seed(int(t)))
            if ours.previous_timestep(t) < 0 < int(t):  # a chain ending above 0: diffusers adds noise (#9261)
                again = ours.step(output, t, sample, generator=torch.Generator().manual_seed(int(t) + 1))
                assert torch.equal(a.prev_sample, again.prev_sample), "the last step must not add noise"
                continue
            b = theirs.step(output, t, sample, generator=torch.Generator().manual_seed(int(t)))
            x0_scale, prev_scale = _conditioning(ours, t)
            torch.testing.assert_close(a.prev_sample, b.prev_sample, rtol=1e-5, atol=1e-5 * prev_scale,
                                       msg=f"{config} n={n} t={t}")
            torch.testing.assert_close(a.pred_original_sample, b.pred_original_sample, rtol=1e-5, atol=1e-5 * x0_scale)


def test_ddpm_fixed_large_log_equals_fixed_large():
    # diffusers' fixed_large_log branch takes √(log β) (NaN), so it cannot serve as reference; by the paper
    # the "_log" variants only change how σ is computed, not its value.
    sample, eps, _ = _inputs(1)
    for small, logged in [("fixed_large", "fixed_large_log"), ("fixed_small", "fixed_small_log")]:
        a, b = DDPMScheduler(variance_type=small), DDPMScheduler(variance_type=logged)
        a.set_timesteps(16), b.set_timesteps(16)
        for t in a.timesteps:
            out_a = a.step(eps, t, sample, generator=torch.Generator().manual_seed(3)).prev_sample
            out_b = b.step(eps, t, sample, generator=torch.Generator().manual_seed(3)).prev_sample
            torch.testing.assert_close(out_a, out_b, rtol=1e-6, atol=1e-6)


def _ddim_configs(spacing):
    """(constructor, step) keyword pairs covering prediction types, clipping, η, clipped ε, set_alpha_to_one,
    thresholding and steps_offset."""
    yield dict(prediction_type="epsilon", clip_sample=True), {}
    yield dict(prediction_type="sample", clip_sample=False), dict(eta=0.5)
    yield dict(prediction_type="v_prediction", clip_sample=True), dict(eta=1.0, use_clipped_model_output=True)
    yield dict(prediction_type="v_prediction", clip_sample=False, set_alpha_to_one=False), {}
    yield dict(prediction_type="epsilon", thresholding=True, sample_max_value=2.0), dict(eta=0.3)
    if spacing == "leading":
        yield dict(steps_offset=1, set_alpha_to_one=False, clip_sample=False), dict(eta=1.0)


def _paper_ddim_step(ac, t, prev, final, sample, output, prediction_type, clip, eta, noise):
    """DDIM eq. (12) in float64 with ᾱ_prev taken from the *actual* next timestep of the chain."""
    a_t = ac[t]
    a_prev = ac[prev] if prev >= 0 else torch.tensor(final, dtype=torch.float64)
    x, out = sample.double(), output.double()
    if prediction_type == "epsilon":
        x0, eps = (x - (1 - a_t).sqrt() * out) / a_t.sqrt(), out
    elif prediction_type == "sample":
        x0, eps = out, (x - a_t.sqrt() * out) / (1 - a_t).sqrt()
    else:
        x0, eps = a_t.sqrt() * x - (1 - a_t).sqrt() * out, a_t.sqrt() * out + (1 - a_t).sqrt() * x
    if clip:
        x0 = x0.clamp(-1, 1)
    sigma = eta * ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)).sqrt()
    return a_prev.sqrt() * x0 + (1 - a_prev - sigma**2).sqrt() * eps + sigma * noise.double()


@pytest.mark.parametrize("num_train_timesteps", [100, 1000])
@pytest.mark.parametrize("beta_schedule", SCHEDULES)
@pytest.mark.parametrize("timestep_spacing", SPACINGS)
def test_ddim_step_matches_diffusers_or_paper(num_train_timesteps, beta_schedule, timestep_spacing):
    """Against diffusers wherever its prev timestep t − T//n is the chain's next entry; where it is not
    (linspace/trailing respacing: diffusers#12633, #11347) against the paper's definition instead."""
    base = dict(num_train_timesteps=num_train_timesteps, beta_schedule=beta_schedule, timestep_spacing=timestep_spacing)
    for n, (config, step_kwargs) in itertools.product(INFERENCE_STEPS, _ddim_configs(timestep_spacing)):
        if config.get("steps_offset") and n == num_train_timesteps:
            with pytest.raises(ValueError):  # timestep T would be out of range (diffusers raises IndexError)
                DDIMScheduler(**base, **config).set_timesteps(n)
            continue
        ours = DDIMScheduler(**base, **config)
        theirs = _float64_tables(_diffusers_ddim(**base, **config), ours)
        ours.set_timesteps(n)
        theirs.set_timesteps(n)
        assert torch.equal(ours.timesteps, theirs.timesteps)
        sample, _, g = _inputs(n)
        for t in ours.timesteps:
            output = torch.randn(sample.shape, generator=g)
            noise = torch.randn(sample.shape, generator=g)
            a = ours.step(output, t, sample, variance_noise=noise, **step_kwargs)
            prev = ours.previous_timestep(t)
            diffusers_prev = int(t) - num_train_timesteps // n
            if diffusers_prev == prev or (diffusers_prev < 0 and prev < 0):
                b = theirs.step(output, t, sample, variance_noise=noise, **step_kwargs).prev_sample
            elif config.get("thresholding") or step_kwargs.get("use_clipped_model_output"):
                continue  # reference below covers plain clipping only; these options are checked on the other steps
            else:
                b = _paper_ddim_step(ours.schedule.alphas_cumprod, int(t), prev, ours.final_alpha_cumprod, sample,
                                     output, ours.config.prediction_type, ours.config.clip_sample,
                                     step_kwargs.get("eta", 0.0), noise).float()
            x0_scale, prev_scale = _conditioning(ours, t)
            torch.testing.assert_close(a.prev_sample, b, rtol=1e-5, atol=1e-5 * prev_scale,
                                       msg=f"{config} {step_kwargs} n={n} t={t}")


def test_diffusers_ddim_linspace_bug_is_exercised():
    """Guard for the test above: with linspace spacing diffusers really does step to the wrong ᾱ_prev."""
    ours, theirs = DDIMScheduler(timestep_spacing="linspace"), diffusers.DDIMScheduler(timestep_spacing="linspace")
    ours.set_timesteps(10), theirs.set_timesteps(10)
    t = ours.timesteps[0]
    assert ours.previous_timestep(t) == int(ours.timesteps[1]) != int(t) - 1000 // 10
    sample, eps, _ = _inputs(0)
    assert not torch.allclose(ours.step(eps, t, sample).prev_sample, theirs.step(eps, t, sample).prev_sample, atol=1e-4)


@pytest.mark.parametrize("num_inference_steps", [10, 100])
def test_policy_sampling_loop_matches_diffusers(num_inference_steps):
    """The exact Diffusion Policy call pattern, end to end, with one shared generator seed."""
    config = dict(num_train_timesteps=100, beta_schedule="squaredcos_cap_v2", variance_type="fixed_small",
                  clip_sample=True, prediction_type="epsilon")
    weight = torch.randn(2, 2, generator=torch.Generator().manual_seed(0)) * 0.3
    finals = []
    for scheduler in (DDPMScheduler(**config), diffusers.DDPMScheduler(**config)):
        scheduler.set_timesteps(num_inference_steps)
        g = torch.Generator().manual_seed(42)
        sample = torch.randn((1, 16, 2), generator=g)
        for t in scheduler.timesteps:
            sample = scheduler.step(sample @ weight, t, sample, generator=g).prev_sample
        finals.append(sample)
    # stock diffusers (float32 ᾱ) accumulates ~1e-4 over 100 consecutive steps, see the module docstring
    torch.testing.assert_close(finals[0], finals[1], rtol=1e-3, atol=1e-3)


def test_ours_at_least_as_accurate_as_stock_diffusers():
    """Against a float64 evaluation of the same step, ours (float64 tables) is at least as accurate as stock
    diffusers (float32 tables). DDIM with η = 1 and explicit noise makes the step deterministic and needs
    β̃ = (1 − ᾱ')/(1 − ᾱ)·(1 − ᾱ/ᾱ'), which float32 loses for consecutive timesteps."""
    config = dict(num_train_timesteps=1000, clip_sample=False, prediction_type="sample")
    ours, stock = DDIMScheduler(**config), diffusers.DDIMScheduler(**config)
    exact = _float64_tables(diffusers.DDIMScheduler(**config), ours)
    for s in (ours, stock, exact):
        s.set_timesteps(1000)
    sample, output, g = _inputs(5)
    noise = torch.randn(sample.shape, generator=g)
    errors_ours, errors_stock = [], []
    for t in range(1, 1000, 7):
        ref = exact.step(output.double(), t, sample.double(), eta=1.0, variance_noise=noise.double()).prev_sample
        for scheduler, errors in ((ours, errors_ours), (stock, errors_stock)):
            got = scheduler.step(output, t, sample, eta=1.0, variance_noise=noise).prev_sample
            errors.append((got.double() - ref).abs().max().item())
    assert max(errors_ours) < 1e-5
    assert max(errors_ours) <= max(errors_stock)
