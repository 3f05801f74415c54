"""`genlab sweep`: learning rate x batch grids and IsoFLOP profiles, each point an ordinary run dir.

    SWEEP/sweep.json          the grid (written once; a rerun must ask for the same grid)
    SWEEP/points/<id>/        a genlab run dir per point, plus result.json once it is finished
    SWEEP/results.csv         one row per finished point, rewritten after every point

Per budget C (FLOPs, DeepSeek accounting C = M * D):
- lr x batch: one model (`lr_batch_size` x DeepSeek's M_opt(C)), learning rates
  lr_factors x lr_center x eta_opt(C) and batches batch_factors x B_opt(C) (DeepSeek LLM Eq. 1);
- IsoFLOP: models of size_factors x M_opt(C) (shape from scaling.plan.find_shape), each trained
  on D = C / M tokens with lr_center x eta_opt(C) and B_opt(C).
lr_center defaults to 0.25: on the embedded corpus at 5e11 FLOPs the loss fell from 2.55 to 2.25
as the lr went from 2x to 0.25x eta_opt, and rose again at 0.125x (see docs/scaling.md).
A point that both grids share (same shape, lr and batch) is run once. Rerunning the same command
skips finished points and resumes an interrupted one from its checkpoint.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from genlab.config import RunConfig, resolve
from genlab.data.corpus import open_stream
from genlab.errors import GenlabError
from genlab.scaling import laws
from genlab.scaling.plan import find_shape
from genlab.train import checkpoint
from genlab.train.trainer import prepare_training

# Defaults sized so that the whole sweep takes about 40 minutes on 2 cores (see docs/scaling.md).
BUDGETS = (5e11, 1.5e12, 4.5e12)
LR_CENTER = 0.25  # x eta_opt(C): where the lr grid is centred and the IsoFLOP points train
LR_FACTORS = (0.5, 1.0, 2.0)
BATCH_FACTORS = (0.5, 1.0, 2.0)
SIZE_FACTORS = (1.0, 2.0, 4.0, 8.0, 16.0)
ASPECT = 32.0  # preferred d_model / n_layer: at this tiny scale 64 would leave only 1-2 layer models
LR_BATCH_SIZE = 4.0  # the lr x batch grid's model, as a multiple of M_opt(C): the IsoFLOP middle
BASE_OVERRIDES = ("data.tokenizer=byte", "data.packing_length=256")
EVAL_ROWS = 512  # fixed validation rows every point is scored on (the same tokens for all)
EVAL_BATCH_ROWS = 32
SPEC, RESULTS, RESULT = "sweep.json", "results.csv", "result.json"
COLUMNS = (
    "point",
    "lr_batch",
    "isoflop",
    "budget",
    "n_layer",
    "d_model",
    "n_head",
    "M",
    "N1",
    "N2",
    "seq_len",
    "lr",
    "batch_seqs",
    "batch_tokens",
    "steps",
    "tokens",
    "compute",
    "val_loss",
    "val_bpb",
    "train_loss",
    "seconds",
)

KINDS = ("both", "lr-batch", "isoflop")


def _positive(name: str, values) -> tuple[float, ...]:
    vals = tuple(float(v) for v in values)
    if not vals or any(not (v > 0 and v < float("inf")) for v in vals):
        raise GenlabError(f"{name} {','.join(map(str, values))} must be a list of positive finite numbers")
    return vals


def make_spec(
    budgets=BUDGETS,
    kind: str = "both",
    lr_factors=LR_FACTORS,
    batch_factors=BATCH_FACTORS,
    size_factors=SIZE_FACTORS,
    lr_batch_size: float = LR_BATCH_SIZE,
    lr_center: float = LR_CENTER,
    overrides=(),
) -> dict:
    """The grid as a JSON-able dict; every point's config is resolved and validated here."""
    if kind not in KINDS:
        raise GenlabError(f"--kind {kind!r} is not allowed; choose one of: {', '.join(KINDS)}")
    spec = {
        "budgets": _positive("--budgets", budgets),
        "kind": kind,
        "lr_factors": _positive("--lr-factors", lr_factors),
        "batch_factors": _positive("--batch-factors", batch_factors),
        "size_factors": _positive("--size-factors", size_factors),
        "lr_batch_size": _positive("--lr-batch-size", [lr_batch_size])[0],
        "lr_center": _positive("--lr-center", [lr_center])[0],
        "overrides": [*BASE_OVERRIDES, *overrides],
    }
    spec["points"] = _points(spec)
    return spec


