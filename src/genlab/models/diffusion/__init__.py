"""Latent diffusion models: KL autoencoder (vae.py), text encoder (text_encoder.py), UNet (unet.py),
and `LatentDiffusion`, the one nn.Module the trainer and checkpoints see (ldm.py)."""
