"""What each `genlab` subcommand does: call the library, print. Parsing is in cli/__init__.py."""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from genlab import config as C
from genlab.cli.serve import cmd_serve  # noqa: F401  (main dispatches cmd_<name> from this module)
from genlab.data.shards import PrepareSpec, prepare, read_manifest
from genlab.data.stats import HIST_PNG, data_stats, format_stats, plot_lengths
from genlab.errors import GenlabError
from genlab.families.detection.features import load_feature_file
from genlab.families.detection.stream import StreamingDetector, load_detector
from genlab.families.lm.args import LMTrain
from genlab.families.posttrain import chat, embedded
from genlab.generate import SamplingSettings
from genlab.interop.hf import export_hf, import_for_init, import_hf
from genlab.interop.merge import merge_run
from genlab.plot import plot_run
from genlab.scaling import sweep
from genlab.scaling.fit import fit_all, format_fit, read_results
from genlab.scaling.plan import DEFAULT_SEQ_LEN, DEFAULT_VOCAB, format_plan, plan
from genlab.scaling.plots import write_plots
from genlab.train import distributed, init_from
from genlab.train.device import resolve_device
from genlab.train.init_from import is_hf_dir
from genlab.train.launch import Nodes, train_under_torchrun
from genlab.train.rundir import RunDir, load_run
from genlab.train.trainer import prepare_training

DEMO_PRESET = "lm-small"


def _print(*a, **k):
    print(*a, **k, flush=True)


# ---------------------------------------------------------------------------- train
def cmd_train(args) -> int:
    nodes = Nodes(args.nnodes, args.node_rank, args.master_addr, args.master_port)
    nodes.check()  # one-line errors before anything is read
    overrides = list(args.overrides)
    if args.steps:
        overrides.append(f"train.steps={args.steps}")
    if args.resume:
        if args.preset or args.config:
            raise GenlabError("--resume continues the run's own config.toml; drop --preset/--config")
        if args.init_from:
            raise GenlabError("--init-from starts a new run from weights, --resume continues one in place: use one")
        cfg = None
    else:
        if args.init_from:
            if is_hf_dir(args.init_from) and distributed.is_main():
                import_for_init(args.init_from, log=_print)
            overrides.append(f"train.init_from={init_from.absolute(args.init_from)}")
        cfg = init_from.resolve_config(args.preset, args.config, overrides)  # = C.resolve without init_from
        if args.init_from and not isinstance(cfg.train, LMTrain):
            raise GenlabError(f"--init-from is for language-model runs; task {cfg.task!r} trains from scratch")
    if (args.nproc > 1 or args.nnodes > 1) and "WORLD_SIZE" not in os.environ:  # launch torchrun, then wait
        return train_under_torchrun(args.nproc, args.out, args.resume, cfg, _torchrun_child_args(args), nodes)
    run, trainer = prepare_training(cfg, args.out, args.resume, not args.no_progress, overrides)
    main = distributed.is_main()
    if main:
        _print(f"run dir: {run.path}")
    try:
        last = trainer.fit()
    except KeyboardInterrupt:
        if main:
            _print(
                "interrupted: a checkpoint was written; continue with `genlab train --out RUN --resume`",
                file=sys.stderr,
            )
        raise
    finally:
        distributed.teardown()
    if main:
        _report(run, last)
    return 0


def _torchrun_child_args(args) -> list[str]:
    """`genlab train` arguments for each torchrun worker: this command's, less --nproc and the node flags."""
    child = [f"--set={o}" for o in args.overrides] + ["--out", str(args.out)]
    for flag, value in (("--preset", args.preset), ("--config", args.config), ("--init-from", args.init_from)):
        if value:
            child += [flag, value]
    if args.steps:
        child += ["--steps", str(args.steps)]
    return child + ["--resume"] * bool(args.resume) + ["--no-progress"] * bool(args.no_progress)


def _report(run, last: dict) -> None:
    keys = ("step", "loss", "val_loss", "val_ppl", "val_bpb", "tokens_per_s", "mfu")
    parts = [f"{k} {last[k]:.4g}" if isinstance(last[k], float) else f"{k} {last[k]}" for k in keys if k in last]
    _print("finished: " + ", ".join(parts))
    _print(f"run dir: {run.path}")


