"""Language modelling task: corpus -> tokenizer -> packed rows -> model -> next-token loss.

The trainer sees only this object's methods: prepare, build_model, initial_state, next_batch,
loss, evaluate. Sampling lives here too (the generation loop with a KV cache).
"""

from __future__ import annotations

import math
import re
import sys
from pathlib import Path
from typing import Iterator

import torch

from genlab.config import RunConfig
from genlab.data.objectives import apply_objective, model_vocab
from genlab.data.packing import IGNORE, Batch, TokenDataset
from genlab.data.text import load_corpus, split_documents
from genlab.data.tokenizer import build_tokenizer, load_tokenizer
from genlab.errors import GenlabError
from genlab.models import build_lm
from genlab.ops.loss import head_loss

TOKENIZER_FILE = "tokenizer.json"


class LMTask:
    name = "lm"

    def __init__(self, cfg: RunConfig):
        self.cfg = cfg
        self.tokenizer = None
        self.train_data: TokenDataset | None = None
        self.val_data: TokenDataset | None = None

    # ------------------------------------------------------------------ data
    def encode_docs(self, docs: list[str]) -> list[list[int]]:
        tok = self.tokenizer
        ids = tok.encode_batch(docs)
        if tok.bos_id is not None:
            ids = [[tok.bos_id] + x for x in ids]
        return ids

    def prepare(self, run_dir: Path | None, fresh: bool = True) -> None:
        """Read and split the corpus; train the tokenizer (fresh run) or load it from the run dir."""
        d = self.cfg.data
        docs = load_corpus(d.path)
        train_docs, val_docs = split_documents(docs, d.val_fraction)
        tok_path = Path(run_dir) / TOKENIZER_FILE if run_dir else None
        if not fresh and tok_path is not None:
            self.tokenizer = load_tokenizer(tok_path)
        else:
            self.tokenizer = build_tokenizer(d.tokenizer, train_docs, d.vocab_size)
        t = self.cfg.train
        self.train_data = TokenDataset(self.encode_docs(train_docs), d.packing_length, t.batch_rows,
                                       mode=d.mode, seed=t.seed, buffer=d.pack_buffer)
        self.val_data = None
        if val_docs:
            self.val_data = TokenDataset(self.encode_docs(val_docs), d.packing_length, t.batch_rows,
                                         mode="packed", buffer=d.pack_buffer, shuffle=False)

    def save_artifacts(self, run_dir: Path) -> None:
        self.tokenizer.save(Path(run_dir) / TOKENIZER_FILE)

    def load_for_inference(self, run_dir: Path) -> None:
        self.tokenizer = load_tokenizer(Path(run_dir) / TOKENIZER_FILE)

    def eval_dataset(self, path: str) -> TokenDataset:
        docs = load_corpus(path)
        return TokenDataset(self.encode_docs(docs), self.cfg.data.packing_length, self.cfg.train.batch_rows,
                            mode="packed", buffer=self.cfg.data.pack_buffer, shuffle=False)

    # ------------------------------------------------------------------ model and loss
    @property
    def objective(self) -> str:
        return self.cfg.train.objective

    @property
    def mask_id(self) -> int | None:
        """The <mask> token of a masked / any-order run: one past the tokenizer's ids."""
        return None if self.objective == "causal" else self.tokenizer.vocab_size

    def build_model(self) -> torch.nn.Module:
        return build_lm(self.cfg.model, model_vocab(self.tokenizer.vocab_size, self.objective),
                        self.cfg.data.packing_length, causal=self.objective == "causal")

    def initial_state(self):
        return (0, 0)

    def with_objective(self, batch: Batch, seed: int) -> Batch:
        if self.objective == "causal":
            return batch
        g = torch.Generator().manual_seed(seed)
        return apply_objective(batch, self.objective, self.mask_id, self.tokenizer.vocab_size, g,
                               self.cfg.train.mask_prob, self.tokenizer.bos_id)

    def next_batch(self, state) -> tuple[Batch, tuple[int, int]]:
        batch, new_state = self.train_data.batch_at(state)
        if self.objective != "causal":  # the corruption depends only on (seed, position in the stream): resumable
            epoch, cursor = state
            batch = self.with_objective(batch, (self.cfg.train.seed * 1_000_003 + epoch) * 1_000_003 + cursor)
        return batch, new_state

    @staticmethod
    def loss(model, batch: Batch) -> tuple[torch.Tensor, int]:
        """Summed cross-entropy (nats) where targets are defined, and the count it is a sum over
        (predicted tokens; for any-order, the sequences' tokens, see data/objectives.py)."""
        h = model(batch.input_ids, batch.position_ids, batch.cu_seqlens, batch.max_seqlen)
        loss_sum = head_loss(model.head, h, batch.targets, batch.weights)
        extra = model.aux_loss(batch, h) if hasattr(model, "aux_loss") else None  # MoE balance, MTP (training)
        if extra is not None:  # a mean-scale term: weighted by this batch's share of the step's targets
            loss_sum = loss_sum + extra * batch.n_targets
        return loss_sum, batch.n_targets

    @torch.no_grad()
    def evaluate(self, model, data: TokenDataset | None = None, max_batches: int | None = None,
                 device="cpu") -> dict[str, float]:
        data = data if data is not None else self.val_data
        if data is None:
            return {}
        was_training = model.training
        model.eval()
        tbytes = torch.tensor(self.tokenizer.token_bytes(), dtype=torch.float64)
        nll, n, nbytes = 0.0, 0, 0.0
        for i, batch in enumerate(data.iter_epoch()):
            if max_batches is not None and i >= max_batches:
                break
            orig = batch.input_ids
            batch = self.with_objective(batch, 7919 * (i + 1)).to(device)  # fixed corruption per batch
            loss_sum, count = self.loss(model, batch)
            nll += float(loss_sum)
            n += count
            if batch.weights is not None:  # any-order: the loss estimates every (non-start) token's NLL
                counted = orig[orig != self.tokenizer.bos_id] if self.tokenizer.bos_id is not None else orig
            else:
                tg = batch.targets.cpu()
                counted = tg[tg != IGNORE]
            nbytes += float(tbytes[counted].sum())
        model.train(was_training)
        if n == 0:
            return {}
        loss = nll / n
        return {"val_loss": loss, "val_ppl": math.exp(min(loss, 700)),
                "val_bpb": nll / math.log(2) / max(nbytes, 1.0), "val_tokens": n}

    # ------------------------------------------------------------------ CLI entry points
    def eval_report(self, run, model, data_path: str | None) -> dict:
        if data_path:
            data = self.eval_dataset(data_path)
        else:
            self.prepare(run.path, fresh=False)
            data = self.val_data
            if data is None:
                raise GenlabError(f"{run.path}: the corpus has no validation documents; pass --data PATH")
        return {"data": data_path or "validation split", **self.evaluate(model, data)}

    def sample_cli(self, run, model, args) -> None:
        from genlab.commands import stream_sample

        if args.top_k < 0:
            raise GenlabError(f"--top-k {args.top_k} must be >= 0")
        if args.top_p > 1:
            raise GenlabError(f"--top-p {args.top_p} must be between 0 and 1")
        if getattr(args, "infill", None) is not None or self.objective != "causal":
            return self.infill_cli(model, args)
        ids = self.prompt_ids(args.prompt)  # checks the prompt before anything is printed
        if getattr(args, "speculative", False):  # deepseek MTP self-speculative greedy decoding
            if not len(getattr(model, "mtp", ())):
                raise GenlabError("--speculative needs a deepseek run with model.mtp_depth >= 1")
            from genlab.models.deepseek.mtp import speculative_greedy

            out, st = speculative_greedy(model, ids, args.max_new_tokens, stop_id=self.tokenizer.bos_id)
            print(args.prompt + self.tokenizer.decode(out), flush=True)
            print(f"speculative greedy: acceptance {st['acceptance']:.2f} ({st['accepted']}/{st['drafted']} drafts), "
                  f"{st['tokens_per_s']:.1f} tokens/s, {st['main_forwards']} main-model forwards", file=sys.stderr)
            return
        del ids
        print(args.prompt, end="", flush=True)
        stream_sample(self, model, args.prompt, args.max_new_tokens, args.temperature, args.top_k, args.top_p,
                      args.seed, use_cache=not args.no_cache)

    def infill_cli(self, model, args) -> None:
        """`--infill TEXT`: fill its <mask> spans. A masked / any-order run without --infill continues
        --prompt by filling `--max-new-tokens` masks after it, left to right."""
        if self.objective == "causal":
            raise GenlabError("--infill needs a run trained with train.objective = masked or any-order (this run is "
                              "causal: it only continues text); train one with --set train.objective=any-order")
        if getattr(args, "speculative", False):
            raise GenlabError("--speculative is for causal deepseek runs with MTP, not infilling")
        text = args.infill if args.infill is not None else args.prompt + f"<mask:{args.max_new_tokens}>"
        ids, n_spans = parse_infill(text, self.tokenizer, self.mask_id, args.span)
        if self.tokenizer.bos_id is not None:
            ids = [self.tokenizer.bos_id] + ids
        n_holes = ids.count(self.mask_id)
        out = infill(model, ids, self.mask_id, args.order, args.temperature, args.top_k, args.top_p,
                     args.seed)
        print(self.tokenizer.decode(out), flush=True)
        print(f"filled {n_holes} tokens in {n_spans} span(s), order {args.order}, objective {self.objective}",
              file=sys.stderr)

    # ------------------------------------------------------------------ sampling
    def prompt_ids(self, prompt: str) -> list[int]:
        ids = self.tokenizer.encode(prompt)
        if self.tokenizer.bos_id is not None:
            ids = [self.tokenizer.bos_id] + ids
        if not ids:
            raise GenlabError("the prompt is empty and this tokenizer has no start token; give --prompt TEXT")
        return ids


