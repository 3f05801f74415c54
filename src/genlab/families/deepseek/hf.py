"""The deepseek family's Hugging Face state-dict adapter: genlab names <-> DeepseekV3ForCausalLM names
(per-expert keys as the hub checkpoints; the balance bias as mlp.gate.e_score_correction_bias, fp32;
MTP module k as model.layers.{num_hidden_layers + k}.*), and the config.json it is described by."""

from __future__ import annotations

import torch

from genlab.families.lm.hf import take as _take

DS_ATTN = {
    "wq": "q_proj",
    "wq_a": "q_a_proj",
    "q_norm": "q_a_layernorm",
    "wq_b": "q_b_proj",
    "wkv_a": "kv_a_proj_with_mqa",
    "kv_norm": "kv_a_layernorm",
    "wkv_b": "kv_b_proj",
    "wo": "o_proj",
}


def _block_to_hf(sd: dict, src: str, dst: str, out: dict, F: int) -> None:
    """One genlab deepseek block (prefix src) -> HF decoder-layer keys (prefix dst)."""
    out[f"{dst}input_layernorm.weight"] = sd[f"{src}attn_norm.weight"]
    out[f"{dst}post_attention_layernorm.weight"] = sd[f"{src}mlp_norm.weight"]
    for g, h in DS_ATTN.items():
        if f"{src}attn.{g}.weight" in sd:
            out[f"{dst}self_attn.{h}.weight"] = sd[f"{src}attn.{g}.weight"]
    if f"{src}mlp.gate" in sd:  # MoE
        out[f"{dst}mlp.gate.weight"] = sd[f"{src}mlp.gate"].float()
        out[f"{dst}mlp.gate.e_score_correction_bias"] = sd[f"{src}mlp.bias"].float()
        w13, w2 = sd[f"{src}mlp.w13"], sd[f"{src}mlp.w2"]
        for e in range(w13.shape[0]):
            p = f"{dst}mlp.experts.{e}."
            out[p + "gate_proj.weight"], out[p + "up_proj.weight"] = w13[e, :F], w13[e, F:]
            out[p + "down_proj.weight"] = w2[e]
        if f"{src}mlp.shared.down.weight" in sd:
            gu = sd[f"{src}mlp.shared.gate_up.weight"]
            half = gu.shape[0] // 2
            out[f"{dst}mlp.shared_experts.gate_proj.weight"] = gu[:half]
            out[f"{dst}mlp.shared_experts.up_proj.weight"] = gu[half:]
            out[f"{dst}mlp.shared_experts.down_proj.weight"] = sd[f"{src}mlp.shared.down.weight"]
    else:
        gu = sd[f"{src}mlp.gate_up.weight"]
        half = gu.shape[0] // 2
        out[f"{dst}mlp.gate_proj.weight"], out[f"{dst}mlp.up_proj.weight"] = gu[:half], gu[half:]
        out[f"{dst}mlp.down_proj.weight"] = sd[f"{src}mlp.down.weight"]


def deepseek_to_hf(sd: dict, cfg) -> dict:
    sd = {k: v.detach().contiguous() for k, v in sd.items()}
    L, F = cfg.n_layer, cfg.moe_intermediate_size
    out = {
        "model.embed_tokens.weight": sd["embed.weight"],
        "model.norm.weight": sd["norm.weight"],
        "lm_head.weight": sd["head.weight"],
    }
    for i in range(L):
        _block_to_hf(sd, f"blocks.{i}.", f"model.layers.{i}.", out, F)
    for k in range(cfg.mtp_depth):
        src, dst = f"mtp.{k}.", f"model.layers.{L + k}."
        _block_to_hf(sd, f"{src}block.", dst, out, F)
        for name in ("enorm.weight", "hnorm.weight", "eh_proj.weight"):
            out[dst + name] = sd[src + name]
        out[dst + "shared_head.norm.weight"] = sd[src + "norm.weight"]
        out[dst + "embed_tokens.weight"] = sd["embed.weight"].clone()  # duplicates, as released
        out[dst + "shared_head.head.weight"] = sd["head.weight"].clone()
    return {k: v.contiguous().clone() for k, v in out.items()}  # own storage each (safetensors refuses sharing)


