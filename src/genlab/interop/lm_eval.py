"""lm-evaluation-harness on a genlab run: `genlab eval RUN --tasks NAME[,NAME]`.

`GenlabLM` is an `lm_eval.api.model.LM` over a genlab language model (lm and deepseek runs, causal
objective). It talks to the model in genlab's own packed form: every forward pass packs up to
`batch_size` requests back to back, one document each (`cu_seqlens`: attention never crosses
documents), so a batch has no padding and no attention mask beyond the documents' own; the head
runs only on the positions whose log-probabilities a request asks for. Token ids are the run's
own tokenizer, with the start token (BOS, `<|endoftext|>` for BPE runs) before every document as
genlab trains; contexts longer than the run's `data.packing_length` lose tokens from the left.

    loglikelihood           log P(continuation | BOS + context), summed over the continuation's
                            tokens, and whether greedy decoding would have produced it
    loglikelihood_rolling   log P(text | BOS) in windows of packing_length tokens (lm-eval's
                            rolling windows: every token predicted once, with as much context as fits)
    generate_until          greedy decoding with the KV cache (genlab.generate) until a stop string,
                            the start token (end of document) or max_gen_toks

Runs with the byte tokenizer have no start token: the first token of a document with an empty
context is then the context (it is not scored), as in genlab's own `val_loss`.

Why an adapter rather than export + lm-eval's `--model hf`: the HF path pads each batch to its
longest request and runs the head over every position; genlab's packed batch has neither cost
(docs/benchmarks.md, "lm-eval": measured times of both on the same tasks).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from genlab.errors import GenlabError
from genlab.families.lm.task import LMTask
from genlab.generate import SamplingSettings, generate
from genlab.train.rundir import RunDir, load_run

INSTALL_HINT = "pip install 'genlab[eval]'"
DEFAULT_BATCH_SIZE = 64  # requests per packed forward pass
BOOTSTRAP_ITERS = 1000  # stderr of non-mean metrics (perplexities); lm-eval's CLI uses 100000


def require_lm_eval() -> None:
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        raise GenlabError(f"--tasks needs lm-evaluation-harness, which is not installed: {INSTALL_HINT}") from None


def _lm_base():
    require_lm_eval()
    from lm_eval.api.model import LM

    return LM


class _Scorer:
    """Sums of log-probabilities of target tokens, many (context, continuation) token lists per forward."""

    def __init__(self, model, max_length: int, batch_size: int):
        self.model, self.max_length, self.batch_size = model, max_length, batch_size
        self.device = next(model.parameters()).device

    @torch.no_grad()
    def score(self, pairs: list[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        """(sum of log P(cont[i] | ctx + cont[:i]), every cont token is the argmax) per pair; ctx is
        non-empty. The model sees the last max_length tokens of ctx + cont[:-1]."""
        out: list[tuple[float, bool]] = [(0.0, True)] * len(pairs)
        # longest first: the first forward is the largest, so running out of memory shows at once
        order = sorted(range(len(pairs)), key=lambda i: -(len(pairs[i][0]) + len(pairs[i][1])))
        for s in range(0, len(order), self.batch_size):
            chunk = order[s : s + self.batch_size]
            ids, pos, cu, rows, targets, owner = [], [], [0], [], [], []
            for i in chunk:
                ctx, cont = pairs[i]
                cont = cont[-self.max_length :]  # a continuation longer than the window: its tail
                inp = (ctx + cont)[:-1][-self.max_length :]
                n = len(inp)
                ids += inp
                pos += range(n)
                rows += range(cu[-1] + n - len(cont), cu[-1] + n)
                targets += cont
                owner += [i] * len(cont)
                cu.append(cu[-1] + n)
            dev = self.device
            h = self.model(
                torch.tensor(ids, device=dev),
                torch.tensor(pos, device=dev),
                torch.tensor(cu, dtype=torch.int32, device=dev),
                max(b - a for a, b in zip(cu, cu[1:])),
            )
            logp = self.model.head(h[torch.tensor(rows, device=dev)]).float().log_softmax(-1)
            tg = torch.tensor(targets, device=dev)
            lp = logp.gather(1, tg[:, None])[:, 0].double().cpu()
            greedy = (logp.argmax(-1) == tg).cpu()
            owner_t = torch.tensor(owner)
            sums = torch.zeros(len(pairs), dtype=torch.float64).index_add_(0, owner_t, lp)
            misses = torch.zeros(len(pairs), dtype=torch.int64).index_add_(0, owner_t, (~greedy).long())
            for i in chunk:
                out[i] = (float(sums[i]), bool(misses[i] == 0))
        return out


def rolling_windows(tokens: list[int], prefix: int | None, max_length: int) -> list[tuple[list[int], list[int]]]:
    """(context, continuation) windows that predict every token of `tokens` once (lm-eval's rolling
    windows, made disjoint), each seeing up to max_length tokens. Without a prefix token the first
    token is context only."""
    if prefix is None:
        if len(tokens) < 2:
            return []
        prefix, tokens = tokens[0], tokens[1:]
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

    wins = get_rolling_token_windows(tokens, prefix, max_length, context_len=1)
    return [make_disjoint_window(w) for w in wins]


class _GenlabLMMixin:
    """The LM methods; mixed with lm_eval's LM base at construction (lm-eval is an optional extra)."""

    def _setup(self, model, tokenizer, max_length: int, batch_size: int):
        self.model, self.tok, self.max_length = model, tokenizer, max_length
        self.bos = tokenizer.bos_id
        self.scorer = _Scorer(model, max_length, batch_size)

    # -------------------------------------------------------------- tokens
    def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """Token ids of (context, continuation) as the model sees them: BOS + context, continuation.
        Trailing spaces of the context move to the continuation and the two are tokenized together
        (lm-eval's HF model does the same), so a BPE merge across the boundary is the one the model
        would see in running text."""
        n_space = len(context) - len(context.rstrip())
        if n_space:
            context, continuation = context[:-n_space], context[-n_space:] + continuation
        whole = self.tok.encode(context + continuation)
        ctx = self.tok.encode(context)
        ctx, cont = whole[: len(ctx)], whole[len(ctx) :]
        if self.bos is not None:
            ctx = [self.bos] + ctx
        elif not ctx:  # no start token: the first continuation token is the context
            ctx, cont = cont[:1], cont[1:]
        return ctx, cont

    # -------------------------------------------------------------- the LM API
    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        pairs = [self.encode_pair(*r.args) for r in requests]
        return self.scorer.score(pairs)

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        windows, owner = [], []
        for j, r in enumerate(requests):
            for w in rolling_windows(self.tok.encode(r.args[0]), self.bos, self.max_length):
                windows.append(w)
                owner.append(j)
        totals = [0.0] * len(requests)
        for j, (lp, _) in zip(owner, self.scorer.score(windows)):
            totals[j] += lp
        return totals

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        return [self.greedy_until(*r.args) for r in requests]

    def greedy_until(self, context: str, gen_kwargs: dict) -> str:
        kw = dict(gen_kwargs or {})
        until = kw.get("until") or []
        until = [until] if isinstance(until, str) else list(until)
        max_new = max(1, min(int(kw.get("max_gen_toks", 256)), self.max_length - 1))
        ids = self.tok.encode(context)
        if self.bos is not None:
            ids = [self.bos] + ids
        ids = ids[-(self.max_length - max_new) :]
        if not ids:
            return ""
        got: list[int] = []
        text = ""
        for nxt in generate(self.model, ids, SamplingSettings(max_new, temperature=0.0), stop_id=self.bos):
            if nxt == self.bos:
                break
            got.append(nxt)
            text = self.tok.decode(got)
            if any(u and u in text for u in until):
                break
        cut = min((text.find(u) for u in until if u and u in text), default=len(text))
        return text[:cut]


