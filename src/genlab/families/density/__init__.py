"""The density family: exact-likelihood models of binary vectors.

args.py          DensityData, DensityArgs
data.py          loaders for binary rows (.npz / .npy / .txt / .csv / .amat) and the binarized digits
base.py          DensityModel / AutoregressiveModel interfaces
classic.py       independent Bernoullis, mixture of Bernoullis, FVSBN, NADE
made.py          MADE (order- and connectivity-agnostic)
transformer.py   genlab's Transformer over the bits
model.py         build a density model from its args
task.py          DensityTask: NLL in nats and bits per dimension, samples as grids
presets.py       *-digits, *-uci, made-mnist
"""

from genlab.config import Family, TrainConfig, register
from genlab.families.density.args import DensityArgs, DensityData
from genlab.families.density.presets import PRESETS
from genlab.families.density.task import DensityTask

FAMILY = register(Family("density", "density", DensityData, DensityArgs, TrainConfig, DensityTask, None, PRESETS))
