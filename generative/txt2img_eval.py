"""Evaluate a latent text-to-image model: prompt accuracy, stroke weight, classifier-FID, and pictures.

    python -m dpstack.generative.txt2img_eval CKPT [--guidance 0 1 2 3 5 8] [--n-samples 1000] [--steps 20]
        [--sampler ddim --eta 0] [--out DIR]

For each guidance scale w and each prompt split (``seen`` training templates, ``heldout`` paraphrases never
trained on): n prompts for the digits 0–9 in turn (stroke weights thin / plain / thick in turn), one sample
each. Reported: prompt accuracy (the MNIST classifier names the prompt's digit), classifier-FID against the
held-out digits, and the stroke-weight gap (mean ink of samples asked to be thick/bold minus thin/light, in
[0, 1] pixel units; the training digits' own gap between those groups is reported beside it). Writes
``eval.json`` and the prompts × guidance picture to ``--out``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from dpstack.generative.classifier import DEFAULT_PATH as CLASSIFIER_PATH
from dpstack.generative.classifier import load_classifier
from dpstack.generative.evaluate import heldout_digits, sample_quality
from dpstack.generative.pictures import save_png, tile
from dpstack.generative.prompts import ADJECTIVES, describe, stroke_weight_classes

GUIDANCE_SCALES = (0.0, 1.0, 2.0, 3.0, 5.0, 8.0)
GRID_PROMPTS = ("zero", "a handwritten one", "the digit 2", "a thick three", "a thin 4", "5", "the number six",
                "a picture of a seven", "the numeral 8", "please draw a nine")


def evaluation_prompts(n: int, split: str, seed: int = 0) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """n prompts of a template split, the digit each names (0, 1, …, 9, 0, …) and its stroke weight (−1, 0, 1)."""
    labels = torch.arange(n) % 10
    weights = (torch.arange(n) // 10) % 3 - 1
    rng = np.random.default_rng(seed)
    return [describe(int(label), int(weight), rng, split) for label, weight in zip(labels, weights)], labels, weights


def generate(model, prompts: list[str], guidance_scale: float, sampler: str = "ddim", steps: int | None = 20,
             eta: float = 0.0, seed: int = 0, batch_size: int = 500, progress: bool = True) -> torch.Tensor:
    """One image per prompt, in batches drawn from one seeded generator."""
    generator = torch.Generator(device=model.device).manual_seed(seed)
    chunks = []
    for start in tqdm(range(0, len(prompts), batch_size), desc=f"sampling w={guidance_scale:g}", leave=False,
                      disable=not progress):
        chunks.append(model.sample(prompts[start:start + batch_size], guidance_scale, sampler, steps, eta,
                                   generator).cpu())
    return torch.cat(chunks)


def stroke_gap(images: torch.Tensor, prompts: list[str]) -> float | None:
    """Mean ink (pixel values in [0, 1]) of images asked to be thick minus those asked to be thin."""
    ink = (images.flatten(1).mean(1) + 1) / 2
    thick = torch.tensor([any(f" {word} " in f" {p} " for word in ADJECTIVES[1]) for p in prompts])
    thin = torch.tensor([any(f" {word} " in f" {p} " for word in ADJECTIVES[-1]) for p in prompts])
    if not thick.any() or not thin.any():
        return None
    return float(ink[thick].mean() - ink[thin].mean())


def data_stroke_gap(images: torch.Tensor, labels: torch.Tensor, thresholds) -> float:
    """The same gap among real digits: mean ink of the thick class minus the thin class (``stroke_weight_classes``)."""
    weights = stroke_weight_classes(images.flatten(1).mean(1), labels, torch.tensor(thresholds))
    ink = (images.flatten(1).mean(1) + 1) / 2
    return float(ink[weights == 1].mean() - ink[weights == -1].mean())


def evaluate_prompts(model, n_samples: int = 1000, guidance_scale: float = 3.0, sampler: str = "ddim",
                     steps: int | None = 20, eta: float = 0.0, seed: int = 0, root=None,
                     split_scheme: str = "test_split", progress: bool = True, classifier=None, reference=None) -> dict:
    """Prompt accuracy, classifier-FID and stroke gap for the seen and held-out prompt splits at one w."""
    classifier = classifier if classifier is not None else load_classifier(CLASSIFIER_PATH)[0]
    if reference is None:
        reference, _ = heldout_digits(None, root, split_scheme)
    metrics: dict = {"guidance": guidance_scale, "n_samples": n_samples, "sampler": sampler, "steps": steps,
                     "eta": eta, "seed": seed}
    for offset, split in enumerate(("seen", "heldout")):
        prompts, labels, _ = evaluation_prompts(n_samples, split, seed + offset)
        started = time.monotonic()
        images = generate(model, prompts, guidance_scale, sampler, steps, eta, seed + offset, progress=progress)
        metrics[f"{split}_sampling_seconds"] = time.monotonic() - started
        quality = sample_quality(images, reference, labels, classifier)
        metrics[f"{split}_prompt_accuracy"] = quality["class_accuracy"]
        metrics[f"{split}_classifier_fid"] = quality["classifier_fid"]
        metrics[f"{split}_stroke_gap"] = stroke_gap(images, prompts)
    return metrics


def save_guidance_grid(model, path, prompts=GRID_PROMPTS, guidance_scales=GUIDANCE_SCALES, per_cell: int = 2,
                       steps: int | None = 20, seed: int = 0, scale: int = 2) -> Path:
    """Rows: prompts; column blocks: guidance scales (``per_cell`` samples each), the same z_T along a row."""
    generator = torch.Generator().manual_seed(seed)  # z_T drawn on the CPU, then moved: the same on any device
    size, channels = model.config.autoencoder.latent_size, model.config.autoencoder.latent_channels
    noise = torch.randn((len(prompts) * per_cell, channels, size, size), generator=generator).to(model.device)
    repeated = [prompt for prompt in prompts for _ in range(per_cell)]
    columns = [model.sample(repeated, w, "ddim", steps, 0.0, noise=noise).cpu() for w in guidance_scales]
    images = torch.stack(columns, dim=1).reshape(len(prompts), per_cell, len(guidance_scales), 1, 28, 28)
    images = images.transpose(1, 2).reshape(-1, 1, 28, 28)  # row-major: prompt, then w, then sample
    return save_png(tile(images, len(guidance_scales) * per_cell, scale), path)


def main(argv: list[str] | None = None) -> int:
    from dpstack.diffusion.checkpoint_io import CheckpointError, load_checkpoint
    from dpstack.generative.checkpoint import load_text_to_image

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--guidance", type=float, nargs="+", default=list(GUIDANCE_SCALES))
    parser.add_argument("--n-samples", type=int, default=1000)
    parser.add_argument("--sampler", choices=("ddim", "ddpm"), default="ddim")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--eta", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--out", type=Path, default=None, help="folder for eval.json and the picture "
                        "(default: eval/ beside the checkpoint's folder)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        model = load_text_to_image(args.checkpoint)
        split_scheme = load_checkpoint(args.checkpoint)["config"]["task"]["split_scheme"]
    except (CheckpointError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    out = args.out or args.checkpoint.parent.parent / "eval"
    classifier, classifier_accuracy = load_classifier(CLASSIFIER_PATH)
    reference, reference_labels = heldout_digits(None, args.data_root, split_scheme)
    rows = [evaluate_prompts(model, args.n_samples, w, args.sampler, args.steps, args.eta, args.seed,
                             split_scheme=split_scheme, classifier=classifier, reference=reference)
            for w in tqdm(args.guidance, desc="guidance scales")]
    result = {"checkpoint": str(args.checkpoint), "classifier_heldout_accuracy": classifier_accuracy,
              "heldout_digits_stroke_gap": data_stroke_gap(reference, reference_labels, model.config.ink_thresholds),
              "rows": rows}
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval.json").write_text(json.dumps(result, indent=2))
    picture = save_guidance_grid(model, out / "guidance_grid.png", steps=args.steps, seed=args.seed)
    print(f"{'w':>4} {'seen acc':>9} {'held-out acc':>13} {'seen FID':>9} {'held-out FID':>13} {'stroke gap':>11}")
    for row in rows:
        gap = row["seen_stroke_gap"]
        print(f"{row['guidance']:>4g} {row['seen_prompt_accuracy']:>9.3f} {row['heldout_prompt_accuracy']:>13.3f} "
              f"{row['seen_classifier_fid']:>9.1f} {row['heldout_classifier_fid']:>13.1f} "
              f"{gap if gap is None else round(gap, 4)!s:>11}")
    print(f"wrote {out / 'eval.json'} and {picture}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
