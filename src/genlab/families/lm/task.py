"""Language modelling task: corpus -> tokenizer -> packed rows -> model -> loss (next token,
masked token or any order), evaluation in nats, perplexity and bits per byte, and `genlab sample`
(decoding itself is genlab.generate's)."""

from __future__ import annotations

import math
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from genlab.config import RunConfig, from_toml_file
from genlab.data.corpus import open_stream, prepared_dir, require_tokenizer
from genlab.data.mix import MixedStream, open_mix
from genlab.data.packing import IGNORE, Batch, PackedStream
from genlab.data.shards import ShardSet, is_data_dir, sha256_file
from genlab.data.tokenizer import load_tokenizer
from genlab.errors import GenlabError
from genlab.families.lm.model import count_params
from genlab.families.lm.objectives import apply_objective, model_vocab
from genlab.generate import SamplingSettings, generate, infill, parse_infill, speculative_greedy, stream_text
from genlab.ops.loss import head_loss
from genlab.train import init_from
from genlab.train.distributed import batch_line
from genlab.train.flops import flops_per_token
from genlab.train.lora import apply_lora
from genlab.train.rundir import CONFIG
from genlab.train.task import Task

TOKENIZER_FILE = "tokenizer.json"


@dataclass(frozen=True)
class LMSampleOptions:
    """`genlab sample` for language models (the CLI's flags of the same names)."""

    prompt: str = ""
    max_new_tokens: int = 200
    temperature: float = 0.8
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0
    no_cache: bool = False  # recompute the whole sequence every step (the reference)
    speculative: bool = False  # deepseek with MTP: drafted greedy decoding
    infill: str | None = None  # masked / any-order runs: text with <mask> spans
    span: int = 8  # tokens a bare <mask> stands for
    order: str = "left-to-right"  # infill: which hole is filled next

    def settings(self) -> SamplingSettings:
        return SamplingSettings(self.max_new_tokens, self.temperature, self.top_k, self.top_p, self.seed)


class LazyBatch:
    """A training batch known by its layout (rows of document spans); `to(device)` reads the tokens,
    so under torchrun each process reads only the documents of its own micro-batches. Counts come
    from the layout, except for masked / any-order objectives (their target counts are random)."""

    def __init__(self, task: LMTask, rows: list, seed: int | None, sources: list[int] | None = None):
        self.task, self.rows, self.seed = task, rows, seed
        self.sources = sources  # data.mix: the source of each row (its spans are that DATA_DIR's documents)
        self._batch: Batch | None = None
        self.n_real = sum(e - s for row in rows for _, s, e in row)
        self.capacity = len(rows) * task.cfg.data.packing_length

    @property
    def n_targets(self) -> int:
        if self.seed is None:  # causal: every token of a chunk but its last is a target
            return sum(e - s - 1 for row in self.rows for _, s, e in row)
        return self.batch().n_targets

    def batch(self) -> Batch:
        if self._batch is None:
            if self.sources is None:
                b = self.task.train_data.materialize(self.rows)
            else:
                b = self.task.mix.materialize(self.rows, self.sources)
            self._batch = b if self.seed is None else self.task.with_objective(b, self.seed)
        return self._batch

    def to(self, device) -> Batch:
        return self.batch().to(device)


