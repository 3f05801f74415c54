"""Direct Preference Optimization (task = "dpo"; Rafailov et al. 2023) and IPO (Azar et al. 2023).

A pair is a prompt with a chosen and a rejected answer. Both are rendered by the run's chat template
(prompt messages + the answer as the last assistant turn); log pi(y|x) is the sum of the answer's
token log-probabilities (its generation block: the answer and its end-of-turn token). The reference
model is the initial weights: its log-probabilities are computed once per pair when the run starts and
kept in RUN/reference_logps.safetensors, so no second model is held and resume is exact.

A micro-batch is train.batch_rows pairs; their 2 x batch_rows sequences are packed into rows of
data.packing_length by best-fit-decreasing with per-document attention. Chosen and rejected do not
share the prompt's computation: per-document attention has no mask for "the same prefix, then two
branches". The start of a run logs the answers' share of the tokens (embedded pairs: 67%, so sharing
each prompt once would save at most about a sixth of the tokens).

    h = [log pi(y_w|x) - log ref(y_w|x)] - [log pi(y_l|x) - log ref(y_l|x)]
    sigmoid (DPO): -log sigmoid(beta h);  ipo: (h' - 1/(2 beta))^2 with per-token mean log-ratios h'
    rewards r = beta (log pi - log ref); accuracy = mean[r_w > r_l]; margin = mean[r_w - r_l]
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from genlab.data.chat import check_messages
from genlab.data.packing import IGNORE, Batch, MaskedStore, best_fit_decreasing, masked_batch
from genlab.errors import GenlabError
from genlab.families.lm.task import LMTask
from genlab.families.posttrain import embedded
from genlab.families.posttrain.sft import ChatRunMixin, in_split, read_jsonl
from genlab.train import distributed

REF_FILE = "reference_logps.safetensors"

Pair = tuple[list[int], np.ndarray, list[int], np.ndarray]  # chosen ids, mask, rejected ids, mask


@dataclass
class DPOBatch:
    batch: Batch  # the packed 2n sequences: chosen_0, rejected_0, chosen_1, ...
    seq: torch.Tensor  # (T,) the sequence each token belongs to
    ref_chosen: torch.Tensor  # (n,) reference log-probabilities
    ref_rejected: torch.Tensor
    len_chosen: torch.Tensor  # (n,) answer tokens
    len_rejected: torch.Tensor

    @property
    def n_targets(self) -> int:
        return len(self.ref_chosen)  # the loss is a mean over pairs

    @property
    def n_real(self) -> int:
        return self.batch.n_real

    def to(self, device) -> DPOBatch:
        if str(device) == "cpu":
            return self
        return DPOBatch(
            self.batch.to(device),
            *(t.to(device) for t in (self.seq, self.ref_chosen, self.ref_rejected, self.len_chosen, self.len_rejected)),
        )


def pack_pairs(pairs: list[Pair], L: int) -> tuple[Batch, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(packed batch, token -> sequence index, answer lengths of chosen, of rejected) for `pairs`."""
    docs, masks = [], []
    for c, cm, r, rm in pairs:
        docs += [c, r]
        masks += [cm, rm]
    store = MaskedStore(docs, masks)
    lengths = [len(d) for d in docs]
    rows = [[(i, 0, lengths[i]) for i in sorted(b)] for b in best_fit_decreasing(lengths, L)]
    batch = masked_batch(store, rows, L)
    seq = torch.cat([torch.full((e - s,), d, dtype=torch.long) for row in rows for d, s, e in row])
    n_ans = torch.tensor([int(m[1:].sum()) for m in masks], dtype=torch.float32)  # targets per sequence
    return batch, seq, n_ans[0::2], n_ans[1::2]