def GenlabLM(model, tokenizer, max_length: int, batch_size: int = DEFAULT_BATCH_SIZE):  # noqa: N802
    """An lm_eval LM instance over a genlab causal language model (see the module docstring)."""
    base = _lm_base()
    cls = type("GenlabLM", (_GenlabLMMixin, base), {})
    lm = cls()
    lm._setup(model, tokenizer, max_length, batch_size)
    return lm


# ---------------------------------------------------------------------------- tasks and the run
def _quiet() -> None:
    for name in ("lm_eval", "datasets", "httpx", "huggingface_hub"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        import datasets

        datasets.disable_progress_bars()
    except ImportError:  # pragma: no cover (lm-eval depends on datasets)
        pass


def task_manager(names: list[str], include_path: str | None = None):
    """A TaskManager that knows every name in `names`. With include_path, the directory alone is indexed
    first (a second or two, against about ten for lm-eval's ~15k built-in tasks); the built-ins only when
    a name is not there."""
    from lm_eval.tasks import TaskManager

    if include_path is not None and not Path(include_path).is_dir():
        raise GenlabError(f"--include-path {include_path}: not a directory")
    if include_path is not None:
        tm = TaskManager(include_path=include_path, include_defaults=False)
        if all(n in tm.all_tasks or Path(n).is_file() for n in names):
            return tm
    tm = TaskManager(include_path=include_path)
    unknown = [n for n in names if n not in tm.all_tasks and not Path(n).is_file()]  # a name or a YAML file
    if unknown:
        where = f" or in {include_path}" if include_path else " (a local task YAML: --include-path DIR)"
        raise GenlabError(
            f"unknown lm-eval task {', '.join(map(repr, unknown))}: not among lm-eval's tasks{where}; "
            "list them with `lm-eval ls tasks`"
        )
    return tm


def parse_task_names(spec: str) -> list[str]:
    names = [n.strip() for n in spec.split(",")]
    if not spec.strip() or any(not n for n in names):
        raise GenlabError(f"--tasks {spec!r}: give task names separated by commas, e.g. --tasks arc_easy,hellaswag")
    return list(dict.fromkeys(names))


def load_lm_run(path, device: str = "cpu"):
    """(run, task, model) of a causal LM run, or a one-line error naming what the run is instead."""
    run = RunDir.open(path)
    cfg = run.config()
    task = cfg.family.make_task(cfg)  # checked before any weights are read
    if not isinstance(task, LMTask):
        raise GenlabError(
            f"{run.path}: a {cfg.family.name} run; lm-eval tasks need a language model run (lm or deepseek)"
        )
    if task.objective != "causal":
        raise GenlabError(
            f"{run.path}: trained with train.objective = {task.objective}; lm-eval tasks need a causal run"
        )
    run, _, task, model = load_run(path, device)
    return run, task, model


def evaluate_tasks(
    run_path,
    tasks: str | list[str],
    limit: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    device: str = "cpu",
    include_path: str | None = None,
    log_samples: bool = False,
) -> dict:
    """Run lm-eval tasks on a genlab LM run. Returns {"run", "checkpoint", "tasks": {name: {metric: value}},
    "n_samples": {name: n}, "seconds"} and, with log_samples, lm-eval's per-example "samples"."""
    require_lm_eval()
    if limit is not None and limit < 1:
        raise GenlabError(f"--limit {limit}: must be >= 1 (examples per task)")
    if batch_size < 1:
        raise GenlabError(f"--batch-size {batch_size}: must be >= 1")
    names = parse_task_names(tasks) if isinstance(tasks, str) else list(tasks)
    start = time.perf_counter()
    _quiet()
    run, task, model = load_lm_run(run_path, device)
    tm = task_manager(names, include_path)
    from lm_eval.evaluator import evaluate

    loaded = tm.load(names)
    for t in loaded["tasks"].values():  # what simple_evaluate does, without its environment report
        if t.get_config("num_fewshot") is None:
            t.set_config(key="num_fewshot", value=0)
        t.set_fewshot_seed(seed=1234)
    lm = GenlabLM(model, task.tokenizer, task.cfg.data.packing_length, batch_size)
    res = evaluate(lm, loaded, limit=limit, bootstrap_iters=BOOTSTRAP_ITERS, log_samples=log_samples)
    out = {
        "run": str(run.path),
        "checkpoint": str(run.checkpoint_used),
        "tasks": {
            name: {k: v for k, v in r.items() if k not in ("name", "alias", "sample_len")}
            for name, r in res["results"].items()
        },
        "n_samples": {name: n["effective"] for name, n in res.get("n-samples", {}).items()},
        "seconds": time.perf_counter() - start,
    }
    if log_samples:
        out["samples"] = res["samples"]
    return out
