"""One balancing run of `genlab bench moe` with other settings, to explore them:
    .venv/bin/python -m genlab.bench._explore_moe_balance ROWS GAMMA STEPS [MODE [GAMMA_SCHEDULE]]
MODE: aux_free (default) | aux | none; GAMMA_SCHEDULE: constant (default) | lr. Prints MaxVio over the last
20% of steps, the validation loss and MaxVio averaged over each 20 steps. The gamma / rows / steps
exploration quoted in docs/benchmarks.md (DeepSeek-V3 section) was run with this script.
"""

import sys

import torch

from genlab.bench import moe

rows, gamma, steps = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
mode = sys.argv[4] if len(sys.argv) > 4 else "aux_free"
schedule = sys.argv[5] if len(sys.argv) > 5 else "constant"
torch.set_num_threads(1)
moe.BALANCE = dict(rows=rows, steps=steps, gamma=gamma, gamma_schedule=schedule)
r = moe.balance_run(mode, steps, quick=False)
print(
    mode,
    f"rows {rows} gamma {gamma} ({schedule}) steps {steps}: MaxVio last 20% {r['maxvio_last20']:.3f}, "
    f"val loss {r['val_loss']:.4f}",
)
print("MaxVio per 20 steps:", r["trajectory"])