def _block_from_hf(sd: dict, src: str, dst: str, out: dict, moe: bool, path) -> None:
    out[f"{dst}attn_norm.weight"] = _take(sd, f"{src}input_layernorm.weight", path)
    out[f"{dst}mlp_norm.weight"] = _take(sd, f"{src}post_attention_layernorm.weight", path)
    for g, h in DS_ATTN.items():
        if f"{src}self_attn.{h}.weight" in sd:
            out[f"{dst}attn.{g}.weight"] = sd.pop(f"{src}self_attn.{h}.weight")
    if moe:
        out[f"{dst}mlp.gate"] = _take(sd, f"{src}mlp.gate.weight", path).float()
        out[f"{dst}mlp.bias"] = sd.pop(
            f"{src}mlp.gate.e_score_correction_bias", torch.zeros(out[f"{dst}mlp.gate"].shape[0])
        ).float()
        if f"{src}mlp.experts.gate_up_proj" in sd:  # transformers v5 fused layout
            out[f"{dst}mlp.w13"] = sd.pop(f"{src}mlp.experts.gate_up_proj")
            out[f"{dst}mlp.w2"] = sd.pop(f"{src}mlp.experts.down_proj")
        else:
            E = out[f"{dst}mlp.gate"].shape[0]
            p = f"{src}mlp.experts."
            out[f"{dst}mlp.w13"] = torch.stack(
                [
                    torch.cat((_take(sd, f"{p}{e}.gate_proj.weight", path), _take(sd, f"{p}{e}.up_proj.weight", path)))
                    for e in range(E)
                ]
            )
            out[f"{dst}mlp.w2"] = torch.stack([_take(sd, f"{p}{e}.down_proj.weight", path) for e in range(E)])
        if f"{src}mlp.shared_experts.gate_proj.weight" in sd:
            out[f"{dst}mlp.shared.gate_up.weight"] = torch.cat(
                (sd.pop(f"{src}mlp.shared_experts.gate_proj.weight"), sd.pop(f"{src}mlp.shared_experts.up_proj.weight"))
            )
            out[f"{dst}mlp.shared.down.weight"] = _take(sd, f"{src}mlp.shared_experts.down_proj.weight", path)
    else:
        out[f"{dst}mlp.gate_up.weight"] = torch.cat(
            (_take(sd, f"{src}mlp.gate_proj.weight", path), _take(sd, f"{src}mlp.up_proj.weight", path))
        )
        out[f"{dst}mlp.down.weight"] = _take(sd, f"{src}mlp.down_proj.weight", path)


def deepseek_from_hf(sd: dict, cfg, path) -> dict:
    L = cfg.n_layer
    out = {
        "embed.weight": _take(sd, "model.embed_tokens.weight", path),
        "norm.weight": _take(sd, "model.norm.weight", path),
    }
    out["head.weight"] = sd.pop("lm_head.weight", out["embed.weight"])
    for i in range(L):
        _block_from_hf(sd, f"model.layers.{i}.", f"blocks.{i}.", out, i >= cfg.first_k_dense_replace, path)
    for k in range(cfg.mtp_depth):
        src, dst = f"model.layers.{L + k}.", f"mtp.{k}."
        _block_from_hf(sd, src, f"{dst}block.", out, True, path)
        for name in ("enorm.weight", "hnorm.weight", "eh_proj.weight"):
            out[dst + name] = _take(sd, src + name, path)
        out[dst + "norm.weight"] = _take(sd, src + "shared_head.norm.weight", path)
    return out


def deepseek_hf_config(cfg, vocab: int) -> dict:
    m = cfg.model
    rope = {"rope_type": "default", "rope_theta": m.rope_theta}
    if m.rope_scaling == "yarn":
        rope = {
            "rope_type": "yarn",
            "rope_theta": m.rope_theta,
            "factor": m.rope_factor,
            "original_max_position_embeddings": m.rope_original_max_position_embeddings,
            "beta_fast": m.rope_beta_fast,
            "beta_slow": m.rope_beta_slow,
            "mscale": m.rope_mscale,
            "mscale_all_dim": m.rope_mscale_all_dim,
        }
    v4_scaling = (
        None if m.rope_scaling != "yarn" else {**{k: v for k, v in rope.items() if k != "rope_type"}, "type": "yarn"}
    )
    return {
        "architectures": ["DeepseekV3ForCausalLM"],
        "model_type": "deepseek_v3",
        "vocab_size": vocab,
        "hidden_size": m.d_model,
        "intermediate_size": m.ffn_width(),
        "moe_intermediate_size": m.moe_intermediate_size,
        "num_hidden_layers": m.n_layer,
        "num_attention_heads": m.n_head,
        "num_key_value_heads": m.n_head,
        "n_shared_experts": m.n_shared_experts,
        "n_routed_experts": m.n_routed_experts,
        "routed_scaling_factor": m.routed_scaling_factor,
        "kv_lora_rank": m.kv_lora_rank,
        "q_lora_rank": m.q_lora_rank or None,
        "qk_rope_head_dim": m.qk_rope_head_dim,
        "v_head_dim": m.v_head_dim,
        "qk_nope_head_dim": m.qk_nope_head_dim,
        "n_group": m.n_group,
        "topk_group": m.topk_group,
        "num_experts_per_tok": m.num_experts_per_tok,
        "first_k_dense_replace": m.first_k_dense_replace,
        "norm_topk_prob": True,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.data.packing_length
        if m.rope_scaling != "yarn"
        else int(m.rope_original_max_position_embeddings * m.rope_factor),
        "initializer_range": m.init_std,
        "rms_norm_eps": m.norm_eps,
        "tie_word_embeddings": m.tie_embeddings,
        "rope_interleave": True,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "use_cache": True,
        "rope_parameters": rope,
        "rope_theta": m.rope_theta,
        "rope_scaling": v4_scaling,
        "num_nextn_predict_layers": m.mtp_depth,
        "scoring_func": "sigmoid",
        "topk_method": "noaux_tc",
        "aux_loss_alpha": m.balance_alpha,
        "seq_aux": m.balance == "seq_aux" or (m.balance == "aux_free" and m.balance_alpha > 0),
        "torch_dtype": "float32",
        "bos_token_id": None,
        "eos_token_id": None,
    }
