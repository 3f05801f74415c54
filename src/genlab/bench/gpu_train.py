"""`genlab bench gpu_train`: training tokens/s and MFU of genlab vs transformers on the GPU, bf16.

Written for scripts/gpu_bench.sh (one run on a lent GPU); on a machine without CUDA it runs the same
code on the CPU in fp32 (use --quick there: tiny shapes, a dry run of the script's logic).

Two models, each against transformers' class of the same config:
- lm-bench: genlab's dense Transformer at `genlab bench train`'s shape (d 512, 8 layers, SwiGLU 1376,
  vocab 8192) vs LlamaForCausalLM, 16 rows x 512 tokens;
- deepseek-tiny (MTP off: transformers' DeepseekV3 has none) vs DeepseekV3ForCausalLM with
  `grouped_mm` experts, 16 rows x 256 tokens.
Each in four configurations, eager and compiled (genlab: train.compile's per-block compile; HF:
`model.compile()`): fixed rows for both, and genlab's packed varlen batch (log-normal length mix)
against HF's padding-free form of the same rows (position_ids restarting per document). HF's
attention: flash_attention_2 when flash-attn is installed (its padding-free path), else sdpa
(a block-diagonal mask from position_ids). bf16 autocast on CUDA (weights fp32, AdamW fused), fp32 on CPU.
MFU = model training FLOPs per token (genlab.train.flops) x tokens/s / a measured bf16 GEMM peak
(the best of a few large square matmuls on this device).
"""

from __future__ import annotations

import contextlib
import copy
import time

import torch

from genlab.bench.common import interleaved_times, machine_info, median, print_table

FULL = dict(rows=16, warmup=3, steps=10, lm=dict(), ds_len=256)
QUICK = dict(rows=2, warmup=1, steps=2, lm=dict(d_model=64, n_layer=2, n_head=2, ffn_hidden=96, vocab=512), ds_len=64)


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def gemm_peak(device: torch.device, dtype: torch.dtype, quick: bool) -> float:
    """Best FLOP/s of a few square matmuls (n = 4096, 8192 on GPU; 512 on CPU/quick)."""
    sizes = (256,) if quick or device.type == "cpu" else (4096, 8192)
    best = 0.0
    for n in sizes:
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        for _ in range(2):
            a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        reps = 3 if n <= 512 else 10
        t0 = time.perf_counter()
        for _ in range(reps):
            a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = max(best, 2 * n**3 * reps / (time.perf_counter() - t0))
    return best


def _hf_attn() -> str:
    try:
        import flash_attn  # noqa: F401

        return "flash_attention_2" if torch.cuda.is_available() else "sdpa"
    except Exception:
        return "sdpa"


def _models(name: str, p: dict, device):
    """(genlab model, HF model, cfg, vocab, L) of one comparison."""
    import transformers

    from genlab.families import build_lm

    attn = _hf_attn()
    if name == "lm-bench":
        from genlab.bench.train import FULL as TRAIN_FULL
        from genlab.bench.train import build_hf, model_config

        shape = dict(TRAIN_FULL) | p["lm"]
        cfg, V, L = model_config(shape), shape["vocab"], shape["seq_len"] if not p["lm"] else 64
        shape["seq_len"] = L
        g = build_lm(cfg, V, L)
        hf = build_hf(shape)
        hf.config._attn_implementation = attn
        return g, hf, cfg, V, L
    from genlab.config import resolve
    from genlab.interop.hf import deepseek_hf_config

    run = resolve("deepseek-tiny", None, ["model.mtp_depth=0"])
    V, L = 2048, p["ds_len"]
    g = build_lm(run.model, V, L)
    hc = deepseek_hf_config(run, V)
    hc = {k: v for k, v in hc.items() if k not in ("architectures", "model_type", "rope_scaling", "rope_theta")}
    hc["use_cache"] = False
    hf = transformers.DeepseekV3ForCausalLM(transformers.DeepseekV3Config(**hc))
    hf.config._experts_implementation = "grouped_mm"
    hf.config._attn_implementation = attn
    return g, hf, run.model, V, L