def sample_next(logits: torch.Tensor, temperature: float, top_k: int, top_p: float,
                generator: torch.Generator) -> int:
    """One token from (V,) logits; temperature 0 = greedy."""
    if temperature <= 0:
        return int(logits.argmax())
    logits = logits.float() / temperature
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if 0 < top_p < 1:
        sp, si = probs.sort(descending=True)
        keep = sp.cumsum(0) - sp < top_p  # keep the smallest prefix whose mass reaches top_p
        probs = torch.zeros_like(probs).scatter(0, si, sp * keep)
        probs /= probs.sum()
    return int(torch.multinomial(probs, 1, generator=generator))


@torch.no_grad()
def generate(model, prompt: list[int], max_new_tokens: int, temperature: float = 1.0, top_k: int = 0,
             top_p: float = 1.0, seed: int = 0, use_cache: bool = True, stop_id: int | None = None,
             device="cpu") -> Iterator[int]:
    """Yield new token ids one at a time. With `use_cache` the prompt is encoded once and each
    step feeds one token; without it, the whole sequence is re-run every step (the reference)."""
    model.eval()
    g = torch.Generator().manual_seed(seed)
    ids = list(prompt)
    total = len(ids) + max_new_tokens
    cache = model.new_cache(total) if use_cache else None
    feed = ids
    for _ in range(max_new_tokens):
        if cache is not None:
            x = torch.tensor(feed, device=device)
            pos = torch.arange(cache.len, cache.len + len(feed), device=device)
        else:
            x = torch.tensor(ids, device=device)
            pos = torch.arange(len(ids), device=device)
        cu = torch.tensor([0, len(x)], dtype=torch.int32, device=device)
        h = model(x, pos, cu, len(x), cache)
        nxt = sample_next(model.head(h[-1]).cpu(), temperature, top_k, top_p, g)
        yield nxt
        if stop_id is not None and nxt == stop_id:
            return
        ids.append(nxt)
        feed = [nxt]


