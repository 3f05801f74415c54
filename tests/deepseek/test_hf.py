"""Hugging Face interop: a tiny random DeepseekV3ForCausalLM and genlab give the same logits (fp32,
1e-4) in both directions; dense Llama import; export layout; bad input."""

import json

import pytest
import torch

from genlab.errors import GenlabError

transformers = pytest.importorskip("transformers")


def hf_config(yarn=False, q_lora_rank=16):
    rope = {"rope_type": "default", "rope_theta": 10000.0}
    if yarn:
        rope = {
            "rope_type": "yarn",
            "rope_theta": 10000.0,
            "factor": 4.0,
            "original_max_position_embeddings": 16,
            "beta_fast": 32.0,
            "beta_slow": 1.0,
            "mscale": 0.9,
            "mscale_all_dim": 0.8,
        }
    return transformers.DeepseekV3Config(
        vocab_size=256,
        hidden_size=32,
        intermediate_size=64,
        moe_intermediate_size=16,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=4,
        n_shared_experts=1,
        n_routed_experts=8,
        routed_scaling_factor=2.5,
        kv_lora_rank=16,
        q_lora_rank=q_lora_rank,
        qk_rope_head_dim=8,
        v_head_dim=8,
        qk_nope_head_dim=8,
        n_group=4,
        topk_group=2,
        num_experts_per_tok=3,
        first_k_dense_replace=1,
        max_position_embeddings=64,
        rms_norm_eps=1e-6,
        rope_parameters=rope,
        tie_word_embeddings=False,
    )


def hf_model(cfg, seed=0):
    torch.manual_seed(seed)
    m = transformers.DeepseekV3ForCausalLM(cfg).float().eval()
    with torch.no_grad():
        for _name, p in m.named_parameters():
            p.normal_(std=0.15) if p.dim() >= 2 else p.normal_(1.0, 0.1)
        for layer in m.model.layers[cfg.first_k_dense_replace :]:
            layer.mlp.gate.e_score_correction_bias.normal_(std=0.05)  # selection bias, fp32
    return m


def genlab_logits(model, ids):
    T = ids.shape[0]
    h = model(ids, torch.arange(T), torch.tensor([0, T], dtype=torch.int32), T)
    return model.head(h)


@pytest.mark.parametrize("yarn,q_lora_rank", [(False, 16), (True, None)])
def test_hf_to_genlab_same_logits(tmp_path, yarn, q_lora_rank):
    import genlab

    hf = hf_model(hf_config(yarn, q_lora_rank))
    hf.save_pretrained(tmp_path / "hf")
    ids = torch.randint(0, 256, (20,))
    with torch.no_grad():
        ref = hf(ids[None]).logits[0]
        model, tok = genlab.from_pretrained(tmp_path / "hf")
        got = genlab_logits(model, ids)
    assert tok.vocab_size == 256
    assert (got - ref).abs().max() < 1e-4, (got - ref).abs().max()
    # and through `genlab import` to a run dir, then from_pretrained on the run dir
    from genlab.cli import main

    assert main(["import", str(tmp_path / "hf"), str(tmp_path / "run")]) == 0
    model2, _ = genlab.from_pretrained(tmp_path / "run")
    with torch.no_grad():
        assert torch.allclose(genlab_logits(model2, ids), got, atol=1e-6)


def test_genlab_export_loads_in_transformers_with_same_logits(tiny_overrides, tmp_path, tiny_corpus):
    from genlab.cli import main
    from genlab.config import resolve
    from genlab.interop.hf import from_pretrained
    from genlab.train.trainer import train

    sets = tiny_overrides(
        tiny_corpus,
        steps=3,
        extra=[
            "model.arch=deepseek",
            "model.q_lora_rank=16",
            "model.kv_lora_rank=16",
            "model.qk_nope_head_dim=8",
            "model.qk_rope_head_dim=4",
            "model.v_head_dim=8",
            "model.ffn_hidden=64",
            "model.n_routed_experts=4",
            "model.num_experts_per_tok=2",
            "model.n_group=2",
            "model.topk_group=1",
            "model.moe_intermediate_size=16",
            "model.mtp_depth=1",
            "model.balance_gamma=0.0123",
            "model.routed_scaling_factor=1.5",
        ],
    )
    run, _ = train(resolve(None, None, sets), tmp_path / "run", progress=False, log=lambda *a: None)
    assert main(["export", str(run.path), str(tmp_path / "hf"), "--format", "hf"]) == 0
    hc = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert hc["model_type"] == "deepseek_v3" and hc["num_nextn_predict_layers"] == 1
    from safetensors import safe_open

    with safe_open(str(tmp_path / "hf" / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
        bias = f.get_tensor("model.layers.1.mlp.gate.e_score_correction_bias")
    assert bias.dtype == torch.float32 and bias.abs().sum() > 0
    assert "model.layers.2.eh_proj.weight" in keys and "model.layers.2.shared_head.head.weight" in keys
    assert "model.layers.1.mlp.experts.3.down_proj.weight" in keys
    model, _ = from_pretrained(run.path)
    hf = transformers.DeepseekV3ForCausalLM.from_pretrained(tmp_path / "hf").float().eval()
    assert torch.equal(hf.model.layers[1].mlp.gate.e_score_correction_bias, model.blocks[1].mlp.bias)
    ids = torch.randint(0, 256, (30,))
    with torch.no_grad():
        assert (hf(ids[None]).logits[0] - genlab_logits(model, ids)).abs().max() < 1e-4
    assert main(["export", str(run.path), str(tmp_path / "hf")]) == 2  # output exists: refused


def test_llama_import_same_logits(tmp_path):
    import genlab

    cfg = transformers.LlamaConfig(
        vocab_size=256,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        rms_norm_eps=1e-5,
        max_position_embeddings=64,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(cfg).float().eval()
    hf.save_pretrained(tmp_path / "llama")
    model, _ = genlab.from_pretrained(tmp_path / "llama")
    ids = torch.randint(0, 256, (17,))
    with torch.no_grad():
        assert (hf(ids[None]).logits[0] - genlab_logits(model, ids)).abs().max() < 1e-4


def test_bad_hf_directories_give_one_line_errors(tmp_path, capsys):
    from genlab.cli import main
    from genlab.interop.hf import from_pretrained

    with pytest.raises(GenlabError, match="neither"):
        from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text('{"model_type": "gpt2"}')
    with pytest.raises(GenlabError, match="not supported"):
        from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    assert main(["import", str(tmp_path), str(tmp_path / "out")]) == 2
    assert "not valid JSON" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
