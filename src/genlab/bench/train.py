"""`genlab bench train`: training throughput of genlab's Transformer against Hugging Face's Llama.

Both models have the same shape (d_model 512, 8 layers, 8 heads without GQA, SwiGLU 1376, vocab
8192), start from the same weights (genlab's are copied into the Llama) and train on the same
batch, 8 rows of 512 tokens: each step is forward + loss + backward + AdamW step, on CPU in fp32,
with `torch.set_num_threads(2)`.

- genlab gets the batch as 8 single-document rows (cu_seqlens 0, 512, ..., 4096; positions
  0..511 per row): the apples-to-apples comparison, and the target (genlab >= 1.1x HF tokens/s).
  Its step is the trainer's: `LMTask.loss` (summed cross-entropy over logits = model.head(h)),
  divided by the number of targets, backward, optimizer step.
- HF: `LlamaForCausalLM(attn_implementation="sdpa")(input_ids, labels=input_ids).loss`, backward,
  optimizer step.
- an extra genlab row trains on real packed rows of the embedded corpus (several documents per
  row, attention within each document); its FLOPs count the attention each document really does.
- The optimizer is the same for both: torch.optim.AdamW, lr 1e-3, betas (0.9, 0.95), eps 1e-8,
  weight decay 0.1 on matrices and 0 on vectors (genlab's rule), fused=True (PyTorch's fused CPU
  kernel, for both).

Fairness checks, cheap and done every run: with the same weights the two models' logits on one
row must agree (max abs difference <= 1e-4), and since the models start equal and see the same
batch, their losses at the first and last step must agree too (reported).

Timing: warmup steps for each, then the timed steps of genlab and HF interleaved (genlab, HF,
HF, genlab, ...) so that noise from other processes on the machine falls on both alike; the
median step time of each is reported, and with it two noise-robust companions: the median of the
per-round ratios (HF step / genlab step in the same round) and the ratio of CPU seconds per step.
The packed-rows row is an extra, timed afterwards on its own (fewer steps), so that the genlab/HF
pairs stay close together in time.

FLOPs: `genlab.train.flops.flops_per_token(...)["train_flops_per_token"]` = 3x the forward
matmul FLOPs, attention counted over the full context (4 d L per layer per token). The causal
figure counts attention over the keys each query really sees ((L + 1) / 2 on average).
Peak: a matmul microbenchmark over the model's own GEMMs at M = rows * L tokens: for each
linear layer the forward x @ W^T and the backward dX = dY @ W, dW = dY^T @ x, plus the LM head,
outputs preallocated, best of several runs each. `peak_gflops` (used for MFU) is the best shape's
figure; `weighted_gflops` is the GEMM-only ceiling for this model's mix (total FLOPs / total time
with each shape weighted by how often a step runs it). On a machine shared with other work the
wall-clock figures (and so MFU) swing with the others' load, while the peak keeps its best moment:
read MFU as a lower bound, and the CPU-seconds column as the load-independent cost of a step.
"""

from __future__ import annotations

import time

import torch

from genlab.bench.common import interleaved_times, machine_info, median, print_table
from genlab.data.packing import IGNORE, Batch, TokenDataset
from genlab.families.lm.args import LMArgs
from genlab.families.lm.task import LMTask
from genlab.families.lm.transformer import Transformer, ffn_width
from genlab.train.flops import flops_per_token

FULL = dict(
    d_model=512,
    n_layer=8,
    n_head=8,
    ffn_hidden=1376,
    vocab=8192,
    rows=8,
    seq_len=512,
    warmup=2,
    steps=5,
    tokenizer="bpe",
    corpus_docs=None,
    mix_median=120,
)
QUICK = dict(
    d_model=64,
    n_layer=2,
    n_head=2,
    ffn_hidden=96,
    vocab=512,
    rows=2,
    seq_len=64,
    warmup=1,
    steps=2,
    tokenizer="byte",
    corpus_docs=8,
    mix_median=16,
)
THREADS = 2
SEED = 0
TARGET_RATIO = 1.3
LOGIT_TOL = 1e-4
OPTIM = dict(lr=1e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1, fused=True)


