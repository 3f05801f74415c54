"""The deepseek language model: MLA attention, dense SwiGLU in the first `first_k_dense_replace`
layers and DeepSeekMoE after, optional multi-token-prediction modules, over the flat packed
stream (T tokens, (T, d) hidden states, cu_seqlens per document chunk) like the dense model.

Extra training terms (balance losses, MTP) come from `aux_loss(batch, h)`; the per-step balance
bias update and its metrics from `on_optimizer_step()`. Both are called by genlab's LM task and
trainer when a model defines them.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from genlab.data.packing import IGNORE
from genlab.errors import GenlabError
from genlab.families.deepseek.mla import MLA, MLACache, mla_rope_table
from genlab.families.deepseek.moe import MoE
from genlab.families.deepseek.mtp import MTPDrafter
from genlab.families.lm.transformer import DecoderLM, RMSNorm, SwiGLU, ffn_width
from genlab.ops.loss import head_loss
from genlab.ops.recompute import cheap


def make_moe(cfg) -> MoE:
    return MoE(
        cfg.d_model,
        cfg.n_routed_experts,
        cfg.num_experts_per_tok,
        cfg.moe_intermediate_size,
        cfg.n_shared_experts,
        cfg.n_group,
        cfg.topk_group,
        cfg.routed_scaling_factor,
        cfg.balance,
        cfg.balance_alpha,
    )


class Block(nn.Module):
    """Pre-norm block. `layer` decides dense vs MoE (the HF layer index); `slot` is the cache slot."""

    def __init__(self, cfg, layer: int, slot: int | None = None):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.attn = MLA(cfg, layer if slot is None else slot)
        self.mlp_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.is_moe = layer >= cfg.first_k_dense_replace
        self.mlp = make_moe(cfg) if self.is_moe else SwiGLU(cfg.d_model, ffn_width(cfg))

    def forward(self, x, cos, sin, cu_seqlens, max_seqlen, cache=None):
        x = x + self.attn(self.attn_norm(x), cos, sin, cu_seqlens, max_seqlen, cache)
        h = self.mlp_norm(x)
        return x + (self.mlp(h, cu_seqlens) if self.is_moe else self.mlp(h))


class MTPModule(nn.Module):
    """Depth k: h'_i = W [enorm(Emb(t_{i+k})) ; hnorm(h^{k-1}_i)] (embedding first), h^k = block(h');
    the prediction of t_{i+k+1} is head(norm(h^k)) with the main model's embedding and head."""

    def __init__(self, cfg, k: int):
        super().__init__()
        d = cfg.d_model
        self.enorm = RMSNorm(d, cfg.norm_eps)
        self.hnorm = RMSNorm(d, cfg.norm_eps)
        self.eh_proj = nn.Linear(2 * d, d, bias=False)
        self.block = Block(cfg, cfg.n_layer + k, slot=k)
        self.norm = RMSNorm(d, cfg.norm_eps)  # HF: shared_head.norm

    def _joined(self, emb, h_prev):
        return torch.cat((self.enorm(emb), self.hnorm(h_prev)), dim=-1)

    def forward(self, h_prev, emb, cos, sin, cu_seqlens, max_seqlen, cache=None):
        x = self.eh_proj(cheap(self._joined, emb, h_prev))  # two norms: rebuilt under selective checkpointing
        return self.block(x, cos, sin, cu_seqlens, max_seqlen, cache)