def _points(spec: dict) -> list[dict]:
    base = resolve(None, None, spec["overrides"])
    L = base.data.packing_length
    vocab = 256 if base.data.tokenizer == "byte" else base.data.vocab_size
    law = laws.LAWS["deepseek"]
    points: dict[str, dict] = {}

    def add(C: float, size: float, lr: float, batch_tokens: float, kind: str):
        mcfg, fl = find_shape(size, "M", base.model, vocab, L, aspect=ASPECT)
        rows = max(1, round(batch_tokens / L))
        steps = max(1, round(C / fl["M"] / (rows * L)))
        pid = f"c{C:.3g}_n{mcfg.n_layer}_d{mcfg.d_model}_lr{lr:.3g}_b{rows}".replace("+", "")
        p = points.setdefault(
            pid,
            {
                "point": pid,
                "budget": C,
                "n_layer": mcfg.n_layer,
                "d_model": mcfg.d_model,
                "n_head": mcfg.n_head,
                "n_kv_head": mcfg.n_kv_head,
                "M": fl["M"],
                "N1": fl["N1"],
                "N2": fl["N2"],
                "seq_len": L,
                "lr": lr,
                "batch_seqs": rows,
                "steps": steps,
                "lr_batch": 0,
                "isoflop": 0,
            },
        )
        p[kind] = 1

    for C in spec["budgets"]:
        m_opt = law.split(C)[0]
        eta, batch = spec["lr_center"] * laws.eta_opt(C), laws.batch_opt_tokens(C)
        if spec["kind"] in ("both", "lr-batch"):
            for f_lr in spec["lr_factors"]:
                for f_b in spec["batch_factors"]:
                    add(C, spec["lr_batch_size"] * m_opt, eta * f_lr, batch * f_b, "lr_batch")
        if spec["kind"] in ("both", "isoflop"):
            for f_m in spec["size_factors"]:
                add(C, f_m * m_opt, eta, batch, "isoflop")
    out = list(points.values())
    for p in out:
        point_config(spec, p)  # every point must be a valid config before anything is written
    return out


def point_config(spec: dict, p: dict) -> RunConfig:
    steps = p["steps"]
    sets = [
        *spec["overrides"],
        "model.arch=transformer",
        f"model.n_layer={p['n_layer']}",
        f"model.d_model={p['d_model']}",
        f"model.n_head={p['n_head']}",
        f"model.n_kv_head={p['n_kv_head']}",
        "model.ffn_hidden=0",
        f"train.lr={p['lr']!r}",
        f"train.batch_rows={p['batch_seqs']}",
        "train.grad_accum=1",
        f"train.steps={steps}",
        "train.schedule=multistep",
        f"train.warmup_steps={min(laws.DS_WARMUP_STEPS, max(1, steps // 10))}",
        f"train.log_every={max(1, steps // 20)}",
        f"train.eval_every={steps}",
        "train.eval_batches=1",
        f"train.ckpt_every={max(1, steps // 4)}",
        "train.keep_ckpts=1",
    ]
    return resolve(None, None, sets)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def load_spec(out: Path) -> dict | None:
    p = out / SPEC
    if not p.is_file():
        return None
    try:
        return json.loads(p.read_text())
    except ValueError:
        raise GenlabError(f"{p} is not valid JSON; it is not a genlab sweep directory") from None


def _same_grid(a: dict, b: dict) -> bool:
    return [p["point"] for p in a["points"]] == [p["point"] for p in b["points"]] and a["overrides"] == b["overrides"]


def open_sweep(out: str | Path, spec: dict | None) -> tuple[Path, dict]:
    """Check (and, for a new sweep, create) the sweep dir; `spec` None = continue the stored grid."""
    out = Path(out)
    stored = load_spec(out)
    if stored is None:
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise GenlabError(f"{out} exists, is not empty and holds no {SPEC}; choose another --out")
        spec = spec or make_spec()
    elif spec is None:
        spec = stored
    elif not _same_grid(stored, spec):
        raise GenlabError(
            f"{out} holds a different sweep ({len(stored['points'])} points, budgets "
            f"{', '.join(f'{c:g}' for c in stored['budgets'])}); rerun it with its own arguments "
            "(or none) or choose another --out"
        )
    _eval_rows(spec)  # reads the corpus: bad data fails here, before the sweep dir is written
    if stored is None:
        (out / "points").mkdir(parents=True, exist_ok=True)
        _write_atomic(out / SPEC, json.dumps(spec, indent=1) + "\n")
    return out, spec


_EVAL_CACHE: dict = {}


def _eval_rows(spec: dict):
    """The fixed validation batches every point is scored on (the same tokens for every point)."""

    key = json.dumps(spec["overrides"])
    if key not in _EVAL_CACHE:
        cfg = resolve(None, None, spec["overrides"])
        task = cfg.family.make_task(cfg)
        task.prepare(None, fresh=True)
        d = cfg.data
        data = open_stream(task.data_dir, "val", d.packing_length, EVAL_BATCH_ROWS, 0, d.pack_buffer, False)
        if data is None:
            raise GenlabError("the sweep corpus has no validation documents; raise data.val_fraction")
        _EVAL_CACHE[key] = (task, data)
    return _EVAL_CACHE[key]


