"""Numerical checks of the derivations in docs/derivations.md (1-D Gaussians, float64)."""
import math

import pytest
import torch
from torch.distributions import Normal

from dpstack.diffusion.gaussian import eps_from_x0, p_mean_variance, q_posterior, q_sample, x0_from_eps
from dpstack.diffusion.losses import (
    LOG2,
    discretized_gaussian_log_likelihood,
    normal_kl,
    prior_kl,
    vlb_bits_per_dim,
)
from dpstack.diffusion.schedulers import DDIMScheduler, DDPMScheduler
from dpstack.diffusion.schedules import NoiseSchedule

SCHEDULE = NoiseSchedule.from_name("linear", 20, 1e-3, 0.3)  # short chain with sizeable β_t


@pytest.mark.parametrize("t", [1, 7, 19])
def test_posterior_is_bayes_rule(t):
    """q(x_{t−1} | x_t, x_0) ∝ q(x_t | x_{t−1}) q(x_{t−1} | x_0): normaliser, mean and variance by quadrature."""
    x0, xt = torch.tensor([0.7], dtype=torch.float64), torch.tensor([-0.4], dtype=torch.float64)
    beta, ac_prev = SCHEDULE.betas[t], SCHEDULE.alphas_cumprod[t - 1]
    grid = torch.linspace(-8, 8, 200_001, dtype=torch.float64)
    dx = grid[1] - grid[0]
    joint = Normal((1 - beta).sqrt() * grid, beta.sqrt()).log_prob(xt).exp() * Normal(
        ac_prev.sqrt() * x0, (1 - ac_prev).sqrt()
    ).log_prob(grid).exp()
    evidence = joint.sum() * dx
    mean = (grid * joint).sum() * dx / evidence
    variance = ((grid - mean) ** 2 * joint).sum() * dx / evidence
    index = torch.tensor([t])
    # the normaliser is the forward marginal q(x_t | x_0) = N(√ᾱ_t x_0, 1 − ᾱ_t)
    ac = SCHEDULE.alphas_cumprod[t]
    assert evidence.item() == pytest.approx(Normal(ac.sqrt() * x0, (1 - ac).sqrt()).log_prob(xt).exp().item(), rel=1e-8)
    post_mean, post_var, post_log_var = q_posterior(SCHEDULE, x0, xt, index)
    assert post_mean.item() == pytest.approx(mean.item(), rel=1e-8)
    assert post_var.item() == pytest.approx(variance.item(), rel=1e-7)
    assert post_log_var.exp().item() == pytest.approx(variance.item(), rel=1e-7)


def test_forward_marginal_matches_chained_transitions():
    """Composing q(x_t | x_{t−1}) t times gives N(√ᾱ_t x_0, 1 − ᾱ_t) (Monte Carlo moments)."""
    g = torch.Generator().manual_seed(0)
    x = torch.full((400_000,), 0.5, dtype=torch.float64)
    for t in range(SCHEDULE.num_timesteps):
        beta = SCHEDULE.betas[t]
        x = (1 - beta).sqrt() * x + beta.sqrt() * torch.randn(x.shape, generator=g, dtype=torch.float64)
    ac = SCHEDULE.alphas_cumprod[-1]
    direct = q_sample(SCHEDULE, torch.tensor([0.5], dtype=torch.float64), torch.tensor([19]), torch.zeros(1, dtype=torch.float64))
    assert x.mean().item() == pytest.approx(direct.item(), abs=4 * (1 - ac).sqrt().item() / 632)
    assert x.var().item() == pytest.approx((1 - ac).item(), rel=0.01)


def _toy_model(xt, t):
    """A fixed analytic ε-model: the ε implied by x̂_0 = 0.2 + 0.1·tanh(x_t)."""
    return eps_from_x0(SCHEDULE, xt, t, 0.2 + 0.1 * torch.tanh(xt))


def _log_normal(x, mean, variance):
    return -0.5 * (torch.log(2 * math.pi * variance) + (x - mean) ** 2 / variance)


@pytest.mark.parametrize("variance_type", ["fixed_small", "fixed_large"])
def test_vlb_telescopes_to_monte_carlo_log_ratio(variance_type):
    """E_q[log q(x_{1:T}|x_0) − log p(x_{0:T})] = L_T + Σ_{t≥2} L_{t−1} + L_0, within Monte Carlo error."""
    g = torch.Generator().manual_seed(1)
    n, T = 40_000, SCHEDULE.num_timesteps
    x0 = torch.full((n, 1), 153 * 2 / 255 - 1, dtype=torch.float64)  # a value on the 256-level data grid
    # direct estimate: sample the forward chain and accumulate log q(x_t | x_{t−1}) − log p_θ(x_{t−1} | x_t)
    chain, log_ratio = [x0], torch.zeros(n, 1, dtype=torch.float64)
    for t in range(T):
        beta = SCHEDULE.betas[t]
        chain.append((1 - beta).sqrt() * chain[-1] + beta.sqrt() * torch.randn(x0.shape, generator=g, dtype=torch.float64))
        log_ratio += _log_normal(chain[-1], (1 - beta).sqrt() * chain[-2], beta)
    log_ratio -= _log_normal(chain[T], 0.0, torch.tensor(1.0, dtype=torch.float64))
    for t in range(T):  # p_θ(x_t | x_{t+1}) has index t, i.e. paper step t + 1
        index = torch.full((n,), t)
        p = p_mean_variance(SCHEDULE, _toy_model(chain[t + 1], index), chain[t + 1], index, variance_type=variance_type)
        if t == 0:
            log_ratio -= discretized_gaussian_log_likelihood(x0, p.mean, p.log_variance)
        else:
            log_ratio -= _log_normal(chain[t], p.mean, p.variance)
    direct, direct_se = log_ratio.mean() / LOG2, log_ratio.std() / LOG2 / math.sqrt(n)
    # decomposed estimate: analytic KLs (each with its own x_t draw) plus the prior and decoder terms
    bound = vlb_bits_per_dim(_toy_model, SCHEDULE, x0, variance_type=variance_type, generator=g)["total"]
    decomposed, decomposed_se = bound.mean(), bound.std() / math.sqrt(n)
    assert abs(direct - decomposed) < 4 * math.hypot(direct_se, decomposed_se)
    assert math.hypot(direct_se, decomposed_se) < 0.02 * abs(decomposed)  # the comparison is sharp


