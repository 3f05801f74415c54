"""FLOPs accounting: DeepSeek LLM's M formula exactly, GQA/MLA/MoE against the built models'
own weight shapes, the paper's Table 3 ratios, and MFU in the training metrics."""

import json
from pathlib import Path

import pytest

from genlab.config import resolve
from genlab.families.lm.args import LMArgs
from genlab.train.flops import (
    LayerShapes,
    attention_shapes,
    deepseek_M,
    flops_from_layers,
    flops_per_token,
    mla_shapes,
    moe_shapes,
    swiglu_shapes,
)


@pytest.mark.parametrize("n_layer,d,l_seq", [(2, 96, 64), (8, 384, 4096), (12, 768, 4096), (30, 3072, 2048)])
def test_dense_M_equals_the_formula_exactly(n_layer, d, l_seq):
    # MHA and a SwiGLU exactly 8/3 d wide: the case DeepSeek LLM's Eq. 2 describes
    cfg = LMArgs(d_model=d, n_layer=n_layer, n_head=d // 32, ffn_hidden=8 * d // 3)
    fl = flops_per_token(cfg, vocab_size=1000, seq_len=l_seq)
    assert fl["M"] == deepseek_M(n_layer, d, l_seq) == 72 * n_layer * d * d + 12 * n_layer * d * l_seq
    assert fl["6N1"] == 72 * n_layer * d * d
    assert fl["6N2"] == 72 * n_layer * d * d + 6 * 1000 * d


def test_paper_table3_ratios():
    # DeepSeek LLM Table 3 (l_seq 4096, vocab 102400): (n_layer, d) -> M, 6N1/M, 6N2/M
    table = [
        (8, 512, 352e6, 0.43, 1.32),
        (12, 768, 963e6, 0.53, 1.02),
        (24, 1024, 3.02e9, 0.60, 0.81),
        (24, 2048, 9.66e9, 0.75, 0.88),
        (40, 5120, 85.6e9, 0.88, 0.92),
        (80, 8192, 419e9, 0.92, 0.94),
    ]
    for n, d, M, r1, r2 in table:
        m = deepseek_M(n, d, 4096)
        assert abs(m / M - 1) < 0.005
        assert round(72 * n * d * d / m, 2) == r1
        assert round((72 * n * d * d + 6 * 102400 * d) / m, 2) == r2


def _block_matmul_params(model) -> int:
    """Weight elements of every 2-D parameter inside the blocks (the reference N1)."""
    return sum(p.numel() for n, p in model.named_parameters() if n.startswith("blocks.") and p.dim() >= 2)


def test_gqa_counts_match_the_built_model():
    from genlab.families import build_lm

    cfg = LMArgs(d_model=96, n_layer=3, n_head=6, n_kv_head=2, ffn_hidden=200)
    model = build_lm(cfg, 300, 64)
    fl = flops_per_token(cfg, 300, 64)
    assert fl["N1"] == _block_matmul_params(model)
    assert fl["N2"] == fl["N1"] + 300 * 96
    # attention widths stay n_head * head_dim: 2 * (QK + PV) * l_seq per layer, times 3 for training
    assert fl["M"] == 3 * (2 * fl["N1"] + 3 * 2 * (96 + 96) * 64)
    mha = flops_per_token(LMArgs(d_model=96, n_layer=3, n_head=6, ffn_hidden=200), 300, 64)
    assert mha["N1"] - fl["N1"] == 3 * 2 * 96 * (6 - 2) * 16  # K and V projections shrink 3x


def test_deepseek_arch_counts_activated_experts_only():
    from genlab.families import build_lm

    cfg = resolve("deepseek-tiny", None, [])
    m = cfg.model
    model = build_lm(m, 256, cfg.data.packing_length)
    total = _block_matmul_params(model)
    n_moe = m.n_layer - m.first_k_dense_replace
    unused = n_moe * (m.n_routed_experts - m.num_experts_per_tok) * 3 * m.d_model * m.moe_intermediate_size
    fl = flops_per_token(m, 256, cfg.data.packing_length)
    assert fl["N1"] == total - unused


def test_mla_and_moe_shapes_by_hand():
    # q_lora 16, kv_lora 8, nope 4, rope 2, v 3, d 10, 2 heads
    s = mla_shapes(10, 2, 16, 8, 4, 2, 3)
    assert s.matmul_params == 10 * 16 + 16 * 2 * 6 + 10 * (8 + 2) + 8 * 2 * (4 + 3) + 2 * 3 * 10
    assert (s.attn_qk, s.attn_v) == (12, 6)
    assert mla_shapes(10, 2, 0, 8, 4, 2, 3).matmul_params == 10 * 12 + 10 * 10 + 8 * 14 + 60
    assert moe_shapes(10, 5, top_k=2, n_shared=1, n_routed=7).matmul_params == 3 * 3 * 10 * 5 + 10 * 7
    # DeepSeek-V3 671B: 37B activated parameters per token (with embedding and head)
    d, V = 7168, 129280
    attn = mla_shapes(d, 128, 1536, 512, 128, 64, 128)
    layers = [attn + swiglu_shapes(d, 18432)] * 3 + [attn + moe_shapes(d, 2048, 8, 1, 256)] * 58
    fl = flops_from_layers(layers, d, V, 4096)
    assert abs((fl["N2"] + V * d) / 37e9 - 1) < 0.03


def test_layer_shapes_add_and_match_dense_attention():
    a = attention_shapes(64, 4, 4, 16) + swiglu_shapes(64, 100)
    assert a == LayerShapes(4 * 64 * 64 + 3 * 64 * 100, 64, 64)


def test_trainer_reports_mfu_from_M(tiny_overrides, tiny_corpus, tmp_path):
    from genlab.train.trainer import train

    cfg = resolve(None, None, tiny_overrides(tiny_corpus, steps=4, extra=["train.peak_flops=1e9"]))
    run, _ = train(cfg, tmp_path / "r", progress=False, log=lambda *a: None)
    recs = [json.loads(l) for l in Path(run.path, "metrics.jsonl").read_text().splitlines()]
    M = flops_per_token(cfg.model, 0, cfg.data.packing_length)["M"]
    timed = [r for r in recs if "tokens_per_s" in r]
    assert timed and all(r["mfu"] == pytest.approx(M * r["tokens_per_s"] / 1e9) for r in timed)


def test_measured_peak_is_a_plausible_rate():
    from genlab.train.flops import measured_peak_flops

    peak = measured_peak_flops("cpu")
    assert 1e8 < peak < 1e14
    assert measured_peak_flops("cpu") == peak  # measured once per process