# ---------------------------------------------------------------------------- sample
def cmd_sample(args) -> int:
    run, _, task, model = load_run(args.run, resolve_device(args.device))
    options = None  # a family without a sampler says so in its own words (Task.sample)
    if task.sample_options is not None:
        fields = {f.name for f in dataclasses.fields(task.sample_options)}
        options = task.sample_options(**{k: v for k, v in vars(args).items() if k in fields})
    task.sample(run, model, options)
    return 0


def cmd_chat(args) -> int:
    """genlab chat RUN: a terminal conversation (genlab.families.posttrain.chat)."""
    s = SamplingSettings(args.max_new_tokens, args.temperature, args.top_k, args.top_p, args.seed)
    session = chat.open_session(args.run, resolve_device(args.device), s)
    if args.system:
        session.system = args.system
    chat.chat_loop(session, chat.line_reader())
    return 0


def cmd_eval(args) -> int:
    if args.tasks is not None:
        return _eval_tasks(args)
    for flag in ("limit", "batch_size", "include_path"):
        if getattr(args, flag) is not None:
            raise GenlabError(f"--{flag.replace('_', '-')} goes with --tasks (lm-evaluation-harness tasks)")
    run, _, task, model = load_run(args.run, resolve_device(args.device))
    res = {"run": str(run.path), **task.eval_report(run, model, args.data)}
    if args.json:
        _print(json.dumps(res))
    else:
        for k, v in res.items():
            _print(f"{k:>12}  {v:.4f}" if isinstance(v, float) else f"{k:>12}  {v}")
    return 0


def _eval_tasks(args) -> int:
    """`genlab eval RUN --tasks ...`: lm-evaluation-harness through genlab's adapter (interop/lm_eval.py)."""
    from genlab.interop import lm_eval as harness

    if args.data:
        raise GenlabError("--data is for genlab's own loss; lm-eval tasks bring their own datasets (drop --data)")
    harness.require_lm_eval()
    names = harness.parse_task_names(args.tasks)
    device = str(resolve_device(args.device))
    res = harness.evaluate_tasks(
        args.run, names, args.limit, args.batch_size or harness.DEFAULT_BATCH_SIZE, device, args.include_path
    )
    if args.json:
        _print(json.dumps(res))
        return 0
    _print(f"# run {res['run']}, {res['checkpoint']}; {res['seconds']:.1f} s")
    _print(f"{'task':<24} {'n':>6}  {'metric':<20} {'value':>10}  {'stderr':>8}")
    for name, metrics in res["tasks"].items():
        for key, v in metrics.items():
            if "_stderr," in key or not isinstance(v, (int, float)):
                continue
            err = metrics.get(key.replace(",", "_stderr,", 1))
            err = f"{err:.4f}" if isinstance(err, (int, float)) else ""
            _print(f"{name:<24} {res['n_samples'].get(name, ''):>6}  {key.split(',')[0]:<20} {v:>10.4f}  {err:>8}")
    return 0


# ---------------------------------------------------------------------------- info
def cmd_info(args) -> int:
    """Config, then the task's description (parameters, FLOPs, ...) of a run or a preset."""
    if args.run in C.presets():
        run, cfg, source = None, C.preset(args.run).validate(), f"preset {args.run}"
    else:
        run = RunDir.open(args.run)
        cfg = run.config()
        source = f"run {run.path} ({run.status().get('status')}, step {run.status().get('step', 0)})"
    task = cfg.family.make_task(cfg)
    _print(f"# {source}")
    _print(C.to_toml(cfg))
    lines = task.info_lines(run.path if run else None)
    if not any(line.startswith("batch:") for line in lines):  # the LM task states it in tokens itself
        lines.append(distributed.batch_line(cfg.train.batch_rows, cfg.train.grad_accum))
    for line in lines:
        _print(f"# {line}")
    return 0