class DeepSeekLM(DecoderLM):
    OUT_PROJ = ("wo.weight", "down.weight", ".w2")
    # train.lora_targets -> module-name suffixes LoRA adapts (genlab.train.lora), MTP blocks included. MLA's
    # wkv_b is left out: latent-cache decoding folds its weight into the queries without calling it. "mlp" is
    # the dense SwiGLU and the MoE's shared experts; routed experts are stacked tensors (refused in LMTrain)
    LORA_TARGETS = {
        "attention": ("attn.wq", "attn.wq_a", "attn.wq_b", "attn.wkv_a", "attn.wo"),
        "mlp": ("mlp.gate_up", "mlp.down", "mlp.shared.gate_up", "mlp.shared.down"),
    }

    def __init__(self, cfg, vocab_size: int, max_len: int = 2048):
        super().__init__()
        self._build(cfg, vocab_size, (Block(cfg, i) for i in range(cfg.n_layer)), max_len)
        self.mtp = nn.ModuleList(MTPModule(cfg, k) for k in range(cfg.mtp_depth))
        # optimizer steps taken: drives the gamma / lambda schedules; in the checkpoint so resume is exact
        self.register_buffer("steps_done", torch.zeros((), dtype=torch.int64))
        self._stats: dict[str, list[float]] = {}
        self.reset_parameters()

    def rope_tables(self, n: int):
        return mla_rope_table(self.cfg, n)

    def checkpoint_blocks(self) -> list[nn.Module]:
        """What activation checkpointing wraps: the main blocks, then each whole MTP module (its
        projection of [norm(embedding) ; norm(h)] and its block)."""
        return [*self.blocks, *self.mtp]

    def moe_layers(self) -> list[tuple[str, MoE]]:
        out = [(f"L{i}", b.mlp) for i, b in enumerate(self.blocks) if b.is_moe]
        return out + [(f"mtp{k}", m.block.mlp) for k, m in enumerate(self.mtp) if m.block.is_moe]

    def forward(self, input_ids, position_ids, cu_seqlens, max_seqlen, cache: MLACache | None = None):
        """input_ids (T,) -> hidden states (T, d) after the final norm."""
        return self._trunk(input_ids, position_ids, cu_seqlens, max_seqlen, cache)

    def new_cache(self, max_len: int, mode: str = "latent") -> MLACache:
        w = self.embed.weight
        return MLACache(self.cfg, self.cfg.n_layer, max_len, mode, w.device, w.dtype)

    def info_lines(self) -> list[str]:
        """`genlab info` (works on the meta device: nothing is allocated)."""
        n = count_deepseek_params(self)
        c = cache_bytes_per_token(self.cfg)
        out = [
            f"parameters            {n['total']:,} total, {n['activated']:,} activated per token "
            f"({_short(n['total'])} / {_short(n['activated'])}; embedding {n['embedding']:,})"
        ]
        if n["mtp"]:
            out.append(f"MTP modules           {n['mtp']:,} parameters (not in the totals above)")
        out.append(
            f"decode cache/token    {c['mla_latent']:,} bytes (bf16, MLA latent + rope key, all layers) vs "
            f"{c['mha_same_width']:,} for multi-head attention of the same width "
            f"({c['mha_same_width'] / c['mla_latent']:.1f}x) and {c['mla_per_head']:,} for the per-head "
            "K/V of these heads"
        )
        return out

    def new_drafter(self, max_len: int):
        """The MTP drafter for genlab.generate.speculative_greedy."""
        return MTPDrafter(self, max_len)

    # ------------------------------------------------------------------ training extras
    def mtp_lambda(self) -> float:
        c = self.cfg
        late = c.mtp_lambda_until and int(self.steps_done) >= c.mtp_lambda_until
        return c.mtp_lambda_late if late else c.mtp_lambda

    def _note(self, key: str, value: float) -> None:
        self._stats.setdefault(key, []).append(value)

    def aux_loss(self, batch, h: torch.Tensor) -> torch.Tensor | None:
        """Training only: balance losses of this forward plus (lambda / D) * sum of the MTP losses,
        as a mean-scale scalar (the LM task weights it by the batch's target count)."""
        if not self.training:
            return None
        total = h.new_zeros(())
        rows = batch.row_cu  # sequence-wise balance: one segment per packed row (the training sequence)
        for _name, moe in self.moe_layers()[: sum(b.is_moe for b in self.blocks)]:
            loss = moe.row_balance_loss(rows) if rows is not None else moe.aux_loss
            if loss is not None:
                total = total + loss
                self._note("balance_loss", float(loss.detach()))
        if self.mtp:
            losses = self.mtp_losses(batch, h)
            for k, loss in enumerate(losses):
                self._note(f"mtp_loss_{k + 1}", float(loss.detach()))
            total = total + self.mtp_lambda() / len(self.mtp) * sum(losses)
            for _, moe in self.moe_layers()[sum(b.is_moe for b in self.blocks) :]:
                loss = moe.row_balance_loss(rows) if rows is not None else moe.aux_loss
                if loss is not None:
                    total = total + loss
        return total

    def mtp_losses(self, batch, h: torch.Tensor) -> list[torch.Tensor]:
        """Mean CE of each depth. Depth k at token i sees token i+k and predicts token i+k+1, both
        inside i's document chunk; positions without such a target are ignored."""
        ids, tgt, cu = batch.input_ids, batch.targets, batch.cu_seqlens
        T = ids.shape[0]
        lens = (cu[1:] - cu[:-1]).long()
        seg = torch.repeat_interleave(torch.arange(len(lens), device=ids.device), lens)
        cos, sin = self.rope(batch.position_ids, int(batch.max_seqlen))
        losses, prev = [], h
        for k, module in enumerate(self.mtp, start=1):
            idx = torch.arange(T, device=ids.device) + k
            valid = idx < T
            idx = idx.clamp_max(T - 1)
            valid &= seg[idx] == seg
            emb = self.embed(torch.where(valid, ids[idx], 0))
            target = torch.where(valid, tgt[idx], IGNORE)
            prev = module(prev, emb, cos, sin, cu, batch.max_seqlen)
            n = int((target != IGNORE).sum())
            losses.append(head_loss(self.head, module.norm(prev), target) / max(1, n))
        return losses

    @torch.no_grad()
    def on_optimizer_step(self, lr_factor: float = 1.0, skipped: bool = False) -> dict:
        """After every optimizer step (all micro-batches done): update each MoE layer's balance bias
        from the step's loads; return per-layer MaxVio and load histograms plus averaged extras.
        `lr_factor` (this step's lr / the peak lr) scales gamma when model.balance_gamma_schedule = lr.
        `skipped`: the trainer discarded this step's update (loss spike, non-finite loss): the bias
        stays too (the loads are reported and reset); the step still counts for the schedules, like
        the trainer's own step counter."""
        c = self.cfg
        gamma = 0.0 if (c.balance_gamma_until and int(self.steps_done) >= c.balance_gamma_until) else c.balance_gamma
        if skipped:
            gamma = 0.0
        if c.balance_gamma_schedule == "lr":
            gamma *= lr_factor
        out: dict = {}
        vios = []
        for name, moe in self.moe_layers():
            res = moe.update_bias(gamma)
            out[f"maxvio/{name}"] = res["maxvio"]
            out[f"load/{name}"] = res["load"]
            vios.append(res["maxvio"])
        if vios:
            out["maxvio"] = sum(vios) / len(vios)
        for key, vals in self._stats.items():
            out[key] = sum(vals) / len(vals)
        self._stats = {}
        self.steps_done += 1
        return out


