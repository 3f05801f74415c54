"""`genlab bench packing`: packed (padding-free) vs padded training on a length-skewed corpus.

Corpus (synthetic, deterministic): `n_docs` documents whose lengths in tokens are drawn from a
log-normal distribution, length = round(exp(N(ln median, sigma^2))) clipped to
[min_len, cap_factor * L]; defaults median 128, sigma 1.0, min_len 4, cap 4 * L = 2048 with rows
of L = 512. So most documents are short (mean ~210 tokens, 90th percentile ~460) and a few are
several rows long (they are split into L-token chunks, never dropped). Tokens are uniform in
[1, vocab) from a fixed seed: we measure throughput, not what the model learns.

The same Transformer (two copies from one initialisation) trains N steps in each mode, the two
modes interleaved step by step (ABBA order) so load on the shared CPU hits both alike. A step is
timed end to end: fetching the batch (`TokenDataset.batch_at`, the per-batch packer work) plus
forward, backward, clipping and the AdamW update. Real tokens are non-padding tokens
(`Batch.n_real`); real_fraction = n_real / (rows * L).

Also reported: the per-epoch packing cost (chunking + best-fit-decreasing over buffers)
amortised per batch, the cost of `best_fit_decreasing` on 100k document lengths, and the
real-token fraction of the embedded corpus (byte tokens) in both modes, for comparison.
"""

from __future__ import annotations

import copy
import math
import time

import numpy as np
import torch

from genlab.bench.common import bench_thread_scope, machine_info, print_table
from genlab.config import TrainConfig
from genlab.data.packing import TokenDataset, best_fit_decreasing, chunk_spans, pack_rows
from genlab.families import build_lm
from genlab.families.lm.args import LMArgs
from genlab.families.lm.model import count_params
from genlab.families.lm.task import LMTask
from genlab.train.optim import build_optimizer

DEFAULTS = dict(
    vocab=2048,
    L=512,
    rows=8,
    d_model=256,
    n_layer=4,
    n_head=4,
    n_docs=6000,
    steps=16,
    warmup=2,
    median=128.0,
    sigma=1.0,
    min_len=4,
    cap_factor=4,
    buffer=1000,
    bfd_docs=100_000,
    embedded_docs=None,
    seed=0,
)
QUICK = dict(
    DEFAULTS,
    vocab=256,
    L=64,
    rows=2,
    d_model=32,
    n_layer=1,
    n_head=2,
    n_docs=300,
    steps=3,
    warmup=1,
    median=16.0,
    bfd_docs=5_000,
    embedded_docs=12,
)

TARGET_RATIO = 1.8
TARGET_PACKED_FRACTION = 0.99


# ------------------------------------------------------------------------------ corpus
def skewed_lengths(n: int, p: dict, rng: np.random.Generator) -> np.ndarray:
    """Log-normal document lengths (median p['median'], sigma p['sigma']) clipped to [min_len, cap_factor*L]."""
    raw = np.exp(rng.normal(math.log(p["median"]), p["sigma"], size=n))
    return np.clip(np.rint(raw), p["min_len"], p["cap_factor"] * p["L"]).astype(np.int64)


def skewed_corpus(p: dict) -> list[np.ndarray]:
    rng = np.random.default_rng(p["seed"])
    lengths = skewed_lengths(p["n_docs"], p, rng)
    flat = rng.integers(1, p["vocab"], size=int(lengths.sum()), dtype=np.int32)
    return np.split(flat, np.cumsum(lengths)[:-1])


def _length_stats(lengths: np.ndarray) -> dict:
    q = np.percentile(lengths, [10, 50, 90, 99])
    return {
        "n_docs": int(len(lengths)),
        "n_tokens": int(lengths.sum()),
        "mean": round(float(lengths.mean()), 1),
        "p10": int(q[0]),
        "p50": int(q[1]),
        "p90": int(q[2]),
        "p99": int(q[3]),
        "max": int(lengths.max()),
    }


def _epoch_fraction(ds: TokenDataset) -> tuple[float, int]:
    rows = ds.epoch_rows(0)
    real = sum(e - s for row in rows for _, s, e in row)
    return real / max(1, len(rows) * ds.L), len(rows)


# ------------------------------------------------------------------------------ measurements
def _train_step(model, opt, ds: TokenDataset, state, clip: float):
    t0 = time.perf_counter()
    batch, state = ds.batch_at(state)
    t1 = time.perf_counter()
    loss_sum, n = LMTask.loss(model, batch)
    (loss_sum / max(1, n)).backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    opt.step()
    opt.zero_grad(set_to_none=True)
    t2 = time.perf_counter()
    return state, {
        "data_s": t1 - t0,
        "compute_s": t2 - t1,
        "n_real": batch.n_real,
        "capacity": batch.capacity,
        "n_seq": len(batch.cu_seqlens) - 1,
        "loss": float(loss_sum.detach()) / max(1, n),
    }


