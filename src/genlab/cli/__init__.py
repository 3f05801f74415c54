"""Command line: parse arguments, call the library, print. Bad input ends in one line on stderr
and exit status 2; Ctrl-C in exit status 130."""

from __future__ import annotations

import argparse
import os
import pkgutil
import sys

import genlab.bench
from genlab.cli import commands
from genlab.cli import serve as serve_cli
from genlab.errors import GenlabError
from genlab.scaling.laws import LAWS
from genlab.scaling.sweep import KINDS


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, no usage dump
        raise GenlabError(f"{self.prog}: {message} (see `{self.prog} --help`)")


def _positive_int(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not an integer") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"{s!r} must be >= 1")
    return v


def _nonneg_float(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not a number") from None
    if not v >= 0 or v == float("inf"):
        raise argparse.ArgumentTypeError(f"{s!r} must be a finite number >= 0")
    return v


def _positive_float(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not a number") from None
    if not 0 < v < float("inf"):
        raise argparse.ArgumentTypeError(f"{s!r} must be a finite number > 0")
    return v


def _unit_float(s: str) -> float:
    v = _nonneg_float(s)
    if v > 1:
        raise argparse.ArgumentTypeError(f"{s!r} must be between 0 and 1")
    return v


def _nonneg_int(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not an integer") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"{s!r} must be >= 0")
    return v


def _port(s: str) -> int:
    v = _positive_int(s)
    if v > 65535:
        raise argparse.ArgumentTypeError(f"{s!r} is not a TCP port (1 to 65535)")
    return v


def _float_list(s: str) -> list[float]:
    """'1e12,3e12' -> [1e12, 3e12], every value a positive finite number."""
    return [_positive_float(x.strip()) for x in s.split(",")]


def _add_scaling_parsers(sub) -> None:
    """genlab plan / sweep / fit (genlab.scaling; see docs/scaling.md)."""
    pn = sub.add_parser("plan", help="compute-optimal model, data, batch, lr and schedule for a budget")
    pn.add_argument("--compute", type=_positive_float, metavar="C", help="training FLOPs (C = M * D)")
    pn.add_argument("--tokens", type=_positive_float, metavar="D", help="training tokens")
    pn.add_argument(
        "--model-flops",
        type=_positive_float,
        metavar="M",
        help="FLOPs per token in the law's accounting (deepseek: M; chinchilla, epoch: 6N)",
    )
    pn.add_argument("--law", choices=tuple(LAWS), default="deepseek", help="model/data allocation law")
    pn.add_argument("--preset", help="take sequence length, vocabulary and GQA grouping from a preset")
    pn.add_argument("--seq-len", type=_positive_int, help="tokens per sequence (default 4096 or the preset's)")
    pn.add_argument("--vocab", type=_positive_int, help="vocabulary size (default 102400 or the preset's)")
    pn.add_argument("--micro-batch", type=_positive_int, default=16, help="at most this many sequences per micro-batch")
    pn.add_argument("--aspect", type=_positive_float, default=64.0, help="preferred d_model / n_layer of the shape")
    pn.add_argument("--json", action="store_true")

    sw = sub.add_parser("sweep", help="lr x batch grids and IsoFLOP profiles, one run dir per point; resumable")
    sw.add_argument("--out", required=True, help="sweep directory (rerun the same command to continue)")
    sw.add_argument("--budgets", type=_float_list, help="compute budgets in FLOPs, e.g. 5e11,1.5e12,4.5e12")
    sw.add_argument("--kind", choices=KINDS, help="which grids (default both)")
    sw.add_argument("--lr-factors", type=_float_list, help="multiples of eta_opt(C) (default 0.5,1,2)")
    sw.add_argument("--batch-factors", type=_float_list, help="multiples of B_opt(C) (default 0.5,1,2)")
    sw.add_argument(
        "--size-factors", type=_float_list, help="IsoFLOP sizes, multiples of M_opt(C) (default 1,2,4,8,16)"
    )
    sw.add_argument("--lr-batch-size", type=_positive_float, help="the lr x batch model, x M_opt(C) (default 4)")
    sw.add_argument(
        "--lr-center", type=_positive_float, help="IsoFLOP lr and lr grid centre, x eta_opt(C) (default 0.25)"
    )
    sw.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config for every point, e.g. --set data.path=corpus.txt (repeatable)",
    )
    sw.add_argument("--dry-run", action="store_true", help="print the grid and its compute; run nothing")
    sw.add_argument(
        "--estimate",
        action="store_true",
        help="with --dry-run: time a few steps of every distinct shape here and print the expected duration",
    )

    ft = sub.add_parser("fit", help="fit lr/batch, IsoFLOP and Chinchilla laws to a sweep's results.csv")
    ft.add_argument("results", help="SWEEP/results.csv")
    ft.add_argument("--out", help="folder for fit.json and the plots (default: next to RESULTS, in fit/)")
    ft.add_argument("--bootstrap", type=_nonneg_int, default=1000, help="resamples for the intervals (0 = none)")
    ft.add_argument("--seed", type=int, default=0)
    ft.add_argument("--json", action="store_true")


def _unit_fraction(s: str) -> float:
    v = _nonneg_float(s)
    if v > 0.5:
        raise argparse.ArgumentTypeError(f"{s!r} must be between 0 and 0.5")
    return v


def _add_data_parsers(sub) -> None:
    """genlab prepare / data stats (genlab.data.shards, genlab.data.stats; see docs/data-format.md)."""
    pp = sub.add_parser(
        "prepare",
        help="tokenize corpora once into memory-mapped shards (a DATA_DIR for data.path); resumable",
        description="Tokenize SRC... into DATA_DIR: token-id shards, document index, manifest.json "
        "(docs/data-format.md). Re-running the same command continues an interrupted prepare.",
    )
    pp.add_argument(
        "sources",
        nargs="+",
        metavar="SRC",
        help="a .txt/.md/.py file, .jsonl(.gz/.zst), .parquet, a Hugging Face save_to_disk directory, "
        "a directory of these, or 'embedded' (the embedded corpus)",
    )
    pp.add_argument("--out", required=True, metavar="DATA_DIR", help="output directory (new, or this command's)")
    pp.add_argument(
        "--tokenizer",
        metavar="PATH",
        help="a tokenizer.json, a directory holding one (Hugging Face model dir, genlab run dir), or 'byte' "
        "(default: train byte-level BPE)",
    )
    pp.add_argument(
        "--vocab-size",
        type=_positive_int,
        metavar="N",
        help="vocabulary of the BPE trained on a bounded sample of the training documents (default 2048)",
    )
    pp.add_argument("--text-field", default="text", metavar="NAME", help="jsonl field / column of the text")
    pp.add_argument(
        "--workers", type=_positive_int, metavar="N", help="tokenizer processes (default: the number of CPUs)"
    )
    pp.add_argument(
        "--val-fraction",
        type=_unit_fraction,
        default=0.05,
        metavar="F",
        help="share of documents in the validation split, chosen by a hash of their text (default 0.05)",
    )
    pp.add_argument("--shard-tokens", type=_positive_int, metavar="N", help="tokens per training shard (default 2^26)")
    pp.add_argument("--no-progress", action="store_true", help="no live progress bar")

    d = sub.add_parser("data", help="inspect a prepared DATA_DIR")
    dsub = d.add_subparsers(dest="data_cmd", required=True, parser_class=_Parser)
    ds = dsub.add_parser(
        "stats", help="documents, tokens, bytes per token, splits, per-source shares, a length histogram PNG"
    )
    ds.add_argument("data_dir", metavar="DATA_DIR")
    ds.add_argument("--json", action="store_true", help="print the statistics as one JSON object")
    ds.add_argument(
        "--verify", action="store_true", help="also check every shard's SHA-256 against the manifest (reads all)"
    )
    ds.add_argument("--out", metavar="PNG", help="the length histogram (default DATA_DIR/length_hist.png)")
    for name, what in (
        ("embedded-sft", "instruction conversations ({'messages': [...]}) built from Python's docs"),
        ("embedded-dpo", "preference pairs ({'prompt', 'chosen', 'rejected'}) built from Python's docs"),
    ):
        de = dsub.add_parser(name, help=f"write the embedded {what} as JSONL")
        de.add_argument("out", metavar="OUT.jsonl", help="the file to write (its directory must exist)")
        de.add_argument("--split", choices=("train", "val"), default="train", help="which split (by source document)")
        de.add_argument("--seed", type=int, default=0, help="chooses phrasings, system messages, rejected answers")


def _bench_names() -> list[str]:
    """Every public module in genlab/bench/ is a benchmark with a run(); common.py holds helpers and
    _*.py are exploration scripts (`python -m genlab.bench._NAME`)."""
    modules = pkgutil.iter_modules(genlab.bench.__path__)
    return sorted(m.name for m in modules if m.name != "common" and not m.name.startswith("_"))


def _add_device(p: argparse.ArgumentParser) -> None:
    """--device of the commands that run a trained model (sample, eval, detect; chat too when it comes)."""
    p.add_argument(
        "--device",
        default="auto",
        help="where the model runs: auto (default: cuda when a CUDA GPU is available, else cpu), cpu, cuda, cuda:N",
    )


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="genlab", description="Train, evaluate and sample generative models.")
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=_Parser)

    t = sub.add_parser("train", help="train a model; writes a run directory")
    t.add_argument("--preset", help="start from a preset (see `genlab presets`)")
    t.add_argument("--config", help="TOML config file applied after the preset")
    t.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one config key, e.g. --set train.lr=3e-4 (repeatable)",
    )
    t.add_argument("--steps", type=_positive_int, help="shortcut for --set train.steps=N")
    t.add_argument("--out", help="run directory (default runs/PRESET-TIMESTAMP)")
    t.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out in place from its last checkpoint (its config, optimizer and data position)",
    )
    t.add_argument(
        "--init-from",
        metavar="SRC",
        help="start a NEW run from the weights of SRC: a genlab run dir (best or last checkpoint) or a Hugging Face "
        "directory (Llama, Mistral, Qwen2, DeepSeek-V3); the model section and tokenizer come from SRC, the rest "
        "from --preset/--config/--set, at step 0 with a fresh optimizer (unlike --resume)",
    )
    t.add_argument("--no-progress", action="store_true", help="no live progress bar")
    t.add_argument(
        "--nproc",
        type=_positive_int,
        default=1,
        help="data-parallel processes (per node): launches torchrun --nproc-per-node N (train.parallel = ddp | "
        "fsdp); train.batch_rows and train.grad_accum are per process",
    )
    t.add_argument(
        "--nnodes", type=_positive_int, default=1, help="machines of the job; run this command on each (torchrun)"
    )
    t.add_argument("--node-rank", type=_nonneg_int, default=0, help="this machine's number, 0 to NNODES-1")
    t.add_argument("--master-addr", metavar="HOST", help="address of node 0, reachable from every node (--nnodes > 1)")
    t.add_argument("--master-port", type=_port, default=29500, help="free TCP port on node 0 (default 29500)")

    s = sub.add_parser("sample", help="sample from a trained run (text, image grids, binary vectors)")
    s.add_argument("run")
    s.add_argument("--prompt", default="")
    s.add_argument("--max-new-tokens", type=_positive_int, default=200)
    s.add_argument("--temperature", type=_nonneg_float, default=0.8, help="0 = greedy")
    s.add_argument("--top-k", type=_nonneg_int, default=0, help="keep the K most likely tokens (0 = all)")
    s.add_argument("--top-p", type=_unit_float, default=1.0, help="nucleus sampling mass (1 = off)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--no-cache", action="store_true", help="recompute the whole sequence every step")
    s.add_argument(
        "--speculative",
        action="store_true",
        help="deepseek with MTP: greedy decoding drafted by the MTP module (same text; reports acceptance)",
    )
    s.add_argument(
        "--infill",
        metavar="TEXT",
        help="lm, masked / any-order runs: fill the <mask> spans of TEXT (<mask:N> = N tokens)",
    )
    s.add_argument("--span", type=_positive_int, default=8, help="--infill: tokens a bare <mask> stands for")
    s.add_argument(
        "--order",
        choices=("left-to-right", "random", "confident"),
        default="left-to-right",
        help="--infill: which hole is filled next",
    )
    s.add_argument("-n", "--num", type=_positive_int, default=64, help="density, diffusion: how many samples")
    s.add_argument(
        "--out",
        help="density, diffusion: output file (density: a .png grid for image-shaped data, "
        "or .npy; default RUN/samples.png or RUN/samples.npy)",
    )
    s.add_argument("--steps", type=_positive_int, default=50, help="diffusion: sampler steps")
    s.add_argument("--sampler", choices=("ddim", "ddpm"), default="ddim", help="diffusion: sampler")
    s.add_argument(
        "--guidance",
        type=_nonneg_float,
        default=3.0,
        help="diffusion: classifier-free guidance scale (1 = plain conditional, 0 = unconditional)",
    )
    s.add_argument("--eta", type=_nonneg_float, default=0.0, help="diffusion, ddim: noise (0 = deterministic)")
    _add_device(s)

    c = sub.add_parser(
        "chat",
        help="talk to a language-model run in the terminal, through its chat template (streamed answers)",
        description="A terminal chat with RUN: the run's chat_template.jinja (plain User:/Assistant: turns for a run "
        "without one), history, answers streamed until the end-of-turn token. Commands: /reset, /system TEXT, "
        "/temperature X, /help, /exit (or Ctrl-D).",
    )
    c.add_argument("run")
    c.add_argument("--max-new-tokens", type=_positive_int, default=256, help="longest answer in tokens")
    c.add_argument("--temperature", type=_nonneg_float, default=0.7, help="0 = greedy (/temperature X changes it)")
    c.add_argument("--top-k", type=_nonneg_int, default=0, help="keep the K most likely tokens (0 = all)")
    c.add_argument("--top-p", type=_unit_float, default=0.9, help="nucleus sampling mass (1 = off)")
    c.add_argument("--seed", type=int, default=0, help="answer i is sampled with seed + i")
    c.add_argument("--system", metavar="TEXT", help="a system message to start with (/system TEXT changes it)")
    _add_device(c)

    e = sub.add_parser(
        "eval", help="evaluate a run: LM loss, perplexity, bits/byte; density test NLL; diffusion and detection metrics"
    )
    e.add_argument("run")
    e.add_argument("--data", help="evaluate on this corpus instead of the run's validation split")
    e.add_argument("--json", action="store_true")
    e.add_argument(
        "--tasks",
        metavar="NAME[,NAME]",
        help="LM runs: run these lm-evaluation-harness tasks instead (`lm-eval ls tasks` lists them; "
        "needs pip install 'genlab[eval]')",
    )
    e.add_argument("--limit", type=_positive_int, help="--tasks: at most N examples per task")
    e.add_argument("--batch-size", type=_positive_int, help="--tasks: requests per packed forward pass (default 64)")
    e.add_argument("--include-path", metavar="DIR", help="--tasks: also read task YAML files from DIR")
    _add_device(e)

    i = sub.add_parser("info", help="config, parameter count and FLOPs per token of a run or preset")
    i.add_argument("run", help="a run directory or a preset name")

    ex = sub.add_parser(
        "export", help="write an LM run as a Hugging Face directory (dense: Llama, deepseek: DeepseekV3)"
    )
    ex.add_argument("run")
    ex.add_argument("out", help="output directory (must not exist or be empty)")
    ex.add_argument(
        "--format",
        choices=["hf"],
        default="hf",
        help="hf: config.json, safetensors, tokenizer files, generation_config.json (AutoModelForCausalLM)",
    )
    ex.add_argument(
        "--shard-size",
        default="2GB",
        help="split the weights into shards of at most this size + model.safetensors.index.json (default 2GB)",
    )
    mg = sub.add_parser(
        "merge", help="fold a LoRA run's adapters into its base weights: a new full-weight run directory"
    )
    mg.add_argument("run", help="a run trained with train.lora_rank > 0")
    mg.add_argument("out", help="the new run directory (must not exist or be empty)")
    im = sub.add_parser("import", help="make a genlab run dir from a Hugging Face directory")
    im.add_argument("hf_dir", help="deepseek_v3 or dense Llama-style: config.json + *.safetensors")
    im.add_argument("out", help="the new run directory")

    pl = sub.add_parser("plot", help="write loss and learning-rate curves of a run as PNG")
    pl.add_argument("run")

    pr = sub.add_parser("presets", help="list the presets")
    pr.add_argument("--keys", action="store_true", help="also list every config key")

    sub.add_parser("demo", help="train the default model on the embedded corpus, evaluate, sample")

    dt = sub.add_parser("detect", help="stream a feature file through an action detection run, frame by frame")
    dt.add_argument("run")
    dt.add_argument("--features", required=True, help="(frames, feat_dim) float .npy of one video")
    dt.add_argument(
        "--smooth", type=_positive_int, default=1, help="per-class max of the scores over the last K frames (1 = off)"
    )
    dt.add_argument("--json", action="store_true", help="one JSON object per frame (JSON lines)")
    dt.add_argument("--out", help="also write the (frames, classes) scores to this .npy or .csv file")
    _add_device(dt)

    serve_cli.add_parser(sub, _positive_int, _port, _nonneg_int)
    _add_data_parsers(sub)
    _add_scaling_parsers(sub)

    b = sub.add_parser("bench", help="benchmarks (see docs/benchmarks.md)")
    b.add_argument("which", choices=_bench_names(), help="which benchmark")
    b.add_argument("--steps", type=_positive_int, default=None, help="timed steps per configuration")
    b.add_argument("--json", dest="json_out", help="also write the results to this JSON file")
    b.add_argument("--quick", action="store_true", help="small shapes, for a smoke test")
    return p


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return getattr(commands, f"cmd_{args.cmd}")(args) or 0
    except GenlabError as e:
        msg = str(e).splitlines()[0] if str(e) else "error"
        print(f"genlab: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if os.environ.get("RANK", "0") == "0":  # under torchrun: once, from rank 0
            print("genlab: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `genlab sample RUN | head`: the reader left; not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