def test_prior_term_matches_closed_form():
    """L_T = KL(N(√ᾱ_T x_0, 1 − ᾱ_T) ‖ N(0, 1)) = ½(ᾱ_T x_0² + (1 − ᾱ_T) − 1 − log(1 − ᾱ_T)) nats."""
    x0 = torch.tensor([[0.3], [-0.9]], dtype=torch.float64)
    ac = SCHEDULE.alphas_cumprod[-1]
    expected = 0.5 * (ac * x0[:, 0] ** 2 + (1 - ac) - 1 - torch.log(1 - ac)) / LOG2
    torch.testing.assert_close(prior_kl(SCHEDULE, x0), expected)


@pytest.mark.parametrize("t", [2, 5, 18])
def test_kl_with_shared_variance_is_weighted_eps_error(t):
    """KL(q(x_{t−1}|x_t,x_0) ‖ N(μ_θ, σ_t²)) with μ_θ from ε_θ and the true posterior variance equal to σ_t²
    equals β_t²/(2σ_t² α_t (1 − ᾱ_t))·‖ε − ε_θ‖². Since 1 − α_t = β_t this is the same number as
    (1 − α_t)²/(2 α_t (1 − ᾱ_t) σ_t²); forms with ᾱ_t in place of α_t or with β_t unsquared are wrong."""
    g = torch.Generator().manual_seed(2)
    x0, eps, eps_theta = (torch.randn(1000, 3, generator=g, dtype=torch.float64) for _ in range(3))
    index = torch.full((1000,), t)
    xt = q_sample(SCHEDULE, x0, index, eps)
    true_mean, sigma2, log_sigma2 = q_posterior(SCHEDULE, x0, xt, index)
    model_mean, _, _ = q_posterior(SCHEDULE, x0_from_eps(SCHEDULE, xt, index, eps_theta), xt, index)
    kl = normal_kl(true_mean, log_sigma2, model_mean, log_sigma2).sum(dim=1)
    beta, alpha, ac = SCHEDULE.betas[t], SCHEDULE.alphas[t], SCHEDULE.alphas_cumprod[t]
    squared_error = ((eps - eps_theta) ** 2).sum(dim=1)
    sigma2 = sigma2[0, 0]
    paper = beta**2 / (2 * sigma2 * alpha * (1 - ac)) * squared_error
    torch.testing.assert_close(kl, paper, rtol=1e-10, atol=0)
    torch.testing.assert_close(kl, (1 - alpha) ** 2 / (2 * alpha * (1 - ac) * sigma2) * squared_error, rtol=1e-10, atol=0)
    assert not torch.allclose(kl, beta**2 / (2 * sigma2 * ac * (1 - ac)) * squared_error, rtol=1e-3)
    assert not torch.allclose(kl, beta / (2 * sigma2 * alpha * (1 - ac)) * squared_error, rtol=1e-3)


@pytest.mark.parametrize("num_inference_steps", [10, 100])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_ddim_eta_one_equals_ddpm_fixed_small(num_inference_steps, prediction_type):
    """With η = 1, σ_t² = β̃_t and the DDIM update is the DDPM posterior step, also on respaced chains."""
    config = dict(num_train_timesteps=100, beta_schedule="squaredcos_cap_v2", clip_sample=False,
                  prediction_type=prediction_type)
    ddpm, ddim = DDPMScheduler(variance_type="fixed_small", **config), DDIMScheduler(**config)
    ddpm.set_timesteps(num_inference_steps), ddim.set_timesteps(num_inference_steps)
    g = torch.Generator().manual_seed(3)
    sample = torch.randn(8, 4, generator=g, dtype=torch.float64)
    for t in ddpm.timesteps:
        output = torch.randn(8, 4, generator=g, dtype=torch.float64)
        a = ddpm.step(output, t, sample, generator=torch.Generator().manual_seed(int(t))).prev_sample
        b = ddim.step(output, t, sample, eta=1.0, generator=torch.Generator().manual_seed(int(t))).prev_sample
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
        sample = a
