"""Generative models on the shared diffusion core: an image DDPM with exact bits/dim (MNIST)."""
