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
