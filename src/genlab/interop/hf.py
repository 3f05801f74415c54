"""Hugging Face interoperability: whole directories in and out, through each family's state-dict
adapter (families/deepseek/hf.py, families/lm/hf.py), not HF-shaped internals.

    export_hf(run_dir, out)      genlab LM run -> an HF directory. Dense Transformer runs: LlamaForCausalLM
                                 (config.json model_type llama, families/lm/hf.py). Deepseek runs:
                                 config.json (model_type deepseek_v3, native field names) + HF key names
                                 (per-expert keys as the hub checkpoints; the balance bias as
                                 mlp.gate.e_score_correction_bias, fp32; MTP module k as
                                 model.layers.{num_hidden_layers + k}.*). Both: model.safetensors (or
                                 shards + model.safetensors.index.json above shard_size), tokenizer.json /
                                 tokenizer_config.json / special_tokens_map.json (hf_tokenizer.py),
                                 generation_config.json. Refused: LSTM/GRU, masked / any-order objectives.
    import_hf(hf_dir, out)       deepseek_v3 or dense Llama-style directory -> a genlab run dir
    load_lm(path, device)        a genlab LM run dir or an HF directory -> (config, model, tokenizer, chat template)
    from_pretrained(path)        the same as (model, tokenizer); genlab.from_pretrained wraps load_lm in a
                                 Pretrained object (interop/pretrained.py)
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from genlab.config import RunConfig
from genlab.data.tokenizer import ByteTokenizer, load_tokenizer
from genlab.errors import GenlabError
from genlab.families import build_lm
from genlab.families.deepseek.args import DeepSeekArgs
from genlab.families.deepseek.hf import deepseek_from_hf, deepseek_hf_config, deepseek_to_hf
from genlab.families.lm.args import LMArgs
from genlab.families.lm.hf import DENSE_TYPES, dense_from_hf, dense_hf_config, dense_to_hf
from genlab.interop.hf_tokenizer import (
    CHAT_TEMPLATE_FILES,
    chat_template,
    generation_config,
    hf_chat_template,
    is_byte_level_export,
    tokenizer_files,
)
from genlab.train import checkpoint
from genlab.train.init_from import import_cache_dir
from genlab.train.optim import build_optimizer
from genlab.train.rundir import CONFIG, RunDir, load_run

DEFAULT_SHARD_SIZE = "2GB"


def _cfg_from_hf(hc: dict, path: Path) -> RunConfig:
    mt = hc.get("model_type")
    if mt != "deepseek_v3" and mt not in DENSE_TYPES:
        raise GenlabError(f"{path}: model_type {mt!r} is not supported; allowed: deepseek_v3, {', '.join(DENSE_TYPES)}")
    cfg = RunConfig(model=DeepSeekArgs() if mt == "deepseek_v3" else LMArgs())
    m = cfg.model

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
        for key in (
            "kv_lora_rank",
            "qk_rope_head_dim",
            "v_head_dim",
            "qk_nope_head_dim",
            "n_routed_experts",
            "moe_intermediate_size",
            "num_experts_per_tok",
            "n_group",
            "topk_group",
            "first_k_dense_replace",
        ):
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
    else:
        m.n_kv_head = int(hc.get("num_key_value_heads") or m.n_head)
        if hc.get("head_dim") not in (None, m.d_model // m.n_head):
            raise GenlabError(f"{path}: head_dim {hc['head_dim']} != hidden_size / num_attention_heads")
        if (scaling or rope).get("rope_type", (scaling or {}).get("type", "default")) not in ("default", None):
            raise GenlabError(f"{path}: rope scaling {(scaling or rope)} is not supported for dense models")
    return cfg


# ---------------------------------------------------------------------------- directories
def _read_hf(path: str | Path):
    """(RunConfig, genlab state dict, tokenizer, vocab) from an HF directory."""
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
    while (
        m.arch == "deepseek" and m.mtp_depth and f"model.layers.{m.n_layer + m.mtp_depth - 1}.eh_proj.weight" not in sd
    ):
        m.mtp_depth -= 1  # num_nextn_predict_layers without the weights (e.g. saved by transformers): no MTP
    state = (deepseek_from_hf if cfg.model.arch == "deepseek" else dense_from_hf)(sd, cfg.model, p)
    if cfg.data.tokenizer == "bpe":
        cfg.data.vocab_size = max(260, int(hc["vocab_size"]))
    cfg.data.tokenizer = "byte" if tok.__class__.__name__ == "ByteTokenizer" else "bpe"
    cfg.validate()
    return cfg, state, tok, int(hc["vocab_size"])


def _hf_tokenizer(p: Path, vocab: int):
    if (p / "tokenizer.json").is_file():
        try:
            tj = json.loads((p / "tokenizer.json").read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise GenlabError(f"{p}/tokenizer.json is not valid JSON") from None
        if is_byte_level_export(tj):  # genlab's byte tokenizer as exported: ids = byte values
            return ByteTokenizer()
        return load_tokenizer(p / "tokenizer.json")
    if vocab == 256:
        return ByteTokenizer()
    raise GenlabError(f"{p}: no tokenizer.json (only a vocab of 256 falls back to the byte tokenizer)")


def _build(cfg, state, vocab):
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
    cfg, state, tok, vocab = _read_hf(hf_dir)
    cfg.preset = ""
    RunDir.plan(cfg, out)
    model = _build(cfg, state, vocab)  # every check before the run dir exists
    return write_run_dir(cfg, model, tok, out, hf_chat_template(Path(hf_dir)), str(hf_dir))


def import_for_init(src: str | Path, log=print) -> Path:
    """`genlab train --init-from HF_DIR`: the HF directory imported once into the cache
    (genlab.train.init_from.import_cache_dir); returns the genlab run dir."""
    out = import_cache_dir(src)
    if (out / CONFIG).is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f"{out.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    log(f"importing {src} (Hugging Face) into {out}")
    try:
        import_hf(src, tmp)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def write_run_dir(cfg, model, tok, out: str | Path, template: str | None = None, source: str = "") -> Path:
    """A new genlab run dir at `out` holding `model` (weights saved as fp32, the master precision): config,
    tokenizer, the chat template, and a complete step-0 training state, so `genlab train --out RUN
    --resume` fine-tunes it. Used by `genlab import` and `Pretrained.save_pretrained`."""
    run = RunDir.plan(cfg, out)

    class _Artifacts:
        def save_artifacts(self, path):
            tok.save(Path(path) / "tokenizer.json")
            if template is not None:  # kept for the next export
                (Path(path) / CHAT_TEMPLATE_FILES[0]).write_text(template, encoding="utf-8")

    if any(p.dtype != torch.float32 or p.device.type != "cpu" for p in model.parameters()):
        model = _fp32_cpu_copy(cfg, model)
    run.create(cfg, _Artifacts())
    state = {
        "step": 0,
        "data_state": [0, 0],
        "tokens_seen": 0,
        "imported_from": source,
        "optimizer": build_optimizer(model, cfg.train).state_dict(),
        "torch_rng": torch.get_rng_state(),
        "python_rng": list(random.getstate()[1]),
    }
    checkpoint.save(run.path, 0, model, state, keep=1)
    run.set_status("imported", 0)
    return run.path


def _fp32_cpu_copy(cfg, model):
    """A new fp32 model on the CPU with `model`'s weights (a bf16 / fp64 / CUDA model is saved as fp32)."""
    copy = build_lm(cfg.model, model.vocab_size, cfg.data.packing_length, causal=_causal(cfg))
    copy.load_state_dict({k: v.detach().float().cpu() for k, v in model.state_dict().items()})
    return copy.eval()