class LMTask(Task):
    """Language modelling for every LM family (lm, deepseek): the family builds the model."""

    def __init__(self, cfg: RunConfig):
        super().__init__(cfg)
        self.tokenizer = None
        self.train_data: PackedStream | None = None
        self.data_dir: Path | None = None
        self.val_data: PackedStream | None = None
        self.mix: MixedStream | None = None  # data.mix: rows drawn from several DATA_DIRs
        self._position: tuple[int, ...] | None = None  # the stream's state after the last next_batch
        self.fresh = False  # prepare(fresh=True): a new run (train.init_from weights are loaded)

    # ------------------------------------------------------------------ data
    def prepare(self, run_dir: Path | None, fresh: bool = True) -> None:
        """The corpus as a prepared DATA_DIR (genlab.data.corpus: a `genlab prepare` directory as it is,
        raw text through a cached prepare); the tokenizer is the DATA_DIR's (fresh run) or the run's own
        (resume, checked against the DATA_DIR's)."""
        d, t = self.cfg.data, self.cfg.train
        self.fresh = fresh
        fresh_tok = "byte" if d.tokenizer == "byte" else ""
        run_tok = Path(run_dir) / TOKENIZER_FILE if run_dir is not None and not fresh else None
        if run_tok is None and t.init_from:  # a run started from weights reads its corpus in their tokenizer
            run_tok = init_from.source_tokenizer(t.init_from)
        if run_tok is not None and not fresh:
            self._check_same_layout(Path(run_dir))
        if d.mix:
            return self._prepare_mix(run_tok)
        if run_tok is not None and fresh and not is_data_dir(d.path):  # init_from: encode with its tokenizer at once
            fresh_tok = str(run_tok)
        self.data_dir = prepared_dir(d.path, fresh_tok, d.vocab_size, d.val_fraction)
        if run_tok is not None:
            if not is_data_dir(d.path) and sha256_file(self.data_dir / TOKENIZER_FILE) != sha256_file(run_tok):
                self.data_dir = prepared_dir(d.path, str(run_tok), d.vocab_size, d.val_fraction)  # raw text, re-encoded
            require_tokenizer(self.data_dir, run_tok)
        self.tokenizer = load_tokenizer(self.data_dir / TOKENIZER_FILE)
        self.train_data = open_stream(
            self.data_dir, "train", d.packing_length, t.batch_rows, t.seed, d.pack_buffer, True
        )
        if self.train_data is None:
            raise GenlabError(f"{d.path or 'the corpus'}: no training documents (all went to validation)")
        self.val_data = open_stream(self.data_dir, "val", d.packing_length, t.batch_rows, 0, d.pack_buffer, False)

    def _check_same_layout(self, run_dir: Path) -> None:
        """A resumed run's data position is per source: data.mix may change weights and paths on resume,
        not its number of sources, nor switch between data.mix and data.path."""
        config = run_dir / CONFIG
        if not config.is_file():
            return
        before, now = len(from_toml_file(config).data.mix), len(self.cfg.data.mix)
        if before != now:
            said = {0: "one corpus (data.path)"}
            raise GenlabError(
                f"{run_dir} trained on {said.get(before, f'a mixture of {before} sources')}; data.mix now has "
                f"{said.get(now, f'{now} sources')}: data.mix cannot change on resume (its data position is per "
                "source); start a new run"
            )

    def _prepare_mix(self, run_tok: Path | None) -> None:
        """data.mix: the sources' shared tokenizer is the run's (genlab.data.mix checks they share one)."""
        d, t = self.cfg.data, self.cfg.train
        self.mix = open_mix(d.mix, d.packing_length, t.batch_rows, t.seed, d.pack_buffer)
        self.data_dir = Path(next(iter(d.mix)))
        if run_tok is not None:
            for path in d.mix:
                require_tokenizer(Path(path), run_tok)
        self.tokenizer = load_tokenizer(self.data_dir / TOKENIZER_FILE)
        self.train_data, self.val_data = None, None

    def save_artifacts(self, run_dir: Path) -> None:
        shutil.copyfile(self.data_dir / TOKENIZER_FILE, Path(run_dir) / TOKENIZER_FILE)  # byte-identical

    def load_for_inference(self, run_dir: Path) -> None:
        self.tokenizer = load_tokenizer(Path(run_dir) / TOKENIZER_FILE)

    def eval_dataset(self, path: str, run_dir: Path) -> PackedStream:
        """Every document of `path` (a DATA_DIR: its validation split) in the run's tokenizer."""
        run_tok = Path(run_dir) / TOKENIZER_FILE
        data_dir = prepared_dir(path, str(run_tok), self.cfg.data.vocab_size, 0.0)
        require_tokenizer(data_dir, run_tok)
        d = self.cfg.data
        split = "val" if is_data_dir(path) and len(ShardSet(data_dir, "val", verify="size")) else "train"
        return open_stream(data_dir, split, d.packing_length, self.cfg.train.batch_rows, 0, d.pack_buffer, False)

    # ------------------------------------------------------------------ model and loss
    @property
    def objective(self) -> str:
        return self.cfg.train.objective

    @property
    def mask_id(self) -> int | None:
        """The <mask> token of a masked / any-order run: one past the tokenizer's ids."""
        return None if self.objective == "causal" else self.tokenizer.vocab_size

    def build_model(self) -> torch.nn.Module:
        """The family's model; a fresh run with train.init_from starts from those weights."""
        model = self.cfg.family.build_model(
            self.cfg.model,
            model_vocab(self.tokenizer.vocab_size, self.objective),
            self.cfg.data.packing_length,
            causal=self.objective == "causal",
        )
        if self.cfg.train.init_from and self.fresh:
            init_from.load_weights(model, self.cfg.train.init_from)
        if self.cfg.train.lora_rank:  # LoRA checkpoints hold adapters: the frozen base is init_from's on every build
            if not self.fresh:
                init_from.load_weights(model, self.cfg.train.init_from)
            model = apply_lora(model, self.cfg.train)
        return model

    def initial_state(self):
        if self.mix is not None:  # (row, then epoch, block, row, tokens per source): genlab.data.mix
            return self.mix.initial_state()
        return (0, 0, 0)  # (epoch, block, row): genlab.data.packing.PackedStream

    def with_objective(self, batch: Batch, seed: int) -> Batch:
        if self.objective == "causal":
            return batch
        g = torch.Generator().manual_seed(seed)
        return apply_objective(
            batch,
            self.objective,
            self.mask_id,
            self.tokenizer.vocab_size,
            g,
            self.cfg.train.mask_prob,
            self.tokenizer.bos_id,
        )

    def next_batch(self, state) -> tuple[LazyBatch, tuple[int, int, int]]:
        """The batch's layout only: its tokens are read when a process trains on it (LazyBatch)."""
        sources = None
        if self.mix is not None:
            rows, sources, new_state = self.mix.layout_at(state)
        elif len(state) != 3:
            raise GenlabError(
                f"the saved data position {list(state)} is a mixture's (data.mix); this run reads one corpus: "
                "data.mix cannot change on resume"
            )
        else:
            rows, new_state = self.train_data.layout_at(tuple(state))
        seed = None
        if self.objective != "causal":  # the corruption depends only on (seed, position in the stream): resumable
            seed = self.cfg.train.seed
            for x in state[:3] if sources is None else state[:1]:  # (epoch, block, row) | the mixture's row
                seed = seed * 1_000_003 + x
        self._position = new_state
        return LazyBatch(self, rows, seed, sources), new_state

    def on_optimizer_step(self, model, lr_factor: float, skipped: bool) -> dict:
        out = model.on_optimizer_step(lr_factor=lr_factor, skipped=skipped)
        if self.mix is not None and self._position is not None:  # per source: tokens given, epochs finished
            out = {**out, **self.mix.metrics(self._position)}
        return out

    def batch_units(self, batch: LazyBatch) -> tuple[int, int]:
        return batch.n_real, batch.capacity  # real tokens, token slots

    def model_flops_per_token(self) -> float | None:
        """M of the model (no vocabulary term), for MFU."""
        return float(flops_per_token(self.cfg.model, 0, self.cfg.data.packing_length)["M"])

    @staticmethod
    def loss(model, batch: Batch) -> tuple[torch.Tensor, int]:
        """Summed cross-entropy (nats) where targets are defined, and the count it is a sum over
        (predicted tokens; for any-order, the sequences' tokens, see families/lm/objectives.py)."""
        h = model(batch.input_ids, batch.position_ids, batch.cu_seqlens, batch.max_seqlen)
        loss_sum = head_loss(model.head, h, batch.targets, batch.weights)
        extra = model.aux_loss(batch, h)  # MoE balance, MTP (training); None for models without extras
        if extra is not None:  # a mean-scale term: weighted by this batch's share of the step's targets
            loss_sum = loss_sum + extra * batch.n_targets
        return loss_sum, batch.n_targets

    @torch.no_grad()
    def evaluate(
        self, model, data: PackedStream | None = None, max_batches: int | None = None, device="cpu"
    ) -> dict[str, float]:
        """val_loss (nats per predicted token), val_ppl, val_bpb, val_tokens on `data` (default: the
        validation split). data.mix: each source's split (up to max_batches each) as `val_loss/<name>`
        etc., and val_loss / val_bpb their means weighted by the mixture's weights."""
        if data is None and self.mix is not None:
            return self._evaluate_mix(model, max_batches, device)
        data = data if data is not None else self.val_data
        if data is None:
            return {}
        was_training = model.training
        model.eval()
        try:
            nll, n, nbytes = self._eval_sums(model, data, max_batches, device)
        finally:
            model.train(was_training)
        return _eval_metrics(nll, n, nbytes)

    def _eval_sums(self, model, data: PackedStream, max_batches: int | None, device) -> tuple[float, int, float]:
        """(summed NLL, its count, UTF-8 bytes of the counted tokens) over one epoch of `data`."""
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
        return nll, n, nbytes

    def _evaluate_mix(self, model, max_batches: int | None, device) -> dict[str, float]:
        was_training = model.training
        model.eval()
        out: dict[str, float] = {}
        wsum, loss, bpb, tokens = 0.0, 0.0, 0.0, 0
        try:
            for name, w, data in zip(self.mix.names, self.mix.weights, self.mix.val):
                ev = _eval_metrics(*self._eval_sums(model, data, max_batches, device)) if data is not None else {}
                if not ev:
                    continue
                out.update({f"{k}/{name}": v for k, v in ev.items()})
                wsum, loss, bpb, tokens = (
                    wsum + w,
                    loss + w * ev["val_loss"],
                    bpb + w * ev["val_bpb"],
                    tokens + ev["val_tokens"],
                )
        finally:
            model.train(was_training)
        if not wsum:
            return {}
        loss /= wsum
        return {
            "val_loss": loss,
            "val_ppl": math.exp(min(loss, 700)),
            "val_bpb": bpb / wsum,
            "val_tokens": tokens,
            **out,
        }

    # ------------------------------------------------------------------ CLI entry points
    def eval_report(self, run, model, data_path: str | None) -> dict:
        device = next(model.parameters()).device  # genlab eval --device: where load_run put the model
        if data_path:
            data = self.eval_dataset(data_path, run.path)
        else:
            self.prepare(run.path, fresh=False)
            if self.mix is not None:
                return {"data": "validation splits of data.mix", **self.evaluate(model, device=device)}
            data = self.val_data
            if data is None:
                raise GenlabError(f"{run.path}: the corpus has no validation documents; pass --data PATH")
        return {"data": data_path or "validation split", **self.evaluate(model, data, device=device)}

    def info_lines(self, run_dir: Path | None) -> list[str]:
        """Vocabulary, parameters and FLOPs per token; the model is built on the meta device."""
        d = self.cfg.data
        if run_dir is not None:
            vocab = load_tokenizer(Path(run_dir) / TOKENIZER_FILE).vocab_size
        else:
            vocab = 256 if d.tokenizer == "byte" else d.vocab_size
        vocab = model_vocab(vocab, self.objective)  # masked / any-order runs add a <mask> token
        with torch.device("meta"):
            model = self.cfg.family.build_model(
                self.cfg.model, vocab, d.packing_length, causal=self.objective == "causal"
            )
        lines = [f"vocab size            {vocab:,}"]
        n = count_params(model)
        lines += model.info_lines() or [f"parameters            {n['total']:,} (non-embedding {n['non_embedding']:,})"]
        fl = flops_per_token(self.cfg.model, vocab, d.packing_length)  # MoE: activated experts only
        return lines + [
            f"FLOPs/token forward   {fl['fwd_flops_per_token']:,.0f}",
            f"FLOPs/token training  {fl['train_flops_per_token']:,.0f}  (M, non-embedding: {fl['M']:,.0f})",
            f"6N1 / 6N2             {fl['6N1']:,.0f} / {fl['6N2']:,.0f}  (6N1/M {fl['6N1'] / fl['M']:.2f}, "
            f"6N2/M {fl['6N2'] / fl['M']:.2f}; see docs/scaling.md)",
            batch_line(self.cfg.train.batch_rows, self.cfg.train.grad_accum, d.packing_length),
        ]

    sample_options = LMSampleOptions

    def sample(self, run, model, o: LMSampleOptions) -> None:
        s = o.settings()
        if o.infill is not None or self.objective != "causal":
            return self._infill(model, o, s)
        ids = self.prompt_ids(o.prompt)  # checks the prompt before anything is printed
        if o.speculative:  # deepseek MTP self-speculative greedy decoding
            if not len(getattr(model, "mtp", ())):
                raise GenlabError("--speculative needs a deepseek run with model.mtp_depth >= 1")
            out, st = speculative_greedy(model, ids, s.max_new_tokens, stop_id=self.tokenizer.bos_id)
            print(o.prompt + self.tokenizer.decode(out), flush=True)
            print(
                f"speculative greedy: acceptance {st['acceptance']:.2f} ({st['accepted']}/{st['drafted']} drafts), "
                f"{st['tokens_per_s']:.1f} tokens/s, {st['main_forwards']} main-model forwards",
                file=sys.stderr,
            )
            return
        print(o.prompt, end="", flush=True)
        self.stream(model, ids, s, use_cache=not o.no_cache)

    def stream(self, model, ids: list[int], s: SamplingSettings, use_cache: bool = True, out=None) -> str:
        """Print the continuation of `ids` as it is produced (then a newline); return its text."""
        out = out or sys.stdout
        pieces = []
        for piece in stream_text(self.tokenizer, generate(model, ids, s, use_cache=use_cache)):
            out.write(piece)
            out.flush()
            pieces.append(piece)
        out.write("\n")
        out.flush()
        return "".join(pieces)

    def _infill(self, model, o: LMSampleOptions, s: SamplingSettings) -> None:
        """`--infill TEXT`: fill its <mask> spans. A masked / any-order run without --infill continues
        --prompt by filling `--max-new-tokens` masks after it, left to right."""
        if self.objective == "causal":
            raise GenlabError(
                "--infill needs a run trained with train.objective = masked or any-order (this run is "
                "causal: it only continues text); train one with --set train.objective=any-order"
            )
        if o.speculative:
            raise GenlabError("--speculative is for causal deepseek runs with MTP, not infilling")
        text = o.infill if o.infill is not None else o.prompt + f"<mask:{s.max_new_tokens}>"
        ids, n_spans = parse_infill(text, self.tokenizer, self.mask_id, o.span)
        if self.tokenizer.bos_id is not None:
            ids = [self.tokenizer.bos_id] + ids
        n_holes = ids.count(self.mask_id)
        out = infill(model, ids, self.mask_id, s, o.order)
        print(self.tokenizer.decode(out), flush=True)
        print(
            f"filled {n_holes} tokens in {n_spans} span(s), order {o.order}, objective {self.objective}",
            file=sys.stderr,
        )

    # ------------------------------------------------------------------ sampling
    def prompt_ids(self, prompt: str) -> list[int]:
        ids = self.tokenizer.encode(prompt)
        if self.tokenizer.bos_id is not None:
            ids = [self.tokenizer.bos_id] + ids
        if not ids:
            raise GenlabError("the prompt is empty and this tokenizer has no start token; give --prompt TEXT")
        return ids


def _eval_metrics(nll: float, n: int, nbytes: float) -> dict[str, float]:
    if n == 0:
        return {}
    loss = nll / n
    return {
        "val_loss": loss,
        "val_ppl": math.exp(min(loss, 700)),
        "val_bpb": nll / math.log(2) / max(nbytes, 1.0),
        "val_tokens": n,
    }