# ------------------------------------------------------------------------------ models
def model_config(p: dict) -> LMArgs:
    return LMArgs(
        d_model=p["d_model"], n_layer=p["n_layer"], n_head=p["n_head"], ffn_hidden=p["ffn_hidden"], attn_backend="sdpa"
    )


def build_hf(p: dict, max_len: int | None = None):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=p["vocab"],
        hidden_size=p["d_model"],
        intermediate_size=p["ffn_hidden"],
        num_hidden_layers=p["n_layer"],
        num_attention_heads=p["n_head"],
        num_key_value_heads=p["n_head"],
        max_position_embeddings=max_len or p["seq_len"],
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=False,
        attention_bias=False,
        mlp_bias=False,
        attention_dropout=0.0,
        attn_implementation="sdpa",
        # training: no KV cache. With transformers' default (use_cache=True) the forward makes a DynamicCache even
        # in train mode, and with a cache create_causal_mask skips its packed-sequence detection, so
        # position_ids-packed documents would attend to each other (measured: logits 0.37 off per-document ones)
        use_cache=False,
    )
    model = LlamaForCausalLM(cfg)
    assert model.config._attn_implementation == "sdpa", model.config._attn_implementation
    return model


@torch.no_grad()
def copy_weights_to_hf(g: Transformer, hf) -> None:
    """genlab's weights into the Llama: split the fused qkv and gate_up projections. RoPE needs
    no permutation: genlab rotates pairs (x[i], x[i + D/2]), as Llama's rotate_half does."""
    d, H = g.cfg.d_model, g.cfg.n_head
    hd = d // H
    kv = g.cfg.n_kv_head or H
    ffn = ffn_width(g.cfg)
    m = hf.model
    m.embed_tokens.weight.copy_(g.embed.weight)
    for blk, lyr in zip(g.blocks, m.layers):
        q, k, v = blk.attn.qkv.weight.split([H * hd, kv * hd, kv * hd], dim=0)
        lyr.self_attn.q_proj.weight.copy_(q)
        lyr.self_attn.k_proj.weight.copy_(k)
        lyr.self_attn.v_proj.weight.copy_(v)
        lyr.self_attn.o_proj.weight.copy_(blk.attn.proj.weight)
        gate, up = blk.mlp.gate_up.weight.split(ffn, dim=0)
        lyr.mlp.gate_proj.weight.copy_(gate)
        lyr.mlp.up_proj.weight.copy_(up)
        lyr.mlp.down_proj.weight.copy_(blk.mlp.down.weight)
        lyr.input_layernorm.weight.copy_(blk.attn_norm.weight)
        lyr.post_attention_layernorm.weight.copy_(blk.mlp_norm.weight)
    m.norm.weight.copy_(g.norm.weight)
    hf.lm_head.weight.copy_(g.head.weight)


