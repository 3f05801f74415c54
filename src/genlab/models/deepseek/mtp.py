"""Self-speculative greedy decoding with the first multi-token-prediction module.

State between rounds: the main model's latent cache holds tokens 0..n-1, `h_last` is its hidden
state at n-1 and `nxt` the greedy token n (already emitted). The MTP module's own cache holds the
pairs (h_i, token_{i+1}) for the positions it has seen. One round:

1. MTP over the pending pairs (h_i, token_{i+1}) -> a draft d for token n+1 (from the last pair).
2. The main model verifies [nxt, d] in one forward at positions n, n+1: y1 = argmax at n is the true
   token n+1. If y1 == d the draft is accepted and the logits at n+1 give token n+2 for free (two
   tokens per main forward); otherwise the cache drops position n+1 and y1 is the next token.

Every emitted token is the main model's own argmax, so the output equals plain greedy decoding.
"""

from __future__ import annotations

import time

import torch

from genlab.models.deepseek.mla import MLACache


def _cu(n: int, device) -> torch.Tensor:
    return torch.tensor([0, n], dtype=torch.int32, device=device)


@torch.no_grad()
def speculative_greedy(model, prompt: list[int], max_new_tokens: int, stop_id: int | None = None) -> tuple[list[int], dict]:
    """Greedy continuation of `prompt` drafted by MTP module 1 and verified by the main model.
    Returns (new token ids, {"accepted", "drafted", "acceptance", "main_forwards", "tokens_per_s"})."""
    if not len(model.mtp):
        raise ValueError("speculative decoding needs a model with mtp_depth >= 1")
    model.eval()
    dev = model.embed.weight.device
    mtp = model.mtp[0]
    total = len(prompt) + max_new_tokens + 2
    cache = model.new_cache(total)
    mcache = MLACache(model.cfg, 1, total, "latent", dev, model.embed.weight.dtype)  # the MTP block's slot 0
    t0 = time.perf_counter()
    x = torch.tensor(prompt, device=dev)
    h = model(x, torch.arange(len(prompt), device=dev), _cu(len(prompt), dev), len(prompt), cache)  # (P, d)
    out: list[int] = []
    nxt = int(model.head(h[-1]).argmax())
    out.append(nxt)
    # pending MTP inputs: hidden states of positions from mcache.len on, and each one's next token
    pend_h, pend_tok = h, torch.tensor(prompt[1:] + [nxt], device=dev)
    accepted = drafted = forwards = 0
    while len(out) < max_new_tokens and not (stop_id is not None and out[-1] == stop_id):
        n = cache.len
        start = mcache.len
        pos = torch.arange(start, start + len(pend_tok), device=dev)
        cos, sin = model.rope(pos, start + len(pend_tok))
        hk = mtp(pend_h, model.embed(pend_tok), cos, sin, _cu(len(pend_tok), dev), len(pend_tok), mcache)
        mcache.len += len(pend_tok)
        draft = int(model.head(mtp.norm(hk[-1])).argmax())
        drafted += 1
        feed = torch.tensor([nxt, draft], device=dev)
        hv = model(feed, torch.arange(n, n + 2, device=dev), _cu(2, dev), 2, cache)  # (2, d)
        forwards += 1
        y = model.head(hv).argmax(-1).tolist()
        if y[0] == draft:
            accepted += 1
            new = [draft, y[1]]
            pend_h, pend_tok = hv, torch.tensor(new, device=dev)
        else:
            cache.len = n + 1  # forget the rejected draft's cache entry
            new = [y[0]]
            pend_h, pend_tok = hv[:1], torch.tensor(new, device=dev)
        for tok in new:
            if len(out) < max_new_tokens and not (stop_id is not None and out[-1] == stop_id):
                out.append(tok)
        nxt = new[-1]
    dt = time.perf_counter() - t0
    return out, {"accepted": accepted, "drafted": drafted, "acceptance": accepted / max(1, drafted),
                 "main_forwards": forwards + 1, "tokens_per_s": len(out) / max(dt, 1e-9)}


@torch.no_grad()
def greedy(model, prompt: list[int], max_new_tokens: int) -> tuple[list[int], dict]:
    """Plain cached greedy decoding (the reference), with its tokens/s."""
    from genlab.tasks.lm import generate

    t0 = time.perf_counter()
    out = list(generate(model, prompt, max_new_tokens, temperature=0.0, device=model.embed.weight.device))
    return out, {"tokens_per_s": len(out) / max(time.perf_counter() - t0, 1e-9)}
