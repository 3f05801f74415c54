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
weights), stepped in turns (bench.common.interleaved_times) after a warm-up step each; the median of
the rounds per policy. Interleaving keeps slow drifts of a shared machine out of the
ratios, which separate processes per policy did not (their `none` baselines moved by 30%).
"""

from __future__ import annotations

import torch

from genlab.bench.attention import _reset_peak, _rss_kib, run_isolated
from genlab.bench.common import interleaved_times, machine_info, median, print_table

POLICIES = ["none", "full", "every:2", "selective"]


def _setup(policy: str, rows: int, length: int, preset: str):
    from genlab.config import preset as preset_config
    from genlab.data.packing import Batch
    from genlab.families import build_lm
    from genlab.families.lm.task import LMTask
    from genlab.train.activation_checkpoint import apply_activation_checkpointing

    cfg = preset_config(preset).validate()
    torch.manual_seed(0)
    vocab = cfg.data.vocab_size
    model = build_lm(cfg.model, vocab, length).train()
    apply_activation_checkpointing(model, policy)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (rows * length,), generator=g)
    targets = ids.roll(-1)
    targets[length - 1 :: length] = -100  # nothing predicted across a row's end
    T = rows * length
    batch = Batch(
        ids,
        targets,
        torch.arange(length).repeat(rows),
        torch.arange(0, T + 1, length, dtype=torch.int32),
        length,
        T,
        T,
        rows,
    )

    def forward():
        loss, n = LMTask.loss(model, batch)
        return loss / n

    def step():
        forward().backward()
        model.zero_grad(set_to_none=True)
        if hasattr(model, "_stats"):  # DeepSeek's per-step extras, emptied by the trainer's step hook
            model._stats.clear()

    return forward, step, model


def block_saved_mib(policy: str, rows: int = 8, length: int = 256, preset: str = "deepseek-tiny") -> float:
    """Bytes (MiB) of the distinct non-parameter storages that one MoE block (block 1) keeps for
    backward in a training forward: counted by a saved-tensor hook around the block (for `selective`,
    its recipes are not counted; they hold no tensor of their own). Meaningful for none and selective
    (checkpoint-based policies keep their tensors inside torch.utils.checkpoint)."""
    from genlab.ops import recompute

    forward_loss, _, model = _setup(policy, rows, length, preset)
    block = model.blocks[1]
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    kept: dict[int, int] = {}
    inside = [False]  # counting only while block 1 runs

    def note(t):
        if inside[0] and not isinstance(t, recompute._Recipe) and t.untyped_storage().data_ptr() not in weights:
            kept[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    inner = recompute._pack
    recompute._pack = lambda t: note(inner(t))
    plain = block.forward

    def forward(*args, **kwargs):
        inside[0] = True
        try:
            if policy == "selective":  # the policy's own hook is innermost: count what it keeps
                return plain(*args, **kwargs)
            with torch.autograd.graph.saved_tensors_hooks(note, lambda t: t):
                return plain(*args, **kwargs)
        finally:
            inside[0] = False

    block.forward = forward
    try:
        forward_loss()  # the same batch and loss as the memory and time figures
    finally:
        recompute._pack = inner
    return sum(kept.values()) / 2**20


def measure(policy: str, repeats: int = 3, rows: int = 8, length: int = 256, preset: str = "deepseek-tiny") -> dict:
    """Inside a memory subprocess: resident memory held after forward + loss, and the peak."""
    torch.set_num_threads(1)
    forward, step, _ = _setup(policy, rows, length, preset)
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


def time_all(
    policies: list[str], rounds: int = 5, rows: int = 8, length: int = 256, preset: str = "deepseek-tiny"
) -> dict:
    """Inside the timing subprocess: forward + backward per policy, interleaved; medians."""
    torch.set_num_threads(1)
    steps = [_setup(p, rows, length, preset)[1] for p in policies]
    times = interleaved_times(steps, warmup=1, steps=rounds)
    return {p: {"step_s": median(t), "step_times_s": [round(x, 4) for x in t]} for p, t in zip(policies, times)}


def run(steps: int | None = None, quick: bool = False) -> dict:
    kw = {}
    if quick:
        kw.update(rows=2, length=128)
    res = {p: run_isolated("checkpoint", "measure", policy=p, repeats=1 if quick else 2, **kw) for p in POLICIES}
    timed = run_isolated(
        "checkpoint", "time_all", mmap=False, policies=POLICIES, rounds=steps or (2 if quick else 30), **kw
    )
    for p in POLICIES:
        if "error" in timed:
            res[p].setdefault("error", timed["error"])
        elif "error" not in res[p]:
            res[p].update(timed[p])
    per_block = {p: run_isolated("checkpoint", "block_saved_mib", policy=p, **kw) for p in ("none", "selective")}
    base = res["none"]
    rows = []
    for p in POLICIES:
        r = res[p]
        if "step_s" not in r:
            rows.append([p, "-", "-", "-", "-", "-", r.get("error")])
            continue
        saved = 1 - r["held_mib"] / base["held_mib"] if base.get("held_mib") else float("nan")
        # paired: each round's step against the same round's `none` step, then the median
        extra = median([a / b for a, b in zip(r["step_times_s"], base["step_times_s"])]) - 1
        rows.append(
            [
                p,
                f"{r['held_mib']:.0f}",
                f"{saved:+.0%}",
                f"{r['peak_mib']:.0f}",
                f"{r['step_s']:.3f}",
                f"{extra:+.0%}",
                "",
            ]
        )
        r.update(saved=saved, extra_time=extra)
    print_table(
        f"activation checkpointing on deepseek-tiny ({kw.get('rows', 8)} x {kw.get('length', 256)} tokens, "
        "fp32, CPU, 1 thread; time: median of interleaved rounds; extra: median of per-round ratios)",
        ["policy", "activations MiB", "saved", "peak MiB", "step s (fwd+bwd)", "extra time", "error"],
        rows,
    )
    if all(isinstance(v, float) for v in per_block.values()):
        print(
            f"kept for backward by one MoE block (saved-tensor accounting): none {per_block['none']:.2f} MiB, "
            f"selective {per_block['selective']:.2f} MiB ({1 - per_block['selective'] / per_block['none']:.0%} less)"
        )
    return {"machine": machine_info(), "results": res, "moe_block_saved_mib": per_block}