def make_optimizer(model: torch.nn.Module) -> torch.optim.Optimizer:
    """The same AdamW for both models: weight decay on matrices only (genlab's rule)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    kw = dict(OPTIM)
    wd = kw.pop("weight_decay")
    return torch.optim.AdamW([{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}], **kw)


# ------------------------------------------------------------------------------ batches
def rows_batch(ids: torch.Tensor) -> Batch:
    """(R, L) token ids as R single-document rows of the flat stream."""
    R, L = ids.shape
    targets = torch.full((R, L), IGNORE, dtype=torch.long)
    targets[:, :-1] = ids[:, 1:]
    cu = torch.arange(0, R * L + 1, L, dtype=torch.int32)
    return Batch(ids.reshape(-1).clone(), targets.reshape(-1), torch.arange(L).repeat(R), cu, L, R * L, R * L, R)


MIX = dict(sigma=1.0, n_docs=600)  # the packed rows' document lengths: log-normal, median p["mix_median"]


def mixed_documents(p: dict) -> list[list[int]]:
    """Documents of a realistic length mix: lengths log-normal (median p["mix_median"] tokens, sigma
    MIX['sigma'], clipped to [4, 8 L]; seeded), tokens consecutive stretches of the tokenized embedded
    corpus, so the text is real."""
    import numpy as np

    from genlab.data.text import embedded_corpus
    from genlab.data.tokenizer import build_tokenizer

    docs = embedded_corpus()
    if p["corpus_docs"]:
        docs = docs[: p["corpus_docs"]]
    tok = build_tokenizer(p["tokenizer"], docs, p["vocab"])
    stream = np.concatenate([np.asarray(d, dtype=np.int64) for d in tok.encode_batch(docs)])
    rng = np.random.default_rng(SEED)
    lens = np.clip(rng.lognormal(np.log(p["mix_median"]), MIX["sigma"], MIX["n_docs"]), 4, 8 * p["seq_len"]).astype(int)
    out, at = [], 0
    for n in lens.tolist():
        if at + n > len(stream):
            at = 0
        out.append(stream[at : at + n].tolist())
        at += n
    return out


def packed_batch(p: dict) -> tuple[Batch, list[list[list[int]]]]:
    """The first batch of genlab's packer (best-fit-decreasing, seeded) over `mixed_documents`:
    several documents per row, each attending only to itself. Also returns the batch's rows as
    lists of documents (token lists), for the Hugging Face side."""
    ds = TokenDataset(mixed_documents(p), p["seq_len"], p["rows"], mode="packed", seed=SEED)
    rows, _ = ds.layout_at((0, 0, 0))
    batch = ds.materialize(rows)
    docs = [[ds.store.tokens(d, s, e).astype("int64").tolist() for d, s, e in row] for row in rows]
    return batch, docs


def hf_flattened(docs: list[list[int]]) -> dict:
    """Hugging Face's padding-free batch of these documents: `DataCollatorWithFlattening` (one row of
    every document back to back, position_ids restarting per document, labels -100 at each
    document's first token; the model shifts labels inside its loss)."""
    from transformers import DataCollatorWithFlattening

    return DataCollatorWithFlattening(return_position_ids=True)([{"input_ids": d} for d in docs], return_tensors="pt")


def hf_packed_rows(rows: list[list[list[int]]], L: int) -> dict:
    """The same packed rows for Hugging Face, one batch row per packed row: each row flattened as
    DataCollatorWithFlattening does, then padded to L (padding: its own position run, labels -100)."""
    import torch as t

    ids, labels, pos = [], [], []
    for row in rows:
        f = hf_flattened(row)
        n = f["input_ids"].shape[1]
        ids.append(t.cat([f["input_ids"][0], t.zeros(L - n, dtype=t.long)]))
        labels.append(t.cat([f["labels"][0], t.full((L - n,), IGNORE, dtype=t.long)]))
        pos.append(t.cat([f["position_ids"][0], t.arange(L - n)]))
    return {"input_ids": t.stack(ids), "labels": t.stack(labels), "position_ids": t.stack(pos)}