# ---------------------------------------------------------------------------- detect
def cmd_detect(args) -> int:
    """Stream a (frames, feat_dim) .npy through a detection run one frame at a time."""
    out = Path(args.out) if args.out else None
    if out is not None and (out.suffix not in (".npy", ".csv") or not out.parent.is_dir()):
        raise GenlabError(f"--out {args.out}: must be a .npy or .csv file in an existing directory")
    device = resolve_device(args.device)
    model, classes = load_detector(args.run, device)
    feats = load_feature_file(args.features, model.embed.in_features)
    det = StreamingDetector(model, args.smooth, device)
    rows, start, printing = [], time.perf_counter(), True
    for i, frame in enumerate(feats):
        p = det.push(frame)  # (C,) scores for frame i, from frames <= i only
        rows.append(p)
        c = int(p.argmax())
        try:
            if printing and args.json:
                _print(
                    json.dumps(
                        {
                            "frame": i,
                            "class": classes[c],
                            "score": float(p[c]),
                            "scores": {name: float(v) for name, v in zip(classes, p)},
                        }
                    )
                )
            elif printing:
                _print(f"{i:>7}  {classes[c]:<20} {p[c]:.4f}")
        except BrokenPipeError:  # the reader left (`| head`): stop printing; finish only for --out
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            printing = False
            if out is None:
                break
    per_frame = (time.perf_counter() - start) / len(rows)
    if out is not None:
        scores = np.stack(rows)
        tmp = out.with_name(out.name + ".tmp")
        with open(tmp, "wb") as f:
            if out.suffix == ".npy":
                np.save(f, scores)
            else:
                f.write((",".join(classes) + "\n").encode())
                np.savetxt(f, scores, delimiter=",", fmt="%.7g")
        tmp.replace(out)
    print(
        f"genlab detect: {len(feats)} frames, {per_frame * 1e3:.2f} ms per frame (streaming, window "
        f"{model.history}{f', smoothed over {args.smooth}' if args.smooth > 1 else ''})"
        + (f"; scores written to {out}" if out else ""),
        file=sys.stderr,
    )
    return 0


# ---------------------------------------------------------------------------- plot, presets
def cmd_plot(args) -> int:
    run = RunDir.open(args.run)
    for p in plot_run(run):
        _print(p)
    return 0


def cmd_presets(args) -> int:
    table = C.presets()
    width = max(map(len, table))
    for name, (family, p) in table.items():
        _print(f"{name:<{width}}  [{family.name}] {p.description}")
    if args.keys:
        _print_keys()
    return 0


def _print_keys() -> None:
    """Every config key of every family: type, default, allowed values, meaning (from the dataclasses)."""
    _print("\nconfig keys (--set KEY=VALUE, or [section] tables in a --config TOML file)")
    _print("task = " + " | ".join(C.task_names()) + "; each family (selected by task and model.arch) has its own keys")
    shown: set[tuple[str, type]] = set()
    for family in C.families():
        archs = ", ".join(family.archs)
        _print(f"\n[{family.name}] task = {family.task!r}, model.arch = {archs}")
        for section, keys in C.section_keys(family).items():
            owner = getattr(family, section)
            if (section, owner) in shown:
                _print(f"  {section}.*  as above ({owner.__name__})")
                continue
            shown.add((section, owner))
            for info in keys.values():
                allowed = info.allowed()
                _print(
                    f"  {info.key:<40} {info.type:<5} = {info.default!r:<20} "
                    f"{('[' + allowed + '] ') if allowed else ''}{info.doc}"
                )


# ---------------------------------------------------------------------------- demo
DEMO_PROMPTS = ("The ", "def ", "import ")


def cmd_demo(args) -> int:
    cfg = C.preset(DEMO_PRESET).validate()
    _print(
        f"genlab demo: training preset {DEMO_PRESET} on the embedded corpus "
        f"(pydoc topics + a slice of the standard library)"
    )
    run, trainer = prepare_training(cfg, Path("runs") / f"demo-{time.strftime('%Y%m%d-%H%M%S')}")
    _print(f"run dir: {run.path}")
    last = trainer.fit()
    ev = trainer.task.evaluate(trainer.model, device=trainer.device)
    _print(
        f"\nvalidation: loss {ev['val_loss']:.4f}  perplexity {ev['val_ppl']:.2f}  "
        f"bits/byte {ev['val_bpb']:.4f}  ({ev['val_tokens']:,} tokens)"
    )
    _print(f"training throughput (last interval): {last.get('tokens_per_s', 0):,.0f} tokens/s")
    plots = plot_run(run)
    trainer.model.cpu()
    for i, prompt in enumerate(DEMO_PROMPTS):
        _print(f"\n--- sample {i + 1} (prompt {prompt!r}, temperature 0.8, top-k 40) ---")
        sys.stdout.write(prompt)
        trainer.task.stream(
            trainer.model,
            trainer.task.prompt_ids(prompt),
            SamplingSettings(max_new_tokens=120, temperature=0.8, top_k=40, seed=i),
        )
    _print(f"\nplots: {', '.join(str(p) for p in plots)}")
    _print(f"run dir: {run.path}")
    _print(f"next: genlab sample {run.path} --prompt 'def ' | genlab eval {run.path} | genlab info {run.path}")
    return 0