def _batches(p: dict, V: int, L: int):
    """Fixed rows and packed rows (genlab Batch + HF padding-free dict) of R x L tokens."""
    from genlab.bench.train import hf_packed_rows, rows_batch
    from genlab.data.packing import TokenDataset

    R = p["rows"]
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, V, (R, L), generator=gen)
    import numpy as np

    rng = np.random.default_rng(0)
    lens = np.clip(rng.lognormal(np.log(max(4, L // 4)), 1.0, 40 * R), 4, 8 * L).astype(int)
    docs = [rng.integers(0, V, n).tolist() for n in lens]
    ds = TokenDataset(docs, L, R, mode="packed", seed=0)
    rows, _ = ds.layout_at((0, 0, 0))
    packed = ds.materialize(rows)
    hf_rows = hf_packed_rows([[ds.store.tokens(d, s, e).astype("int64").tolist() for d, s, e in r] for r in rows], L)
    return ids, rows_batch(ids), packed, hf_rows


def _compare(name: str, p: dict, device, amp, quick: bool) -> dict:
    from genlab.families.lm.task import LMTask
    from genlab.train.compile import compile_model
    from genlab.train.flops import flops_per_token

    g0, hf0, cfg, V, L = _models(name, p, device)
    ids, fixed, packed, hf_rows = _batches(p, V, L)
    fixed, packed = fixed.to(device), packed.to(device)
    ids = ids.to(device)
    hf_rows = {k: v.to(device) for k, v in hf_rows.items()}
    configs = {}
    for mode in ("eager", "compiled"):
        g, hf = copy.deepcopy(g0).to(device).train(), copy.deepcopy(hf0).to(device).train()
        if mode == "compiled":
            if not compile_model(g, device, log=print):
                continue
            hf.compile()
        for kind in ("fixed", "packed"):
            configs[f"genlab {kind} {mode}"] = (g, fixed if kind == "fixed" else packed, "genlab")
            hf_in = {"input_ids": ids, "labels": ids} if kind == "fixed" else hf_rows
            configs[f"hf {kind} {mode}"] = (hf, hf_in, "hf")
    opts = {id(m): torch.optim.AdamW(m.parameters(), lr=1e-4, fused=True) for m, _, _ in configs.values()}

    def step(model, batch, who):
        def fn():
            with amp:
                if who == "genlab":
                    loss_sum, n = LMTask.loss(model, batch)
                    loss = loss_sum / max(1, n)
                else:
                    loss = model(**batch).loss
            loss.backward()
            opts[id(model)].step()
            opts[id(model)].zero_grad(set_to_none=True)

        return fn

    names = list(configs)
    times = interleaved_times([step(*configs[n]) for n in names], p["warmup"], p["steps"])
    ftok = flops_per_token(cfg, V, L)["train_flops_per_token"]
    out = {}
    for n, ts in zip(names, times):
        tokens = p["rows"] * L if " fixed " in n else packed.n_real
        med = median(ts)
        out[n] = {"median_step_s": med, "tokens_per_s": tokens / med, "flops_per_s": ftok * tokens / med}
    return {"vocab": V, "seq_len": L, "rows": p["rows"], "flops_per_token": ftok, "results": out}


def run(steps: int | None = None, quick: bool = False) -> dict:
    p = dict(QUICK if quick else FULL)
    if steps:
        p["steps"] = steps
    device = _device()
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
    peak = gemm_peak(device, dtype, quick)
    out = {
        "benchmark": "gpu_train",
        "quick": quick,
        "machine": machine_info(),
        "device": str(device),
        "dtype": str(dtype),
        "hf_attn_implementation": _hf_attn(),
        "gemm_peak_flops": peak,
        "models": {},
    }
    for name in ("lm-bench", "deepseek-tiny"):
        try:
            r = _compare(name, p, device, amp, quick)
            for x in r["results"].values():
                x["mfu"] = x["flops_per_s"] / peak
            out["models"][name] = r
        except Exception as e:  # recorded, the other model still runs
            out["models"][name] = {"error": f"{type(e).__name__}: {str(e)[:400]}"}
    rows = []
    for name, r in out["models"].items():
        if "error" in r:
            rows.append([name, "error", r["error"][:80], "", ""])
            continue
        res = r["results"]
        for n, x in res.items():
            base = res.get(n.replace("genlab", "hf")) if n.startswith("genlab") else None
            vs = f"{x['tokens_per_s'] / base['tokens_per_s']:.2f}x" if base else ""
            rows.append(
                [
                    f"{name}: {n}",
                    f"{1e3 * x['median_step_s']:.1f}",
                    f"{x['tokens_per_s']:,.0f}",
                    f"{100 * x['mfu']:.1f}%",
                    vs,
                ]
            )
    print_table(
        f"genlab bench gpu_train on {out['machine'].get('gpu', out['device'])}, {out['dtype']}, "
        f"GEMM peak {peak / 1e12:.1f} TFLOP/s, HF attention {out['hf_attn_implementation']}",
        ["model: configuration", "step ms", "tokens/s", "MFU", "genlab / HF"],
        rows,
    )
    return out
