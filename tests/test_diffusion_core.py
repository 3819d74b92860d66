"""Schedules, parameterisations, losses and reverse-step variances of the diffusion core."""
import math

import pytest
import torch

from dpstack.diffusion.gaussian import (
    dynamic_threshold,
    eps_from_v,
    eps_from_x0,
    p_mean_variance,
    predict_x0,
    prediction_target,
    q_posterior,
    q_sample,
    velocity,
    x0_from_eps,
    x0_from_v,
)
from dpstack.diffusion.losses import discretized_gaussian_log_likelihood, hybrid_loss, normal_kl, simple_loss, vlb_term
from dpstack.diffusion.schedules import BETA_SCHEDULES, NoiseSchedule, cosine_betas, make_betas


@pytest.mark.parametrize("name", BETA_SCHEDULES)
def test_schedule_tables_are_consistent(name):
    s = NoiseSchedule.from_name(name, 1000)
    assert torch.all((s.betas > 0) & (s.betas <= 0.999))
    assert torch.all(torch.diff(s.alphas_cumprod) < 0)  # ᾱ_t strictly decreasing
    torch.testing.assert_close(s.alphas_cumprod, torch.cumprod(1 - s.betas, 0))
    torch.testing.assert_close(s.alphas_cumprod_prev[1:], s.alphas_cumprod[:-1])
    torch.testing.assert_close(s.posterior_variance, s.betas * (1 - s.alphas_cumprod_prev) / (1 - s.alphas_cumprod))
    assert s.posterior_variance[0] == 0 and torch.isfinite(s.posterior_log_variance_clipped).all()
    assert s.posterior_log_variance_clipped[0] == s.posterior_log_variance_clipped[1]
    assert torch.all(s.posterior_variance <= s.betas)  # β̃_t ≤ β_t


def test_named_schedules_endpoints():
    linear = make_betas("linear", 1000)
    assert linear[0].item() == pytest.approx(1e-4) and linear[-1].item() == pytest.approx(0.02)
    scaled = make_betas("scaled_linear", 1000, 0.00085, 0.012)
    assert scaled.sqrt().diff().std() < 1e-12  # evenly spaced in √β
    sigmoid = make_betas("sigmoid", 1000)
    assert 1e-4 < sigmoid.min() < sigmoid.max() < 0.02 and torch.all(sigmoid.diff() > 0)
    cosine = cosine_betas(100)
    assert cosine[-1] == pytest.approx(0.999)  # capped
    tau = torch.arange(1, 101, dtype=torch.float64) / 100
    f = torch.cos((tau + 0.008) / 1.008 * math.pi / 2) ** 2 / math.cos(0.008 / 1.008 * math.pi / 2) ** 2
    torch.testing.assert_close(torch.cumprod(1 - cosine, 0)[:-1], f[:-1])  # ᾱ_t = f(t)/f(0) below the cap
    with pytest.raises(ValueError):
        make_betas("quadratic", 10)


def test_parameterisation_conversions_round_trip():
    s = NoiseSchedule.from_name("squaredcos_cap_v2", 100)
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(100, 3, generator=g, dtype=torch.float64), torch.randn(100, 3, generator=g, dtype=torch.float64)
    t = torch.arange(100)
    xt = q_sample(s, x0, t, eps)
    torch.testing.assert_close(x0_from_eps(s, xt, t, eps), x0)
    torch.testing.assert_close(eps_from_x0(s, xt, t, x0), eps)
    v = velocity(s, x0, eps, t)
    torch.testing.assert_close(x0_from_v(s, xt, t, v), x0)
    torch.testing.assert_close(eps_from_v(s, xt, t, v), eps)
    for kind, output in [("epsilon", eps), ("sample", x0), ("v_prediction", v)]:
        torch.testing.assert_close(prediction_target(s, x0, eps, t, kind), output)
        torch.testing.assert_close(predict_x0(s, output, xt, t, kind), x0)
    # v is the rotation of (x_0, ε) by φ_t with tan φ_t = √((1 − ᾱ_t)/ᾱ_t): norms are preserved
    torch.testing.assert_close((v**2 + xt**2), (x0**2 + eps**2))


def test_forward_process_moments():
    s = NoiseSchedule.from_name("linear", 1000)
    g = torch.Generator().manual_seed(1)
    t = torch.full((200_000,), 300)
    xt = q_sample(s, torch.full((200_000, 1), 0.8), t, torch.randn(200_000, 1, generator=g))
    assert xt.mean().item() == pytest.approx(0.8 * s.sqrt_alphas_cumprod[300].item(), abs=0.01)
    assert xt.var().item() == pytest.approx(1 - s.alphas_cumprod[300].item(), rel=0.02)


def test_reverse_variance_types():
    s = NoiseSchedule.from_name("linear", 50)
    xt, t = torch.randn(5, 2, 3, dtype=torch.float64), torch.arange(1, 50, 10)
    eps = torch.randn_like(xt)
    small = p_mean_variance(s, eps, xt, t, variance_type="fixed_small")
    large = p_mean_variance(s, eps, xt, t, variance_type="fixed_large")
    torch.testing.assert_close(small.variance[:, 0, 0], s.posterior_variance[t])
    torch.testing.assert_close(large.variance[:, 0, 0], s.betas[t])
    for v, expected in [(-1.0, small.variance), (1.0, large.variance)]:  # learned_range interpolates the two
        out = p_mean_variance(s, torch.cat([eps, torch.full_like(eps, v)], 1), xt, t, variance_type="learned_range")
        torch.testing.assert_close(out.variance, expected)
    mid = p_mean_variance(s, torch.cat([eps, torch.zeros_like(eps)], 1), xt, t, variance_type="learned_range")
    torch.testing.assert_close(mid.variance, (small.variance * large.variance).sqrt())  # geometric mean
    torch.testing.assert_close(small.mean, q_posterior(s, x0_from_eps(s, xt, t, eps), xt, t)[0])
    clipped = p_mean_variance(s, eps * 50, xt, t, clip_sample_range=1.0)
    assert clipped.pred_x0.abs().max() <= 1.0


