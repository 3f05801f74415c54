"""Causal attention forward + backward at `genlab bench train`'s attention shape (8 rows x 8 heads x 512
tokens x head dim 64, fp32, 2 threads): torch's SDPA against a plain matmul-softmax-matmul version.
The "2.4-3.4x slower" of docs/benchmarks.md comes from this script (it is why genlab keeps SDPA).
Usage: .venv/bin/python scripts/attention_matmul_vs_sdpa.py
"""

import time

import torch
import torch.nn.functional as F


def report(pairs, reps):
    """Each (name, fn) in turn, twice over: one warm-up call, then the mean of `reps` calls."""
    for name, fn in pairs * 2:
        fn()
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        print(f"{name:17s} {(time.perf_counter() - t0) / reps * 1e3:.1f} ms per forward + backward")


torch.set_num_threads(2)
B, H, L, D = 8, 8, 512, 64
q, k, v = (torch.randn(B, H, L, D, requires_grad=True) for _ in range(3))
grad = torch.randn(B, H, L, D)
allowed = torch.ones(L, L, dtype=torch.bool).tril()


def sdpa():
    F.scaled_dot_product_attention(q, k, v, is_causal=True).backward(grad)


def matmul():
    s = (q @ k.transpose(-1, -2)) * D**-0.5
    torch.softmax(s.masked_fill(~allowed, float("-inf")), -1).matmul(v).backward(grad)


report([("sdpa", sdpa), ("matmul", matmul)], 5)

# MLA's shapes (q/k head dim 48, v 32; 4 x 4 heads x 256 tokens, 1 thread): SDPA with unequal head dims
# falls back to its unfused math path; zero-padding v to 48 (what genlab.ops.attention.sdpa_attention
# does on CPU) gets the fused flash kernel.
torch.set_num_threads(1)
q2, k2 = (torch.randn(4, 4, 256, 48, requires_grad=True) for _ in range(2))
v2 = torch.randn(4, 4, 256, 32, requires_grad=True)


def unequal():
    F.scaled_dot_product_attention(q2, k2, v2, is_causal=True).sum().backward()


def padded():
    vp = F.pad(v2, (0, 16))
    F.scaled_dot_product_attention(q2, k2, vp, is_causal=True)[..., :32].sum().backward()


report([("v 32 (math path)", unequal), ("v padded to 48", padded)], 20)