# ---------------------------------------------------------------------------- infilling
INFILL_ORDERS = ("left-to-right", "random", "confident")
_MASK_RE = re.compile(r"<mask(?::(\d+))?>")


def parse_infill(text: str, tokenizer, mask_id: int, span: int) -> tuple[list[int], int]:
    """"text with <mask> spans" -> token ids with `mask_id` in every span, and the number of spans.
    `<mask>` stands for `span` tokens, `<mask:N>` for N (1..4096)."""
    ids: list[int] = []
    pos, n_spans = 0, 0
    for m in _MASK_RE.finditer(text):
        if m.start() > pos:
            ids += tokenizer.encode(text[pos:m.start()])
        n = int(m.group(1)) if m.group(1) else span
        if not 1 <= n <= 4096:
            raise GenlabError(f"{m.group(0)}: a span holds 1 to 4096 tokens")
        ids += [mask_id] * n
        pos, n_spans = m.end(), n_spans + 1
    if pos < len(text):
        ids += tokenizer.encode(text[pos:])
    if n_spans == 0:
        raise GenlabError("--infill text has no <mask> span; write e.g. \"def <mask>(x):\" or <mask:N> for N tokens")
    return ids, n_spans


@torch.no_grad()
def infill(model, ids: list[int], mask_id: int, order: str = "left-to-right", temperature: float = 1.0,
           top_k: int = 0, top_p: float = 1.0, seed: int = 0, device="cpu") -> list[int]:
    """Fill every `mask_id` position of one sequence, one token per model call, each sampled from
    p(x_i | every token known so far) of a bidirectional (masked / any-order) model.

    order: left-to-right (the leftmost hole next), random (a uniformly random hole next: for an
    any-order model this is ancestral sampling under a random ordering), confident (the hole whose
    most likely token is most probable next, as iterative masked-LM decoding does)."""
    if order not in INFILL_ORDERS:
        raise GenlabError(f"unknown infill order {order!r}; choose one of: {', '.join(INFILL_ORDERS)}")
    model.eval()
    g = torch.Generator().manual_seed(seed)
    x = torch.tensor(ids, device=device)
    pos = torch.arange(len(ids), device=device)
    cu = torch.tensor([0, len(ids)], dtype=torch.int32, device=device)
    holes = [i for i, t in enumerate(ids) if t == mask_id]
    while holes:
        h = model(x, pos, cu, len(ids))
        if order == "confident":  # every hole's logits are needed to choose
            logits = model.head(h[holes]).float().cpu()  # (n_holes, V)
            logits[:, mask_id] = float("-inf")  # the mask token itself is never a filling
            j = int(torch.log_softmax(logits, -1).max(-1).values.argmax())
            row = logits[j]
        else:  # the head runs on the chosen hole only
            j = 0 if order == "left-to-right" else int(torch.randint(len(holes), (1,), generator=g))
            row = model.head(h[holes[j]]).float().cpu()
            row[mask_id] = float("-inf")
        x[holes[j]] = sample_next(row, temperature, top_k, top_p, g)
        del holes[j]
    return x.tolist()