def test_dynamic_threshold():
    x = torch.tensor([[0.5, -0.2, 0.9, 0.1], [3.0, -2.0, 0.5, 1.0]])
    out = dynamic_threshold(x, ratio=1.0, max_value=10.0)
    torch.testing.assert_close(out[0], x[0])  # s = max|x| < 1 → clamped up to 1: plain clipping, no change
    torch.testing.assert_close(out[1], x[1] / 3.0)  # s = 3 → divide by s
    assert dynamic_threshold(x * 100, ratio=1.0, max_value=2.0).abs().max() <= 1.0


def test_normal_kl_matches_monte_carlo():
    g = torch.Generator().manual_seed(2)
    m1, lv1, m2, lv2 = 0.3, math.log(0.5), -0.2, math.log(1.7)
    x = m1 + math.exp(0.5 * lv1) * torch.randn(1_000_000, generator=g, dtype=torch.float64)
    log_q = -0.5 * (lv1 + (x - m1) ** 2 / math.exp(lv1))
    log_p = -0.5 * (lv2 + (x - m2) ** 2 / math.exp(lv2))
    kl = normal_kl(*(torch.tensor(v, dtype=torch.float64) for v in (m1, lv1, m2, lv2)))
    assert kl.item() == pytest.approx((log_q - log_p).mean().item(), abs=3e-3)
    assert normal_kl(torch.tensor(0.4), torch.tensor(0.1), torch.tensor(0.4), torch.tensor(0.1)).item() == 0


@pytest.mark.parametrize("mean, log_variance", [(0.1, -6.0), (0.95, -2.0), (-3.0, 0.5), (40.0, -9.0)])
def test_discretized_likelihood_is_a_distribution_over_256_bins(mean, log_variance):
    grid = torch.linspace(-1, 1, 256, dtype=torch.float64)
    log_p = discretized_gaussian_log_likelihood(grid, torch.tensor(mean, dtype=torch.float64),
                                                torch.tensor(log_variance, dtype=torch.float64))
    assert torch.isfinite(log_p).all()
    assert log_p.exp().sum().item() == pytest.approx(1.0, abs=1e-9)
    inner = 100  # an interior bin: Φ(upper) − Φ(lower) computed directly
    normal = torch.distributions.Normal(mean, math.exp(0.5 * log_variance))
    direct = normal.cdf(grid[inner] + 1 / 255) - normal.cdf(grid[inner] - 1 / 255)
    if direct > 1e-12:
        assert log_p[inner].exp().item() == pytest.approx(direct.item(), rel=1e-6)


def test_simple_loss_is_mse():
    a, b = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1.0, 0.0, 4.0])
    assert simple_loss(a, b).item() == pytest.approx(5 / 3)


def test_hybrid_loss_stop_gradient_on_mean():
    """∂L_hybrid/∂(mean output) comes from L_simple alone; ∂/∂(variance output) from λ·L_vlb alone."""
    s = NoiseSchedule.from_name("linear", 100)
    g = torch.Generator().manual_seed(3)
    x0 = torch.rand(6, 2, 4, generator=g) * 2 - 1
    noise = torch.randn(x0.shape, generator=g)
    t = torch.tensor([0, 1, 10, 50, 98, 99])
    xt = q_sample(s, x0, t, noise)
    output = torch.cat([torch.randn(x0.shape, generator=g), torch.rand(x0.shape, generator=g) * 2 - 1], 1)
    output.requires_grad_(True)
    hybrid_loss(s, output, x0, xt, t, noise).backward()
    grad_mean, grad_var = output.grad.split(2, dim=1)
    expected_mean_grad = 2 * (output[:, :2] - noise).detach() / noise[0].numel() / 6
    torch.testing.assert_close(grad_mean, expected_mean_grad)
    assert grad_var.abs().sum() > 0 and torch.isfinite(grad_var).all()
    # the variance gradient is λ·T times the gradient of L_vlb
    frozen = output.detach().clone().requires_grad_(True)
    (vlb_term(s, x0, xt, t, frozen, variance_type="learned_range").mean() * 1e-3 * 100).backward()
    torch.testing.assert_close(grad_var, frozen.grad[:, 2:])


def test_learned_variance_minimises_vlb_at_the_true_posterior_variance():
    """With x̂_0 = x_0 the KL term is minimised by σ² = β̃_t, i.e. learned_range output v = −1."""
    s = NoiseSchedule.from_name("linear", 100)
    x0 = torch.rand(1, 1, 8, dtype=torch.float64) * 2 - 1
    t = torch.tensor([40])
    xt = q_sample(s, x0, t, torch.randn_like(x0))
    eps = eps_from_x0(s, xt, t, x0)
    losses = [vlb_term(s, x0, xt, t, torch.cat([eps, torch.full_like(eps, v)], 1), variance_type="learned_range").item()
              for v in torch.linspace(-1, 1, 9)]
    assert losses[0] == pytest.approx(0.0, abs=1e-10) and all(a < b for a, b in zip(losses, losses[1:]))
