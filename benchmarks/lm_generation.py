"""Generation speed and quality of the masked-diffusion LM against steps, beside the autoregressive twin.

    python benchmarks/lm_generation.py [--masked pretrained/shakespeare_mdlm.ckpt] [--ar pretrained/shakespeare_ar.ckpt]
        [--prompts 20] [--steps 12 24 48 96] [--threads 1]

Prompts: the first ``--prompt-length`` characters of the first ``--prompts`` held-out windows; each model
continues every prompt with ``--length`` characters (masked: low-confidence remasking at each number of steps
and temperature; AR: one call per character). Reported per setting:
- characters/s (generated characters over wall time, all prompts, one sequence at a time);
- judged bits/char: the AR model's NLL of the continuation given the prompt (a quality proxy; lower is more
  Shakespeare-like by the AR model's measure, too low means repetitive);
- distinct-1 / distinct-2: distinct words / word bigrams over all continuations (higher: less repetition).
The held-out text's own continuations are the reference row.
"""
from __future__ import annotations

import argparse
import math
import os
import platform
import time

import torch

from dpstack.datasets.text import TextDataset
from dpstack.generative.text import load_language_model, tokenizer_of


def judged_bits_per_char(judge, tokenizer, prompt: str, continuation: str) -> float:
    """−(1/n) Σ log₂ p_AR(c_i | prompt, c_<i) over the n continuation characters."""
    ids = tokenizer.encode(prompt + continuation).to(judge.device)[None]
    with torch.no_grad():
        log_probs = judge.logits(ids[:, :-1]).log_softmax(-1)
    targets = ids[:, 1:]
    nll = -log_probs.gather(-1, targets[..., None])[0, len(prompt) - 1:, 0]
    return float(nll.mean() / math.log(2))


def distinct(texts: list[str], n: int) -> float:
    grams = [tuple(words[i:i + n]) for words in (text.split() for text in texts) for i in range(len(words) - n + 1)]
    return len(set(grams)) / max(1, len(grams))


def row(name: str, texts: list[str], prompts: list[str], judge, tokenizer, seconds: float | None) -> str:
    judged = sum(judged_bits_per_char(judge, tokenizer, p, t) for p, t in zip(prompts, texts)) / len(texts)
    speed = f"{sum(map(len, texts)) / seconds:>8.0f}" if seconds else f"{'—':>8}"
    return f"{name:<34} {speed} {judged:>9.3f} {distinct(texts, 1):>6.3f} {distinct(texts, 2):>6.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--masked", default="pretrained/shakespeare_mdlm.ckpt")
    parser.add_argument("--ar", default="pretrained/shakespeare_ar.ckpt")
    parser.add_argument("--prompts", type=int, default=20)
    parser.add_argument("--prompt-length", type=int, default=32)
    parser.add_argument("--length", type=int, default=96)
    parser.add_argument("--steps", type=int, nargs="+", default=[12, 24, 48, 96])
    parser.add_argument("--temperatures", type=float, nargs="+", default=[0.0, 1.0])
    parser.add_argument("--ar-temperatures", type=float, nargs="+", default=[0.8, 1.0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    masked, ar = load_language_model(args.masked), load_language_model(args.ar)
    tokenizer = tokenizer_of(ar)
    windows = TextDataset("heldout", args.prompt_length + args.length, tokenizer=tokenizer, max_items=args.prompts)
    texts = [tokenizer.decode(windows.gather([i])["tokens"][0]) for i in range(len(windows))]
    prompts = [text[:args.prompt_length] for text in texts]
    print(f"{time.strftime('%Y-%m-%d %H:%M')}, {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"{args.threads} thread(s), torch {torch.__version__}, load average {os.getloadavg()[0]:.2f}; "
          f"{len(prompts)} prompts of {args.prompt_length} characters, {args.length} generated")
    print(f"{'model':<34} {'chars/s':>8} {'judged b/c':>9} {'dist-1':>6} {'dist-2':>6}")
    print(row("held-out text (reference)", [t[args.prompt_length:] for t in texts], prompts, ar, tokenizer, None))

    def run(model, **options):
        generator = torch.Generator().manual_seed(args.seed)
        started, outputs = time.perf_counter(), []
        for prompt in prompts:
            ids = model.generate(tokenizer.encode(prompt), gen_length=args.length, generator=generator,
                                 **options)
            outputs.append(tokenizer.decode(ids))
        return outputs, time.perf_counter() - started

    for temperature in args.ar_temperatures:
        outputs, seconds = run(ar, temperature=temperature)
        print(row(f"autoregressive, T={temperature:g}", outputs, prompts, ar, tokenizer, seconds))
    for temperature in args.temperatures:
        for steps in args.steps:
            outputs, seconds = run(masked, steps=steps, temperature=temperature)
            print(row(f"masked, {steps} steps, T={temperature:g}", outputs, prompts, ar, tokenizer, seconds))
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
