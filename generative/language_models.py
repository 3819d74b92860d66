"""Character language models on one transformer: a masked-diffusion LM (LLaDA-style) and its autoregressive twin.

Masked diffusion (Nie et al. 2025): t ~ U(0, 1), p = (1 − ε) t + ε, each token masked with probability p,

    L = E_t [ (1/p) Σ_{i masked} −log p_θ(x_0^i | x_t) ] / (B·L)        (``diffusion.masking``)

and generation by iterative unmasking (``generate``). Autoregressive: L = −(1/L) Σ_i log p_θ(x_i | x_<i)
with a causal mask. Both report bits per character: the AR model exactly, the masked model as a Monte-Carlo
estimate of its bound (stratified over the number of masked tokens, with its standard error).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from dpstack.diffusion.masking import mask_exactly, mask_tokens, masking_probability, transfer_counts
from dpstack.generative.transformer import Transformer, TransformerConfig

KINDS = ("masked", "autoregressive")
REMASKING = ("low_confidence", "random")
LOG2 = math.log(2.0)


@dataclass
class LanguageModelConfig:
    kind: str = "masked"
    characters: str = ""            # the tokenizer's characters, the mask token last (datasets.text.CharTokenizer)
    transformer: TransformerConfig = field(default_factory=TransformerConfig)
    mask_eps: float = 1e-3          # ε of p = (1 − ε) t + ε

    def __post_init__(self) -> None:
        if isinstance(self.transformer, dict):
            self.transformer = TransformerConfig(**self.transformer)
        if self.kind not in KINDS:
            raise ValueError(f"model.kind must be one of {KINDS}, got {self.kind!r}")
        if self.transformer.causal != (self.kind == "autoregressive"):
            raise ValueError("model.transformer.causal must be true exactly for the autoregressive model")

    @classmethod
    def from_dict(cls, values: dict) -> "LanguageModelConfig":
        return cls(**values)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "characters": self.characters, "transformer": self.transformer.to_dict(),
                "mask_eps": self.mask_eps}


class _LanguageModel(nn.Module):
    def __init__(self, config: LanguageModelConfig) -> None:
        super().__init__()
        self.config = config
        self.network = Transformer(config.transformer)
        self.mask_id = config.transformer.vocab_size - 1

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def logits(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits with the mask token never predicted."""
        logits = self.network(tokens)
        logits[..., self.mask_id] = -torch.inf
        return logits