def count_deepseek_params(model: DeepSeekLM) -> dict[str, int]:
    """Total and per-token activated parameters of the main model, and the MTP modules' total."""
    mtp = sum(p.numel() for p in model.mtp.parameters())
    total = sum(p.numel() for p in model.parameters()) - mtp
    inactive = 0
    for blk in model.blocks:
        if blk.is_moe:
            m = blk.mlp
            per_expert = m.w13[0].numel() + m.w2[0].numel()
            inactive += (m.n_experts - m.k) * per_expert
    emb = model.embed.weight.numel()
    return {"total": total, "activated": total - inactive, "mtp": mtp, "embedding": emb, "non_embedding": total - emb}


def cache_bytes_per_token(cfg, bytes_per_value: int = 2) -> dict[str, int]:
    """Decode cache per token over all layers: the MLA latent cache vs a per-head K/V cache of the same
    heads, vs a standard multi-head model of the same width (K and V of d_model each)."""
    L = cfg.n_layer
    return {
        "mla_latent": L * (cfg.kv_lora_rank + cfg.qk_rope_head_dim) * bytes_per_value,
        "mla_per_head": L
        * cfg.n_head
        * (cfg.qk_nope_head_dim + cfg.qk_rope_head_dim + cfg.v_head_dim)
        * bytes_per_value,
        "mha_same_width": L * 2 * cfg.d_model * bytes_per_value,
    }


def _short(n: int) -> str:
    return f"{n / 1e9:.1f}B" if n >= 1e9 else f"{n / 1e6:.1f}M"


def build_model(args, vocab_size: int, max_len: int = 2048, causal: bool = True) -> DeepSeekLM:
    if not causal:
        raise GenlabError("model.arch 'deepseek' is causal only")
    return DeepSeekLM(args, vocab_size, max_len)
