"""The diffusion family: latent diffusion in miniature (Stable Diffusion's recipe on small images).

args.py          DiffusionData, DiffusionTrain, DiffusionArgs
data.py          image folders, .npz and the embedded digits; captions
vae.py           KL autoencoder
text_encoder.py  byte-level text encoder for captions
unet.py          text-conditioned UNet
ldm.py           LatentDiffusion: the one nn.Module the trainer and checkpoints see
schedulers.py    DDPM / DDIM with the diffusers API (set_timesteps, step, add_noise); guidance
ema.py           EMA of the denoiser's weights
metrics.py       FID-style and classifier metrics, image grids
task.py          DiffusionTask: autoencoder phase, then denoiser phase
presets.py       ldm-digits
"""

from genlab.config import Family, register
from genlab.families.diffusion.args import DiffusionArgs, DiffusionData, DiffusionTrain
from genlab.families.diffusion.presets import PRESETS
from genlab.families.diffusion.task import DiffusionTask

FAMILY = register(
    Family("diffusion", "diffusion", DiffusionData, DiffusionArgs, DiffusionTrain, DiffusionTask, None, PRESETS)
)
