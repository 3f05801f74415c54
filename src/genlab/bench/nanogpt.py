"""`genlab bench nanogpt`: per-step overhead at a small shape, genlab's trainer vs a minimal GPT.

The shape of nanoGPT's Shakespeare-char CPU recipe: 4 layers x 128 wide, 4 heads, context 64,
batch 12, byte tokens (vocab 256), fp32. Two training loops on the same bytes (the embedded corpus):

- genlab: a real `Trainer` (preset lm-tiny reshaped: 4 layers, d 128, 4 heads without GQA, rows of
  64 byte tokens, 12 rows) and its whole step: `Trainer.train_step()` (next batch from the packed
  stream, forward, chunked head + loss, backward, clipping, the loss-spike guard, AdamW, the task's
  hooks) plus `Trainer._log` (progress, metrics records every log_every steps).
- minimal GPT: nanoGPT's architecture written here from its description (not copied): learned
  token and position embeddings, pre-LayerNorm blocks without biases, fused qkv projection, SDPA
  causal attention, GELU MLP 4x, final LayerNorm, head tied to the token embedding, GPT-2 init.
  Its loop is nanoGPT's: a random batch of 12 windows of 65 bytes, forward with cross-entropy over
  the full logits, backward, clip at 1.0, AdamW step (fused, as genlab's: the baseline's best CPU
  kernel), zero_grad, the loss read every 10 steps.

The two steps alternate (genlab, GPT, GPT, genlab, ...); medians and the median of per-round ratios
are reported. The models differ in architecture (SwiGLU/RMSNorm/RoPE vs GELU/LayerNorm/learned
positions) but have nearly the same parameter count and FLOPs; both print them.
"""

from __future__ import annotations

import math
import os
import tempfile
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from genlab.bench.common import interleaved_times, machine_info, median, print_table

FULL = dict(n_layer=4, d_model=128, n_head=4, ctx=64, batch=12, warmup=20, steps=150)
QUICK = dict(n_layer=2, d_model=32, n_head=2, ctx=16, batch=4, warmup=2, steps=6)
VOCAB = 256
SEED = 0


def bench_threads() -> int:
    return int(os.environ.get("GENLAB_BENCH_THREADS", "0") or 0) or 2


# ------------------------------------------------------------------------------ the minimal GPT
class _Block(nn.Module):
    def __init__(self, d: int, n_head: int):
        super().__init__()
        self.n_head = n_head
        self.ln1 = nn.LayerNorm(d, bias=False)
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.out = nn.Linear(d, d, bias=False)
        self.ln2 = nn.LayerNorm(d, bias=False)
        self.up = nn.Linear(d, 4 * d, bias=False)
        self.down = nn.Linear(4 * d, d, bias=False)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.out(y.transpose(1, 2).reshape(B, T, C))
        return x + self.down(F.gelu(self.up(self.ln2(x))))


class MiniGPT(nn.Module):
    """GPT-2 style decoder of nanoGPT's shape and choices (bias-free), written for this benchmark."""

    def __init__(self, n_layer: int, d: int, n_head: int, ctx: int, vocab: int):
        super().__init__()
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Embedding(ctx, d)
        self.blocks = nn.ModuleList(_Block(d, n_head) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(d, bias=False)
        self.head = nn.Linear(d, vocab, bias=False)
        self.head.weight = self.tok.weight  # tied
        for name, p in self.named_parameters():
            if p.dim() >= 2:
                std = 0.02 / math.sqrt(2 * n_layer) if name.endswith(("out.weight", "down.weight")) else 0.02
                nn.init.normal_(p, std=std)

    def forward(self, idx, targets):
        T = idx.shape[1]
        x = self.tok(idx) + self.pos(torch.arange(T, device=idx.device))
        for b in self.blocks:
            x = b(x)
        logits = self.head(self.ln_f(x))
        return F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.view(-1))


def gpt_optimizer(model: nn.Module, lr: float = 1e-3) -> torch.optim.Optimizer:
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.99), fused=True)


def corpus_bytes() -> torch.Tensor:
    from genlab.data.text import embedded_corpus

    text = "\n\n".join(embedded_corpus())
    return torch.frombuffer(bytearray(text.encode("utf-8")), dtype=torch.uint8)


# ------------------------------------------------------------------------------ the benchmark
def run(steps: int | None = None, quick: bool = False) -> dict:
    p = dict(QUICK if quick else FULL)
    if steps:
        p["steps"] = steps
    old = torch.get_num_threads()
    torch.set_num_threads(bench_threads())
    try:
        with tempfile.TemporaryDirectory() as tmp:
            return _run(p, quick, tmp)
    finally:
        torch.set_num_threads(old)


