"""Evaluate an image DDPM in one command: exact bits/dim, classifier-FID, class accuracy, and pictures.

    python -m dpstack.generative.evaluate CKPT [--n-bpd 1000] [--n-samples 5000] [--sampler ddim --steps 50
        --eta 0] [--out DIR]

Held-out digits are those of the split scheme the model was trained with (its checkpoint's
``task.split_scheme``).
- NLL: the full variational bound L_T + Σ_{t≥2} L_{t−1} + L_0 (all T terms, discretised decoder on the
  8-bit levels, no dequantisation noise) on the first ``--n-bpd`` held-out digits, in bits/dim, with its
  standard error over digits; the model's unconditional (∅) branch when it is class-conditional.
- Sample quality: Fréchet distance of the MNIST classifier's penultimate features between ``--n-samples``
  samples and the held-out digits, and, for a class-conditional model, the classifier's accuracy on samples
  drawn for uniformly cycled labels (at ``--guidance``).
Writes ``eval.json`` and the pictures of ``dpstack.generative.pictures`` to ``--out``.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from dpstack.datasets.mnist import MNISTDataset, to_model_space, to_uint8
from dpstack.generative.classifier import DEFAULT_PATH as CLASSIFIER_PATH
from dpstack.generative.classifier import frechet_distance, load_classifier, predict_features


def heldout_digits(n: int | None = None, root=None, scheme: str = "test_split") -> tuple[torch.Tensor, torch.Tensor]:
    """The first n held-out digits of a split scheme as model-space images (N, 1, 28, 28) and their labels."""
    heldout = MNISTDataset("heldout", root, max_items=n, scheme=scheme)
    return to_model_space(heldout.images), heldout.labels


def bits_per_dim(model, images: torch.Tensor, batch_size: int = 100, seed: int = 0, progress: bool = True,
                 ledger: str | Path | None = None, fingerprint: str = "") -> dict:
    """Mean full-bound bits/dim over ``images`` with its standard error, and the mean of each part.

    The batch images[s : s + batch_size] draws its x_t ~ q(x_t | x_0) from a generator seeded ``seed + s``, so a
    batch's bound does not depend on which batches ran before it. With a ``ledger`` (a JSON file) each finished
    batch is written there atomically and skipped when the same evaluation runs again: the T model calls per
    digit of a long evaluation can be spread over several runs and give the numbers of one run.
    ``fingerprint`` names the model and data (a ledger written for another is refused).
    """
    book = BoundLedger(ledger, fingerprint, seed) if ledger else None
    parts = []
    for start in tqdm(range(0, len(images), batch_size), desc="bits/dim (all T terms)", disable=not progress,
                      leave=False):
        key = f"{start}-{min(start + batch_size, len(images))}"
        done = book.batches.get(key) if book else None
        if done is None:
            generator = torch.Generator(device=model.device).manual_seed(seed + start)
            bound = model.bits_per_dim(images[start:start + batch_size].to(model.device), generator=generator)
            done = {"total": bound["total"].tolist(), "prior": bound["prior"].tolist(),
                    "decoder": bound["terms"][:, 0].tolist()}
            if book:
                book.record(key, done)
        parts.append(done)
    total, prior, decoder = (torch.tensor([v for part in parts for v in part[name]], dtype=torch.float64)
                             for name in ("total", "prior", "decoder"))
    return {"bits_per_dim": float(total.mean()), "bits_per_dim_stderr": float(total.std() / math.sqrt(len(total))),
            "prior_L_T": float(prior.mean()), "decoder_L_0": float(decoder.mean()),
            "n_images": len(total), "num_timesteps": model.config.num_train_timesteps}


class BoundLedger:
    """The per-digit bounds of finished batches of one evaluation (model, data, seed), kept in a JSON file."""

    def __init__(self, path: str | Path, fingerprint: str, seed: int):
        self.path, self.header = Path(path), {"fingerprint": fingerprint, "seed": seed}
        self.batches: dict = {}
        if self.path.is_file():
            stored = json.loads(self.path.read_text())
            found = {name: stored.get(name) for name in self.header}
            if found != self.header:
                raise ValueError(f"bits/dim ledger {self.path} belongs to another evaluation ({found}, not "
                                 f"{self.header}); delete it or give another --bpd-ledger")
            self.batches = stored["batches"]

    def record(self, key: str, bounds: dict) -> None:
        """Add one batch's per-digit bounds and rewrite the file atomically (temp file, rename)."""
        self.batches[key] = bounds
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_name(f".{self.path.name}.tmp")
        temporary.write_text(json.dumps({**self.header, "batches": self.batches}))
        os.replace(temporary, self.path)


def model_fingerprint(model, *extra: str) -> str:
    """sha256 (the first 16 hex digits) of what the model computes: its config and the bytes of every tensor of
    its state dict in key order, joined with ``extra`` names. Unlike a hash of the checkpoint file it ignores the
    training state (wall times, optimizer), so a model re-trained bit for bit by the same command matches the
    ledgers of the first one."""
    digest = hashlib.sha256(json.dumps(model.config.to_dict(), sort_keys=True).encode())
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return ":".join([digest.hexdigest()[:16], *extra])


def generate(model, n: int, sampler: str = "ddim", steps: int | None = 50, eta: float = 0.0, labels=None,
             guidance_scale: float = 1.0, batch_size: int = 500, seed: int = 0, progress: bool = True) -> torch.Tensor:
    """n samples in [−1, 1], drawn in batches from one seeded generator; ``labels`` (n,) or None."""
    generator = torch.Generator(device=model.device).manual_seed(seed)
    chunks = []
    for start in tqdm(range(0, n, batch_size), desc=f"sampling {sampler}-{steps or 'all'}", disable=not progress,
                      leave=False):
        size = min(batch_size, n - start)
        chunk_labels = None if labels is None else labels[start:start + size].to(model.device)
        chunks.append(model.sample(size, sampler, steps, eta, chunk_labels, guidance_scale, generator).cpu())
    return torch.cat(chunks)


