"""Profile one training step of genlab's Transformer at `genlab bench train`'s shape (d 512, 8 layers,
8 heads, SwiGLU 1376, vocab 8192, 8 rows x 512 tokens; fp32, 2 threads): step time, then torch.profiler's
operators by self CPU time. The breakdown quoted in docs/benchmarks.md (GEMMs vs SDPA vs elementwise)
comes from this script.   Usage: .venv/bin/python -m genlab.bench._profile_train_step
"""

import time

import torch
from torch.profiler import ProfilerActivity, profile

from genlab.bench.train import FULL
from genlab.data.packing import Batch
from genlab.families.lm.args import LMArgs
from genlab.families.lm.task import LMTask
from genlab.families.lm.transformer import Transformer

torch.set_num_threads(2)
p = FULL
cfg = LMArgs(
    d_model=p["d_model"], n_layer=p["n_layer"], n_head=p["n_head"], ffn_hidden=p["ffn_hidden"], tie_embeddings=False
)
model = Transformer(cfg, p["vocab"], p["seq_len"]).train()
R, L = p["rows"], p["seq_len"]
ids = torch.randint(0, p["vocab"], (R, L))
targets = ids.roll(-1, 1)
targets[:, -1] = -100
cu = torch.arange(0, R * L + 1, L, dtype=torch.int32)
batch = Batch(ids.reshape(-1), targets.reshape(-1), torch.arange(L).repeat(R), cu, L, R * L, R * L, R)
opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)


def step():
    loss, n = LMTask.loss(model, batch)
    (loss / n).backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


for _ in range(2):
    step()
t0 = time.perf_counter()
for _ in range(3):
    step()
dt = (time.perf_counter() - t0) / 3
print(f"step {dt:.3f} s, {R * L / dt:.0f} tokens/s")
with profile(activities=[ProfilerActivity.CPU]) as prof:
    step()
print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))
