"""`genlab bench window_max`: van Herk/Gil-Werman window max vs a pure-Python monotonic deque.

Input: n = 10^6 float64 values from a standard normal (fixed seed); k in {3, 100, 1000}. Timed, in
turns so that load on the shared CPU falls on all alike (common.interleaved_times), best of
`steps` rounds (default 3) each:

- deque: genlab.ops.window_max.window_max_deque over a Python list (the LeetCode 239 solution;
  building the list is not timed);
- numpy: genlab.ops.window_max.window_max on the ndarray (O(n) whatever k is);
- torch: the same on a CPU tensor;
- sliding_window_view: numpy's zero-copy windows then .max(axis=1), O(nk), for reference.

Every output is checked equal to the deque's. Target: numpy >= 20x faster than the deque for each k.
"""

from __future__ import annotations

import numpy as np
import torch

from genlab.bench.common import interleaved_times, machine_info, print_table
from genlab.ops.window_max import window_max, window_max_deque

DEFAULTS = dict(n=1_000_000, ks=(3, 100, 1000), rounds=3, seed=0)
QUICK = dict(DEFAULTS, n=20_000, ks=(3, 100, 1000), rounds=1)
TARGET_SPEEDUP = 20.0


def run(steps: int | None = None, quick: bool = False) -> dict:
    p = dict(QUICK if quick else DEFAULTS)
    if steps is not None:
        p["rounds"] = steps
    a = np.random.default_rng(p["seed"]).standard_normal(p["n"])
    t = torch.from_numpy(a)
    values = a.tolist()
    rows = []
    for k in p["ks"]:
        ref = np.array(window_max_deque(values, k))
        outs = [window_max(a, k), window_max(t, k).numpy(), np.lib.stride_tricks.sliding_window_view(a, k).max(axis=1)]
        equal = all(np.array_equal(o, ref) for o in outs)
        fns = [
            lambda k=k: window_max_deque(values, k),
            lambda k=k: window_max(a, k),
            lambda k=k: window_max(t, k),
            lambda k=k: np.lib.stride_tricks.sliding_window_view(a, k).max(axis=1),
        ]
        times = [min(ts) for ts in interleaved_times(fns, warmup=0, steps=p["rounds"])]
        rows.append(
            {
                "k": k,
                "deque_s": times[0],
                "numpy_s": times[1],
                "torch_s": times[2],
                "sliding_window_view_s": times[3],
                "speedup_numpy": times[0] / times[1],
                "speedup_torch": times[0] / times[2],
                "outputs_equal": equal,
            }
        )
    res = {
        "benchmark": "window_max",
        "machine": machine_info(),
        "config": p,
        "results": rows,
        "targets": {
            f"numpy_speedup_ge_{TARGET_SPEEDUP:g}x_k{r['k']}": r["speedup_numpy"] >= TARGET_SPEEDUP for r in rows
        },
    }
    print_table(
        f"window max, n = {p['n']:,} float64 (best of {p['rounds']}; seconds)",
        [
            "k",
            "pure-Python deque",
            "vHGW numpy",
            "vHGW torch",
            "sliding_window_view",
            "numpy speedup",
            "torch speedup",
            "equal",
        ],
        [
            [
                r["k"],
                f"{r['deque_s']:.3f}",
                f"{r['numpy_s']:.4f}",
                f"{r['torch_s']:.4f}",
                f"{r['sliding_window_view_s']:.4f}",
                f"{r['speedup_numpy']:.0f}x",
                f"{r['speedup_torch']:.0f}x",
                r["outputs_equal"],
            ]
            for r in rows
        ],
    )
    return res