def sequence_logps(model, batch: Batch, seq: torch.Tensor, n_seq: int) -> torch.Tensor:
    """(n_seq,) summed log-probabilities of each sequence's target tokens (its answer)."""
    h = model(batch.input_ids, batch.position_ids, batch.cu_seqlens, batch.max_seqlen)
    logits = model.head(h).float()
    nll = F.cross_entropy(logits, batch.targets, ignore_index=IGNORE, reduction="none")  # 0 where ignored
    return -torch.zeros(n_seq, dtype=nll.dtype, device=nll.device).index_add_(0, seq, nll)


def dpo_loss(
    pc: torch.Tensor,
    pr: torch.Tensor,
    rc: torch.Tensor,
    rr: torch.Tensor,
    beta: float,
    loss_type: str = "sigmoid",
    nc: torch.Tensor | None = None,
    nr: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(per-pair loss, chosen reward, rejected reward) from policy (pc, pr) and reference (rc, rr)
    sequence log-probabilities; ipo uses per-token means (nc, nr answer tokens)."""
    if loss_type == "sigmoid":
        losses = -F.logsigmoid(beta * ((pc - rc) - (pr - rr)))
    elif loss_type == "ipo":
        h = (pc - rc) / nc - (pr - rr) / nr
        losses = (h - 1 / (2 * beta)) ** 2
    else:
        raise GenlabError(f"train.loss_type = {loss_type!r}; allowed: sigmoid, ipo")
    return losses, beta * (pc - rc).detach(), beta * (pr - rr).detach()


def _answer(value, where: str) -> str:
    """chosen / rejected: a string, or TRL's conversational form (a list ending in the assistant's message)."""
    if isinstance(value, str):
        text = value
    elif isinstance(value, list) and value and isinstance(value[-1], dict) and value[-1].get("role") == "assistant":
        text = value[-1].get("content")
    else:
        raise GenlabError(f"{where}: must be a string or a message list ending with an assistant message")
    if not isinstance(text, str) or not text.strip():
        raise GenlabError(f"{where}: empty answer")
    return text


def _prompt(value, where: str) -> list[dict]:
    if isinstance(value, str):
        if not value.strip():
            raise GenlabError(f"{where}: empty prompt")
        return [{"role": "user", "content": value}]
    return check_messages(value, where)


class DPOTask(ChatRunMixin, LMTask):
    def prepare(self, run_dir: Path | None, fresh: bool = True) -> None:
        self.fresh = fresh
        self._load_chat(run_dir, fresh)
        self.counts = {"pairs": 0, "identical": 0, "dropped": 0}
        self.pairs = {split: self._pairs(split) for split in ("train", "val")}
        if not self.pairs["train"]:
            raise GenlabError(f"{self.cfg.data.path or 'the embedded pairs'}: no usable training pairs")
        self.ref: dict[str, torch.Tensor] | None = None
        if not fresh and run_dir is not None:
            self.ref = self._load_ref(Path(run_dir))
        self._stats: list[torch.Tensor] = []
        c = self.counts
        if fresh and distributed.is_main():
            n_tok = sum(len(p[0]) + len(p[2]) for p in self.pairs["train"])
            n_ans = sum(int(p[1].sum() + p[3].sum()) for p in self.pairs["train"])
            print(
                f"dpo data: {c['pairs']:,} pairs ({len(self.pairs['train']):,} train, {len(self.pairs['val']):,} "
                f"held out), {c['identical']:,} with identical chosen and rejected skipped, {c['dropped']:,} over "
                f"{self.cfg.data.packing_length} tokens dropped; answers are {n_ans / max(1, n_tok):.0%} of the tokens"
            )

    def _rows(self, split: str):
        d = self.cfg.data
        if not d.path:
            for i, r in enumerate(embedded.preference_pairs(split, seed=0)):
                yield f"embedded pair {i}", r
            return
        for i, obj in read_jsonl(d.path):
            where = f"{d.path}:{i}"
            for k in ("prompt", "chosen", "rejected"):
                if k not in obj:
                    raise GenlabError(f"{where}: a preference pair needs 'prompt', 'chosen' and 'rejected'")
            if in_split(repr(obj["prompt"]), split, d.val_fraction):
                yield where, obj

    def _pairs(self, split: str) -> list[Pair]:
        out = []
        L = self.cfg.data.packing_length
        for where, obj in self._rows(split):
            prompt = _prompt(obj["prompt"], f"{where}: prompt")
            chosen, rejected = (
                _answer(obj["chosen"], f"{where}: chosen"),
                _answer(obj["rejected"], f"{where}: rejected"),
            )
            self.counts["pairs"] += 1
            if chosen.strip() == rejected.strip():
                self.counts["identical"] += 1
                continue
            enc = []
            for answer in (chosen, rejected):
                ids, mask = self.template.encode_with_mask(
                    self.tokenizer, prompt + [{"role": "assistant", "content": answer}], last_turn=True
                )
                if len(ids) > L and self.cfg.data.overlong == "truncate":
                    ids, mask = ids[:L], mask[:L]
                enc.append((ids, mask))
            if any(len(ids) > L or not mask[1:].any() for ids, mask in enc):
                self.counts["dropped"] += 1
                continue
            out.append((enc[0][0], enc[0][1], enc[1][0], enc[1][1]))
        return out

    # ------------------------------------------------------------------ reference log-probabilities
    def _digest(self) -> str:
        h = hashlib.sha256()
        for split in ("train", "val"):
            for c, _, r, _ in self.pairs[split]:
                h.update(np.asarray(c + [-1] + r + [-2], dtype=np.int64).tobytes())
        return h.hexdigest()

    @torch.no_grad()
    def _reference(self, model) -> dict[str, torch.Tensor]:
        was = model.training
        model.eval()
        out = {}
        try:
            for split, pairs in self.pairs.items():
                lp = []
                for i in range(0, len(pairs), 16):
                    part = pairs[i : i + 16]
                    batch, seq, _, _ = pack_pairs(part, self.cfg.data.packing_length)
                    dev = next(model.parameters()).device
                    lp.append(sequence_logps(model, batch.to(dev), seq.to(dev), 2 * len(part)).cpu())
                both = torch.cat(lp) if lp else torch.zeros(0)
                out[f"{split}_chosen"], out[f"{split}_rejected"] = both[0::2].contiguous(), both[1::2].contiguous()
        finally:
            model.train(was)
        return out

    def _load_ref(self, run_dir: Path) -> dict[str, torch.Tensor]:
        path = run_dir / REF_FILE
        if not path.is_file():
            raise GenlabError(f"{run_dir}: {REF_FILE} is missing (the reference model's log-probabilities)")
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            digest = (f.metadata() or {}).get("pairs_sha256")
        if digest != self._digest():
            raise GenlabError(
                f"{run_dir}: the preference pairs differ from those the run started with ({REF_FILE} is for "
                "those; the embedded pairs depend on the Python version's docs): use the same data.path"
            )
        return load_file(str(path))

    def build_model(self) -> torch.nn.Module:
        model = LMTask.build_model(self)
        if self.fresh:  # the initial weights are the reference
            self.ref = self._reference(model)
        return model

    def save_artifacts(self, run_dir: Path) -> None:
        super().save_artifacts(run_dir)
        save_file(self.ref, str(Path(run_dir) / REF_FILE), metadata={"pairs_sha256": self._digest()})

    # ------------------------------------------------------------------ batches and loss
    def initial_state(self):
        return (0, 0)  # (epoch, pair index within the epoch's order)

    def _order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.cfg.train.seed, epoch]).permutation(len(self.pairs["train"]))

    def next_batch(self, state):
        if len(state) != 2:
            raise GenlabError(f"the saved data position {list(state)} is not a dpo run's")
        epoch, i = state
        n = len(self.pairs["train"])
        if i >= n:
            epoch, i = epoch + 1, 0
        idx = self._order(epoch)[i : i + self.cfg.train.batch_rows]
        return self._batch("train", idx), (epoch, i + len(idx))

    def _batch(self, split: str, idx) -> DPOBatch:
        pairs = [self.pairs[split][int(j)] for j in idx]
        batch, seq, nc, nr = pack_pairs(pairs, self.cfg.data.packing_length)
        ix = torch.as_tensor(np.asarray(idx, dtype=np.int64))
        return DPOBatch(batch, seq, self.ref[f"{split}_chosen"][ix], self.ref[f"{split}_rejected"][ix], nc, nr)

    def batch_units(self, batch: DPOBatch) -> tuple[int, int]:
        return batch.batch.n_real, batch.batch.capacity

    def _forward(self, model, b: DPOBatch):
        t = self.cfg.train
        lp = sequence_logps(model, b.batch, b.seq, 2 * len(b.ref_chosen))
        pc, pr = lp[0::2], lp[1::2]
        losses, rw, rl = dpo_loss(
            pc, pr, b.ref_chosen, b.ref_rejected, t.beta, t.loss_type, b.len_chosen, b.len_rejected
        )
        if t.sft_weight:
            losses = losses + t.sft_weight * (-pc / b.len_chosen)
        return losses, rw, rl, pc.detach()

    def loss(self, model, batch: DPOBatch) -> tuple[torch.Tensor, int]:
        losses, rw, rl, _ = self._forward(model, batch)
        if model.training:  # sums over this micro-batch's pairs: correct, chosen, rejected, margin, count
            n = torch.tensor(float(len(rw)), device=rw.device)
            self._stats.append(torch.stack([(rw > rl).float().sum(), rw.sum(), rl.sum(), (rw - rl).sum(), n]).cpu())
        return losses.sum(), batch.n_targets

    def on_optimizer_step(self, model, lr_factor: float, skipped: bool) -> dict:
        out = model.on_optimizer_step(lr_factor=lr_factor, skipped=skipped)
        if self._stats:
            sums = torch.stack(self._stats).sum(0)
            n = float(sums[4])
            self._stats = []
            out = {
                **out,
                "reward_acc": float(sums[0]) / n,
                "reward_chosen": float(sums[1]) / n,
                "reward_rejected": float(sums[2]) / n,
                "reward_margin": float(sums[3]) / n,
            }
        return out

    @torch.no_grad()
    def evaluate(self, model, data=None, max_batches: int | None = None, device="cpu") -> dict[str, float]:
        """Held-out pairs: val_loss (the DPO loss), reward accuracy and margin, and the chosen answers' mean
        log-probability under the policy and under the reference."""
        n = len(self.pairs["val"])
        if not n:
            return {}
        was = model.training
        model.eval()
        B = self.cfg.train.batch_rows
        tot = torch.zeros(6, dtype=torch.float64)
        try:
            for k, i in enumerate(range(0, n, B)):
                if max_batches is not None and k >= max_batches:
                    break
                b = self._batch("val", np.arange(i, min(i + B, n))).to(device)
                losses, rw, rl, pc = self._forward(model, b)
                tot += (
                    torch.stack(
                        [losses.sum(), (rw > rl).float().sum(), (rw - rl).sum(), pc.sum(), b.ref_chosen.sum()]
                        + [torch.tensor(float(len(rw)), device=rw.device)]
                    )
                    .double()
                    .cpu()
                )
        finally:
            model.train(was)
        m = float(tot[5])
        return {
            "val_loss": float(tot[0]) / m,
            "val_reward_acc": float(tot[1]) / m,
            "val_reward_margin": float(tot[2]) / m,
            "val_chosen_logp": float(tot[3]) / m,
            "val_ref_chosen_logp": float(tot[4]) / m,
            "val_pairs": m,
        }

    def eval_dataset(self, path: str, run_dir: Path):
        raise GenlabError("genlab eval --data on a dpo run: it evaluates its held-out pairs (drop --data)")

    def info_lines(self, run_dir: Path | None) -> list[str]:
        if run_dir is None:
            return [f"task dpo from {self.cfg.train.init_from or '(set --init-from)'}"]
        return super().info_lines(run_dir)
