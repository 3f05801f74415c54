#!/usr/bin/env bash
# One-shot GPU check for issue 4 on a lent NVIDIA Hopper (H100/H200) machine, from the repo root:
#   bash scripts/gpu_bench.sh            (about 3-5 minutes; needs torch with CUDA and triton installed)
# 1. genlab's Triton FlashAttention kernel == the naive reference on the GPU (forward + gradients, small shapes)
# 2. FP8 GEMM path: which _scaled_mm mode runs (blockwise / rowwise / emulated) and its error vs the emulation
# 3. genlab bench attention on CUDA (bf16): naive, flash (torch reference), sdpa (flash kernel), triton
# Everything goes to ${OUT:-gpu-bench-results}/ ; paste the tables into docs/benchmarks.md.
set -euo pipefail
OUT=${OUT:-gpu-bench-results}
mkdir -p "$OUT"
PY=${PY:-python}
$PY - <<'PY' 2>&1 | tee "$OUT/gpu_checks.txt"
import torch
from genlab.ops.attention import naive_attention, BACKENDS, pick_backend
from genlab.ops.triton_flash import available, triton_flash_attention
from genlab.ops import fp8
print("device", torch.cuda.get_device_name(0), "torch", torch.__version__, "triton available", available("cuda"))
print("auto backend on cuda ->", "triton" if available("cuda") else "sdpa")
torch.manual_seed(0)
for lens, H, Hkv, D, Dv, causal, window, dt in [([100, 37, 300], 8, 2, 64, 64, True, None, torch.float32),
                                               ([257, 64], 4, 4, 192, 128, True, 64, torch.bfloat16),
                                               ([129], 4, 1, 64, 64, False, 17, torch.float16)]:
    T = sum(lens); cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32, device="cuda")
    q = torch.randn(T, H, D, device="cuda", dtype=dt, requires_grad=True)
    k = torch.randn(T, Hkv, D, device="cuda", dtype=dt, requires_grad=True)
    v = torch.randn(T, Hkv, Dv, device="cuda", dtype=dt, requires_grad=True)
    o = triton_flash_attention(q, k, v, cu, max(lens), causal=causal, window=window)
    r = naive_attention(*(t.float() for t in (q, k, v)), cu, max(lens), causal=causal, window=window)
    g = torch.randn_like(r)
    go = torch.autograd.grad(o.float(), (q, k, v), g)
    gr = torch.autograd.grad(r, (q, k, v), g)
    print(f"triton vs naive {dt} lens={lens} H={H}/{Hkv} D={D}/{Dv} causal={causal} window={window}: "
          f"out {(o.float() - r).abs().max().item():.2e} grads " +
          " ".join(f"{(a.float() - b.float()).abs().max().item():.2e}" for a, b in zip(go, gr)))
a = torch.randn(512, 1024, device="cuda"); w = torch.randn(768, 1024, device="cuda")
aq, as_ = fp8.quantize_tiles(a); wq, ws = fp8.quantize_blocks(w)
y = fp8.fp8_gemm(aq, as_, wq, ws)
ref = fp8.dequantize(aq, as_) @ fp8.dequantize(wq, ws).t()
print("fp8 gemm mode:", fp8.gemm_mode(), "rel err vs emulation", ((y - ref).norm() / ref.norm()).item(),
      "vs fp32", ((y - a @ w.t()).norm() / (a @ w.t()).norm()).item())
PY
$PY -m genlab bench attention 2>&1 | tee "$OUT/bench_attention_cuda.txt"
