"""genlab bench checkpoint: activation memory and step time of each activation-checkpointing policy on
the tiny MoE model (the deepseek-tiny preset: MLA + 16-expert MoE + one MTP module, 4 layers x 128;
a batch of 8 packed rows x 256 tokens, vocabulary 2048). A step is what training runs: the LM task's
loss (chunked head + cross-entropy, plus the MTP loss through the MTP block, which every policy
wraps too), then backward.

Memory: each policy in its own subprocess (genlab.bench.attention.run_isolated, with an mmap threshold
so the resident set follows live tensors). Activation memory = the resident set after forward and loss
(what is kept for backward) minus before; peak = the highest resident set during forward + backward
(VmHWM) minus before.
Time: all policies in ONE further subprocess with the default allocator, one model per policy (same
weights), stepped round-robin (the starting policy rotates each round) after a warm-up step each;
the median of the rounds per policy. Interleaving keeps slow drifts of a shared machine out of the
ratios, which separate processes per policy did not (their `none` baselines moved by 30%).
"""

from __future__ import annotations

import statistics
import time

import torch

from genlab.bench.attention import _reset_peak, _rss_kib, run_isolated
from genlab.bench.common import machine_info, print_table

POLICIES = ["none", "full", "every:2", "selective"]


def _setup(policy: str, rows: int, length: int, preset: str):
    from genlab.config import PRESETS, RunConfig, apply_dict
    from genlab.data.packing import Batch
    from genlab.models import build_lm
    from genlab.tasks.lm import LMTask
    from genlab.train.activation_checkpoint import apply_activation_checkpointing

    cfg = apply_dict(RunConfig(), PRESETS[preset][1], preset).validate()
    torch.manual_seed(0)
    vocab = cfg.data.vocab_size
    model = build_lm(cfg.model, vocab, length).train()
    apply_activation_checkpointing(model, policy)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (rows * length,), generator=g)
    targets = ids.roll(-1)
    targets[length - 1::length] = -100  # nothing predicted across a row's end
    T = rows * length
    batch = Batch(ids, targets, torch.arange(length).repeat(rows),
                  torch.arange(0, T + 1, length, dtype=torch.int32), length, T, T, rows)

    def forward():
        loss, n = LMTask.loss(model, batch)
        return loss / n

    def step():
        forward().backward()
        model.zero_grad(set_to_none=True)
        model._stats.clear() if hasattr(model, "_stats") else None

    return forward, step


def measure(policy: str, repeats: int = 3, rows: int = 8, length: int = 256, preset: str = "deepseek-tiny") -> dict:
    """Inside a memory subprocess: resident memory held after forward + loss, and the peak."""
    torch.set_num_threads(1)
    forward, step = _setup(policy, rows, length, preset)
    step()  # warm-up
    held, peak = 0, 0
    for _ in range(repeats):
        _reset_peak()
        base = _rss_kib("VmRSS")
        loss = forward()
        held = max(held, _rss_kib("VmRSS") - base)
        loss.backward()
        peak = max(peak, _rss_kib("VmHWM") - base)
        del loss
    return {"policy": policy, "held_mib": held / 1024, "peak_mib": peak / 1024}


def time_all(policies: list[str], rounds: int = 5, rows: int = 8, length: int = 256,
             preset: str = "deepseek-tiny") -> dict:
    """Inside the timing subprocess: forward + backward per policy, interleaved; medians."""
    torch.set_num_threads(1)
    steps = {p: _setup(p, rows, length, preset)[1] for p in policies}
    for p in policies:
        steps[p]()  # warm-up
    times = {p: [] for p in policies}
    for r in range(rounds):
        order = policies[r % len(policies):] + policies[:r % len(policies)]
        for p in order:
            t0 = time.perf_counter()
            steps[p]()
            times[p].append(time.perf_counter() - t0)
    return {p: {"step_s": statistics.median(t), "step_times_s": [round(x, 4) for x in t]} for p, t in times.items()}


def run(steps: int | None = None, quick: bool = False) -> dict:
    kw = {}
    if quick:
        kw.update(rows=2, length=128)
    res = {p: run_isolated("checkpoint", "measure", policy=p, repeats=1 if quick else 2, **kw) for p in POLICIES}
    timed = run_isolated("checkpoint", "time_all", mmap=False, policies=POLICIES,
                         rounds=steps or (2 if quick else 7), **kw)
    for p in POLICIES:
        if "error" in timed:
            res[p].setdefault("error", timed["error"])
        elif "error" not in res[p]:
            res[p].update(timed[p])
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
                "fp32, CPU, 1 thread; time = median of interleaved rounds)",
                ["policy", "activations MiB", "saved", "peak MiB", "step s (fwd+bwd)", "extra time", "error"], rows)
    return {"machine": machine_info(), "results": res}
