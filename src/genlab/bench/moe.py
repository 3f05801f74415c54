"""`genlab bench moe`: (1) training step time of genlab's deepseek model vs transformers'
DeepseekV3ForCausalLM with the same config, weights and batch (default experts implementation and
`grouped_mm`), interleaved step by step; (2) load balancing on the embedded corpus at equal steps:
no balancing vs auxiliary loss only vs auxiliary-loss-free (MaxVio over the last 20% of steps and
validation loss)."""

from __future__ import annotations

import copy
import tempfile

import torch
import torch.nn.functional as F

from genlab.bench.common import interleaved_times, machine_info, median, print_table
from genlab.config import RunConfig
from genlab.families.deepseek.args import DeepSeekArgs


def moe_config(quick: bool) -> RunConfig:
    """The issue's shape: 64 fine-grained experts (top-6, width 64), d_model 256, 6 layers."""
    cfg = RunConfig(model=DeepSeekArgs())
    m = cfg.model
    m.arch, m.d_model, m.n_layer, m.n_head, m.ffn_hidden = "deepseek", 256, 6, 4, 512
    m.q_lora_rank, m.kv_lora_rank, m.qk_nope_head_dim, m.qk_rope_head_dim, m.v_head_dim = 128, 64, 32, 16, 32
    m.n_routed_experts, m.num_experts_per_tok, m.moe_intermediate_size, m.n_shared_experts = 64, 6, 64, 1
    m.n_group, m.topk_group, m.first_k_dense_replace, m.routed_scaling_factor = 8, 4, 1, 2.5
    if quick:
        m.d_model, m.n_layer, m.n_routed_experts, m.num_experts_per_tok, m.n_group, m.topk_group = 64, 2, 8, 2, 2, 1
        m.ffn_hidden, m.q_lora_rank, m.kv_lora_rank = 128, 32, 32
    return cfg.validate()


def hf_state(model, cfg) -> dict:
    """genlab weights -> the in-memory layout of transformers v5 (experts fused per layer)."""
    from genlab.interop.hf import deepseek_to_hf

    sd = deepseek_to_hf(model.state_dict(), cfg.model)
    out = {}
    for i, blk in enumerate(model.blocks):
        if blk.is_moe:
            p = f"model.layers.{i}.mlp."
            out[p + "experts.gate_up_proj"] = blk.mlp.w13.detach().clone()
            out[p + "experts.down_proj"] = blk.mlp.w2.detach().clone()
    return out | {k: v for k, v in sd.items() if ".experts." not in k}


def step_time(quick: bool, steps: int) -> dict:
    import transformers

    from genlab.families import build_lm
    from genlab.interop.hf import deepseek_hf_config

    cfg = moe_config(quick)
    V, B, L = 512, (2 if quick else 4), (64 if quick else 256)
    torch.manual_seed(0)
    ours = build_lm(cfg.model, V, L).train()
    hc = deepseek_hf_config(cfg, V)
    hc = {k: v for k, v in hc.items() if k not in ("architectures", "model_type", "rope_scaling", "rope_theta")}
    hcfg = transformers.DeepseekV3Config(**hc)
    hfs = {}
    for impl in ("eager", "grouped_mm"):
        # one config object per model: the experts read config._experts_implementation at every call,
        # so two models sharing one config would both run whichever implementation was set last
        hfm = transformers.DeepseekV3ForCausalLM(copy.deepcopy(hcfg)).float().train()
        hfm.config._experts_implementation = impl
        assert hfm.config is not hcfg
        missing, unexpected = hfm.load_state_dict(hf_state(ours, cfg), strict=False)
        assert not unexpected and all("rotary" in k for k in missing), (missing, unexpected)
        hfs["default" if impl == "eager" else impl] = hfm
    ids = torch.randint(0, V, (B, L))
    tgt = torch.randint(0, V, (B, L))
    flat, cu = ids.reshape(-1), torch.arange(0, B * L + 1, L, dtype=torch.int32)
    pos = torch.arange(L).repeat(B)

    def ours_step():
        h = ours(flat, pos, cu, L)
        F.cross_entropy(ours.head(h), tgt.reshape(-1)).backward()
        ours.zero_grad(set_to_none=True)
        ours.on_optimizer_step()

    def hf_step(m):
        def fn():
            logits = m(ids).logits
            F.cross_entropy(logits.reshape(-1, V), tgt.reshape(-1)).backward()
            m.zero_grad(set_to_none=True)

        return fn

    with torch.no_grad():  # same weights, same batch: same loss (checks the comparison is fair)
        a = F.cross_entropy(ours.head(ours(flat, pos, cu, L)), tgt.reshape(-1))
        b = F.cross_entropy(hfs["default"](ids).logits.reshape(-1, V), tgt.reshape(-1))
    impls = [m.config._experts_implementation for m in hfs.values()]
    assert impls == ["eager", "grouped_mm"], impls  # each model really runs its own implementation
    times = interleaved_times([ours_step, hf_step(hfs["default"]), hf_step(hfs["grouped_mm"])], 1, steps)
    t = [median(x) for x in times]
    rows = [
        ["genlab deepseek", f"{t[0]:.3f}", "1.00"],
        ["transformers (default experts)", f"{t[1]:.3f}", f"{t[1] / t[0]:.2f}"],
        ["transformers (grouped_mm)", f"{t[2]:.3f}", f"{t[2] / t[0]:.2f}"],
    ]
    print_table(
        f"training step, {B}x{L} tokens, {cfg.model.n_routed_experts} experts top-"
        f"{cfg.model.num_experts_per_tok}, {torch.get_num_threads()} thread(s) (median of {steps}, interleaved)",
        ["implementation", "s/step", "genlab speed-up"],
        rows,
    )
    return {
        "tokens": B * L,
        "loss_genlab": float(a),
        "loss_hf": float(b),
        "s_per_step_genlab": t[0],
        "s_per_step_hf_default": t[1],
        "s_per_step_hf_grouped_mm": t[2],
        "speedup_vs_default": t[1] / t[0],
        "speedup_vs_grouped_mm": t[2] / t[0],
    }


