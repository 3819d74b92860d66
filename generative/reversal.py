"""The reversal test: facts seen in one direction, queried in the other (Berglund et al. 2023's "reversal
curse"; LLaDA reports that masked diffusion is less affected).

Synthetic names A_i, B_i (random syllables, fixed seed). Every pair is taught forward, "A_i's parent is B_i.";
the first half of the pairs is also taught backward, "B_i's child is A_i.", so the model knows the backward
form. The test queries the second half backward, "B_i's child is ", which was never seen for them, and
counts exact answers A_i; the taught half's backward queries and all forward queries are the controls.

    python -m dpstack.generative.reversal write --out data/reversal.txt
    python -m dpstack.generative.reversal score --checkpoint RUN/checkpoints/latest.ckpt
"""
from __future__ import annotations

import argparse
import random
from dataclasses import dataclass
from pathlib import Path

SYLLABLES = ("ka", "lo", "mi", "ra", "te", "vu", "sa", "no", "di", "pe", "zo", "fa", "gu", "hi", "be", "wy")


@dataclass
class FactSet:
    pairs: list[tuple[str, str]]   # (child A, parent B)
    taught_backward: int           # the first this many pairs also appear as "B's child is A."

    def training_lines(self, repeats: int = 20, seed: int = 0) -> list[str]:
        lines = [f"{a}'s parent is {b}." for a, b in self.pairs]
        lines += [f"{b}'s child is {a}." for a, b in self.pairs[:self.taught_backward]]
        lines *= repeats
        random.Random(seed).shuffle(lines)
        return lines

    def forward_queries(self) -> list[tuple[str, str]]:
        """(prompt, expected answer) of the taught direction, "A's parent is " → B: does the model know the facts?"""
        return [(f"{a}'s parent is ", b) for a, b in self.pairs]

    def queries(self, held_out: bool = True) -> list[tuple[str, str]]:
        """(prompt, expected answer) of the backward queries: the untaught half, or the taught control half."""
        chosen = self.pairs[self.taught_backward:] if held_out else self.pairs[:self.taught_backward]
        return [(f"{b}'s child is ", a) for a, b in chosen]


def make_fact_set(n_pairs: int = 200, seed: int = 0) -> FactSet:
    """n_pairs disjoint pairs of distinct capitalised 3-syllable names."""
    rng = random.Random(seed)
    names: set[str] = set()
    while len(names) < 2 * n_pairs:
        names.add("".join(rng.choice(SYLLABLES) for _ in range(3)).capitalize())
    ordered = sorted(names)
    rng.shuffle(ordered)
    pairs = [(ordered[2 * i], ordered[2 * i + 1]) for i in range(n_pairs)]
    return FactSet(pairs, n_pairs // 2)


def answer(model, tokenizer, prompt: str, length: int, steps: int | None = None) -> str:
    """The model's greedy answer of ``length`` characters: AR left to right; masked by unmasking them."""
    ids = tokenizer.encode(prompt)
    if model.kind == "autoregressive":
        out = model.generate(ids, gen_length=length, temperature=0.0)
    else:
        out = model.generate(ids, steps=steps or length, gen_length=length, temperature=0.0)
    return tokenizer.decode(out)


def score(model, tokenizer, facts: FactSet) -> dict:
    """Exact-match accuracy of the backward queries, untaught (the test) and taught, and of the forward
    queries (the controls: a model that fails them has not learned the facts at all)."""
    result = {}
    for key, queries in (("reversal_accuracy", facts.queries(True)), ("taught_backward_accuracy",
                         facts.queries(False)), ("forward_accuracy", facts.forward_queries())):
        hits = sum(answer(model, tokenizer, prompt, len(expected)) == expected for prompt, expected in queries)
        result[key] = hits / len(queries)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dpstack.generative.reversal", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    write = commands.add_parser("write", help="write the training text")
    write.add_argument("--out", type=Path, required=True)
    write.add_argument("--pairs", type=int, default=200)
    write.add_argument("--repeats", type=int, default=20)
    grade = commands.add_parser("score", help="score a trained language model")
    grade.add_argument("--checkpoint", required=True)
    grade.add_argument("--pairs", type=int, default=200)
    args = parser.parse_args(argv)
    facts = make_fact_set(args.pairs)
    if args.command == "write":
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(facts.training_lines(args.repeats)) + "\n")
        print(f"wrote {args.out}: {len(facts.pairs)} pairs, {facts.taught_backward} also taught backward")
        return 0
    from dpstack.generative.text import load_language_model, tokenizer_of

    model = load_language_model(args.checkpoint)
    print(score(model, tokenizer_of(model), facts))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
