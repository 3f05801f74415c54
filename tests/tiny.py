"""Model shapes small enough to train a run in seconds, shared by the tests that need one."""

from genlab.families.diffusion.presets import TINY_SHAPE

# a latent diffusion model on 8x8 digits: autoencoder and U-Net a few channels wide (the shape the
# diffusion benchmark's --quick runs too)
LDM = TINY_SHAPE

# OadTR over 8 frames of history: one encoder and one decoder layer, two future steps
OADTR = [
    "data.history=8",
    "model.d_model=16",
    "model.n_layer=1",
    "model.n_head=2",
    "model.dec_layers=1",
    "model.dec_heads=2",
    "model.future_steps=2",
    "train.batch_rows=8",
]
