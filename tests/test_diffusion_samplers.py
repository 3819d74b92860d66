"""Scheduler API, sampling loops (respacing, DDIM, inpainting, CFG) and EMA."""
import pickle

import pytest
import torch

from dpstack.diffusion import (
    DDIMScheduler,
    DDPMScheduler,
    EMAModel,
    classifier_free_guidance,
    drop_conditions,
    sample_loop,
    scheduler_from_dict,
)

POLICY_CONFIG = dict(num_train_timesteps=100, beta_schedule="squaredcos_cap_v2", variance_type="fixed_small",
                     clip_sample=True, prediction_type="epsilon")


def test_scheduler_interface_and_serialisation():
    scheduler = DDPMScheduler(**POLICY_CONFIG)
    assert scheduler.config.num_train_timesteps == 100 and scheduler.config["prediction_type"] == "epsilon"
    assert len(scheduler) == 100 and scheduler.init_noise_sigma == 1.0
    scheduler.set_timesteps(10)
    assert scheduler.timesteps.dtype == torch.long and scheduler.timesteps.tolist() == list(range(90, -1, -10))
    x = torch.randn(2, 16, 2)
    assert scheduler.scale_model_input(x, 5) is x
    for original in (scheduler, DDIMScheduler(set_alpha_to_one=False, steps_offset=1)):
        config = original.to_dict()
        restored = scheduler_from_dict(pickle.loads(pickle.dumps(config)))
        assert type(restored) is type(original) and restored.config == original.config
        assert type(original).from_config(original.config).config == original.config
    trained = DDPMScheduler(num_train_timesteps=10, trained_betas=torch.linspace(1e-4, 0.02, 10).numpy())
    assert DDPMScheduler.from_dict(trained.to_dict()).betas.tolist() == trained.betas.tolist()
    with pytest.raises(ValueError):
        DDPMScheduler(prediction_type="score")
    with pytest.raises(ValueError):
        DDPMScheduler(trained_betas=[0.1, 0.2])  # length must equal num_train_timesteps
    with pytest.raises(ValueError):
        DDPMScheduler(num_train_timesteps=10).set_timesteps(11)
    with pytest.raises(ValueError):
        scheduler.step(x, 55, x)  # not in the respaced chain


def test_ddpm_custom_timesteps():
    scheduler = DDPMScheduler(num_train_timesteps=50)
    scheduler.set_timesteps(timesteps=[40, 17, 3])
    assert scheduler.timesteps.tolist() == [40, 17, 3] and scheduler.previous_timestep(17) == 3
    with pytest.raises(ValueError):
        scheduler.set_timesteps(timesteps=[3, 17])


def _gaussian_data_model(scheduler, mean=0.5, std=0.2):
    """Exact ε-prediction for data x_0 ~ N(mean, std²): E[ε | x_t] in closed form."""
    ac = scheduler.schedule.alphas_cumprod.float()

    def model(x, t):
        a = ac[int(t)]
        var_t = a * std**2 + 1 - a
        return (1 - a).sqrt() * (x - a.sqrt() * mean) / var_t

    return model


@pytest.mark.parametrize("scheduler_cls, kwargs", [(DDPMScheduler, {}), (DDIMScheduler, {"eta": 0.0})])
def test_sampling_recovers_gaussian_data(scheduler_cls, kwargs):
    """Driven by the exact denoiser of x_0 ~ N(0.5, 0.2²), the full chain reproduces the data moments and
    respaced chains converge to them as the number of steps grows (the σ error is discretisation error:
    fewer, larger steps under-disperse; diffusers gives the same numbers)."""
    scheduler = scheduler_cls(num_train_timesteps=100, beta_schedule="squaredcos_cap_v2", clip_sample=False)
    model = _gaussian_data_model(scheduler)
    stds = []
    for steps in (10, 25, 100):
        samples = sample_loop(model, scheduler, (20_000, 1), steps, generator=torch.Generator().manual_seed(0), **kwargs)
        assert samples.mean().item() == pytest.approx(0.5, abs=0.015)
        stds.append(samples.std().item())
    assert stds[0] < stds[1] < stds[2] == pytest.approx(0.2, rel=0.08)


def test_ddim_eta_zero_is_deterministic_and_ddpm_is_not():
    model = lambda x, t: 0.1 * x  # noqa: E731
    ddim, ddpm = DDIMScheduler(num_train_timesteps=100), DDPMScheduler(num_train_timesteps=100)
    noise = torch.randn(4, 3)
    runs = []
    for scheduler, seed in [(ddim, 0), (ddim, 1), (ddpm, 0), (ddpm, 1)]:
        scheduler.set_timesteps(10)
        x = noise.clone()
        for t in scheduler.timesteps:
            x = scheduler.step(model(x, t), t, x, generator=torch.Generator().manual_seed(seed)).prev_sample
        runs.append(x)
    assert torch.equal(runs[0], runs[1]) and not torch.allclose(runs[2], runs[3])


