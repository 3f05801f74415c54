"""MLA: interleaved RoPE, document masking on packed rows, the absorbed latent-cache decode against
the full recompute, YaRN frequencies, and the deepseek model family end to end."""

import math

import pytest
import torch

from genlab.ops.rope import apply_rope_interleaved, rope_table

from .helpers import build, ds_cfg


def test_interleaved_rope_is_complex_multiplication():
    x = torch.randn(5, 3, 8)
    cos, sin = rope_table(16, 8, 10000.0)
    pos = torch.tensor([0, 3, 7, 1, 15])
    got = apply_rope_interleaved(x, cos[pos], sin[pos])
    z = torch.view_as_complex(x.view(5, 3, 4, 2))
    rot = torch.polar(torch.ones(5, 4), torch.atan2(sin[pos], cos[pos]))[:, None, :]
    assert torch.allclose(got, torch.view_as_real(z * rot).flatten(-2), atol=1e-6)


def _fwd(model, ids, lens):
    cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32)
    pos = torch.cat([torch.arange(n) for n in lens])
    return model(ids, pos, cu, max(lens))


@pytest.mark.parametrize("q_lora_rank", [0, 24])
def test_packed_documents_do_not_see_each_other(q_lora_rank):
    model = build(q_lora_rank=q_lora_rank)
    a, b = torch.randint(0, 50, (7,)), torch.randint(0, 50, (5,))
    packed = _fwd(model, torch.cat([a, b]), [7, 5])
    assert torch.allclose(packed[:7], _fwd(model, a, [7]), atol=1e-5)
    assert torch.allclose(packed[7:], _fwd(model, b, [5]), atol=1e-5)


@pytest.mark.parametrize("rope_scaling", ["none", "yarn"])
def test_absorbed_latent_cache_equals_naive_attention(rope_scaling):
    model = build(
        rope_scaling=rope_scaling,
        rope_factor=4.0,
        rope_original_max_position_embeddings=8,
        rope_mscale=0.8,
        rope_mscale_all_dim=0.7,
    )
    ids = torch.randint(0, 50, (11,))
    ref = _fwd(model, ids, [11])  # naive: full recompute, per-head K/V, the attention backend
    for mode in ("latent", "full"):
        cache = model.new_cache(16, mode)
        outs = [model(ids[:4], torch.arange(4), torch.tensor([0, 4], dtype=torch.int32), 4, cache)]  # a prompt
        for t in range(4, 11):
            outs.append(model(ids[t : t + 1], torch.tensor([t]), torch.tensor([0, 1], dtype=torch.int32), 1, cache))
        assert torch.allclose(torch.cat(outs), ref, atol=1e-4), (mode, (torch.cat(outs) - ref).abs().max())


def test_latent_cache_is_smaller_and_greedy_text_identical():
    from genlab.generate import SamplingSettings, generate

    model = build()
    lat, full = model.new_cache(8, "latent"), model.new_cache(8, "full")
    m = model.cfg
    assert lat.bytes_per_token() == 2 * (m.kv_lora_rank + m.qk_rope_head_dim) * 4
    assert full.bytes_per_token() == 2 * m.n_head * (m.qk_nope_head_dim + m.qk_rope_head_dim + m.v_head_dim) * 4
    a = list(generate(model, [1, 2, 3], SamplingSettings(12, temperature=0), use_cache=True))
    b = list(generate(model, [1, 2, 3], SamplingSettings(12, temperature=0), use_cache=False))
    assert a == b


def test_softmax_scale_and_yarn_mscale():
    from genlab.families.deepseek.mla import softmax_scale

    cfg = ds_cfg(qk_nope_head_dim=128, qk_rope_head_dim=64).model
    assert abs(softmax_scale(cfg) - 192**-0.5) < 1e-12
    cfg.rope_scaling, cfg.rope_factor, cfg.rope_mscale_all_dim = "yarn", 40.0, 1.0
    assert abs(softmax_scale(cfg) / 192**-0.5 - (0.1 * math.log(40) + 1) ** 2) < 1e-9


def test_deepseek_config_errors_name_the_problem():
    from genlab.errors import GenlabError

    for kw, word in [
        ({"num_experts_per_tok": 9}, "n_routed_experts"),
        ({"n_group": 3}, "divisible"),
        ({"topk_group": 3}, "n_group"),
        ({"qk_rope_head_dim": 5}, "even"),
        ({"balance": "seq_aux", "balance_alpha": 0.0}, "balance_alpha"),
    ]:
        with pytest.raises(GenlabError, match=word):
            ds_cfg(**kw)


def test_info_671b_preset_on_meta_device(capsys):
    from genlab.cli import main

    assert main(["info", "deepseek-v3-671b"]) == 0
    out = capsys.readouterr().out
    assert "671.0B" in out and "37.6B activated" not in out and "(671.0B / 37.6B" in out
    assert "decode cache/token    70,272 bytes" in out  # 61 layers x (512 + 64) x 2 bytes