def sample_quality(samples: torch.Tensor, reference: torch.Tensor, labels: torch.Tensor | None = None,
                   classifier=None) -> dict:
    """Classifier-FID of samples vs reference digits, and the accuracy on ``labels`` when given."""
    classifier = classifier if classifier is not None else load_classifier(CLASSIFIER_PATH)[0]
    quantized = to_model_space(to_uint8(samples).squeeze(1))  # as stored 8-bit images
    sample_features, predicted = predict_features(classifier, quantized)
    reference_features, _ = predict_features(classifier, reference)
    result = {"classifier_fid": frechet_distance(sample_features, reference_features), "n_samples": len(samples)}
    if labels is not None:
        result["class_accuracy"] = float((predicted == labels.cpu()).float().mean())
    return result


def cycled_labels(n: int, num_classes: int) -> torch.Tensor:
    """0, 1, …, K−1, 0, 1, … (n labels): every class equally often."""
    return torch.arange(n) % num_classes


def evaluate(model, n_bpd: int = 1000, n_samples: int = 5000, sampler: str = "ddim", steps: int | None = 50,
             eta: float = 0.0, guidance_scale: float = 1.0, seed: int = 0, root=None, progress: bool = True,
             split_scheme: str = "test_split", bpd_ledger: str | Path | None = None, fingerprint: str = "") -> dict:
    """All of the module docstring's numbers for one model (its EMA weights, in eval mode), on the held-out
    digits of the split scheme it was trained with."""
    classifier, classifier_accuracy = load_classifier(CLASSIFIER_PATH)
    reference, _ = heldout_digits(None, root, split_scheme)
    metrics: dict = {"classifier_heldout_accuracy": classifier_accuracy}
    if n_bpd:
        started = time.monotonic()
        metrics.update(bits_per_dim(model, reference[:n_bpd], seed=seed, progress=progress, ledger=bpd_ledger,
                                    fingerprint=fingerprint))
        metrics["bpd_seconds"] = time.monotonic() - started
    if n_samples:
        started = time.monotonic()
        samples = generate(model, n_samples, sampler, steps, eta, seed=seed, progress=progress)
        metrics.update({f"unconditional_{k}": v for k, v in sample_quality(samples, reference, None, classifier).items()})
        metrics["sampling_seconds"] = time.monotonic() - started
        if model.config.unet.num_classes:
            labels = cycled_labels(n_samples, model.config.unet.num_classes)
            conditional = generate(model, n_samples, sampler, steps, eta, labels, guidance_scale, seed=seed + 1,
                                   progress=progress)
            metrics.update({f"conditional_{k}": v
                            for k, v in sample_quality(conditional, reference, labels, classifier).items()})
    metrics.update({"sampler": sampler, "steps": steps or model.config.num_train_timesteps, "eta": eta,
                    "guidance_scale": guidance_scale, "seed": seed, "split_scheme": split_scheme})
    return metrics


def main(argv: list[str] | None = None) -> int:
    from dpstack.diffusion.checkpoint_io import CheckpointError, load_checkpoint
    from dpstack.generative.checkpoint import load_image_model
    from dpstack.generative.pictures import save_all_pictures

    parser = argparse.ArgumentParser(prog="python -m dpstack.generative.evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--n-bpd", type=int, default=1000, help="held-out digits for bits/dim (0: skip)")
    parser.add_argument("--n-samples", type=int, default=5000, help="samples for classifier-FID (0: skip)")
    parser.add_argument("--sampler", choices=["ddpm", "ddim"], default="ddim")
    parser.add_argument("--steps", type=int, default=50, help="denoising steps (0: all T)")
    parser.add_argument("--eta", type=float, default=0.0)
    parser.add_argument("--guidance", type=float, default=1.0, help="classifier-free guidance w for labelled samples")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--out", default="data/eval_mnist", help="folder for eval.json and pictures")
    parser.add_argument("--no-pictures", action="store_true", help="write eval.json only (no sample grids)")
    parser.add_argument("--bpd-ledger", default=None,
                        help="JSON file of finished bits/dim batches: written as they finish, skipped when the "
                             "same command runs again (a long evaluation in pieces)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        model = load_image_model(args.checkpoint, args.device)
        scheme = load_checkpoint(args.checkpoint)["config"]["task"].get("split_scheme", "test_split")
    except CheckpointError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    fingerprint = model_fingerprint(model, scheme)
    if args.bpd_ledger:
        try:
            BoundLedger(args.bpd_ledger, fingerprint, args.seed)
        except ValueError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    metrics = evaluate(model, args.n_bpd, args.n_samples, args.sampler, args.steps or None, args.eta, args.guidance,
                       args.seed, args.data_root, split_scheme=scheme, bpd_ledger=args.bpd_ledger,
                       fingerprint=fingerprint)
    metrics.update({"checkpoint": str(args.checkpoint), "fingerprint": fingerprint})
    (out / "eval.json").write_text(json.dumps(metrics, indent=2))
    if not args.no_pictures:
        save_all_pictures(model, out, seed=args.seed)
    print(json.dumps(metrics, indent=2))
    print(f"wrote {out / 'eval.json'}" + ("" if args.no_pictures else f" and pictures in {out}"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