def _bfd_timing(p: dict) -> dict:
    """best_fit_decreasing on the chunk lengths of `bfd_docs` documents: in one go, and as the
    dataset does it (buffers of `buffer` chunks)."""
    rng = np.random.default_rng(p["seed"] + 1)
    lengths = skewed_lengths(p["bfd_docs"], p, rng)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    spans = chunk_spans(offsets, range(len(lengths)), p["L"])
    chunk_lens = [e - s for s, e in spans]
    total = sum(chunk_lens)
    t0 = time.perf_counter()
    bins = best_fit_decreasing(chunk_lens, p["L"])
    t_all = time.perf_counter() - t0
    t0 = time.perf_counter()
    rows = pack_rows(spans, p["L"], p["buffer"])
    t_buf = time.perf_counter() - t0
    return {
        "n_docs": int(len(lengths)),
        "n_chunks": len(chunk_lens),
        "n_tokens": int(total),
        "one_buffer_s": round(t_all, 4),
        "one_buffer_rows": len(bins),
        "one_buffer_fill": round(total / (len(bins) * p["L"]), 5),
        "buffered_s": round(t_buf, 4),
        "buffer": p["buffer"],
        "buffered_rows": len(rows),
        "buffered_fill": round(total / (len(rows) * p["L"]), 5),
    }


def _embedded_fractions(p: dict) -> dict:
    """Real-token fraction of the embedded corpus (byte tokens) in both modes, no training."""
    from genlab.data.text import embedded_corpus

    docs = embedded_corpus()
    if p["embedded_docs"]:
        docs = docs[: p["embedded_docs"]]
    ids = [list(d.encode("utf-8")) for d in docs]
    lengths = np.array([len(x) for x in ids])
    out = {"tokenizer": "byte", "L": p["L"], "lengths": _length_stats(lengths)}
    for mode in ("packed", "padded"):
        ds = TokenDataset(ids, p["L"], p["rows"], mode=mode, seed=p["seed"], buffer=p["buffer"])
        frac, n_rows = _epoch_fraction(ds)
        out[mode] = {"real_fraction": round(frac, 5), "rows": n_rows}
    return out


def run(steps: int | None = None, quick: bool = False) -> dict:
    p = dict(QUICK if quick else DEFAULTS)
    if steps is not None:
        p["steps"] = steps
    with bench_thread_scope(quick):
        return _run(p, quick)