class MaskedDiffusionLM(_LanguageModel):
    kind = "masked"

    def compute_loss(self, batch: dict, generator=None) -> torch.Tensor:
        tokens = batch["tokens"]
        t = torch.rand(tokens.shape[0], generator=generator, device=tokens.device)
        p = masking_probability(t, self.config.mask_eps)
        noisy, masked = mask_tokens(tokens, p, self.mask_id, generator)
        nll = F.cross_entropy(self.logits(noisy).transpose(1, 2), tokens, reduction="none")  # (B, L)
        return (nll * masked / p[:, None]).sum() / tokens.numel()

    @torch.no_grad()
    def bits_per_char(self, tokens: torch.Tensor, n_t: int = 16, generator=None) -> dict:
        """Monte-Carlo bound per sequence, in bits/char: E_{k ~ U{1..L}} [(1/k) Σ_{i ∈ M_k} −log₂ p(x_0^i | x_t)]
        (``diffusion.masking``: equal to the ∫ (1/t) form), over n_t stratified k_j = ⌊(j + u) L / n_t⌋ + 1."""
        b, length = tokens.shape
        estimates = []
        for j in range(n_t):
            u = torch.rand(b, generator=generator, device=tokens.device)
            counts = ((j + u) * length / n_t).floor().long().clamp(0, length - 1) + 1
            noisy, masked = mask_exactly(tokens, counts, self.mask_id, generator)
            nll = F.cross_entropy(self.logits(noisy).transpose(1, 2), tokens, reduction="none")
            estimates.append((nll * masked).sum(1) / counts / LOG2)
        per_sequence = torch.stack(estimates, 1).mean(1)
        return {"bits_per_char": per_sequence, "n_t": n_t}

    @torch.no_grad()
    def generate(self, prompt: torch.Tensor, steps: int = 64, gen_length: int = 128, block_length: int | None = None,
                 temperature: float = 0.0, remasking: str = "low_confidence", cfg_scale: float = 0.0,
                 generator=None, on_step=None) -> torch.Tensor:
        """LLaDA's sampler: the answer starts fully masked; block by block (semi-autoregressive), each step
        predicts every masked token and commits the ``transfer_counts`` most confident (or random) ones of the
        current block; committed tokens and the prompt are never masked again. With ``cfg_scale`` w the
        logits are ℓ_∅ + (w + 1)(ℓ − ℓ_∅), ℓ_∅ from the same sequence with the prompt masked."""
        block_length = block_length or gen_length
        if gen_length % block_length:
            raise ValueError(f"block_length={block_length} must divide gen_length={gen_length}")
        blocks = gen_length // block_length
        if steps % blocks or steps < blocks:
            raise ValueError(f"steps={steps} must be a positive multiple of the number of blocks ({blocks})")
        if remasking not in REMASKING:
            raise ValueError(f"remasking must be one of {REMASKING}, got {remasking!r}")
        n_prompt = len(prompt)
        if n_prompt + gen_length > self.config.transformer.block_size:
            raise ValueError(f"prompt ({n_prompt}) + gen_length ({gen_length}) exceeds the model's context of "
                             f"{self.config.transformer.block_size} characters")
        x = torch.cat([prompt.to(self.device), torch.full((gen_length,), self.mask_id, device=self.device)])[None]
        in_prompt = torch.arange(x.shape[1], device=self.device) < n_prompt
        step = 0
        for block in range(blocks):
            end = n_prompt + (block + 1) * block_length
            for count in transfer_counts(block_length, steps // blocks):
                logits = self._guided_logits(x, in_prompt, cfg_scale)
                if temperature > 0:
                    gumbel = -torch.log(-torch.log(torch.rand(logits.shape, generator=generator, device=x.device)))
                    proposal = (logits / temperature + gumbel).argmax(-1)
                else:
                    proposal = logits.argmax(-1)
                if remasking == "low_confidence":
                    confidence = logits.softmax(-1).gather(-1, proposal[..., None])[..., 0]
                else:
                    confidence = torch.rand(x.shape, generator=generator, device=x.device)
                confidence = torch.where(x == self.mask_id, confidence, -torch.inf)
                confidence[:, end:] = -torch.inf
                chosen = confidence[0].topk(count).indices
                x[0, chosen] = proposal[0, chosen]
                step += 1
                if on_step is not None:
                    on_step(step, x.clone())
        return x[0, n_prompt:]

    def _guided_logits(self, x: torch.Tensor, in_prompt: torch.Tensor, cfg_scale: float) -> torch.Tensor:
        if cfg_scale == 0:
            return self.logits(x)
        unconditional = torch.where(in_prompt, torch.full_like(x, self.mask_id), x)
        conditional, unconditional = self.network(torch.cat([x, unconditional])).chunk(2)
        guided = unconditional + (cfg_scale + 1) * (conditional - unconditional)
        guided[..., self.mask_id] = -torch.inf  # after the mix: −∞ − (−∞) would be NaN
        return guided


class AutoregressiveLM(_LanguageModel):
    kind = "autoregressive"

    def compute_loss(self, batch: dict, generator=None) -> torch.Tensor:
        """Next-token cross-entropy on positions 1..L−1 (the window predicts itself, shifted by one)."""
        tokens = batch["tokens"]
        return F.cross_entropy(self.logits(tokens[:, :-1]).transpose(1, 2), tokens[:, 1:])

    @torch.no_grad()
    def bits_per_char(self, tokens: torch.Tensor, n_t: int | None = None, generator=None) -> dict:
        """Exact −(1/(L−1)) Σ_i log₂ p(x_i | x_<i) per sequence (the first character has no context to score)."""
        nll = F.cross_entropy(self.logits(tokens[:, :-1]).transpose(1, 2), tokens[:, 1:], reduction="none")
        return {"bits_per_char": nll.mean(1) / LOG2}

    @torch.no_grad()
    def generate(self, prompt: torch.Tensor, gen_length: int = 128, temperature: float = 1.0, generator=None,
                 **unused) -> torch.Tensor:
        """Sample x_i ~ softmax(ℓ_i / T) one character at a time (T = 0: greedy), the context cut to block_size."""
        x = prompt.to(self.device)[None]
        for _ in range(gen_length):
            logits = self.logits(x[:, -self.config.transformer.block_size:])[:, -1]
            if temperature > 0:
                probabilities = (logits / temperature).softmax(-1)
                following = torch.multinomial(probabilities, 1, generator=generator)
            else:
                following = logits.argmax(-1, keepdim=True)
            x = torch.cat([x, following], dim=1)
        return x[0, len(prompt):]


def build_language_model(config: LanguageModelConfig) -> _LanguageModel:
    return (MaskedDiffusionLM if config.kind == "masked" else AutoregressiveLM)(config)