# ------------------------------------------------------------------------------ FLOPs and peak
def train_flops(cfg: LMArgs, vocab: int, seq_lens: list[int]) -> tuple[float, float]:
    """(full-context, causal) training FLOPs of one batch of sequences of these lengths.
    Full-context: flops_per_token at each sequence's own length (attention over all L keys);
    causal: attention over the (n + 1) / 2 keys a query sees on average."""
    full = causal = 0.0
    d_attn = cfg.n_head * (cfg.d_model // cfg.n_head)
    for n in seq_lens:
        f = flops_per_token(cfg, vocab, n)["train_flops_per_token"] * n
        attn_full = 3 * cfg.n_layer * 4 * d_attn * n * n
        attn_causal = 3 * cfg.n_layer * 4 * d_attn * n * (n + 1) / 2
        full += f
        causal += f - attn_full + attn_causal
    return full, causal


def gemm_shapes(cfg: LMArgs, vocab: int, M: int) -> list[tuple[str, int, int, int, str, int]]:
    """(name, m, k, n, kind, count per step) of every matmul in one training step."""
    d, H = cfg.d_model, cfg.n_head
    hd = d // H
    kv = cfg.n_kv_head or H
    ffn = ffn_width(cfg)
    linears = [
        ("qkv", d, (H + 2 * kv) * hd, cfg.n_layer),
        ("proj", H * hd, d, cfg.n_layer),
        ("gate_up", d, 2 * ffn, cfg.n_layer),
        ("down", ffn, d, cfg.n_layer),
        ("head", d, vocab, 1),
    ]
    shapes = []
    for name, K, N, count in linears:
        shapes += [
            (f"{name} fwd  x@W^T", M, K, N, "fwd", count),
            (f"{name} bwd dY@W", M, N, K, "dx", count),
            (f"{name} bwd dY^T@x", N, M, K, "dw", count),
        ]
    return shapes


def _time_gemm(m: int, k: int, n: int, kind: str, reps: int) -> float:
    g = torch.Generator().manual_seed(SEED)
    if kind == "fwd":  # F.linear: x (m, k) @ W^T, W stored (n, k)
        a, b = torch.randn(m, k, generator=g), torch.randn(n, k, generator=g).t()
    elif kind == "dx":  # dY (m, k=N) @ W (N, n=K)
        a, b = torch.randn(m, k, generator=g), torch.randn(k, n, generator=g)
    else:  # dW = dY^T @ x: dY stored (M, N), x (M, K)
        a, b = torch.randn(k, m, generator=g).t(), torch.randn(k, n, generator=g)
    out = torch.empty(m, n)
    torch.mm(a, b, out=out)
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        torch.mm(a, b, out=out)
        best = min(best, time.perf_counter() - t0)
    return best


def measure_peak(cfg: LMArgs, vocab: int, M: int, reps: int = 5, prior: dict | None = None) -> dict:
    """Best GFLOP/s of each of the model's GEMM shapes (merged with an earlier measurement)."""
    rows = []
    for i, (name, m, k, n, kind, count) in enumerate(gemm_shapes(cfg, vocab, M)):
        t = _time_gemm(m, k, n, kind, reps)
        if prior is not None:
            t = min(t, prior["shapes"][i]["seconds"])
        rows.append(
            {"shape": name, "m": m, "k": k, "n": n, "count": count, "seconds": t, "gflops": 2 * m * k * n / t / 1e9}
        )
    best = max(rows, key=lambda r: r["gflops"])
    total_flops = sum(2 * r["m"] * r["k"] * r["n"] * r["count"] for r in rows)
    total_time = sum(r["seconds"] * r["count"] for r in rows)
    return {
        "peak_gflops": best["gflops"],
        "peak_shape": f"{best['shape']} ({best['m']}x{best['k']}x{best['n']})",
        "weighted_gflops": total_flops / total_time / 1e9,
        "method": f"torch.mm fp32, outputs preallocated, best of {reps} runs (twice: before and after "
        "the training steps), M = {M} tokens; peak = best shape; weighted = total FLOPs / "
        "total time of one step's GEMM mix".replace("{M}", str(M)),
        "shapes": rows,
    }


# ------------------------------------------------------------------------------ the benchmark
def run(steps: int | None = None, quick: bool = False) -> dict:
    p = dict(QUICK if quick else FULL)
    if steps:
        p["steps"] = steps
    old_threads = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        return _run(p, quick)
    finally:
        torch.set_num_threads(old_threads)


NAMES = ("genlab", "hf", "genlab_packed", "hf_packed_flat", "hf_packed_rows")
HF_PACKED = ("hf_packed_flat", "hf_packed_rows")


def _compile_row(quick: bool) -> bool:
    """The train.compile row: on unless GENLAB_BENCH_COMPILE=0 (off by default with --quick)."""
    import os

    return os.environ.get("GENLAB_BENCH_COMPILE", "0" if quick else "1") != "0"


def _run(p: dict, quick: bool) -> dict:
    R, L, V = p["rows"], p["seq_len"], p["vocab"]
    cfg = model_config(p)
    torch.manual_seed(SEED)
    models = {"genlab": Transformer(cfg, V, L).train(), "hf": build_hf(p).train()}
    copy_weights_to_hf(models["genlab"], models["hf"])

    ids = torch.randint(0, V, (R, L), generator=torch.Generator().manual_seed(SEED))
    batch = rows_batch(ids)
    packed, packed_docs = packed_batch(p)
    assert int(packed.input_ids.max()) < V
    flat = hf_flattened([d for row in packed_docs for d in row])
    hf_rows = hf_packed_rows(packed_docs, L)
    assert int(flat["input_ids"].shape[1]) == packed.n_real
    torch.manual_seed(SEED)
    models["genlab_packed"] = Transformer(cfg, V, L).train()
    names = list(NAMES)
    if _compile_row(quick):  # train.compile's path: the packed model's blocks compiled (inductor, dynamic shapes)
        import copy

        from genlab.train.compile import compile_model

        models["genlab_packed_compiled"] = copy.deepcopy(models["genlab_packed"])
        if compile_model(models["genlab_packed_compiled"], torch.device("cpu"), log=print):
            names.append("genlab_packed_compiled")
        else:
            del models["genlab_packed_compiled"]
    for name in HF_PACKED:  # Hugging Face's padding-free path, from the packed model's weights
        models[name] = build_hf(p, max_len=packed.n_real).train()
        copy_weights_to_hf(models["genlab_packed"], models[name])

    # --- fairness check: the same function (one row, same weights)
    with torch.no_grad():
        row = rows_batch(ids[:1])
        g = models["genlab"]
        lg = g.head(g(row.input_ids, row.position_ids, row.cu_seqlens, row.max_seqlen))
        lh = models["hf"](input_ids=ids[:1]).logits[0]
        logit_diff = float((lg - lh).abs().max())
        logit_scale = float(lh.abs().max())

    peak = measure_peak(cfg, V, R * L, reps=3 if quick else 5)

    opts = {k: make_optimizer(m) for k, m in models.items()}
    losses: dict[str, list[float]] = {k: [] for k in names}

    def genlab_step(name, b):
        def step():
            loss_sum, n = LMTask.loss(models[name], b)
            loss = loss_sum / max(1, n)
            loss.backward()
            opts[name].step()
            opts[name].zero_grad(set_to_none=True)
            losses[name].append(float(loss.detach()))

        return step

    def hf_step(name, inputs):
        def step():
            loss = models[name](**inputs).loss
            loss.backward()
            opts[name].step()
            opts[name].zero_grad(set_to_none=True)
            losses[name].append(float(loss.detach()))

        return step

    fns = {
        "genlab": genlab_step("genlab", batch),
        "hf": hf_step("hf", {"input_ids": ids, "labels": ids}),
        "genlab_packed": genlab_step("genlab_packed", packed),
        "hf_packed_flat": hf_step("hf_packed_flat", flat),
        "hf_packed_rows": hf_step("hf_packed_rows", hf_rows),
        "genlab_packed_compiled": genlab_step("genlab_packed_compiled", packed),
    }
    cpu: dict[str, list[float]] = {k: [] for k in names}

    def cpu_timed(name, fn):  # also record the process's CPU seconds (both threads) per step
        def step():
            c0 = time.process_time()
            fn()
            cpu[name].append(time.process_time() - c0)

        return step

    # every configuration in turns, so that machine noise falls on all alike
    times = interleaved_times([cpu_timed(n, fns[n]) for n in names], p["warmup"], p["steps"])
    peak = measure_peak(cfg, V, R * L, reps=3 if quick else 5, prior=peak)

    rows_lens = [L] * R
    packed_lens = (packed.cu_seqlens[1:] - packed.cu_seqlens[:-1]).tolist()
    flops = {n: train_flops(cfg, V, rows_lens if n in ("genlab", "hf") else packed_lens) for n in names}
    tokens = {n: R * L if n in ("genlab", "hf") else packed.n_real for n in names}
    results = {}
    for name, ts in zip(names, times):
        med = median(ts)
        f_full, f_causal = flops[name]
        cpu_med = median(cpu[name][p["warmup"] :])
        results[name] = {
            "step_times_s": [round(t, 4) for t in ts],
            "median_step_s": med,
            "tokens_per_step": tokens[name],
            "tokens_per_s": tokens[name] / med,
            "median_cpu_s": cpu_med,
            "tokens_per_cpu_s": tokens[name] / cpu_med,
            "gflops": f_full / med / 1e9,
            "gflops_causal": f_causal / med / 1e9,
            "mfu": f_full / med / 1e9 / peak["peak_gflops"],
            "mfu_causal": f_causal / med / 1e9 / peak["peak_gflops"],
            "loss_first": losses[name][0],
            "loss_last": losses[name][-1],
        }
    t_idx = {n: i for i, n in enumerate(names)}

    def ratio(a: str, b: str) -> dict:
        """tokens/s of a over b: ratio of medians, median of per-round ratios, ratio of CPU seconds."""
        ta, tb = times[t_idx[a]], times[t_idx[b]]
        per_round = [(tokens[a] / x) / (tokens[b] / y) for x, y in zip(ta, tb)]
        return {
            "medians": results[a]["tokens_per_s"] / results[b]["tokens_per_s"],
            "paired": median(per_round),
            "cpu": results[a]["tokens_per_cpu_s"] / results[b]["tokens_per_cpu_s"],
        }

    best_hf_packed = max(HF_PACKED, key=lambda n: results[n]["tokens_per_s"])
    ratios = {
        "genlab_vs_hf": ratio("genlab", "hf"),
        "packed_vs_fixed": ratio("genlab_packed", "genlab"),
        "packed_vs_hf_packed": ratio("genlab_packed", best_hf_packed),
        "packed_vs_hf_packed_flat": ratio("genlab_packed", "hf_packed_flat"),
        "packed_vs_hf_packed_rows": ratio("genlab_packed", "hf_packed_rows"),
    }
    if "genlab_packed_compiled" in names:
        ratios["compiled_vs_eager_packed"] = ratio("genlab_packed_compiled", "genlab_packed")
    results["genlab_packed"].update(
        n_sequences=len(packed_lens),
        real_fraction=packed.real_fraction,
        seq_len_mean=sum(packed_lens) / len(packed_lens),
        seq_len_median=median(packed_lens),
        seq_len_max=max(packed_lens),
        mix=f"log-normal lengths, median {p['mix_median']} tokens, sigma {MIX['sigma']}, clipped to [4, {8 * L}]; "
        f"packed by genlab's best-fit-decreasing into {R} rows of {L}",
    )
    ftok = flops_per_token(cfg, V, L)
    out = {
        "benchmark": "train",
        "quick": quick,
        "machine": machine_info(),
        "shape": {k: p[k] for k in ("d_model", "n_layer", "n_head", "ffn_hidden", "vocab", "rows", "seq_len")},
        "dtype": "float32",
        "threads": THREADS,
        "warmup_steps": p["warmup"],
        "timed_steps": p["steps"],
        "optimizer": {"name": "torch.optim.AdamW", **{k: v for k, v in OPTIM.items()}, "no_decay": "vectors"},
        "flops_per_token": {
            "train": ftok["train_flops_per_token"],
            "train_causal": flops["genlab"][1] / (R * L),
            "note": "train = genlab.train.flops (attention over the full context); "
            "train_causal counts the (L+1)/2 keys a causal query sees",
        },
        "peak": peak,
        "equivalence": {
            "max_abs_logit_diff": logit_diff,
            "max_abs_logit": logit_scale,
            "tolerance": LOGIT_TOL,
            "ok": logit_diff <= LOGIT_TOL,
            "loss_first_diff": abs(results["genlab"]["loss_first"] - results["hf"]["loss_first"]),
            "loss_last_diff": abs(results["genlab"]["loss_last"] - results["hf"]["loss_last"]),
            "packed_loss_first_diff": max(
                abs(results["genlab_packed"]["loss_first"] - results[n]["loss_first"]) for n in HF_PACKED
            ),
        },
        "results": results,
        "ratios": ratios,
        "best_hf_packed": best_hf_packed,
        "ratio_genlab_vs_hf": ratios["genlab_vs_hf"]["medians"],
        "target_ratio": TARGET_RATIO,
        "target_met": ratios["genlab_vs_hf"]["medians"] >= TARGET_RATIO,
        "ratio_paired_median": ratios["genlab_vs_hf"]["paired"],
        "ratio_cpu_time": ratios["genlab_vs_hf"]["cpu"],
        "targets": {"genlab_vs_hf": TARGET_RATIO, "packed_vs_fixed": 0.95, "packed_vs_hf_packed": 1.3},
        "versions": {"torch": torch.__version__, "transformers": _transformers_version()},
    }
    _report(out)
    return out


def _transformers_version() -> str:
    import transformers

    return transformers.__version__


def _report(r: dict) -> None:
    s, res, pk = r["shape"], r["results"], r["peak"]
    hf_tps = res["hf"]["tokens_per_s"]
    gp = res["genlab_packed"]
    labels = {
        "hf": f"HF LlamaForCausalLM (sdpa), {s['rows']} rows x {s['seq_len']}",
        "genlab": f"genlab, {s['rows']} single-document rows x {s['seq_len']}",
        "genlab_packed": f"genlab, {s['rows']} packed rows ({gp['n_sequences']} documents), varlen",
        "hf_packed_flat": "HF padding-free: DataCollatorWithFlattening, 1 row (sdpa, position_ids)",
        "hf_packed_rows": f"HF padding-free per packed row: {s['rows']} rows (sdpa, position_ids)",
        "genlab_packed_compiled": "genlab packed, train.compile (inductor C++, per block, dynamic)",
    }
    rows = []
    for name in res:
        x = res[name]
        rows.append(
            [
                labels[name],
                f"{x['median_step_s']:.3f}",
                f"{x['median_cpu_s']:.2f}",
                f"{x['tokens_per_step']}",
                f"{x['tokens_per_s']:,.0f}",
                f"{x['tokens_per_s'] / hf_tps:.2f}x",
                f"{x['gflops']:.1f}",
                f"{100 * x['mfu']:.1f}%",
                f"{100 * x['mfu_causal']:.1f}%",
                f"{x['loss_first']:.5f} -> {x['loss_last']:.5f}",
            ]
        )
    m = r["machine"]
    print_table(
        f"genlab bench train: d{s['d_model']} x {s['n_layer']} layers, {s['n_head']} heads, "
        f"SwiGLU {s['ffn_hidden']}, vocab {s['vocab']}; fp32, {r['threads']} threads, "
        f"median of {r['timed_steps']} interleaved steps ({m['cpu']}, torch {m['torch']})",
        [
            "configuration",
            "step s",
            "CPU s",
            "tokens",
            "tokens/s",
            "vs HF",
            "GFLOP/s",
            "MFU",
            "MFU causal",
            "loss first -> last",
        ],
        rows,
    )
    print(
        f"packed mix: {gp['mix']}; {gp['n_sequences']} documents, length median {gp['seq_len_median']:.0f}, "
        f"mean {gp['seq_len_mean']:.0f}, max {gp['seq_len_max']}; {100 * gp['real_fraction']:.2f}% real tokens"
    )
    print_table(
        f"fp32 GEMM peak over the model's shapes: best {pk['peak_gflops']:.1f} GFLOP/s "
        f"({pk['peak_shape']}), FLOP-weighted mix {pk['weighted_gflops']:.1f} GFLOP/s",
        ["GEMM (m x k x n)", "per step", "GFLOP/s"],
        [[f"{x['shape']} ({x['m']}x{x['k']}x{x['n']})", x["count"], f"{x['gflops']:.1f}"] for x in pk["shapes"]],
    )
    eq = r["equivalence"]
    print(
        f"same function: max |logit diff| {eq['max_abs_logit_diff']:.2e} (logits up to "
        f"{eq['max_abs_logit']:.2f}; tolerance {eq['tolerance']:g}) -> {'ok' if eq['ok'] else 'MISMATCH'}; "
        f"loss diff first step {eq['loss_first_diff']:.1e}, last step {eq['loss_last_diff']:.1e}; "
        f"packed: first-step loss diff genlab vs HF padding-free {eq['packed_loss_first_diff']:.1e}"
    )
    print(
        f"FLOPs/token (training): {r['flops_per_token']['train'] / 1e6:.1f} M full-context attention, "
        f"{r['flops_per_token']['train_causal'] / 1e6:.1f} M causal"
    )
    tg = r["targets"]
    for key, label in (
        ("genlab_vs_hf", "genlab / HF, fixed rows"),
        ("packed_vs_fixed", "genlab packed / genlab fixed rows"),
        ("packed_vs_hf_packed", f"genlab packed / HF padding-free (best: {r['best_hf_packed']})"),
        ("packed_vs_hf_packed_flat", "genlab packed / HF DataCollatorWithFlattening"),
        ("compiled_vs_eager_packed", "genlab packed, compiled / eager"),
    ):
        if key not in r["ratios"]:
            continue
        x = r["ratios"][key]
        target = f" (target >= {tg[key]})" if key in tg else ""
        print(
            f"{label}: tokens/s {x['medians']:.3f}{target}; per-round {x['paired']:.3f}, CPU time {x['cpu']:.3f}",
            flush=True,
        )
    print(f"load average at the end {m.get('load_avg_1m', '?')}", flush=True)
