"""A small pre-LayerNorm transformer over token ids, bidirectional (mask predictor) or causal (next token).

    h_0 = E[x] + P;  h ← h + Attn(LN(h));  h ← h + MLP(LN(h));  logits = LN(h) Eᵀ   (tied embeddings)

Both language models use this one network; they differ only in the attention mask and the objective, so
at equal ``TransformerConfig`` they have exactly the same parameter count.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class TransformerConfig:
    vocab_size: int = 66
    block_size: int = 128
    n_layer: int = 4
    n_head: int = 4
    d_model: int = 128
    dropout: float = 0.1
    causal: bool = False

    def __post_init__(self) -> None:
        if self.d_model % self.n_head:
            raise ValueError(f"d_model={self.d_model} must be divisible by n_head={self.n_head}")

    def to_dict(self) -> dict:
        return asdict(self)


class Block(nn.Module):
    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.heads, self.causal, self.dropout = config.n_head, config.causal, config.dropout
        self.norm_attention, self.norm_mlp = nn.LayerNorm(config.d_model), nn.LayerNorm(config.d_model)
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model)
        self.proj = nn.Linear(config.d_model, config.d_model)
        self.mlp = nn.Sequential(nn.Linear(config.d_model, 4 * config.d_model), nn.GELU(),
                                 nn.Linear(4 * config.d_model, config.d_model), nn.Dropout(config.dropout))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        b, length, d = h.shape
        q, k, v = self.qkv(self.norm_attention(h)).reshape(b, length, 3, self.heads, d // self.heads).permute(
            2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal,
                                                  dropout_p=self.dropout if self.training else 0.0)
        h = h + F.dropout(self.proj(attended.transpose(1, 2).reshape(b, length, d)), self.dropout, self.training)
        return h + self.mlp(self.norm_mlp(h))


class Transformer(nn.Module):
    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.config = config
        self.embedding = nn.Embedding(config.vocab_size, config.d_model)
        self.position = nn.Parameter(torch.zeros(config.block_size, config.d_model))
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.norm = nn.LayerNorm(config.d_model)
        nn.init.normal_(self.embedding.weight, std=0.02)
        nn.init.normal_(self.position, std=0.02)

    def features(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, L) ids → (B, L, d_model) final LayerNorm'd states; L ≤ block_size (a text encoder's output)."""
        if tokens.shape[1] > self.config.block_size:
            raise ValueError(f"sequence of {tokens.shape[1]} tokens exceeds block_size={self.config.block_size}")
        h = self.embedding(tokens) + self.position[:tokens.shape[1]]
        for block in self.blocks:
            h = block(h)
        return self.norm(h)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, L) ids → (B, L, vocab) logits; L ≤ block_size."""
        return self.features(tokens) @ self.embedding.weight.T
