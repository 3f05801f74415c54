"""Presets of the deepseek family (`genlab presets`)."""

from __future__ import annotations

from genlab.config import Preset

_PRESETS = {
    "deepseek-tiny": (
        "DeepSeek-V3 in small: MLA + 16-expert MoE (top-4, aux-loss-free) + 1 MTP module, 4 x 128, BPE 2048",
        {
            "data": {"tokenizer": "bpe", "vocab_size": 2048, "packing_length": 256},
            "model": {
                "arch": "deepseek",
                "d_model": 128,
                "n_layer": 4,
                "n_head": 4,
                "ffn_hidden": 384,
                "q_lora_rank": 64,
                "kv_lora_rank": 32,
                "qk_nope_head_dim": 32,
                "qk_rope_head_dim": 16,
                "v_head_dim": 32,
                "n_routed_experts": 16,
                "n_shared_experts": 1,
                "moe_intermediate_size": 64,
                "num_experts_per_tok": 4,
                "n_group": 4,
                "topk_group": 2,
                "routed_scaling_factor": 1.0,
                "first_k_dense_replace": 1,
                "balance": "aux_free",
                "balance_gamma": 0.001,
                "mtp_depth": 1,
                "mtp_lambda": 0.3,
                "tie_embeddings": False,
            },
            "train": {
                "steps": 300,
                "batch_rows": 8,
                "lr": 2e-3,
                "warmup_steps": 30,
                "eval_every": 100,
                "eval_batches": 16,
                "ckpt_every": 100,
            },
        },
    ),
    "deepseek-v3-671b": (
        "the published DeepSeek-V3 configuration (671B total, 37B activated); for `genlab info` and export",
        {
            "data": {"tokenizer": "bpe", "vocab_size": 129280, "packing_length": 4096},
            "model": {
                "arch": "deepseek",
                "d_model": 7168,
                "n_layer": 61,
                "n_head": 128,
                "ffn_hidden": 18432,
                "q_lora_rank": 1536,
                "kv_lora_rank": 512,
                "qk_nope_head_dim": 128,
                "qk_rope_head_dim": 64,
                "v_head_dim": 128,
                "n_routed_experts": 256,
                "n_shared_experts": 1,
                "moe_intermediate_size": 2048,
                "num_experts_per_tok": 8,
                "n_group": 8,
                "topk_group": 4,
                "routed_scaling_factor": 2.5,
                "first_k_dense_replace": 3,
                "balance": "aux_free",
                "balance_gamma": 0.001,
                "balance_alpha": 1e-4,
                "mtp_depth": 1,
                "mtp_lambda": 0.3,
                "norm_eps": 1e-6,
                "init_std": 0.006,
                "rope_theta": 10000.0,
                "rope_scaling": "yarn",
                "rope_factor": 40.0,
                "rope_original_max_position_embeddings": 4096,
            },
            "train": {"steps": 1000, "batch_rows": 1, "lr": 2.2e-4, "warmup_steps": 2000},
        },
    ),
}

PRESETS = tuple(Preset(name, desc, settings) for name, (desc, settings) in _PRESETS.items())
