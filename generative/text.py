"""Generate from and evaluate the character language models.

    python -m dpstack.generative.text generate [--checkpoint pretrained/shakespeare_mdlm.ckpt] --prompt "ROMEO:"
        --steps 64 --length 128 [--block-length 32] [--temperature 0] [--remasking low_confidence] [--cfg-scale 0]
    python -m dpstack.generative.text generate --checkpoint pretrained/shakespeare_ar.ckpt --prompt "ROMEO:" --length 128
    python -m dpstack.generative.text evaluate --checkpoint CKPT [--windows 500] [--n-t 16]

The prompt is kept exactly; characters outside the model's vocabulary (the corpus's 65) are refused with
their list. ``evaluate`` reports held-out bits/char: exact for the autoregressive model, the Monte-Carlo
bound (mean over windows of n_t stratified t samples, with its standard error) for the masked one.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

import torch

from dpstack.datasets.text import CharTokenizer, TextDataset
from dpstack.diffusion.checkpoint_io import CheckpointError, load_model
from dpstack.generative.language_models import LanguageModelConfig, build_language_model

PRETRAINED = Path(__file__).resolve().parent.parent / "pretrained"
RECIPE = "language_model"


def load_language_model(path: str | os.PathLike, device: str = "cpu"):
    """The EMA model of a language-model checkpoint, in eval mode; other kinds of checkpoint are refused."""
    return load_model(path, RECIPE, lambda values: build_language_model(LanguageModelConfig.from_dict(values)),
                      device, train_hint="(train one with python train.py --config-name=shakespeare_mdlm)")


def tokenizer_of(model) -> CharTokenizer:
    tokenizer = CharTokenizer(model.config.characters)
    assert tokenizer.characters == model.config.characters
    return tokenizer


def generate_text(model, prompt: str, length: int = 128, steps: int = 64, block_length: int | None = None,
                  temperature: float = 0.0, remasking: str = "low_confidence", cfg_scale: float = 0.0,
                  seed: int = 0) -> str:
    """The model's continuation of ``prompt`` (the masked model unmasks in ``steps``; the AR one samples)."""
    if model.kind == "autoregressive" and not prompt:
        raise ValueError("the autoregressive model needs a non-empty prompt")
    tokenizer = tokenizer_of(model)
    generator = torch.Generator(device=model.device).manual_seed(seed)
    ids = model.generate(tokenizer.encode(prompt), steps=steps, gen_length=length, block_length=block_length,
                         temperature=temperature, remasking=remasking, cfg_scale=cfg_scale, generator=generator)
    return tokenizer.decode(ids)


def evaluate_bits_per_char(model, n_windows: int = 500, n_t: int = 16, root=None, batch_size: int = 50,
                           seed: int = 0, corpus=None) -> dict:
    """Held-out bits/char over the first ``n_windows`` non-overlapping windows (of Tiny Shakespeare, or of the
    text file ``corpus``), with the standard error."""
    windows = TextDataset("heldout", model.config.transformer.block_size, root=root, max_items=n_windows,
                          tokenizer=tokenizer_of(model), corpus=corpus)
    generator = torch.Generator(device=model.device).manual_seed(seed)
    values = []
    for start in range(0, len(windows), batch_size):
        tokens = windows.gather(range(start, min(start + batch_size, len(windows))))["tokens"].to(model.device)
        values.append(model.bits_per_char(tokens, n_t=n_t, generator=generator)["bits_per_char"].cpu())
    values = torch.cat(values).double()
    result = {"bits_per_char": float(values.mean()), "bits_per_char_stderr": float(values.std() / math.sqrt(len(values))),
              "n_windows": len(values)}
    if model.kind == "masked":
        result["n_t"] = n_t
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dpstack.generative.text", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    generate = commands.add_parser("generate")
    generate.add_argument("--checkpoint", default=str(PRETRAINED / "shakespeare_mdlm.ckpt"))
    generate.add_argument("--prompt", default="ROMEO:")
    generate.add_argument("--length", type=int, default=128, help="characters to generate")
    generate.add_argument("--steps", type=int, default=64, help="unmasking steps (masked model)")
    generate.add_argument("--block-length", type=int, default=None, help="semi-autoregressive block (masked model)")
    generate.add_argument("--temperature", type=float, default=None, help="default: 0 (masked), 0.8 (AR)")
    generate.add_argument("--remasking", choices=["low_confidence", "random"], default="low_confidence")
    generate.add_argument("--cfg-scale", type=float, default=0.0)
    generate.add_argument("--seed", type=int, default=0)
    evaluate = commands.add_parser("evaluate")
    evaluate.add_argument("--checkpoint", required=True)
    evaluate.add_argument("--windows", type=int, default=500)
    evaluate.add_argument("--n-t", type=int, default=16)
    evaluate.add_argument("--corpus", default=None, help="a text file the model was trained on (default: Tiny "
                          "Shakespeare), whose last 10 %% is held out")
    for command in (generate, evaluate):
        command.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        model = load_language_model(args.checkpoint)
        if args.command == "evaluate":
            print(evaluate_bits_per_char(model, args.windows, args.n_t, corpus=args.corpus))
            return 0
        temperature = args.temperature if args.temperature is not None else (0.0 if model.kind == "masked" else 0.8)
        started = time.perf_counter()
        text = generate_text(model, args.prompt, args.length, args.steps, args.block_length, temperature,
                             args.remasking, args.cfg_scale, args.seed)
    except (CheckpointError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(args.prompt + text)
    print(f"[{model.kind}: {args.length} characters in {time.perf_counter() - started:.2f} s]", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
