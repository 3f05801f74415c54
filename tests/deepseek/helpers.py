"""The tiny DeepSeek model the MLA and MTP tests share."""

import torch

from genlab.config import RunConfig
from genlab.families import build_lm
from genlab.families.deepseek.args import DeepSeekArgs


def ds_cfg(**kw):
    cfg = RunConfig(model=DeepSeekArgs())
    m = cfg.model
    m.arch, m.d_model, m.n_layer, m.n_head = "deepseek", 32, 2, 4
    m.q_lora_rank, m.kv_lora_rank, m.qk_nope_head_dim, m.qk_rope_head_dim, m.v_head_dim = 24, 16, 8, 4, 6
    m.n_routed_experts, m.num_experts_per_tok, m.moe_intermediate_size, m.n_group, m.topk_group = 8, 2, 16, 2, 1
    m.first_k_dense_replace, m.ffn_hidden = 1, 48
    for k, v in kw.items():
        setattr(m, k, v)
    return cfg.validate()


def build(seed=0, vocab=50, **kw):
    torch.manual_seed(seed)
    model = build_lm(ds_cfg(**kw).model, vocab, 64)
    with torch.no_grad():  # larger than the training init so differences would show
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(std=0.2)
    return model.eval()
