"""Text prompts for MNIST digits, and their character tokenizer.

A digit's prompt is drawn from templates over its name ("seven"), numeral ("7") and, where a template has
one, an adjective that is true of the image: its stroke weight (mean ink) within its class, split at the
class's 30th and 70th percentiles into thin / plain / thick. Training uses ``SEEN_TEMPLATES``; the
paraphrases of ``HELDOUT_TEMPLATES`` are never trained on (new sentence shapes over the same words) and
measure generalisation. The empty prompt "" is the null condition ∅ of classifier-free guidance.

Tokens: BOS, then the lower-cased characters, then PAD up to ``max_length + 1`` (every prompt has the same
length; the text encoder and the cross-attention see the padding, as Stable Diffusion's CLIP does).
"""
from __future__ import annotations

import numpy as np
import torch

NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
ADJECTIVES = {-1: ("thin", "light"), 0: ("neat", "plain"), 1: ("thick", "bold")}  # by stroke weight
SEEN_TEMPLATES = ("{w}", "{d}", "the digit {d}", "the digit {w}", "a handwritten {w}", "a handwritten {d}",
                  "the number {w}", "a {a} {w}", "a {a} {d}", "write a {w}", "{w}, handwritten",
                  "draw the digit {d}", "a {a} handwritten {d}", "number {d}")
HELDOUT_TEMPLATES = ("a picture of a {w}", "the numeral {d}", "please draw a {w}", "{d} written by hand",
                     "an image of the number {w}", "a {a} handwritten {w}")
TEMPLATES = {"seen": SEEN_TEMPLATES, "heldout": HELDOUT_TEMPLATES}
ALPHABET = " abcdefghijklmnopqrstuvwxyz0123456789,.'-!?"
PAD, BOS = 0, 1


def stroke_weight_classes(ink: torch.Tensor, labels: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """−1 (thin), 0 (plain) or 1 (thick) per image: its mean ink against its class's (low, high) thresholds."""
    low, high = thresholds[labels].unbind(-1)
    return (ink > high).long() - (ink < low).long()


def ink_thresholds(ink: torch.Tensor, labels: torch.Tensor, num_classes: int = 10) -> list[list[float]]:
    """Per class, the 30th and 70th percentiles of mean ink (the thin / thick boundaries)."""
    return [[float(q) for q in torch.quantile(ink[labels == c], torch.tensor([0.3, 0.7]))] for c in range(num_classes)]


def longest_prompt_length() -> int:
    """The most characters any template can produce (the tokenizer's ``max_length`` must allow it)."""
    word, adjective = max(NUMBER_WORDS, key=len), max((a for pair in ADJECTIVES.values() for a in pair), key=len)
    return max(len(t.format(w=word, d="0", a=adjective)) for group in TEMPLATES.values() for t in group)


def describe(label: int, weight: int, rng: np.random.Generator, split: str = "seen") -> str:
    """A random prompt for a digit of class ``label`` and stroke weight class ``weight`` (−1, 0, 1)."""
    templates = TEMPLATES[split]
    template = templates[rng.integers(len(templates))]
    adjectives = ADJECTIVES[int(weight)]
    return template.format(w=NUMBER_WORDS[label], d=str(label), a=adjectives[rng.integers(len(adjectives))])


class PromptTokenizer:
    """Character tokenizer over ``ALPHABET`` (lower-cased input); unknown characters and over-long prompts
    are refused with the reason."""

    def __init__(self, max_length: int = 40) -> None:
        self.max_length = max_length
        self.index = {character: i + 2 for i, character in enumerate(ALPHABET)}

    @property
    def vocab_size(self) -> int:
        return len(ALPHABET) + 2

    @property
    def sequence_length(self) -> int:
        return self.max_length + 1

    def encode(self, prompts: list[str]) -> torch.Tensor:
        """(N, max_length + 1) int64 token ids: BOS, characters, PAD."""
        tokens = torch.full((len(prompts), self.sequence_length), PAD, dtype=torch.long)
        tokens[:, 0] = BOS
        for row, prompt in enumerate(prompts):
            text = prompt.lower().strip()
            if len(text) > self.max_length:
                raise ValueError(f"prompt {prompt!r} has {len(text)} characters; at most {self.max_length} are "
                                 "allowed (shorten it)")
            unknown = sorted({character for character in text if character not in self.index})
            if unknown:
                raise ValueError(f"prompt {prompt!r} has characters outside the tokenizer's alphabet: {unknown}; "
                                 f"use letters, digits, spaces and {ALPHABET[37:]!r}")
            tokens[row, 1:1 + len(text)] = torch.tensor([self.index[character] for character in text],
                                                        dtype=torch.long)
        return tokens
