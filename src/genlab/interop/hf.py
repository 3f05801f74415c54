"""Hugging Face interoperability: a state-dict adapter, not HF-shaped internals.

    export_hf(run_dir, out)      genlab deepseek run -> config.json (model_type deepseek_v3, native field
                                 names) + model.safetensors with HF key names (per-expert keys as the hub
                                 checkpoints; the balance bias as mlp.gate.e_score_correction_bias, fp32;
                                 MTP module k as model.layers.{num_hidden_layers + k}.*) + tokenizer.json
    import_hf(hf_dir, out)       deepseek_v3 or dense Llama-style directory -> a genlab run dir
    from_pretrained(path)        a genlab run dir or an HF directory -> (model, tokenizer)
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from genlab.config import RunConfig
from genlab.errors import GenlabError

DS_ATTN = {"wq": "q_proj", "wq_a": "q_a_proj", "q_norm": "q_a_layernorm", "wq_b": "q_b_proj",
           "wkv_a": "kv_a_proj_with_mqa", "kv_norm": "kv_a_layernorm", "wkv_b": "kv_b_proj", "wo": "o_proj"}
DENSE_TYPES = ("llama", "mistral", "qwen2")


# ---------------------------------------------------------------------------- deepseek keys
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
    out = {"model.embed_tokens.weight": sd["embed.weight"], "model.norm.weight": sd["norm.weight"],
           "lm_head.weight": sd["head.weight"]}
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


def _take(sd: dict, key: str, path) -> torch.Tensor:
    if key not in sd:
        raise GenlabError(f"{path}: the checkpoint lacks {key!r}; is it a complete {path.name} export?")
    return sd.pop(key)


def _block_from_hf(sd: dict, src: str, dst: str, out: dict, moe: bool, path) -> None:
    out[f"{dst}attn_norm.weight"] = _take(sd, f"{src}input_layernorm.weight", path)
    out[f"{dst}mlp_norm.weight"] = _take(sd, f"{src}post_attention_layernorm.weight", path)
    for g, h in DS_ATTN.items():
        if f"{src}self_attn.{h}.weight" in sd:
            out[f"{dst}attn.{g}.weight"] = sd.pop(f"{src}self_attn.{h}.weight")
    if moe:
        out[f"{dst}mlp.gate"] = _take(sd, f"{src}mlp.gate.weight", path).float()
        out[f"{dst}mlp.bias"] = sd.pop(f"{src}mlp.gate.e_score_correction_bias",
                                       torch.zeros(out[f"{dst}mlp.gate"].shape[0])).float()
        if f"{src}mlp.experts.gate_up_proj" in sd:  # transformers v5 fused layout
            out[f"{dst}mlp.w13"] = sd.pop(f"{src}mlp.experts.gate_up_proj")
            out[f"{dst}mlp.w2"] = sd.pop(f"{src}mlp.experts.down_proj")
        else:
            E = out[f"{dst}mlp.gate"].shape[0]
            p = f"{src}mlp.experts."
            out[f"{dst}mlp.w13"] = torch.stack([torch.cat((_take(sd, f"{p}{e}.gate_proj.weight", path),
                                                           _take(sd, f"{p}{e}.up_proj.weight", path))) for e in range(E)])
            out[f"{dst}mlp.w2"] = torch.stack([_take(sd, f"{p}{e}.down_proj.weight", path) for e in range(E)])
        if f"{src}mlp.shared_experts.gate_proj.weight" in sd:
            out[f"{dst}mlp.shared.gate_up.weight"] = torch.cat((sd.pop(f"{src}mlp.shared_experts.gate_proj.weight"),
                                                                sd.pop(f"{src}mlp.shared_experts.up_proj.weight")))
            out[f"{dst}mlp.shared.down.weight"] = _take(sd, f"{src}mlp.shared_experts.down_proj.weight", path)
    else:
        out[f"{dst}mlp.gate_up.weight"] = torch.cat((_take(sd, f"{src}mlp.gate_proj.weight", path),
                                                     _take(sd, f"{src}mlp.up_proj.weight", path)))
        out[f"{dst}mlp.down.weight"] = _take(sd, f"{src}mlp.down_proj.weight", path)


def deepseek_from_hf(sd: dict, cfg, path) -> dict:
    L = cfg.n_layer
    out = {"embed.weight": _take(sd, "model.embed_tokens.weight", path),
           "norm.weight": _take(sd, "model.norm.weight", path)}
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


# ---------------------------------------------------------------------------- configs
def deepseek_hf_config(cfg: RunConfig, vocab: int) -> dict:
    m = cfg.model
    from genlab.models.transformer import ffn_width

    rope = {"rope_type": "default", "rope_theta": m.rope_theta}
    if m.rope_scaling == "yarn":
        rope = {"rope_type": "yarn", "rope_theta": m.rope_theta, "factor": m.rope_factor,
                "original_max_position_embeddings": m.rope_original_max_position_embeddings,
                "beta_fast": m.rope_beta_fast, "beta_slow": m.rope_beta_slow, "mscale": m.rope_mscale,
                "mscale_all_dim": m.rope_mscale_all_dim}
    v4_scaling = None if m.rope_scaling != "yarn" else {**{k: v for k, v in rope.items() if k != "rope_type"},
                                                         "type": "yarn"}
    return {
        "architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3", "vocab_size": vocab,
        "hidden_size": m.d_model, "intermediate_size": ffn_width(m), "moe_intermediate_size": m.moe_intermediate_size,
        "num_hidden_layers": m.n_layer, "num_attention_heads": m.n_head, "num_key_value_heads": m.n_head,
        "n_shared_experts": m.n_shared_experts, "n_routed_experts": m.n_routed_experts,
        "routed_scaling_factor": m.routed_scaling_factor, "kv_lora_rank": m.kv_lora_rank,
        "q_lora_rank": m.q_lora_rank or None, "qk_rope_head_dim": m.qk_rope_head_dim, "v_head_dim": m.v_head_dim,
        "qk_nope_head_dim": m.qk_nope_head_dim, "n_group": m.n_group, "topk_group": m.topk_group,
        "num_experts_per_tok": m.num_experts_per_tok, "first_k_dense_replace": m.first_k_dense_replace,
        "norm_topk_prob": True, "hidden_act": "silu", "max_position_embeddings": cfg.data.packing_length
        if m.rope_scaling != "yarn" else int(m.rope_original_max_position_embeddings * m.rope_factor),
        "initializer_range": m.init_std, "rms_norm_eps": m.norm_eps, "tie_word_embeddings": m.tie_embeddings,
        "rope_interleave": True, "attention_bias": False, "attention_dropout": 0.0, "use_cache": True,
        "rope_parameters": rope, "rope_theta": m.rope_theta, "rope_scaling": v4_scaling,
        "num_nextn_predict_layers": m.mtp_depth, "scoring_func": "sigmoid", "topk_method": "noaux_tc",
        "aux_loss_alpha": m.balance_alpha, "seq_aux": m.balance == "seq_aux" or (m.balance == "aux_free"
                                                                                  and m.balance_alpha > 0),
        "torch_dtype": "float32", "bos_token_id": None, "eos_token_id": None,
    }


def _cfg_from_hf(hc: dict, path: Path) -> RunConfig:
    cfg = RunConfig()
    m = cfg.model
    mt = hc.get("model_type")
    if mt != "deepseek_v3" and mt not in DENSE_TYPES:
        raise GenlabError(f"{path}: model_type {mt!r} is not supported; allowed: deepseek_v3, "
                          f"{', '.join(DENSE_TYPES)}")

    def need(key):
        if key not in hc:
            raise GenlabError(f"{path}/config.json lacks {key!r} (model_type {mt!r})")
        return hc[key]

    m.d_model, m.n_layer, m.n_head = need("hidden_size"), need("num_hidden_layers"), need("num_attention_heads")
    m.ffn_hidden, m.norm_eps = need("intermediate_size"), float(hc.get("rms_norm_eps", 1e-6))
    m.tie_embeddings = bool(hc.get("tie_word_embeddings", False))
    m.init_std = float(hc.get("initializer_range", 0.02))
    rope = hc.get("rope_parameters") or {}
    scaling = hc.get("rope_scaling") or {}
    m.rope_theta = float(rope.get("rope_theta", hc.get("rope_theta", 10000.0)))
    cfg.data.packing_length = min(int(hc.get("max_position_embeddings", 2048)), 4096)
    if mt == "deepseek_v3":
        m.arch = "deepseek"
        for key in ("kv_lora_rank", "qk_rope_head_dim", "v_head_dim", "qk_nope_head_dim", "n_routed_experts",
                    "moe_intermediate_size", "num_experts_per_tok", "n_group", "topk_group", "first_k_dense_replace"):
            setattr(m, key, int(need(key)))
        m.q_lora_rank = int(hc.get("q_lora_rank") or 0)
        m.n_shared_experts = int(hc.get("n_shared_experts") or 0)
        m.routed_scaling_factor = float(hc.get("routed_scaling_factor", 1.0))
        m.mtp_depth = int(hc.get("num_nextn_predict_layers") or 0)
        y = rope if rope.get("rope_type") == "yarn" else scaling if scaling.get("type") == "yarn" else None
        if y:
            m.rope_scaling, m.rope_factor = "yarn", float(y["factor"])
            m.rope_original_max_position_embeddings = int(y.get("original_max_position_embeddings", 4096))
            m.rope_beta_fast, m.rope_beta_slow = float(y.get("beta_fast", 32)), float(y.get("beta_slow", 1))
            m.rope_mscale, m.rope_mscale_all_dim = float(y.get("mscale", 1)), float(y.get("mscale_all_dim", 0))
        if hc.get("rope_interleave") is False:
            raise GenlabError(f"{path}: rope_interleave = false is not supported (genlab's MLA rotates pairs)")
    elif mt in DENSE_TYPES:
        m.arch = "transformer"
        m.n_kv_head = int(hc.get("num_key_value_heads") or m.n_head)
        if hc.get("head_dim") not in (None, m.d_model // m.n_head):
            raise GenlabError(f"{path}: head_dim {hc['head_dim']} != hidden_size / num_attention_heads")
        if (scaling or rope).get("rope_type", (scaling or {}).get("type", "default")) not in ("default", None):
            raise GenlabError(f"{path}: rope scaling {(scaling or rope)} is not supported for dense models")
    else:
        raise GenlabError(f"{path}: model_type {mt!r} is not supported; allowed: deepseek_v3, "
                          f"{', '.join(DENSE_TYPES)}")
    return cfg


def dense_from_hf(sd: dict, cfg, path) -> dict:
    out = {"embed.weight": _take(sd, "model.embed_tokens.weight", path),
           "norm.weight": _take(sd, "model.norm.weight", path)}
    out["head.weight"] = sd.pop("lm_head.weight", out["embed.weight"])
    for i in range(cfg.n_layer):
        s, d = f"model.layers.{i}.", f"blocks.{i}."
        out[d + "attn_norm.weight"] = _take(sd, s + "input_layernorm.weight", path)
        out[d + "mlp_norm.weight"] = _take(sd, s + "post_attention_layernorm.weight", path)
        out[d + "attn.qkv.weight"] = torch.cat([_take(sd, f"{s}self_attn.{n}_proj.weight", path) for n in "qkv"])
        out[d + "attn.proj.weight"] = _take(sd, s + "self_attn.o_proj.weight", path)
        out[d + "mlp.gate_up.weight"] = torch.cat((_take(sd, s + "mlp.gate_proj.weight", path),
                                                   _take(sd, s + "mlp.up_proj.weight", path)))
        out[d + "mlp.down.weight"] = _take(sd, s + "mlp.down_proj.weight", path)
    return out


# ---------------------------------------------------------------------------- directories
def _read_hf(path: str | Path):
    """(RunConfig, genlab state dict, tokenizer, vocab) from an HF directory."""
    from safetensors.torch import load_file

    p = Path(path)
    if not (p / "config.json").is_file():
        raise GenlabError(f"{p} is neither a genlab run dir (config.toml) nor a Hugging Face directory (config.json)")
    try:
        hc = json.loads((p / "config.json").read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise GenlabError(f"{p}/config.json is not valid JSON") from None
    if not isinstance(hc, dict):
        raise GenlabError(f"{p}/config.json must hold a JSON object")
    try:
        cfg = _cfg_from_hf(hc, p)
    except (TypeError, ValueError, KeyError) as e:
        raise GenlabError(f"{p}/config.json has a malformed field ({type(e).__name__}: {e})") from None
    files = sorted(p.glob("*.safetensors"))
    if not files:
        raise GenlabError(f"{p}: no *.safetensors weights (PyTorch .bin checkpoints are not read)")
    sd = {}
    for f in files:
        try:
            sd.update(load_file(str(f)))
        except Exception as e:  # safetensors raises its own error types
            raise GenlabError(f"{f}: cannot be read as safetensors ({str(e).splitlines()[0][:120]})") from None
    sd = {k: v.float() if v.is_floating_point() else v for k, v in sd.items()}
    tok = _hf_tokenizer(p, int(hc.get("vocab_size", 0)))
    m = cfg.model
    while m.mtp_depth and f"model.layers.{m.n_layer + m.mtp_depth - 1}.eh_proj.weight" not in sd:
        m.mtp_depth -= 1  # num_nextn_predict_layers without the weights (e.g. saved by transformers): no MTP
    state = (deepseek_from_hf if cfg.model.arch == "deepseek" else dense_from_hf)(sd, cfg.model, p)
    if cfg.data.tokenizer == "bpe":
        cfg.data.vocab_size = max(260, int(hc["vocab_size"]))
    cfg.data.tokenizer = "byte" if tok.__class__.__name__ == "ByteTokenizer" else "bpe"
    cfg.validate()
    return cfg, state, tok, int(hc["vocab_size"])


def _hf_tokenizer(p: Path, vocab: int):
    from genlab.data.tokenizer import ByteTokenizer, load_tokenizer

    if (p / "tokenizer.json").is_file():
        return load_tokenizer(p / "tokenizer.json")
    if vocab == 256:
        return ByteTokenizer()
    raise GenlabError(f"{p}: no tokenizer.json (only a vocab of 256 falls back to the byte tokenizer)")


def _build(cfg, state, vocab):
    from genlab.models import build_lm

    model = build_lm(cfg.model, vocab, cfg.data.packing_length)
    own = model.state_dict()
    state = {k: v for k, v in state.items() if k in own or not k.startswith("mtp.")}
    missing = [k for k in own if k not in state and k != "steps_done"]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        raise GenlabError(f"weights do not match the config (missing {missing[:3]}, unexpected {unexpected[:3]})")
    for k, v in state.items():
        if own[k].shape != v.shape:
            raise GenlabError(f"weight {k} has shape {tuple(v.shape)}, the config implies {tuple(own[k].shape)}")
    model.load_state_dict(state, strict=False)
    return model.eval()


def import_hf(hf_dir: str | Path, out: str | Path) -> Path:
    """A genlab run dir (config.toml, tokenizer.json, one checkpoint) from an HF directory."""
    from genlab.train import checkpoint
    from genlab.train.rundir import RunDir

    cfg, state, tok, vocab = _read_hf(hf_dir)
    cfg.preset = ""
    run = RunDir.plan(cfg, out)
    model = _build(cfg, state, vocab)  # every check before the run dir exists

    class _Artifacts:
        def save_artifacts(self, path):
            tok.save(Path(path) / "tokenizer.json")

    run.create(cfg, _Artifacts())
    import random

    from genlab.train.optim import build_optimizer

    # a complete step-0 training state, so `genlab train --out RUN --resume` fine-tunes the imported model
    state = {"step": 0, "data_state": [0, 0], "tokens_seen": 0, "imported_from": str(hf_dir),
             "optimizer": build_optimizer(model, cfg.train).state_dict(), "torch_rng": torch.get_rng_state(),
             "python_rng": list(random.getstate()[1])}
    checkpoint.save(run.path, 0, model, state, keep=1)
    run.set_status("imported", 0)
    return run.path


def export_hf(run_dir: str | Path, out: str | Path) -> Path:
    from safetensors.torch import save_file

    from genlab.commands import load_run

    run, cfg, task, model = load_run(str(run_dir))
    if cfg.model.arch != "deepseek":
        raise GenlabError(f"{run.path}: export --format hf supports model.arch = deepseek (this run is "
                          f"{cfg.model.arch!r})")
    o = Path(out)
    if o.exists() and (not o.is_dir() or any(o.iterdir())):
        raise GenlabError(f"{o} already exists and is not empty; choose another output directory")
    sd = deepseek_to_hf(model.state_dict(), cfg.model)
    tmp = o.with_name(o.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    (tmp / "config.json").write_text(json.dumps(deepseek_hf_config(cfg, model.vocab_size), indent=2) + "\n")
    save_file(sd, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    shutil.copy(run.path / "tokenizer.json", tmp / "tokenizer.json")
    if o.exists():
        o.rmdir()
    tmp.rename(o)
    return o


def from_pretrained(path: str | Path):
    """(model in eval mode, tokenizer) from a genlab run dir or a Hugging Face directory."""
    p = Path(path)
    if (p / "config.toml").is_file():
        from genlab.commands import load_run

        _, _, task, model = load_run(str(p))
        return model, task.tokenizer
    cfg, state, tok, vocab = _read_hf(p)
    return _build(cfg, state, vocab), tok
