"""Pictures of an image DDPM: sample grids, the reverse process (strip and GIF), samplers side by side.

All images are uint8 PNGs (GIF for the animation), digits white on black, 2-pixel gaps between tiles.
"""
from __future__ import annotations

from pathlib import Path

import imageio.v3 as iio
import numpy as np
import torch

from dpstack.datasets.mnist import to_uint8

GAP = 2
STRIP_FRACTIONS = (1.0, 0.8, 0.6, 0.4, 0.3, 0.2, 0.1, 0.05, 0.0)
COMPARISON_STEPS = (10, 20, 50, 100)
COMPARISON_SAMPLERS = (("ddim", 0.0), ("ddim", 1.0), ("ddpm", None))


def tile(images: torch.Tensor, columns: int, scale: int = 1) -> np.ndarray:
    """(N, C, H, W) images in [−1, 1] → one (rows·(H+gap), columns·(W+gap)) uint8 mosaic (gray or RGB)."""
    pixels = to_uint8(images).cpu().numpy()
    n, c, h, w = pixels.shape
    rows = -(-n // columns)
    mosaic = np.zeros((rows * (h + GAP) - GAP, columns * (w + GAP) - GAP, c), dtype=np.uint8)
    for i, image in enumerate(pixels):
        r, col = divmod(i, columns)
        mosaic[r * (h + GAP):r * (h + GAP) + h, col * (w + GAP):col * (w + GAP) + w] = image.transpose(1, 2, 0)
    mosaic = mosaic.repeat(scale, axis=0).repeat(scale, axis=1)
    return mosaic[..., 0] if c == 1 else mosaic


def save_png(mosaic: np.ndarray, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(path, mosaic)
    return path


def sample_grid(model, path, n: int = 100, sampler: str = "ddim", steps: int | None = 50, eta: float = 0.0,
                label: int | None = None, guidance_scale: float = 1.0, seed: int = 0, scale: int = 2,
                variance: str | None = None) -> Path:
    """A 10-column grid of samples; a class-conditional model with no ``label`` gets one row per class
    (``variance``: DDPM's σ², as in ``ImageDiffusion.sample``)."""
    generator = torch.Generator(device=model.device).manual_seed(seed)
    labels = None
    if label is not None:
        labels = torch.full((n,), int(label))
    elif model.config.unet.num_classes:
        labels = torch.arange(n) // max(1, n // model.config.unet.num_classes) % model.config.unet.num_classes
    images = model.sample(n, sampler, steps, eta, labels, guidance_scale, generator, variance=variance)
    return save_png(tile(images, 10, scale), path)


def strip_timesteps(num_timesteps: int) -> list[int]:
    """The t shown in the reverse-process strip: fractions of T − 1 (999, 799, 599, … 50, 0 for T = 1000)."""
    return sorted({round(f * (num_timesteps - 1)) for f in STRIP_FRACTIONS}, reverse=True)


def reverse_process(model, n: int = 8, timesteps=None, seed: int = 0, steps: int | None = None):
    """x_t and x̂_0 at the chosen t of one DDPM chain (all T steps by default), and every frame for a GIF."""
    generator = torch.Generator(device=model.device).manual_seed(seed)
    wanted = set(timesteps if timesteps is not None else strip_timesteps(model.config.num_train_timesteps))
    states, predictions, frames = {}, {}, []

    def record(t, x_t, output):
        t = int(t)
        if t in wanted:
            states[t], predictions[t] = x_t.cpu(), output.pred_original_sample.cpu()
        if t % 10 == 0:
            frames.append(torch.cat([x_t, output.pred_original_sample]).cpu())

    final = model.sample(n, "ddpm", steps, generator=generator, on_step=record)
    frames.append(torch.cat([final, final]).cpu())
    return states, predictions, frames, final


def save_reverse_process(model, folder, n: int = 8, seed: int = 0, scale: int = 2) -> tuple[Path, Path]:
    """``reverse_process.png``: rows x_t (top half) and x̂_0 (bottom half) at ``strip_timesteps``, one column per t;
    ``reverse_process.gif``: the chain every 10 steps (x_t above x̂_0)."""
    folder = Path(folder)
    timesteps = strip_timesteps(model.config.num_train_timesteps)
    states, predictions, frames, _ = reverse_process(model, n, timesteps, seed)
    shown = [t for t in timesteps if t in states]
    columns = torch.stack([torch.cat([states[t], predictions[t]]) for t in shown], dim=1)  # (2n, len(t), C, H, W)
    strip = save_png(tile(columns.flatten(0, 1), len(shown), scale), folder / "reverse_process.png")
    gif = folder / "reverse_process.gif"
    rgb = [np.repeat(tile(frame, n, scale)[..., None], 3, axis=-1) for frame in frames]  # Pillow's GIF writer wants RGB
    iio.imwrite(gif, np.stack(rgb), duration=60, loop=0)
    return strip, gif


def save_sampler_comparison(model, path, n: int = 8, steps=COMPARISON_STEPS, samplers=COMPARISON_SAMPLERS,
                            seed: int = 0, scale: int = 2) -> Path:
    """One row block per (sampler, steps), all from the same x_T: DDIM η=0, DDIM η=1, DDPM at 10/20/50/100 steps."""
    generator = torch.Generator(device=model.device).manual_seed(seed)
    shape = (n, model.channels, model.config.image_size, model.config.image_size)
    x_T = torch.randn(shape, generator=generator, device=model.device)
    rows = []
    for sampler, eta in samplers:
        for k in steps:
            noise_generator = torch.Generator(device=model.device).manual_seed(seed + 1)
            rows.append(model.sample(n, sampler, k, eta or 0.0, generator=noise_generator, noise=x_T.clone()))
    return save_png(tile(torch.cat(rows), n, scale), path)


def save_all_pictures(model, folder, seed: int = 0) -> list[Path]:
    folder = Path(folder)
    written = [sample_grid(model, folder / "samples_ddim50.png", seed=seed)]
    written += list(save_reverse_process(model, folder, seed=seed))
    written.append(save_sampler_comparison(model, folder / "ddim_vs_ddpm.png", seed=seed))
    return written