def _run(p: dict, quick: bool) -> dict:
    torch.manual_seed(p["seed"])

    # corpus and the two datasets (same documents, same seed)
    docs = skewed_corpus(p)
    lengths = np.array([len(d) for d in docs])
    data = {}
    pack_epoch_s = {}
    for mode in ("packed", "padded"):
        ds = TokenDataset(docs, p["L"], p["rows"], mode=mode, seed=p["seed"], buffer=p["buffer"])
        t0 = time.perf_counter()
        ds.epoch_rows(0)  # chunk + (packed) best-fit-decreasing + shuffle, once per epoch
        pack_epoch_s[mode] = time.perf_counter() - t0
        data[mode] = ds

    # the same model twice
    mcfg = LMArgs(d_model=p["d_model"], n_layer=p["n_layer"], n_head=p["n_head"])
    tcfg = TrainConfig(lr=1e-3, weight_decay=0.1)
    model = build_lm(mcfg, p["vocab"], p["L"])
    models = {"packed": model, "padded": copy.deepcopy(model)}
    opts = {m: build_optimizer(models[m], tcfg) for m in models}
    states = {m: (0, 0, 0) for m in models}
    recs: dict[str, list[dict]] = {m: [] for m in models}

    order = ["packed", "padded"]
    for i in range(p["warmup"] + p["steps"]):
        seq = order if i % 2 == 0 else order[::-1]  # ABBA: neither mode always goes first
        for mode in seq:
            states[mode], r = _train_step(models[mode], opts[mode], data[mode], states[mode], tcfg.grad_clip)
            if i >= p["warmup"]:
                recs[mode].append(r)

    modes = {}
    for mode, rs in recs.items():
        real = sum(r["n_real"] for r in rs)
        cap = sum(r["capacity"] for r in rs)
        data_s = sum(r["data_s"] for r in rs)
        comp_s = sum(r["compute_s"] for r in rs)
        step_times = sorted(r["data_s"] + r["compute_s"] for r in rs)
        n_rows_epoch = len(data[mode].epoch_rows(0))
        batches_epoch = math.ceil(n_rows_epoch / p["rows"])
        modes[mode] = {
            "steps": len(rs),
            "real_tokens": real,
            "capacity_tokens": cap,
            "real_fraction": round(real / max(1, cap), 5),
            "real_tokens_per_s": round(real / (data_s + comp_s), 1),
            "slot_tokens_per_s": round(cap / (data_s + comp_s), 1),
            "step_s_mean": round((data_s + comp_s) / len(rs), 4),
            "step_s_median": round(step_times[len(step_times) // 2], 4),
            "seqs_per_batch": round(sum(r["n_seq"] for r in rs) / len(rs), 1),
            "batch_fetch_ms": round(1e3 * data_s / len(rs), 3),  # make_batch: per-batch packer work
            "epoch_pack_s": round(pack_epoch_s[mode], 4),
            "epoch_batches": batches_epoch,
            "epoch_pack_ms_per_batch": round(1e3 * pack_epoch_s[mode] / max(1, batches_epoch), 3),
            "packer_ms_per_batch": round(1e3 * data_s / len(rs) + 1e3 * pack_epoch_s[mode] / max(1, batches_epoch), 3),
            "final_loss": round(rs[-1]["loss"], 4),
        }
    pk, pd = modes["packed"], modes["padded"]
    ratio = pk["real_tokens_per_s"] / max(1e-9, pd["real_tokens_per_s"])
    # the same ratio from median step times (less sensitive to a stall on the shared CPU)
    ratio_median = (pk["real_tokens"] / pk["steps"] / pk["step_s_median"]) / max(
        1e-9, pd["real_tokens"] / pd["steps"] / pd["step_s_median"]
    )

    bfd = _bfd_timing(p)
    emb = _embedded_fractions(p)

    result = {
        "benchmark": "packing",
        "quick": quick,
        "machine": machine_info(),
        "config": {
            "vocab": p["vocab"],
            "L": p["L"],
            "batch_rows": p["rows"],
            "d_model": p["d_model"],
            "n_layer": p["n_layer"],
            "n_head": p["n_head"],
            "steps": p["steps"],
            "warmup": p["warmup"],
            "pack_buffer": p["buffer"],
            "params": count_params(model)["total"],
            "attn_backend": "sdpa",
            "dtype": "float32",
            "threads": torch.get_num_threads(),
        },
        "corpus": {
            "kind": "synthetic",
            "distribution": (
                f"length = clip(round(exp(N(ln {p['median']:g}, {p['sigma']:g}^2))), "
                f"{p['min_len']}, {p['cap_factor']}*L={p['cap_factor'] * p['L']}); "
                f"tokens uniform in [1, {p['vocab']}), seed {p['seed']}"
            ),
            **_length_stats(lengths),
        },
        "modes": modes,
        "ratio_real_tokens_per_s": round(ratio, 3),
        "ratio_real_tokens_per_s_median_steps": round(ratio_median, 3),
        "targets": {
            "ratio_min": TARGET_RATIO,
            "ratio_met": ratio >= TARGET_RATIO,
            "packed_real_fraction_min": TARGET_PACKED_FRACTION,
            "packed_real_fraction_met": pk["real_fraction"] >= TARGET_PACKED_FRACTION,
        },
        "best_fit_decreasing": bfd,
        "embedded_corpus": emb,
    }
    _report(result)
    return result


def _report(r: dict) -> None:
    c = r["config"]
    rows = []
    for mode in ("packed", "padded"):
        m = r["modes"][mode]
        rows.append(
            [
                mode,
                f"{m['real_tokens_per_s']:,.0f}",
                f"{m['slot_tokens_per_s']:,.0f}",
                f"{100 * m['real_fraction']:.2f}%",
                f"{m['step_s_median']:.3f}",
                f"{m['seqs_per_batch']:.1f}",
                f"{m['batch_fetch_ms']:.2f}",
                f"{m['epoch_pack_ms_per_batch']:.2f}",
            ]
        )
    print_table(
        f"packed vs padded: Transformer d{c['d_model']} x{c['n_layer']}, {c['params']:,} params, "
        f"{c['batch_rows']} rows x L={c['L']}, {c['steps']} steps each (interleaved)",
        [
            "mode",
            "real tok/s",
            "slot tok/s",
            "real frac",
            "step s (med)",
            "seqs/batch",
            "fetch ms/batch",
            "pack ms/batch",
        ],
        rows,
    )
    t = r["targets"]
    b = r["best_fit_decreasing"]
    e = r["embedded_corpus"]
    print_table(
        "summary",
        ["metric", "value"],
        [
            [
                "real tok/s packed / padded",
                f"{r['ratio_real_tokens_per_s']:.2f}x "
                f"(target >= {t['ratio_min']}x: {'met' if t['ratio_met'] else 'NOT met'})",
            ],
            ["same, from median step times", f"{r['ratio_real_tokens_per_s_median_steps']:.2f}x"],
            [
                "packed real-token fraction",
                f"{100 * r['modes']['packed']['real_fraction']:.2f}% (target >= "
                f"{100 * t['packed_real_fraction_min']:.0f}%: "
                f"{'met' if t['packed_real_fraction_met'] else 'NOT met'})",
            ],
            [
                f"best_fit_decreasing, {b['n_docs']:,} docs ({b['n_chunks']:,} chunks), one buffer",
                f"{b['one_buffer_s']:.3f} s, fill {100 * b['one_buffer_fill']:.2f}%",
            ],
            [f"pack_rows, buffers of {b['buffer']}", f"{b['buffered_s']:.3f} s, fill {100 * b['buffered_fill']:.2f}%"],
            [
                f"embedded corpus (byte, L={e['L']}) real fraction",
                f"packed {100 * e['packed']['real_fraction']:.2f}%, padded {100 * e['padded']['real_fraction']:.2f}%",
            ],
            ["corpus", r["corpus"]["distribution"]],
        ],
    )