def run_point(out: Path, spec: dict, p: dict, log=print) -> dict:
    """Train one point (or resume it) and score it; returns its CSV row."""

    pdir = out / "points" / p["point"]
    if (pdir / RESULT).is_file():
        return json.loads((pdir / RESULT).read_text())
    cfg = point_config(spec, p)
    quiet = lambda *a: None  # noqa: E731
    resume = pdir.is_dir() and checkpoint.latest_valid(pdir, warn=quiet) is not None
    if pdir.exists() and not resume:
        shutil.rmtree(pdir)  # a point that died before its first checkpoint: start it again
    t0 = time.perf_counter()
    run, trainer = prepare_training(None if resume else cfg, pdir, resume=resume, progress=False, log=quiet)
    try:
        last = trainer.fit()
    except GenlabError as e:  # the loss guard gave up (e.g. an lr too high): a result, not a crash
        log(f"{p['point']}: diverged ({e})")
        last, ev = {}, {"val_loss": float("nan"), "val_bpb": float("nan")}
    else:
        _, eval_data = _eval_rows(spec)
        ev = trainer.task.evaluate(
            trainer.model, data=eval_data, max_batches=EVAL_ROWS // EVAL_BATCH_ROWS, device=trainer.device
        )
    seconds = time.perf_counter() - t0
    row = {
        k: p[k]
        for k in (
            "point",
            "lr_batch",
            "isoflop",
            "budget",
            "n_layer",
            "d_model",
            "n_head",
            "M",
            "N1",
            "N2",
            "seq_len",
            "lr",
            "batch_seqs",
            "steps",
        )
    }
    row.update(
        batch_tokens=p["batch_seqs"] * p["seq_len"],
        tokens=trainer.tokens_seen,
        compute=p["M"] * trainer.tokens_seen,
        val_loss=ev["val_loss"],
        val_bpb=ev["val_bpb"],
        train_loss=last.get("loss", _last_loss(run)),
        seconds=round(seconds, 2),
    )
    _write_atomic(pdir / RESULT, json.dumps(row) + "\n")
    return row


def _last_loss(run) -> float:
    """The last logged training loss (a point resumed from its final checkpoint trains no step)."""
    losses = [r["loss"] for r in run.metrics() if r.get("loss") is not None]
    return losses[-1] if losses else float("nan")


def write_csv(out: Path, rows: list[dict]) -> Path:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: r[k] for k in COLUMNS})
    _write_atomic(out / RESULTS, buf.getvalue())
    return out / RESULTS


def run_sweep(out: str | Path, spec: dict | None = None, log=print) -> Path:
    """Run every unfinished point; returns the CSV path."""
    out, spec = open_sweep(out, spec)
    rows, n = [], len(spec["points"])
    for i, p in enumerate(spec["points"], 1):
        done = (out / "points" / p["point"] / RESULT).is_file()
        row = run_point(out, spec, p, log)
        rows.append(row)
        write_csv(out, rows)
        state = "done before" if done else f"{row['seconds']:.1f} s"
        log(f"[{i}/{n}] {p['point']}: val_loss {row['val_loss']:.4f} ({state})")
    return out / RESULTS


def describe(spec: dict) -> str:
    """The grid as a table, with the compute it needs."""
    lines = [f"{'point':<40} {'kind':<9} {'M':>9} {'lr':>8} {'rows':>5} {'steps':>6}"]
    for p in spec["points"]:
        kind = "+".join(k for k, f in (("lr", p["lr_batch"]), ("iso", p["isoflop"])) if f)
        lines.append(f"{p['point']:<40} {kind:<9} {p['M']:>9.3g} {p['lr']:>8.3g} {p['batch_seqs']:>5} {p['steps']:>6}")
    total = sum(p["M"] * p["steps"] * p["batch_seqs"] * p["seq_len"] for p in spec["points"])
    lines.append(f"{len(spec['points'])} points, {total:.3g} FLOPs in all (C = M * tokens)")
    return "\n".join(lines)


def estimate(spec: dict, probe_steps: int = 4, clock=time.perf_counter, log=print) -> dict:
    """Seconds the whole sweep would take here: a few timed steps and one scoring pass for every
    distinct (shape, batch) of the grid, scaled by each point's steps. Nothing is kept."""

    _, eval_data = _eval_rows(spec)
    timed: dict[tuple, tuple[float, float]] = {}
    total = 0.0
    for p in spec["points"]:
        key = (p["n_layer"], p["d_model"], p["n_head"], p["batch_seqs"])
        if key not in timed:
            cfg = point_config(spec, {**p, "steps": probe_steps + 2})
            with tempfile.TemporaryDirectory() as tmp:
                _, trainer = prepare_training(cfg, Path(tmp) / "probe", progress=False, log=lambda *a: None)
                for _ in range(2):  # warm-up
                    trainer.train_step()
                t0 = clock()
                for _ in range(probe_steps):
                    trainer.train_step()
                t_step = (clock() - t0) / probe_steps
                t0 = clock()
                trainer.task.evaluate(
                    trainer.model, data=eval_data, max_batches=EVAL_ROWS // EVAL_BATCH_ROWS, device=trainer.device
                )
                timed[key] = (t_step, clock() - t0)
            log(
                f"n_layer {key[0]}, d_model {key[1]}, {key[3]} rows: {1000 * timed[key][0]:.1f} ms/step, "
                f"scoring {timed[key][1]:.1f} s"
            )
        t_step, t_eval = timed[key]
        total += p["steps"] * t_step + t_eval
    return {"seconds": total, "points": len(spec["points"]), "shapes": len(timed)}
