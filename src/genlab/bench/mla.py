"""`genlab bench mla`: greedy decode tokens/s and cache memory of MLA with the latent cache (absorbed
decoding: C + r values per token and layer) vs a full per-head K/V cache (naive decoding), at 1k
and 4k tokens of context, measured interleaved step by step."""

from __future__ import annotations

import torch

from genlab.bench.common import interleaved_times, machine_info, median, print_table
from genlab.config import RunConfig
from genlab.families.deepseek.args import DeepSeekArgs


def mla_config(quick: bool) -> RunConfig:
    cfg = RunConfig(model=DeepSeekArgs())
    m = cfg.model
    m.arch, m.d_model, m.n_layer, m.n_head, m.ffn_hidden = "deepseek", 256, 4, 8, 512
    m.q_lora_rank, m.kv_lora_rank, m.qk_nope_head_dim, m.qk_rope_head_dim, m.v_head_dim = 128, 64, 32, 16, 32
    m.n_routed_experts, m.num_experts_per_tok, m.moe_intermediate_size, m.first_k_dense_replace = 8, 2, 128, 1
    if quick:
        m.d_model, m.n_layer, m.n_head = 64, 2, 4
    return cfg.validate()


@torch.no_grad()
def _filled_cache(model, ctx: int, mode: str, extra: int):
    cache = model.new_cache(ctx + extra, mode)
    ids = torch.randint(0, model.vocab_size, (ctx,))
    for s in range(0, ctx, 512):  # prefill in chunks: (chunk, ctx) scores at most
        part = ids[s : s + 512]
        model(part, torch.arange(s, s + len(part)), torch.tensor([0, len(part)], dtype=torch.int32), len(part), cache)
    return cache


def run(steps=None, quick=False) -> dict:
    import torch

    # one thread: on this shared 2-core machine (load ~15) two OpenMP threads spend most of each small
    # kernel waiting at a barrier for a descheduled partner; both sides of every comparison use the same
    torch.set_num_threads(1)
    from genlab.families import build_lm

    cfg = mla_config(quick)
    steps = steps or (3 if quick else 20)
    torch.manual_seed(0)
    model = build_lm(cfg.model, 1024, 64).eval()
    res = {"machine": machine_info(), "note": "CPU shared with other jobs: decode steps interleaved", "rows": []}
    for ctx in (64, 256) if quick else (1024, 4096):
        caches = {mode: _filled_cache(model, ctx, mode, steps + 4) for mode in ("latent", "full")}
        tok = torch.tensor([1])
        cu = torch.tensor([0, 1], dtype=torch.int32)

        def step(cache, tok=tok, cu=cu):
            def fn():
                with torch.no_grad():
                    pos = torch.tensor([cache.len])
                    h = model(tok, pos, cu, 1, cache)
                    model.head(h).argmax()

            return fn

        times = interleaved_times([step(caches["latent"]), step(caches["full"])], 1, steps)
        for mode, t in zip(("latent", "full"), times):
            c = caches[mode]
            res["rows"].append(
                {
                    "context": ctx,
                    "cache": mode,
                    "tokens_per_s": 1 / median(t),
                    "cache_bytes_per_token_fp32": c.bytes_per_token(),
                    "cache_MiB_at_context": c.bytes_per_token() * ctx / 2**20,
                }
            )
    print_table(
        f"MLA decode, d_model {cfg.model.d_model}, {cfg.model.n_layer} layers, {cfg.model.n_head} heads "
        f"(median of {steps} steps)",
        ["context", "cache", "tokens/s", "bytes/token", "MiB at context"],
        [
            [
                r["context"],
                r["cache"],
                f"{r['tokens_per_s']:.1f}",
                r["cache_bytes_per_token_fp32"],
                f"{r['cache_MiB_at_context']:.2f}",
            ]
            for r in res["rows"]
        ],
    )
    return res