@pytest.mark.parametrize("noise_known", [False, True])
def test_inpainting_keeps_known_entries(noise_known):
    scheduler = DDPMScheduler(**POLICY_CONFIG)
    known = torch.linspace(-1, 1, 32).reshape(1, 16, 2)
    mask = torch.zeros(1, 16, 2, dtype=torch.bool)
    mask[:, :4] = True
    seen = []

    def model(x, t):
        seen.append(x[mask].clone())
        return torch.zeros_like(x)

    out = sample_loop(model, scheduler, (1, 16, 2), 10, generator=torch.Generator().manual_seed(0), known=known,
                      mask=mask, noise_known=noise_known)
    assert torch.equal(out[mask], known[mask]) and not torch.equal(out[~mask], known[~mask])
    assert torch.equal(seen[-1], known[mask]) or noise_known  # clean overwrite before each model call
    if noise_known:  # early calls see the known part diffused to the current noise level
        assert not torch.allclose(seen[0], known[mask], atol=0.1)


def test_classifier_free_guidance():
    calls = []

    def model(x, t, cond):
        calls.append(x.shape[0])
        return x * cond

    x, cond, null = torch.randn(3, 2), torch.full((3, 2), 2.0), torch.zeros(2)
    for w in (0.0, 1.0, 7.5):
        guided = classifier_free_guidance(model, cond, null, w)(x, 0)
        torch.testing.assert_close(guided, x * 0 + w * (x * 2 - x * 0))
    assert calls == [6, 6, 6]  # one batched call for both branches


def test_drop_conditions_rate():
    g = torch.Generator().manual_seed(0)
    cond = torch.ones(20_000, 3)
    dropped = drop_conditions(cond, torch.zeros(3), 0.1, generator=g)
    rows_dropped = (dropped == 0).all(dim=1)
    assert torch.equal(rows_dropped, (dropped == 0).any(dim=1))  # whole conditions are dropped
    assert rows_dropped.float().mean().item() == pytest.approx(0.1, abs=0.01)
    assert torch.equal(drop_conditions(cond, torch.zeros(3), 0.0), cond)


def test_ema_decay_schedule():
    ema = EMAModel(torch.nn.Linear(2, 2))
    # Diffusion Policy's schedule: the first two updates copy, then 1 − (1 + k)^−0.75 with k = step − 1.
    assert ema.get_decay(0) == 0.0 and ema.get_decay(1) == 0.0
    assert ema.get_decay(2) == pytest.approx(1 - 2**-0.75)
    assert ema.get_decay(11) == pytest.approx(1 - 11**-0.75)
    assert ema.get_decay(10**9) == 0.9999
    delayed = EMAModel(torch.nn.Linear(2, 2), update_after_step=5, min_value=0.5)
    assert delayed.get_decay(6) == 0.0 and delayed.get_decay(7) == pytest.approx(max(0.5, 1 - 2**-0.75))


def test_ema_averages_trainable_and_copies_the_rest():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.GroupNorm(2, 4),
                                torch.nn.Linear(4, 2))
    model[3].bias.requires_grad_(False)
    ema = EMAModel(model)
    params = dict(model.named_parameters())
    history = []
    for step in range(4):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(1.0)
        model.train()(torch.randn(8, 3))  # updates BatchNorm running statistics
        history.append({k: v.detach().clone() for k, v in params.items()})
        ema.step(model)
    # reference recursion θ̄_k = δ_k θ̄_{k−1} + (1 − δ_k) θ_k for averaged parameters
    def reference(name):
        expected = history[0][name]
        for k in range(1, 4):
            expected = ema.get_decay(k) * expected + (1 - ema.get_decay(k)) * history[k][name]
        return expected

    averaged = dict(ema.averaged_model.named_parameters())
    for name in ("0.weight", "0.bias", "2.weight", "2.bias", "3.weight"):  # Linear and GroupNorm: averaged
        torch.testing.assert_close(averaged[name], reference(name))
    assert not torch.equal(averaged["2.weight"], params["2.weight"])
    assert torch.equal(averaged["1.weight"], params["1.weight"])  # BatchNorm parameters copied
    assert torch.equal(averaged["3.bias"], params["3.bias"])  # frozen parameter copied
    for a, b in zip(ema.averaged_model.buffers(), model.buffers()):
        assert torch.equal(a, b)  # running_mean / running_var / num_batches_tracked
    assert not any(p.requires_grad for p in ema.averaged_model.parameters())
    restored = EMAModel(model)
    restored.load_state_dict(ema.state_dict())
    assert restored.optimization_step == 4 and restored.decay == ema.decay
    torch.testing.assert_close(restored.averaged_model.state_dict(), ema.averaged_model.state_dict())


def test_per_row_generators_make_each_row_independent_of_the_batch():
    from dpstack.diffusion import randn

    rows = [torch.Generator().manual_seed(s) for s in (1, 2, 3)]
    batch = randn((3, 4, 2), rows)
    for i, seed in enumerate((1, 2, 3)):
        torch.testing.assert_close(batch[i:i + 1], torch.randn((1, 4, 2), generator=torch.Generator().manual_seed(seed)))
    with pytest.raises(ValueError, match="one per row"):
        randn((2, 4), rows)
    # A whole DDPM chain (noise at every step) run on rows 0 and 2 only gives the same rows.
    scheduler = DDPMScheduler(num_train_timesteps=20)
    scheduler.set_timesteps(20)

    def chain(seeds):
        generators = [torch.Generator().manual_seed(s) for s in seeds]
        sample = randn((len(seeds), 4, 2), generators)
        for t in scheduler.timesteps:
            sample = scheduler.step(0.1 * sample, t, sample, generator=generators).prev_sample
        return sample

    torch.testing.assert_close(chain([1, 2, 3])[[0, 2]], chain([1, 3]), rtol=0, atol=0)