# Balancing runs: 64 rows x 128 tokens per step (8,192 tokens, 16,384 routed slots, 1,024 per expert: sampling
# noise alone puts the max over 16 experts ~7% above the mean), long enough for the bias to undo the router's
# early collapse. gamma 0.01 following the lr schedule (model.balance_gamma_schedule = lr): a constant
# gamma leaves the sign updates oscillating at the end (0.01: MaxVio 0.27 at 400 steps; 0.003: 0.20 at
# 1200 and 0.27 at 2400 steps), 0.001 (DeepSeek-V3's, for far bigger batches and runs) cannot catch the
# collapse within the run; decaying it with the lr (cosine to 10%) lets the bias settle.
BALANCE = dict(rows=64, steps=1200, gamma=0.01, gamma_schedule="lr")
BALANCE_QUICK = dict(rows=4, steps=20, gamma=0.01, gamma_schedule="lr")


def balance_run(mode: str, steps: int, quick: bool) -> dict:
    from genlab.config import resolve
    from genlab.train.trainer import prepare_training

    b = BALANCE_QUICK if quick else BALANCE
    sets = [
        "data.tokenizer=byte",
        "data.packing_length=128",
        "model.arch=deepseek",
        "model.d_model=64",
        "model.n_layer=2",
        "model.n_head=4",
        "model.ffn_hidden=128",
        "model.q_lora_rank=0",
        "model.kv_lora_rank=32",
        "model.qk_nope_head_dim=16",
        "model.qk_rope_head_dim=8",
        "model.v_head_dim=16",
        "model.n_routed_experts=16",
        "model.num_experts_per_tok=2",
        "model.moe_intermediate_size=32",
        "model.first_k_dense_replace=1",
        f"train.steps={steps}",
        f"train.batch_rows={b['rows']}",
        "train.lr=3e-3",
        "train.warmup_steps=10",
        "train.log_every=1",
        f"train.eval_every={steps}",
        "train.eval_batches=8",
        f"train.ckpt_every={steps}",
        "train.schedule=cosine",
    ]
    sets += {
        "none": ["model.balance=none"],
        "aux": ["model.balance=aux", "model.balance_alpha=1e-3"],
        "aux_free": [
            "model.balance=aux_free",
            f"model.balance_gamma={b['gamma']}",
            f"model.balance_gamma_schedule={b['gamma_schedule']}",
        ],
    }[mode]
    with tempfile.TemporaryDirectory() as d:
        run, trainer = prepare_training(resolve(None, None, sets), f"{d}/run", progress=False, log=lambda *a: None)
        last = trainer.fit()
        recs = [r for r in run.metrics() if "maxvio" in r]
    tail = recs[int(0.8 * len(recs)) :]
    vio = [r["maxvio"] for r in recs]
    return {
        "maxvio_last20": sum(r["maxvio"] for r in tail) / max(1, len(tail)),
        "val_loss": last.get("val_loss"),
        "trajectory": [round(sum(vio[i : i + 20]) / len(vio[i : i + 20]), 3) for i in range(0, len(vio), 20)],
    }


def run(steps=None, quick=False) -> dict:
    """Step time at 1 and 2 threads (quick: 1), then the balancing runs at 1 thread.
    $GENLAB_BENCH_MOE_PARTS = "step", "balance" or "step,balance" (default) picks the parts."""
    import os

    import torch

    parts = set(os.environ.get("GENLAB_BENCH_MOE_PARTS", "step,balance").split(","))
    threads_before = torch.get_num_threads()
    res = {"machine": machine_info(), "note": "ratios measured interleaved step by step"}
    try:
        if "step" in parts:
            res["step_time"] = {}
            for n in (1,) if quick else (1, 2):
                torch.set_num_threads(n)
                res["step_time"][f"threads_{n}"] = step_time(quick, steps or (2 if quick else 6))
        if "balance" in parts:
            # one thread: tiny GEMMs, where a second OpenMP thread mostly waits at barriers
            torch.set_num_threads(1)
            b = BALANCE_QUICK if quick else BALANCE
            bsteps = b["steps"]
            res["balance"] = {mode: balance_run(mode, bsteps, quick) for mode in ("none", "aux", "aux_free")}
            res["balance_config"] = b
            print_table(
                f"load balancing, {bsteps} steps x {b['rows']} rows x 128 tokens on the embedded corpus "
                f"(16 experts top-2; aux alpha 1e-3, aux-free gamma {b['gamma']}, schedule {b['gamma_schedule']})",
                ["mode", "MaxVio (last 20%)", "val loss"],
                [[m, f"{r['maxvio_last20']:.3f}", f"{r['val_loss']:.4f}"] for m, r in res["balance"].items()],
            )
    finally:
        torch.set_num_threads(threads_before)
    return res
