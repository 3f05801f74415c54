"""genlab bench attention: naive vs genlab's flash vs torch SDPA (and genlab's triton kernel on CUDA):
forward+backward time and peak extra memory against sequence length N (one causal sequence, 4 heads,
head dim 64; fp32 on CPU, bf16 on CUDA where SDPA uses its flash kernel).

Each (backend, N) runs in its own subprocess, so memory is measured cleanly: the peak resident set
(VmHWM, reset through /proc/self/clear_refs) minus the resident set once q, k, v exist, with
MALLOC_MMAP_THRESHOLD_ set so freed large tensors really leave the process. On CUDA the figures are
torch.cuda.max_memory_allocated() minus the inputs. On CPU the times come from a second subprocess
with the default allocator (with the mmap threshold every large temporary pays fresh page faults,
which slowed the tile-heavy flash backend 2x in that process). Ratios are what to compare.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import torch

from genlab.bench.common import machine_info, print_table

H, D = 4, 64
NAIVE_MAX_N = 8192  # above this the naive (H, N, N) scores alone pass 4 GiB (and their softmax copies more)


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def measure(backend: str, n: int, device: str = "cpu", repeats: int = 1) -> dict:
    """Inside the subprocess: time and peak extra memory of forward and forward+backward."""
    from genlab.ops.attention import BACKENDS
    from genlab.ops.triton_flash import triton_flash_attention

    torch.set_num_threads(1)
    torch.manual_seed(0)
    dev = torch.device(device)
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32  # CUDA: SDPA's flash kernel needs 16-bit
    q, k, v = (torch.randn(n, H, D, device=dev, dtype=dtype, requires_grad=True) for _ in range(3))
    cu = torch.tensor([0, n], dtype=torch.int32, device=dev)
    fn = triton_flash_attention if backend == "triton" else BACKENDS[backend]
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

    def call():
        return fn(q, k, v, cu, n, causal=True)

    # warm-up outside the measurement: code paths, autograd's first backward, compilation on CUDA
    small = [t.detach()[:64].clone().requires_grad_() for t in (q, k, v)]
    fn(*small, torch.tensor([0, 64], dtype=torch.int32, device=dev), 64, causal=True).sum().backward()
    if dev.type == "cuda":
        call().sum().backward()
        q.grad = k.grad = v.grad = None
    qkvo = 4 * n * H * D * q.element_size()  # bytes of q, k, v and o
    out = {"backend": backend, "n": n, "qkvo_mib": qkvo / 2**20}
    fwd, tot, peak_f, peak_t = [], [], 0.0, 0.0
    for _ in range(repeats):
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        else:
            _reset_peak()
            base = _rss_kib("VmRSS") * 1024
        sync()
        t0 = time.perf_counter()
        o = call()
        sync()
        t1 = time.perf_counter()
        pf = (torch.cuda.max_memory_allocated() if dev.type == "cuda" else _rss_kib("VmHWM") * 1024) - base
        o.backward(torch.ones_like(o))
        sync()
        t2 = time.perf_counter()
        pt = (torch.cuda.max_memory_allocated() if dev.type == "cuda" else _rss_kib("VmHWM") * 1024) - base
        fwd.append(t1 - t0)
        tot.append(t2 - t0)
        peak_f, peak_t = max(peak_f, pf), max(peak_t, pt)
        del o
        q.grad = k.grad = v.grad = None
    out.update(fwd_s=min(fwd), fwd_bwd_s=min(tot), peak_fwd_mib=peak_f / 2**20, peak_fwd_bwd_mib=peak_t / 2**20)
    return out


def run_isolated(module: str, fn: str, mmap: bool = True, **kwargs) -> dict:
    """Run genlab.bench.<module>.<fn>(**kwargs) in a fresh python; its dict comes back as JSON.
    `mmap`: every allocation above 64 KiB gets its own mapping, returned to the system when freed, so
    the resident set tracks live tensors (for memory figures); it also makes each large allocation
    pay fresh page faults, so timings are taken in a separate process without it."""
    code = (
        f"import json, genlab.bench.{module} as m; "
        f"print('RESULT ' + json.dumps(m.{fn}(**json.loads({json.dumps(json.dumps(kwargs))}))))"
    )
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if mmap:
        env["MALLOC_MMAP_THRESHOLD_"] = "65536"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    return {"error": (proc.stderr.strip().splitlines() or ["no output"])[-1]}


def memory_then_time(
    module: str, fn: str, time_keys: tuple[str, ...], mem_kwargs: dict, time_kwargs: dict, **kwargs
) -> dict:
    """Memory figures from a run_isolated process with the mmap threshold, then the `time_keys` replaced
    by those of a second process with the default allocator (where timings are not distorted)."""
    res = run_isolated(module, fn, **mem_kwargs, **kwargs)
    if not any(k in res for k in time_keys):
        return res  # skipped or failed: nothing to time
    timed = run_isolated(module, fn, mmap=False, **time_kwargs, **kwargs)
    res.update({k: timed[k] for k in time_keys if k in timed})
    return res


def run(steps: int | None = None, quick: bool = False, device: str | None = None) -> dict:
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    ns = [256, 512] if quick else [1024, 2048, 4096, 8192, 16384]
    backends = ["naive", "flash", "sdpa"] + (["triton"] if device == "cuda" else [])
    results, rows = [], []
    for n in ns:
        per = {}
        for b in backends:
            if b == "naive" and n > NAIVE_MAX_N:
                per[b] = {"skipped": f"scores alone {H * n * n * 4 / 2**30:.0f} GiB"}
                continue
            if device == "cpu":
                per[b] = memory_then_time(
                    "attention",
                    "measure",
                    ("fwd_s", "fwd_bwd_s"),
                    {"repeats": 1},
                    {"repeats": steps or 2},
                    backend=b,
                    n=n,
                    device=device,
                )
            else:  # CUDA memory comes from the allocator's own counters: one process does both
                per[b] = run_isolated("attention", "measure", backend=b, n=n, device=device, repeats=steps or 2)
            results.append(per[b])
        base = per["sdpa"].get("fwd_bwd_s")
        for b in backends:
            r = per[b]
            if "fwd_s" not in r:
                rows.append([n, b, "-", "-", "-", "-", "-", r.get("skipped") or r.get("error")])
                continue
            rows.append(
                [
                    n,
                    b,
                    f"{r['fwd_s']:.3f}",
                    f"{r['fwd_bwd_s']:.3f}",
                    f"{r['fwd_bwd_s'] / base:.2f}x" if base else "-",
                    f"{r['peak_fwd_mib']:.0f}",
                    f"{r['peak_fwd_bwd_mib']:.0f}",
                    f"{r['peak_fwd_bwd_mib'] / r['qkvo_mib']:.2f}x qkvo",
                ]
            )
    print_table(
        f"attention, causal, H={H}, D={D}, {'bf16' if device == 'cuda' else 'fp32'}, {device} (1 thread; "
        "time = best of the repeats, memory from a separate process)",
        ["N", "backend", "fwd s", "fwd+bwd s", "vs sdpa", "peak fwd MiB", "peak fwd+bwd MiB", "note"],
        rows,
    )
    return {"machine": machine_info(), "device": device, "results": results}