def _causal(cfg) -> bool:
    return getattr(cfg.train, "objective", "causal") == "causal"


def parse_size(text: str | int) -> int:
    """Bytes from 123, "500KB", "2GB", "1.5GiB" (KB/MB/GB decimal as the hub's max_shard_size, KiB/MiB/GiB binary)."""
    if isinstance(text, int):
        n = text
    else:
        t = text.strip().upper().removesuffix("B")
        mult = 1
        for suffix, m in (("KI", 1 << 10), ("MI", 1 << 20), ("GI", 1 << 30), ("K", 1000), ("M", 10**6), ("G", 10**9)):
            if t.endswith(suffix):
                t, mult = t[: -len(suffix)], m
                break
        try:
            n = int(float(t) * mult)
        except ValueError:
            raise GenlabError(f"--shard-size {text!r} is not a size (e.g. 2GB, 500MB, 1048576)") from None
    if n < 1:
        raise GenlabError(f"--shard-size {text!r} must be at least 1 byte")
    return n


def save_sharded(sd: dict, out: Path, shard_size: int) -> list[str]:
    """model.safetensors, or model-0000i-of-0000n.safetensors + model.safetensors.index.json when the
    weights exceed `shard_size` bytes (tensors in order, a new shard when the next would overflow)."""
    shards, cur, cur_size = [], {}, 0
    for k, v in sd.items():
        size = v.numel() * v.element_size()
        if cur and cur_size + size > shard_size:
            shards.append(cur)
            cur, cur_size = {}, 0
        cur[k] = v
        cur_size += size
    shards.append(cur)
    if len(shards) == 1:
        save_file(shards[0], str(out / "model.safetensors"), metadata={"format": "pt"})
        return ["model.safetensors"]
    names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    weight_map = {}
    for name, shard in zip(names, shards, strict=True):
        save_file(shard, str(out / name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, name))
    total = sum(v.numel() * v.element_size() for v in sd.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    return names


def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def export_hf(run_dir: str | Path, out: str | Path, shard_size: int | str = DEFAULT_SHARD_SIZE) -> Path:
    """A genlab LM run -> a Hugging Face directory: dense runs as LlamaForCausalLM, deepseek runs as
    DeepseekV3ForCausalLM; tokenizer files, generation_config.json, (sharded) safetensors."""
    shard_size = parse_size(shard_size)
    run, cfg, task, model = load_run(str(run_dir))
    if cfg.family.build_model is None or not hasattr(task, "tokenizer"):
        raise GenlabError(
            f"{run.path}: export --format hf is for language-model runs (this is a {cfg.family.name} run)"
        )
    return export_model(cfg, model, task.tokenizer, out, shard_size, chat_template(run.path), str(run.path))


def export_model(
    cfg, model, tok, out: str | Path, shard_size: int | str = DEFAULT_SHARD_SIZE, template=None, name: str = "the model"
) -> Path:
    """`model` (a genlab LM of config `cfg`, tokenizer `tok`) -> a Hugging Face directory at `out`; weights fp32."""
    shard_size = parse_size(shard_size)
    objective = getattr(cfg.train, "objective", "causal")
    if objective != "causal":
        raise GenlabError(
            f"{name}: train.objective = {objective!r} trains a bidirectional model, which no Hugging Face "
            "causal LM can run; export --format hf needs train.objective = causal"
        )
    o = Path(out)
    if o.exists() and (not o.is_dir() or any(o.iterdir())):
        raise GenlabError(f"{o} already exists and is not empty; choose another output directory")
    own = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}  # fp32 master precision
    if cfg.model.arch == "deepseek":
        hc = deepseek_hf_config(cfg, model.vocab_size)
        sd = deepseek_to_hf(own, cfg.model)
    else:
        hc = dense_hf_config(cfg, model.vocab_size)  # refuses lstm / gru
        sd = dense_to_hf(own, cfg.model)
    hc.update(bos_token_id=tok.bos_id, eos_token_id=tok.bos_id, pad_token_id=tok.bos_id)
    tmp = o.with_name(o.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    _write_json(tmp / "config.json", hc)
    save_sharded(sd, tmp, shard_size)
    files = tokenizer_files(tok, cfg.data.packing_length, template)
    for name_, obj in files.items():
        _write_json(tmp / name_, obj)
    _write_json(tmp / "generation_config.json", generation_config(tok))
    if o.exists():
        o.rmdir()
    tmp.rename(o)
    return o


def load_lm(path: str | Path, device: str | torch.device = "cpu"):
    """(config, model in eval mode on `device`, tokenizer, chat template or None) from a genlab LM run dir
    or a Hugging Face directory (genlab.interop.pretrained wraps it)."""
    p = Path(path)
    if (p / "config.toml").is_file():
        run, cfg, task, model = load_run(str(p), device)
        if cfg.family.build_model is None or not hasattr(task, "tokenizer"):
            raise GenlabError(
                f"{run.path}: from_pretrained loads language-model runs (this is a {cfg.family.name} run)"
            )
        return cfg, model, task.tokenizer, chat_template(run.path)
    cfg, state, tok, vocab = _read_hf(p)
    return cfg, _build(cfg, state, vocab).to(device), tok, hf_chat_template(p)


def from_pretrained(path: str | Path):
    """(model in eval mode, tokenizer) from a genlab run dir or a Hugging Face directory: the packed model
    as before (`genlab.from_pretrained` returns a `Pretrained` object, genlab/interop/pretrained.py)."""
    _, model, tok, _ = load_lm(path)
    return model, tok