# ---------------------------------------------------------------------------- Hugging Face interop
def cmd_export(args) -> int:
    out = export_hf(args.run, args.out, shard_size=args.shard_size)
    _print(f"exported {args.run} -> {out} (format {args.format})")
    return 0


def cmd_merge(args) -> int:
    out = merge_run(args.run, args.out)
    _print(f"merged the LoRA adapters of {args.run} into its base weights -> run dir {out}")
    return 0


def cmd_import(args) -> int:
    _print(f"imported {args.hf_dir} -> run dir {import_hf(args.hf_dir, args.out)}")
    return 0


# ---------------------------------------------------------------------------- prepare, data stats
def cmd_prepare(args) -> int:
    if args.tokenizer and args.vocab_size:
        raise GenlabError("--vocab-size sizes the BPE that genlab trains; with --tokenizer it does not apply")
    default = PrepareSpec(sources=())
    spec = PrepareSpec(
        sources=tuple(args.sources),
        tokenizer=args.tokenizer or "",
        vocab_size=args.vocab_size or default.vocab_size,
        text_field=args.text_field,
        val_fraction=args.val_fraction,
        shard_tokens=args.shard_tokens or default.shard_tokens,
    )
    workers = args.workers or os.cpu_count() or 2
    out = Path(args.out)
    before = _bytes_prepared(out)
    t0 = time.perf_counter()
    try:
        prepare(spec, out, workers=workers, progress=not args.no_progress, log=_print)
    except KeyboardInterrupt:
        _print(
            f"interrupted: finished chunks are kept in {out}; run the same command again to continue",
            file=sys.stderr,
        )
        raise
    seconds = time.perf_counter() - t0
    m = read_manifest(out)
    c, tok = m["counts"], m["tokenizer"]
    done = c["bytes"] - before
    n_src = len(m["sources"])
    _print(
        f"prepared {out}: {c['documents']:,} documents ({c['train_documents']:,} train, {c['val_documents']:,} "
        f"validation) from {n_src} source{'s' * (n_src != 1)}, {c['tokens']:,} tokens "
        f"({c['bytes'] / max(1, c['tokens']):.2f} bytes per token; {tok['kind']} tokenizer, vocabulary "
        f"{tok['vocab_size']:,}, {m['dtype']}) in {len(m['shards'])} shards; "
        + (
            f"{_size(done)} of text tokenized in {seconds:.1f} s ({done / 1e6 / max(seconds, 1e-9):,.1f} MB/s, "
            f"{workers} worker{'s' * (workers != 1)})"
            + (f", continuing after {_size(before)} prepared before" if before else "")
            if done
            else f"already prepared, nothing to do ({seconds:.1f} s)"
        )
        + f". Train on it with --set data.path={out}; inspect it with `genlab data stats {out}`."
    )
    return 0


def _size(n: int) -> str:
    return f"{n / 1e6:,.1f} MB" if n >= 1e5 else f"{n / 1e3:,.1f} kB"


def _bytes_prepared(out: Path) -> int:
    """Text bytes already in finished shards of `out` (a complete DATA_DIR: all of them)."""
    try:
        m = read_manifest(out, allow_incomplete=True)
    except GenlabError:  # none there yet, or not a manifest: prepare() says what is wrong
        return 0
    return sum(sh.get("bytes", 0) for sh in m.get("shards", []))


