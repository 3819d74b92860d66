"""Absorbing-state (masking) diffusion on token sequences: the discrete counterpart of the Gaussian schedules.

Forward process at time t ∈ (0, 1]: every token is replaced by the mask token independently with
probability p_t; training uses LLaDA's floor, p_t = (1 − ε) t + ε, so no sequence goes unmasked. The
masked-diffusion bound (Shi et al. 2024; Sahoo et al. 2024; Nie et al. 2025, LLaDA) is

    −log p_θ(x_0) ≤ ∫_0^1 (1/t) E_{x_t ~ q(·|x_0)} [ Σ_{i: x_t^i = [M]} −log p_θ(x_0^i | x_t) ] dt,

The prediction never depends on t: the fraction of masks already tells the network where it is. Since
∫_0^1 (1/t) P(|M| = k) dt = 1/k for |M| ~ Binomial(L, t), the same bound is E_{k ~ U{1..L}} [(L/k) Σ_{i ∈ M}
−log p_θ(x_0^i | x_t)] with M a uniform k-subset (LLaDA's likelihood estimator): bounded weights, so its
Monte-Carlo estimate has finite variance, unlike sampling t directly (the 1/t weight near 0).
"""
import torch


def masking_probability(t: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """p_t = (1 − ε) t + ε."""
    return (1 - eps) * t + eps


def mask_tokens(tokens: torch.Tensor, p: torch.Tensor, mask_id: int, generator=None,
                keep: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """x_t: each token of ``tokens`` (B, L) replaced by ``mask_id`` with probability ``p`` (B,) or (B, 1),
    except where ``keep`` is True (e.g. a prompt). Returns (x_t, masked)."""
    draws = torch.rand(tokens.shape, generator=generator, device=tokens.device)
    masked = draws < p.reshape(-1, 1)
    if keep is not None:
        masked &= ~keep
    return torch.where(masked, torch.full_like(tokens, mask_id), tokens), masked


def mask_exactly(tokens: torch.Tensor, counts: torch.Tensor, mask_id: int, generator=None):
    """x_t with exactly ``counts[b]`` tokens of row b masked, a uniform random subset. Returns (x_t, masked)."""
    scores = torch.rand(tokens.shape, generator=generator, device=tokens.device)
    masked = scores.argsort(dim=1).argsort(dim=1) < counts.reshape(-1, 1)
    return torch.where(masked, torch.full_like(tokens, mask_id), tokens), masked


def transfer_counts(n_masked: int, steps: int) -> list[int]:
    """How many tokens each of ``steps`` steps unmasks so that all ``n_masked`` are revealed, as evenly as
    possible (the remainder goes to the first steps, as LLaDA's linear schedule does)."""
    base, remainder = divmod(n_masked, steps)
    return [base + (1 if i < remainder else 0) for i in range(steps)]
