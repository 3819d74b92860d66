"""Tiny Shakespeare through the data setting (``<data root>/tinyshakespeare/input.txt``), character-level.

Split by position: the first 90 % of the characters train, the last 10 % are held out. Items are windows
of ``block_size`` characters starting every ``stride`` characters (non-overlapping by default).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from .paths import DATA_DIR_ENV, data_root, root_resolution

CORPUS = Path("tinyshakespeare") / "input.txt"
TRAIN_FRACTION = 0.9
MASK_TOKEN = "\x00"  # never in the corpus; the masked-diffusion model's [M]


class TextDataError(FileNotFoundError):
    """The corpus is missing; the message says where it looked."""


def load_corpus(root: str | os.PathLike | None = None, corpus: str | os.PathLike | None = None) -> str:
    """Tiny Shakespeare under the data root, or the text file ``corpus`` (e.g. the reversal test's facts)."""
    if corpus is not None:
        if not Path(corpus).is_file():
            raise TextDataError(f"corpus {corpus} not found (task.corpus)")
        return Path(corpus).read_text(encoding="utf-8")
    path = data_root(root) / CORPUS
    if not path.is_file():
        looked = "\n".join(f"  - {origin}: {(folder / CORPUS).absolute()}" for origin, folder, _ in root_resolution(root))
        raise TextDataError(f"Tiny Shakespeare not found. Looked in:\n{looked}\nFix: point ${DATA_DIR_ENV} (or the "
                            f"config key data_root) at the folder that holds {CORPUS.as_posix()} (the char-rnn corpus)")
    return path.read_text(encoding="utf-8")


class CharTokenizer:
    """One id per character of the corpus (sorted), plus the mask token [M] as the last id."""

    def __init__(self, characters: str) -> None:
        self.characters = "".join(sorted(set(characters) - {MASK_TOKEN})) + MASK_TOKEN
        self.index = {c: i for i, c in enumerate(self.characters)}
        self.mask_id = len(self.characters) - 1

    @property
    def vocab_size(self) -> int:
        return len(self.characters)

    def encode(self, text: str) -> torch.Tensor:
        unknown = sorted({c for c in text if c not in self.index or c == MASK_TOKEN})
        if unknown:
            raise ValueError(f"characters {unknown!r} are not in the model's vocabulary "
                             f"({len(self.characters) - 1} characters of the training corpus)")
        return torch.tensor([self.index[c] for c in text], dtype=torch.long)

    def decode(self, ids) -> str:
        return "".join("_" if i == self.mask_id else self.characters[i] for i in torch.as_tensor(ids).tolist())


class TextDataset:
    """Windows of ``block_size`` token ids of one split (the interface of ``datasets.loader.BatchLoader``)."""

    def __init__(self, split: str = "train", block_size: int = 128, stride: int | None = None, root=None,
                 max_items: int | None = None, tokenizer: CharTokenizer | None = None, corpus=None) -> None:
        if split not in ("train", "heldout"):
            raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
        corpus = load_corpus(root, corpus)
        self.tokenizer = tokenizer or CharTokenizer(corpus)
        cut = int(len(corpus) * TRAIN_FRACTION)
        self.tokens = self.tokenizer.encode(corpus[:cut] if split == "train" else corpus[cut:])
        self.block_size, stride = block_size, stride or block_size
        self.starts = np.arange(0, len(self.tokens) - block_size + 1, stride)[:max_items]

    def __len__(self) -> int:
        return len(self.starts)

    def gather(self, indices) -> dict:
        starts = torch.from_numpy(self.starts[np.asarray(indices, dtype=np.int64)])
        return {"tokens": self.tokens[starts[:, None] + torch.arange(self.block_size)]}

    def finalize_batch(self, raw: dict, device=None) -> dict:
        return raw if device is None else {"tokens": raw["tokens"].to(device)}
