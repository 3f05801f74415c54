"""Config of the deepseek family: DeepSeek-V3's MLA, DeepSeekMoE and MTP (Hugging Face
DeepseekV3Config names where there is one). d_model, n_layer, n_head, ffn_hidden (the dense
layers' SwiGLU width), rope_theta, norm_eps, tie_embeddings, init_std and attn_backend come from
the dense decoder's args."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from genlab.config import opt
from genlab.errors import GenlabError
from genlab.families.lm.args import DecoderArgs
from genlab.train.flops import LayerShapes, mla_shapes, moe_shapes, swiglu_shapes


@dataclass
class DeepSeekArgs(DecoderArgs):
    arch: Literal["deepseek"] = opt("deepseek", "MLA + DeepSeekMoE + MTP")
    q_lora_rank: int = opt(0, "MLA: query latent rank; 0 = a plain query projection", 0)
    kv_lora_rank: int = opt(64, "MLA: the cached KV latent width", 1)
    qk_nope_head_dim: int = opt(32, "MLA: per-head query/key dims without RoPE", 0)
    qk_rope_head_dim: int = opt(16, "MLA: per-head query dims with RoPE (+ one shared rope key)", 2)
    v_head_dim: int = opt(32, "MLA: per-head value dims", 1)
    n_routed_experts: int = opt(8, "MoE: routed experts", 1)
    n_shared_experts: int = opt(1, "MoE: always-on experts (one SwiGLU of n x moe_intermediate_size)", 0)
    moe_intermediate_size: int = opt(64, "MoE: each expert's SwiGLU width", 1)
    num_experts_per_tok: int = opt(2, "MoE: routed experts per token (top-k)", 1)
    n_group: int = opt(1, "MoE: expert groups for group-limited routing", 1)
    topk_group: int = opt(1, "MoE: groups each token may use", 1)
    routed_scaling_factor: float = opt(1.0, "MoE: gates are multiplied by this", 0.0, 1000.0)
    first_k_dense_replace: int = opt(1, "the first k layers use a dense SwiGLU (ffn_hidden)", 0)
    balance: Literal["aux_free", "seq_aux", "aux", "none"] = opt(
        "aux_free", "load balancing: aux_free (bias; + sequence-wise loss if balance_alpha > 0), seq_aux, aux, none"
    )
    balance_gamma: float = opt(0.001, "aux_free: bias update speed; 0 freezes the bias", 0.0, 1.0)
    balance_gamma_until: int = opt(0, "aux_free: optimizer step from which gamma is 0; 0 = never", 0)
    balance_gamma_schedule: Literal["constant", "lr"] = opt(
        "constant", "aux_free: gamma constant or following the lr schedule"
    )
    balance_alpha: float = opt(0.0, "balance-loss weight (seq_aux: per packed row, aux: per micro-batch)", 0.0, 100.0)
    mtp_depth: int = opt(0, "multi-token prediction modules D (0 = none)", 0, 16)
    mtp_lambda: float = opt(0.3, "loss = main + lambda / D * sum of MTP losses", 0.0, 100.0)
    mtp_lambda_late: float = opt(0.1, "lambda from step mtp_lambda_until on", 0.0, 100.0)
    mtp_lambda_until: int = opt(0, "step where lambda becomes mtp_lambda_late; 0 = lambda stays mtp_lambda", 0)
    rope_scaling: Literal["none", "yarn"] = opt(
        "none", "YaRN context extension on the rope dims (softmax scale x mscale^2)"
    )
    rope_factor: float = opt(40.0, "yarn: context extension factor s", 1.0, 1e6)
    rope_original_max_position_embeddings: int = opt(4096, "yarn: the pre-extension context", 1)
    rope_beta_fast: float = opt(32.0, "yarn: beta_fast", 0.0)
    rope_beta_slow: float = opt(1.0, "yarn: beta_slow", 0.0)
    rope_mscale: float = opt(1.0, "yarn: cos/sin scaled by mscale(s, mscale) / mscale(s, mscale_all_dim)", 0.0, 100.0)
    rope_mscale_all_dim: float = opt(1.0, "yarn: softmax scale x mscale(s, mscale_all_dim)^2", 0.0, 100.0)

    def check(self, cfg) -> None:
        m = self
        if cfg.train.objective != "causal":
            raise GenlabError(
                f"train.objective = {cfg.train.objective!r} needs model.arch = 'transformer'; deepseek runs are causal"
            )
        if m.qk_rope_head_dim % 2:
            raise GenlabError(f"model.qk_rope_head_dim = {m.qk_rope_head_dim} must be even (RoPE rotates pairs)")
        if m.num_experts_per_tok > m.n_routed_experts:
            raise GenlabError(
                f"model.num_experts_per_tok ({m.num_experts_per_tok}) must be <= "
                f"model.n_routed_experts ({m.n_routed_experts})"
            )
        if m.n_routed_experts % m.n_group:
            raise GenlabError(
                f"model.n_routed_experts ({m.n_routed_experts}) must be divisible by model.n_group ({m.n_group})"
            )
        if m.topk_group > m.n_group:
            raise GenlabError(f"model.topk_group ({m.topk_group}) must be <= model.n_group ({m.n_group})")
        per_group = m.n_routed_experts // m.n_group
        if m.topk_group * per_group < m.num_experts_per_tok:
            raise GenlabError(
                f"model.topk_group x experts per group = {m.topk_group * per_group} "
                f"must be >= model.num_experts_per_tok ({m.num_experts_per_tok})"
            )
        if m.first_k_dense_replace > m.n_layer:
            raise GenlabError(
                f"model.first_k_dense_replace ({m.first_k_dense_replace}) must be <= model.n_layer ({m.n_layer})"
            )
        if m.balance in ("seq_aux", "aux") and m.balance_alpha <= 0:
            raise GenlabError(f"model.balance = {m.balance!r} needs model.balance_alpha > 0 (e.g. 1e-3)")

    def layer_shapes(self) -> list[LayerShapes]:
        """MLA everywhere; dense SwiGLU in the first k layers, MoE after (MTP, train-time only, not counted)."""
        d = self.d_model
        attn = mla_shapes(
            d,
            self.n_head,
            self.q_lora_rank,
            self.kv_lora_rank,
            self.qk_nope_head_dim,
            self.qk_rope_head_dim,
            self.v_head_dim,
        )
        dense = attn + swiglu_shapes(d, self.ffn_width())
        moe = attn + moe_shapes(
            d, self.moe_intermediate_size, self.num_experts_per_tok, self.n_shared_experts, self.n_routed_experts
        )
        k = min(self.first_k_dense_replace, self.n_layer)
        return [dense] * k + [moe] * (self.n_layer - k)
