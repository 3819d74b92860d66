"""A small MNIST classifier and the "classifier-FID" built on its features.

Fréchet distance between Gaussians fitted to the penultimate features φ of real and generated digits
(Heusel et al. 2017, with this classifier in place of Inception):

    FD = ‖μ_r − μ_g‖² + tr(Σ_r + Σ_g − 2 (Σ_r^{1/2} Σ_g Σ_r^{1/2})^{1/2})

Train it once on the 9k split: ``python -m dpstack.generative.classifier --out pretrained/mnist_classifier.pt``
(held-out accuracy printed and stored in the file).
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from dpstack.datasets.loader import make_dataloader
from dpstack.datasets.mnist import MNISTDataset

FEATURE_DIM = 128
CLASSIFIER_FORMAT = "dpstack-mnist-classifier/1"
DEFAULT_PATH = Path(__file__).resolve().parent.parent / "pretrained" / "mnist_classifier.pt"


class MNISTClassifier(nn.Module):
    """conv(32) → pool → conv(64) → pool → FC(128) = φ → FC(10); input (B, 1, 28, 28) in [−1, 1]."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Dropout(0.25), nn.Linear(64 * 7 * 7, FEATURE_DIM), nn.ReLU())
        self.logits = nn.Linear(FEATURE_DIM, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(self.features(x))


@torch.no_grad()
def predict_features(classifier: MNISTClassifier, images: torch.Tensor, batch_size: int = 500):
    """(φ (N, 128) float64, predicted labels (N,)) of images in [−1, 1]."""
    classifier.eval()
    features, labels = [], []
    for chunk in images.split(batch_size):
        phi = classifier.features(chunk.float())
        features.append(phi.double())
        labels.append(classifier.logits(phi).argmax(dim=1))
    return torch.cat(features).numpy(), torch.cat(labels)


def _sqrtm_psd(matrix: np.ndarray) -> np.ndarray:
    """Symmetric PSD square root by eigendecomposition (negative round-off eigenvalues set to 0)."""
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


def frechet_distance(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """FD between Gaussian fits of two feature sets (rows are samples), equation in the module docstring."""
    return gaussian_frechet_distance(features_a.mean(0), np.cov(features_a, rowvar=False),
                                     features_b.mean(0), np.cov(features_b, rowvar=False))


def gaussian_frechet_distance(mu_a: np.ndarray, cov_a: np.ndarray, mu_b: np.ndarray, cov_b: np.ndarray) -> float:
    """FD between N(μ_a, Σ_a) and N(μ_b, Σ_b), the equation in the module docstring."""
    root_a = _sqrtm_psd(cov_a)
    cross = _sqrtm_psd(root_a @ cov_b @ root_a)
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * np.trace(cross))


def train_classifier(epochs: int = 8, seed: int = 0, root=None, progress: bool = True,
                     scheme: str = "test_split") -> tuple[MNISTClassifier, float]:
    """Adam 1e-3, batch 128, random ±2-pixel shifts; returns the classifier and its held-out accuracy."""
    torch.manual_seed(seed)
    train, heldout = MNISTDataset("train", root, scheme=scheme), MNISTDataset("heldout", root, scheme=scheme)
    classifier = MNISTClassifier()
    optimizer = torch.optim.Adam(classifier.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        classifier.train()
        for batch in tqdm(make_dataloader(train, 128, generator=generator), desc=f"classifier epoch {epoch}",
                          disable=not progress, leave=False):
            shift = torch.randint(-2, 3, (2,), generator=generator).tolist()
            x = torch.roll(batch["image"], shifts=shift, dims=(2, 3))
            loss = F.cross_entropy(classifier(x), batch["label"])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    held = heldout.finalize_batch(heldout.gather(np.arange(len(heldout))))
    _, predicted = predict_features(classifier, held["image"])
    return classifier, float((predicted == held["label"]).float().mean())


def save_classifier(classifier: MNISTClassifier, accuracy: float, path: str | os.PathLike) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    torch.save({"format": CLASSIFIER_FORMAT, "state_dict": classifier.state_dict(), "heldout_accuracy": accuracy},
               temporary)
    os.replace(temporary, path)


def load_classifier(path: str | os.PathLike = DEFAULT_PATH) -> tuple[MNISTClassifier, float]:
    """The classifier and its recorded held-out accuracy; a clear error if the file is missing or foreign."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"MNIST classifier {path} not found; train it with "
                                f"python -m dpstack.generative.classifier --out {path}")
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != CLASSIFIER_FORMAT:
        raise ValueError(f"{path} is not an MNIST classifier written by dpstack.generative.classifier")
    classifier = MNISTClassifier()
    classifier.load_state_dict(payload["state_dict"])
    return classifier.eval(), float(payload["heldout_accuracy"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dpstack.generative.classifier", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(DEFAULT_PATH))
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--split-scheme", default="test_split", choices=["test_split", "official"])
    args = parser.parse_args(argv)
    classifier, accuracy = train_classifier(args.epochs, args.seed, args.data_root, scheme=args.split_scheme)
    save_classifier(classifier, accuracy, args.out)
    print(f"held-out accuracy {accuracy:.4f} (1,000 digits); written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
