"""The lm family's Hugging Face state-dict adapter: Llama-style checkpoints (llama, mistral, qwen2)
<-> the dense Transformer's names."""

from __future__ import annotations

import torch

from genlab.errors import GenlabError

DENSE_TYPES = ("llama", "mistral", "qwen2")


def take(sd: dict, key: str, path) -> torch.Tensor:
    if key not in sd:
        raise GenlabError(f"{path}: the checkpoint lacks {key!r}; is it a complete {path.name} export?")
    return sd.pop(key)


def dense_from_hf(sd: dict, cfg, path) -> dict:
    out = {
        "embed.weight": take(sd, "model.embed_tokens.weight", path),
        "norm.weight": take(sd, "model.norm.weight", path),
    }
    out["head.weight"] = sd.pop("lm_head.weight", out["embed.weight"])
    for i in range(cfg.n_layer):
        s, d = f"model.layers.{i}.", f"blocks.{i}."
        out[d + "attn_norm.weight"] = take(sd, s + "input_layernorm.weight", path)
        out[d + "mlp_norm.weight"] = take(sd, s + "post_attention_layernorm.weight", path)
        out[d + "attn.qkv.weight"] = torch.cat([take(sd, f"{s}self_attn.{n}_proj.weight", path) for n in "qkv"])
        out[d + "attn.proj.weight"] = take(sd, s + "self_attn.o_proj.weight", path)
        out[d + "mlp.gate_up.weight"] = torch.cat(
            (take(sd, s + "mlp.gate_proj.weight", path), take(sd, s + "mlp.up_proj.weight", path))
        )
        out[d + "mlp.down.weight"] = take(sd, s + "mlp.down_proj.weight", path)
    return out


# ---------------------------------------------------------------------------- export (genlab -> HF)
def dense_to_hf(sd: dict, cfg) -> dict:
    """The dense Transformer's state dict -> LlamaForCausalLM key names. genlab's RoPE rotates halves
    (pairs (x[i], x[i + D/2])) as HF Llama's rotate_half does, so the q/k rows need no permutation;
    the fused qkv and gate_up projections are split. Tied embeddings: no lm_head.weight."""
    kv = cfg.n_kv_head or cfg.n_head
    hd = cfg.d_model // cfg.n_head
    F = cfg.ffn_width()
    out = {"model.embed_tokens.weight": sd["embed.weight"], "model.norm.weight": sd["norm.weight"]}
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = sd["head.weight"]
    for i in range(cfg.n_layer):
        s, d = f"blocks.{i}.", f"model.layers.{i}."
        out[d + "input_layernorm.weight"] = sd[s + "attn_norm.weight"]
        out[d + "post_attention_layernorm.weight"] = sd[s + "mlp_norm.weight"]
        q, k, v = sd[s + "attn.qkv.weight"].split([cfg.n_head * hd, kv * hd, kv * hd])
        out[d + "self_attn.q_proj.weight"], out[d + "self_attn.k_proj.weight"] = q, k
        out[d + "self_attn.v_proj.weight"] = v
        out[d + "self_attn.o_proj.weight"] = sd[s + "attn.proj.weight"]
        gate, up = sd[s + "mlp.gate_up.weight"].split([F, F])
        out[d + "mlp.gate_proj.weight"], out[d + "mlp.up_proj.weight"] = gate, up
        out[d + "mlp.down_proj.weight"] = sd[s + "mlp.down.weight"]
    return {k: v.contiguous() for k, v in out.items()}


def dense_hf_config(cfg, vocab: int) -> dict:
    """config.json of a LlamaForCausalLM equal to this dense run. Refuses (GenlabError naming the
    option) what Llama cannot express: the LSTM/GRU baselines."""
    m = cfg.model
    if m.arch != "transformer":
        raise GenlabError(
            f"model.arch = {m.arch!r} has no Hugging Face Llama equivalent; export --format hf supports "
            "model.arch = transformer and deepseek"
        )
    rope = {"rope_type": "default", "rope_theta": float(m.rope_theta)}
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": vocab,
        "hidden_size": m.d_model,
        "intermediate_size": m.ffn_width(),
        "num_hidden_layers": m.n_layer,
        "num_attention_heads": m.n_head,
        "num_key_value_heads": m.n_kv_head or m.n_head,
        "head_dim": m.d_model // m.n_head,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.data.packing_length,
        "initializer_range": m.init_std,
        "rms_norm_eps": m.norm_eps,
        "tie_word_embeddings": m.tie_embeddings,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "pretraining_tp": 1,
        "use_cache": True,
        "rope_parameters": rope,  # transformers 5.x
        "rope_theta": float(m.rope_theta),  # transformers 4.x
        "rope_scaling": None,
        "torch_dtype": "float32",
        "dtype": "float32",
    }
