"""genlab bench checkpoint: activation memory and step time of each activation-checkpointing policy on
the tiny MoE model (the deepseek-tiny preset: MLA + 16-expert MoE + MTP, 4 layers x 128; a batch of
8 packed rows x 256 tokens, vocabulary 2048).

Each policy runs in its own subprocess (genlab.bench.attention.run_isolated). Activation memory = the
resident set held after the forward and the loss (the tensors kept for backward) minus before it;
peak = the highest resident set during forward + backward (VmHWM) minus before it. Time = forward +
backward, best of the timed repeats after one warm-up step, from a second subprocess that keeps the
default allocator (the memory process's mmap threshold adds page faults to every large temporary).
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from genlab.bench.attention import _reset_peak, _rss_kib, memory_then_time
from genlab.bench.common import machine_info, print_table

POLICIES = ["none", "full", "every:2", "selective"]


def measure(policy: str, repeats: int = 3, rows: int = 8, length: int = 256, preset: str = "deepseek-tiny") -> dict:
    from genlab.config import PRESETS, RunConfig, apply_dict
    from genlab.models import build_lm
    from genlab.train.activation_checkpoint import apply_activation_checkpointing

    torch.set_num_threads(1)
    cfg = apply_dict(RunConfig(), PRESETS[preset][1], preset).validate()
    torch.manual_seed(0)
    vocab = cfg.data.vocab_size
    model = build_lm(cfg.model, vocab, length).train()
    apply_activation_checkpointing(model, policy)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (rows * length,), generator=g)
    pos = torch.arange(length).repeat(rows)
    cu = torch.arange(0, rows * length + 1, length, dtype=torch.int32)

    def step():
        h = model(ids, pos, cu, length)
        loss = F.cross_entropy(model.head(h).float(), ids.roll(-1))
        return loss

    step().backward()  # warm-up
    model.zero_grad(set_to_none=True)
    times, held, peak = [], 0, 0
    for _ in range(repeats):
        _reset_peak()
        base = _rss_kib("VmRSS")
        t0 = time.perf_counter()
        loss = step()
        held = max(held, _rss_kib("VmRSS") - base)
        loss.backward()
        times.append(time.perf_counter() - t0)
        peak = max(peak, _rss_kib("VmHWM") - base)
        del loss
        model.zero_grad(set_to_none=True)
    return {"policy": policy, "step_s": min(times), "held_mib": held / 1024, "peak_mib": peak / 1024}


def run(steps: int | None = None, quick: bool = False) -> dict:
    kw = {"repeats": steps or (1 if quick else 3)}
    if quick:
        kw.update(rows=2, length=128)
    res = {p: memory_then_time("checkpoint", "measure", ("step_s",), {}, {}, policy=p, **kw) for p in POLICIES}
    base = res["none"]
    rows = []
    for p in POLICIES:
        r = res[p]
        if "step_s" not in r:
            rows.append([p, "-", "-", "-", "-", "-", r.get("error")])
            continue
        saved = 1 - r["held_mib"] / base["held_mib"] if base.get("held_mib") else float("nan")
        extra = r["step_s"] / base["step_s"] - 1
        rows.append([p, f"{r['held_mib']:.0f}", f"{saved:+.0%}", f"{r['peak_mib']:.0f}", f"{r['step_s']:.3f}",
                     f"{extra:+.0%}", ""])
        r.update(saved=saved, extra_time=extra)
    print_table(f"activation checkpointing on deepseek-tiny ({kw.get('rows', 8)} x {kw.get('length', 256)} tokens, "
                "fp32, CPU, 1 thread)",
                ["policy", "activations MiB", "saved", "peak MiB", "step s", "extra time", "error"], rows)
    return {"machine": machine_info(), "results": res}