def cmd_data(args) -> int:
    """genlab data stats DATA_DIR: counts, shares and a document-length histogram; genlab data
    embedded-sft / embedded-dpo OUT.jsonl: the embedded post-training data as JSON lines."""
    if args.data_cmd in ("embedded-sft", "embedded-dpo"):
        make = embedded.sft_conversations if args.data_cmd == "embedded-sft" else embedded.preference_pairs
        rows = make(args.split, args.seed)
        path = embedded.write_jsonl(rows, args.out)
        kind = "conversations" if args.data_cmd == "embedded-sft" else "preference pairs"
        _print(f"wrote {len(rows)} {kind} ({args.split} split, seed {args.seed}) to {path}")
        return 0
    stats = data_stats(args.data_dir, verify="full" if args.verify else "size")
    stats["plot"] = str(plot_lengths(stats, args.out or Path(args.data_dir) / HIST_PNG))
    if args.json:
        _print(json.dumps(stats))
    else:
        _print(format_stats(stats))
        _print(f"length histogram: {stats['plot']}")
    return 0


# ---------------------------------------------------------------------------- scaling laws
def cmd_plan(args) -> int:
    base, seq_len, vocab = None, DEFAULT_SEQ_LEN, DEFAULT_VOCAB
    if args.preset:
        cfg = C.preset(args.preset).validate()
        if cfg.task != "lm" or cfg.model.arch != "transformer":
            raise GenlabError(
                f"--preset {args.preset}: genlab plan shapes dense Transformer LMs only "
                f"(this preset is task {cfg.task!r}, model.arch {cfg.model.arch!r})"
            )
        base, seq_len = cfg.model, cfg.data.packing_length
        vocab = 256 if cfg.data.tokenizer == "byte" else cfg.data.vocab_size
    p = plan(
        args.compute,
        args.tokens,
        args.model_flops,
        args.law,
        args.seq_len or seq_len,
        args.vocab or vocab,
        base,
        args.micro_batch,
        args.preset or "",
        aspect=args.aspect,
    )
    _print(json.dumps(p, indent=1) if args.json else format_plan(p))
    return 0


def cmd_sweep(args) -> int:
    grid = {
        "budgets": args.budgets,
        "kind": args.kind,
        "lr_factors": args.lr_factors,
        "batch_factors": args.batch_factors,
        "size_factors": args.size_factors,
        "lr_batch_size": args.lr_batch_size,
        "lr_center": args.lr_center,
    }
    given = {k: v for k, v in grid.items() if v is not None}
    spec = sweep.make_spec(**given, overrides=args.overrides) if given or args.overrides else None
    if args.estimate and not args.dry_run:
        raise GenlabError("--estimate goes with --dry-run (it times the grid instead of running it)")
    if args.dry_run:
        stored = sweep.load_spec(Path(args.out))
        spec = spec or stored or sweep.make_spec()
        _print(sweep.describe(spec))
        if args.estimate:
            est = sweep.estimate(spec, log=_print)
            _print(
                f"expected: {est['seconds'] / 60:.1f} minutes for {est['points']} points on this machine "
                f"({est['shapes']} shapes timed)"
            )
        return 0
    try:
        csv_path = sweep.run_sweep(args.out, spec, log=_print)
    except KeyboardInterrupt:
        _print(f"interrupted: rerun `genlab sweep --out {args.out}` to continue", file=sys.stderr)
        raise
    _print(f"results: {csv_path}\nnext: genlab fit {csv_path}")
    return 0


def cmd_fit(args) -> int:
    rows = read_results(args.results)
    res = fit_all(rows, n_boot=args.bootstrap, seed=args.seed)
    out = Path(args.out) if args.out else Path(args.results).parent / "fit"
    if out.exists() and not out.is_dir():
        raise GenlabError(f"--out {out} exists and is not a directory")
    res["plots"] = [str(p) for p in write_plots(rows, res, out)]
    (out / "fit.json").write_text(json.dumps(res, indent=1) + "\n")
    if args.json:
        _print(json.dumps(res))
    else:
        _print(format_fit(res))
        _print(f"written: {out / 'fit.json'}, " + ", ".join(Path(p).name for p in res["plots"]))
    return 0


# ---------------------------------------------------------------------------- bench
def cmd_bench(args) -> int:
    mod = importlib.import_module(f"genlab.bench.{args.which}")
    results = mod.run(steps=args.steps, quick=args.quick)
    if args.json_out:
        Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_out).write_text(json.dumps(results, indent=2) + "\n")
    _print(json.dumps(results))
    return 0