def genlab_trainer(p: dict, run_dir: str):
    from genlab.config import resolve
    from genlab.train.trainer import prepare_training

    sets = [
        f"model.d_model={p['d_model']}",
        f"model.n_layer={p['n_layer']}",
        f"model.n_head={p['n_head']}",
        "model.n_kv_head=0",
        f"data.packing_length={p['ctx']}",
        f"train.batch_rows={p['batch']}",
        "train.lr=1e-3",
        f"train.steps={p['warmup'] + p['steps'] + 10}",
        "train.eval_every=100000",
        "train.ckpt_every=100000",
        "train.log_every=10",
        f"train.threads={bench_threads()}",
        "train.device=cpu",
    ]
    cfg = resolve("lm-tiny", None, sets)
    _, trainer = prepare_training(cfg, run_dir, progress=False, log=lambda *a: None)
    return trainer


def _run(p: dict, quick: bool, tmp: str) -> dict:
    from genlab.progress import TrainProgress

    trainer = genlab_trainer(p, os.path.join(tmp, "run"))
    torch.manual_seed(SEED)
    gpt = MiniGPT(p["n_layer"], p["d_model"], p["n_head"], p["ctx"], VOCAB).train()
    opt = gpt_optimizer(gpt)
    data = corpus_bytes()
    gen = torch.Generator().manual_seed(SEED)
    B, T = p["batch"], p["ctx"]
    gpt_losses, it = [], [0]

    def gpt_step():
        ix = torch.randint(len(data) - T - 1, (B,), generator=gen)
        x = torch.stack([data[i : i + T] for i in ix.tolist()]).long()
        y = torch.stack([data[i + 1 : i + 1 + T] for i in ix.tolist()]).long()
        loss = gpt(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(gpt.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        it[0] += 1
        if it[0] % 10 == 0:
            gpt_losses.append(loss.item())

    genlab_losses = []
    progress = TrainProgress(trainer.cfg.train.steps, 0, enabled=False)
    trainer._interval = [0, 0, time.perf_counter()]

    def genlab_step():
        m = trainer.train_step()
        trainer._log(m, progress)
        genlab_losses.append(m["loss"])

    with progress:
        times = interleaved_times([genlab_step, gpt_step], p["warmup"], p["steps"])
    trainer.run.release()
    g, n = median(times[0]), median(times[1])
    paired = median([b / a for a, b in zip(*times)])
    tokens = B * T
    n_genlab = sum(x.numel() for x in trainer.model.parameters())
    n_gpt = sum(x.numel() for x in gpt.parameters())
    out = {
        "benchmark": "nanogpt",
        "quick": quick,
        "machine": machine_info(),
        "shape": {k: p[k] for k in ("n_layer", "d_model", "n_head", "ctx", "batch")},
        "threads": torch.get_num_threads(),
        "warmup_steps": p["warmup"],
        "timed_steps": p["steps"],
        "params": {"genlab": n_genlab, "minigpt": n_gpt},
        "genlab_step_s": g,
        "minigpt_step_s": n,
        "genlab_tokens_per_s": tokens / g,
        "minigpt_tokens_per_s": tokens / n,
        "ratio_genlab_time_over_minigpt": g / n,
        "ratio_paired": 1 / paired,
        "target": "genlab step time <= minimal GPT's",
        "target_met": g <= n,
        "loss_genlab_last": genlab_losses[-1],
        "loss_minigpt_last": gpt_losses[-1] if gpt_losses else float("nan"),
        "step_times_s": {"genlab": [round(t, 5) for t in times[0]], "minigpt": [round(t, 5) for t in times[1]]},
    }
    m = out["machine"]
    print_table(
        f"genlab bench nanogpt: {p['n_layer']} layers x {p['d_model']}, {p['n_head']} heads, context {T}, "
        f"batch {B}, bytes; fp32, {out['threads']} threads, median of {p['steps']} interleaved steps ({m['cpu']})",
        ["loop", "params", "step ms", "tokens/s", "last loss"],
        [
            [
                "genlab Trainer.train_step + _log",
                f"{n_genlab:,}",
                f"{1e3 * g:.2f}",
                f"{tokens / g:,.0f}",
                f"{out['loss_genlab_last']:.3f}",
            ],
            [
                "minimal GPT (nanoGPT architecture)",
                f"{n_gpt:,}",
                f"{1e3 * n:.2f}",
                f"{tokens / n:,.0f}",
                f"{out['loss_minigpt_last']:.3f}",
            ],
        ],
    )
    print(
        f"genlab step / minimal GPT step = {g / n:.3f} (per-round {1 / paired:.3f}; target <= 1: "
        f"{'met' if out['target_met'] else 'NOT met'}); load average {m.get('load_avg_1m', '?')}",
        flush=True,
    )
    return out
