"""`genlab bench data`: the data pipeline at scale (issue 15).

Corpus (generated locally, never shipped): `corpus-<N>MB-s<seed>.jsonl` in the bench directory
($GENLAB_BENCH_DIR, else <tmp>/genlab-bench), N MB (10^6 bytes) of UTF-8 document text as JSON lines
{"text": ...}. Each document samples the embedded corpus (pydoc topics + a slice of the standard
library) with variation: a run of paragraphs from a random place of a random source document, a length
drawn log-normally (median 3,000 characters, clipped to 200..60,000), some paragraphs dropped, some
neighbours swapped, one line dropped, a few identifiers renamed (`name` -> `name_<suffix>`) and the
digits permuted, so that documents are distinct and BPE sees realistic text. Seeded; a file already
there (complete, same generator version) is reused.

Measured:
- prepare throughput (MB of document text per second, 2 workers): `genlab.data.shards.prepare` with a
  fixed tokenizer.json (lm-small's: byte-level BPE 2048 trained once on the embedded corpus) vs
  Hugging Face `datasets` (`load_dataset("json")` + `map(batched=True, batch_size=1000, num_proc=2,
  remove_columns=["text"])` with the same `tokenizers.Tokenizer` and the call genlab makes,
  `encode_batch_fast` (ids only; plain `encode_batch` where the library lacks it), BOS prepended as
  genlab does; its Arrow cache written to a fresh cache_dir each run, that time included), and one
  process running that call alone over the same documents already in memory. The three run in turns
  (A B C, C B A, ...); medians reported, with the CPU time each used (this process + its reaped
  children: the pools' workers); the token counts must agree. TOKENIZERS_PARALLELISM=false
  throughout: every process tokenizes on one thread, so 2 workers = 2 cores.
- training from the 1 GB DATA_DIR at lm-small's shape: `python -m genlab train --preset lm-small
  --set data.path=DATA_DIR --steps N --no-progress --out RUN` as a subprocess whose /proc/PID/status is
  sampled every 10 ms: the largest RssAnon seen (memory-mapped shard pages are file pages, not anonymous)
  and VmHWM (peak resident, file pages included), against the same run on the 100 MB DATA_DIR; time from
  starting the command to the first step's completion (the first line of RUN/metrics.jsonl, written
  with train.log_every = 1 right after step 1); in one process, data time per step (LMTask.next_batch +
  LazyBatch.to, i.e. layout + token reads + batch building) as a share of Trainer.train_step.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from genlab.bench.common import machine_info, median, print_table

GENERATOR_VERSION = 1
DEFAULTS = dict(
    big_mb=1024,  # the training corpus (the DATA_DIR of the memory / first-step measurements)
    small_mb=100,  # the comparison DATA_DIR; also the corpus of the throughput rounds
    rounds=2,  # throughput rounds (genlab, datasets, encode_batch in turns: A B C C B A)
    workers=2,
    batch_size=1000,  # datasets.map's (its default)
    vocab=2048,  # lm-small's BPE
    train_steps=6,  # steps of each `genlab train` subprocess
    train_runs=2,  # subprocess runs per DATA_DIR, in turns
    probe_steps=20,  # in-process data-time harness: timed steps (after 2 untimed)
    seed=0,
    extra=[],
)
QUICK = dict(
    DEFAULTS,
    big_mb=4,
    small_mb=2,
    rounds=1,
    train_steps=2,
    train_runs=1,
    probe_steps=3,
    extra=["train.eval_batches=1", "model.n_layer=1", "model.d_model=64", "model.n_head=2", "model.n_kv_head=1"],
)
TARGETS = dict(prepare_ratio_min=1.5, rss_anon_max_mb=1536, rss_anon_excess_max_mb=100, first_step_max_s=5.0)
TARGETS["data_share_max"] = 0.02


def bench_dir() -> Path:
    d = Path(os.environ.get("GENLAB_BENCH_DIR") or Path(tempfile.gettempdir()) / "genlab-bench") / "data"
    d.mkdir(parents=True, exist_ok=True)
    return d


# ---------------------------------------------------------------------------- corpus
_IDENT = re.compile(r"\b[A-Za-z_][A-Za-z0-9_]{3,}\b")
_SUFFIXES = ("a", "b", "x", "v2", "new", "old", "tmp", "ref", "buf", "cfg", "impl", "data", "info", "item", "spec")


class _Base:
    """The embedded corpus cut into paragraphs, with each document's most frequent identifiers."""

    def __init__(self):
        from genlab.data.text import embedded_corpus

        self.paras: list[list[str]] = []
        self.idents: list[list[str]] = []
        for d in embedded_corpus():
            ps = [p for p in d.split("\n\n") if p.strip()]
            if not ps:
                continue
            self.paras.append(ps)
            counts: dict[str, int] = {}
            for m in _IDENT.findall(d):
                counts[m] = counts.get(m, 0) + 1
            self.idents.append(sorted(counts, key=lambda k: (-counts[k], k))[:200])
        self.weights = [len("".join(p)) for p in self.paras]  # pick documents by their size
        self.cum = []
        total = 0
        for w in self.weights:
            total += w
            self.cum.append(total)


def _document(base: _Base, rng: random.Random, tables: list[dict]) -> str:
    k = rng.choices(range(len(base.paras)), cum_weights=base.cum)[0]
    ps = base.paras[k]
    want = min(60_000, max(200, int(rng.lognormvariate(8.0, 1.0))))  # median e^8 ~ 3,000 characters
    i = rng.randrange(len(ps))
    out, size = [], 0
    while size < want and len(out) < 4 * len(ps):
        p = ps[i % len(ps)]
        i += 1
        if rng.random() < 0.1:  # drop a paragraph
            continue
        out.append(p)
        size += len(p) + 2
    if not out:
        out = [ps[i % len(ps)]]
    for _ in range(rng.randrange(3)):  # swap neighbours
        if len(out) > 1:
            j = rng.randrange(len(out) - 1)
            out[j], out[j + 1] = out[j + 1], out[j]
    j = rng.randrange(len(out))  # drop one line of one paragraph
    lines = out[j].split("\n")
    if len(lines) > 1:
        del lines[rng.randrange(len(lines))]
        out[j] = "\n".join(lines)
    text = "\n\n".join(out)
    ids = base.idents[k]
    for _ in range(min(3, len(ids))):  # rename identifiers
        name = ids[rng.randrange(len(ids))]
        text = text.replace(name, f"{name}_{rng.choice(_SUFFIXES)}{rng.randrange(100)}")
    return text.translate(tables[rng.randrange(len(tables))])  # change the numbers


def make_corpus(mb: float, seed: int = 0, out_dir: Path | None = None) -> dict:
    """`mb` MB (10^6 bytes) of document text as JSON lines; reused when already there. Returns
    {"path", "text_bytes", "file_bytes", "documents", "seconds" (0 when reused), "reused"}."""
    out_dir = out_dir or bench_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    name = f"corpus-{mb:g}MB-s{seed}"
    path, meta_path = out_dir / f"{name}.jsonl", out_dir / f"{name}.json"
    if path.is_file() and meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        if meta.get("version") == GENERATOR_VERSION and meta.get("file_bytes") == path.stat().st_size:
            return {**meta, "path": str(path), "seconds": 0.0, "reused": True}
    t0 = time.perf_counter()
    base = _Base()
    rng = random.Random(seed)
    digits = list("0123456789")
    tables = [{ord("0") + i: ord("0") + i for i in range(10)}]  # the identity: some numbers stay
    for _ in range(63):
        rng.shuffle(digits)
        tables.append({ord("0") + i: ord(c) for i, c in enumerate(digits)})
    target, text_bytes, n = int(mb * 1e6), 0, 0
    tmp = path.with_name(path.name + ".tmp")
    dumps = json.dumps
    with open(tmp, "w", encoding="utf-8", buffering=1 << 22) as f:
        while text_bytes < target:
            lines = []
            for _ in range(256):
                d = _document(base, rng, tables)
                text_bytes += len(d.encode("utf-8")) if not d.isascii() else len(d)
                lines.append(dumps({"text": d}))
            n += len(lines)
            f.write("\n".join(lines) + "\n")
    os.replace(tmp, path)
    meta = {
        "version": GENERATOR_VERSION,
        "seed": seed,
        "mb": mb,
        "text_bytes": text_bytes,
        "file_bytes": path.stat().st_size,
        "documents": n,
    }
    meta_path.write_text(json.dumps(meta) + "\n")
    return {**meta, "path": str(path), "seconds": time.perf_counter() - t0, "reused": False}


def bench_tokenizer(out_dir: Path, vocab: int) -> Path:
    """lm-small's tokenizer, trained once on the embedded corpus (byte-level BPE, `vocab` tokens)."""
    path = out_dir / f"tokenizer-bpe{vocab}.json"
    if not path.is_file():
        from genlab.data.text import embedded_corpus
        from genlab.data.tokenizer import BPETokenizer

        tmp = path.with_name(path.name + ".tmp")
        BPETokenizer.train(embedded_corpus(), vocab).save(tmp)
        os.replace(tmp, path)
    return path


# ---------------------------------------------------------------------------- prepare throughput
def _genlab_prepare(corpus: str, tok: Path, out: Path, workers: int) -> dict:
    from genlab.data.shards import PrepareSpec, prepare, read_manifest

    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    prepare(
        PrepareSpec(sources=(corpus,), tokenizer=str(tok)), out, workers=workers, progress=False, log=lambda *a: None
    )
    dt = time.perf_counter() - t0
    c = read_manifest(out)["counts"]
    return {"seconds": dt, "tokens": c["tokens"], "documents": c["documents"], "text_bytes": c["bytes"]}


def _hf_tokenize_fn(tok_path: str):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(tok_path)
    tok.encode_special_tokens = True  # as genlab's BPETokenizer: user text spelling <|endoftext|> is text
    bos = tok.token_to_id("<|endoftext|>")
    encode = getattr(tok, "encode_batch_fast", tok.encode_batch)  # ids only, as genlab (its best call)

    def fn(batch):
        return {"input_ids": [[bos, *e.ids] for e in encode(batch["text"], add_special_tokens=False)]}

    return fn


def _datasets_map(corpus: str, tok: Path, cache: Path, workers: int, batch_size: int) -> dict:
    import datasets
    import pyarrow.compute as pc

    shutil.rmtree(cache, ignore_errors=True)
    fn = _hf_tokenize_fn(str(tok))
    progress = datasets.utils.logging.is_progress_bar_enabled()
    datasets.utils.logging.disable_progress_bar()
    try:
        t0 = time.perf_counter()
        ds = datasets.load_dataset("json", data_files=corpus, split="train", cache_dir=str(cache))
        t1 = time.perf_counter()
        out = ds.map(fn, batched=True, batch_size=batch_size, num_proc=workers, remove_columns=["text"])
        t2 = time.perf_counter()
    finally:
        if progress:
            datasets.utils.logging.enable_progress_bar()
    col = out.data.column("input_ids")
    tokens = sum(int(pc.sum(pc.list_value_length(ch)).as_py() or 0) for ch in col.chunks)
    res = {"seconds": t2 - t0, "load_s": t1 - t0, "map_s": t2 - t1, "tokens": tokens, "documents": len(out)}
    res["cache_bytes"] = sum(f.stat().st_size for f in cache.rglob("*") if f.is_file())
    del ds, out
    shutil.rmtree(cache, ignore_errors=True)
    return res


def _encode_alone(docs: list[str], tok: Path, batch_size: int) -> dict:
    from tokenizers import Tokenizer

    t = Tokenizer.from_file(str(tok))
    t.encode_special_tokens = True
    encode = getattr(t, "encode_batch_fast", t.encode_batch)
    t0 = time.perf_counter()
    n = 0
    for i in range(0, len(docs), batch_size):
        n += sum(len(e.ids) + 1 for e in encode(docs[i : i + batch_size], add_special_tokens=False))  # + BOS
    return {"seconds": time.perf_counter() - t0, "tokens": n, "documents": len(docs)}


def _cpu_all() -> float:
    import resource

    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def prepare_throughput(corpus: dict, tok: Path, p: dict, work: Path) -> dict:
    """genlab prepare (workers) vs datasets map (num_proc) vs encode_batch in one process, in turns."""
    docs = [json.loads(line)["text"] for line in open(corpus["path"], encoding="utf-8")]
    mb = corpus["text_bytes"] / 1e6
    runs: dict[str, list[dict]] = {"genlab": [], "datasets": [], "encode_batch": []}
    fns = {
        "genlab": lambda: _genlab_prepare(corpus["path"], tok, work / "tput-genlab", p["workers"]),
        "datasets": lambda: _datasets_map(corpus["path"], tok, work / "tput-hf-cache", p["workers"], p["batch_size"]),
        "encode_batch": lambda: _encode_alone(docs, tok, p["batch_size"]),
    }
    names = list(fns)
    for r in range(p["rounds"]):
        for name in names if r % 2 == 0 else names[::-1]:
            cpu0 = _cpu_all()
            res = fns[name]()
            res["cpu_s"] = _cpu_all() - cpu0  # this process + its finished children (the pools' workers)
            res["mb_per_s"] = mb / res["seconds"]
            runs[name].append(res)
            print(f"  round {r + 1} {name}: {res['seconds']:.1f} s, {res['mb_per_s']:.2f} MB/s", flush=True)
    shutil.rmtree(work / "tput-genlab", ignore_errors=True)
    out = {"text_mb": mb, "documents": corpus["documents"], "runs": runs}
    for name, rs in runs.items():
        out[name] = {
            "median_s": median([x["seconds"] for x in rs]),
            "mb_per_s": mb / median([x["seconds"] for x in rs]),
            "cpu_s": median([x["cpu_s"] for x in rs]),
        }
    out["tokens"] = {name: sorted({x["tokens"] for x in rs}) for name, rs in runs.items()}
    out["tokens_equal"] = len({t for ts in out["tokens"].values() for t in ts}) == 1
    out["ratio_genlab_datasets"] = out["genlab"]["mb_per_s"] / out["datasets"]["mb_per_s"]
    out["cpu_ratio_datasets_genlab"] = out["datasets"]["cpu_s"] / out["genlab"]["cpu_s"]
    return out


# ---------------------------------------------------------------------------- training from a DATA_DIR
def _proc_status(pid: int) -> dict[str, int]:
    """RssAnon, VmRSS, VmHWM (kB) of a process, {} once it is gone."""
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key = line.split(":", 1)[0]
                if key in ("RssAnon", "VmRSS", "VmHWM", "RssFile"):
                    out[key] = int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return {}
    return out


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process so far (/proc/PID/stat), None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def _train_args(data_dir: Path, steps: int, extra: list[str], run_dir: Path) -> list[str]:
    sets = [f"data.path={data_dir}", "train.log_every=1", *extra]
    return ["train", "--preset", "lm-small", *[a for s in sets for a in ("--set", s)], "--steps", str(steps)] + [
        "--no-progress",
        "--out",
        str(run_dir),
    ]


def train_subprocess(data_dir: Path, steps: int, extra: list[str], run_dir: Path) -> dict:
    """`python -m genlab train --preset lm-small --set data.path=DATA_DIR ...` with its /proc status sampled
    every 10 ms: peak RssAnon and VmHWM (MB), and seconds from starting the command to step 1's record."""
    shutil.rmtree(run_dir, ignore_errors=True)
    cmd = [sys.executable, "-m", "genlab", *_train_args(data_dir, steps, extra, run_dir)]
    metrics = run_dir / "metrics.jsonl"
    peak = {"RssAnon": 0, "VmRSS": 0, "VmHWM": 0, "RssFile": 0}
    first = first_cpu = None
    with tempfile.TemporaryFile() as log:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        samples = 0
        while proc.poll() is None:
            st = _proc_status(proc.pid)
            if st:
                samples += 1
                for k, v in st.items():
                    peak[k] = max(peak[k], v)
            if first is None and metrics.is_file() and metrics.stat().st_size > 0:
                first = time.perf_counter() - t0
                first_cpu = _cpu_seconds(proc.pid)
            time.sleep(0.01)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            log.seek(0)
            raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{log.read().decode()[-2000:]}")
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert records and records[0]["step"] == 1, records[:1]
    return {
        "rss_anon_mb": peak["RssAnon"] / 1024,
        "vm_hwm_mb": peak["VmHWM"] / 1024,
        "rss_file_mb": peak["RssFile"] / 1024,
        "first_step_s": first,
        "first_step_cpu_s": first_cpu,  # the process's CPU time then (2 torch threads: can exceed the wall time)
        "wall_s": wall,
        "samples": samples,
        "steps": records[-1]["step"],
        "loss_first": records[0]["loss"],
        "loss_last": records[-1]["loss"],
    }


def import_seconds() -> float:
    """Wall time of a fresh interpreter importing what `genlab train` imports (torch included)."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import genlab.cli, genlab.train.trainer, genlab.families"], check=True)
    return time.perf_counter() - t0


def data_time_share(data_dir: Path, p: dict, run_dir: Path) -> dict:
    """In one process: Trainer set-up, the first step, then per step the time in LMTask.next_batch and
    LazyBatch.to (the data path: layout, token reads, batch building) vs the whole Trainer.train_step."""
    from genlab.config import resolve
    from genlab.data.shards import ShardSet
    from genlab.train.trainer import prepare_training

    shutil.rmtree(run_dir, ignore_errors=True)
    t0 = time.perf_counter()
    ShardSet(data_dir, "train", verify="size")
    open_size_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    ShardSet(data_dir, "train", verify="full")  # what every start paid before verify="once"
    open_full_s = time.perf_counter() - t0
    cfg = resolve("lm-small", None, [f"data.path={data_dir}", f"train.steps={p['probe_steps'] + 3}", *p["extra"]])
    t0 = time.perf_counter()
    run, trainer = prepare_training(cfg, run_dir, progress=False, log=lambda *a: None)
    setup_s = time.perf_counter() - t0
    task, acc = trainer.task, [0.0]
    next_batch = task.next_batch

    def timed_next(state):
        t = time.perf_counter()
        b, s = next_batch(state)
        to = b.to

        def timed_to(device):
            t1 = time.perf_counter()
            r = to(device)
            acc[0] += time.perf_counter() - t1
            return r

        b.to = timed_to
        acc[0] += time.perf_counter() - t
        return b, s

    task.next_batch = timed_next
    steps, data = [], []
    try:
        for _ in range(p["probe_steps"] + 3):
            acc[0] = 0.0
            t = time.perf_counter()
            trainer.train_step()
            steps.append(time.perf_counter() - t)
            data.append(acc[0])
    finally:
        task.next_batch = next_batch
        trainer.run.release()
    timed = slice(3, None)  # step 1 (first-call costs) and two more untimed
    shares = [d / s for d, s in zip(data[timed], steps[timed])]
    return {
        "setup_s": setup_s,
        "open_train_split_size_check_s": open_size_s,
        "open_train_split_sha256_s": open_full_s,
        "first_step_s": steps[0],
        "first_step_data_s": data[0],
        "step_s_median": median(steps[timed]),
        "data_s_median": median(data[timed]),
        "data_share_median": median(shares),
        "data_share_max": max(shares),
        "steps": len(steps[timed]),
    }


def training(dirs: dict[str, Path], p: dict, work: Path) -> dict:
    """Subprocess runs on each DATA_DIR in turns (memory, command to first step) and the in-process
    data-time harness on the big one."""
    runs: dict[str, list[dict]] = {k: [] for k in dirs}
    names = list(dirs)
    for r in range(p["train_runs"]):
        for name in names if r % 2 == 0 else names[::-1]:
            res = train_subprocess(dirs[name], p["train_steps"], p["extra"], work / f"run-{name}")
            runs[name].append(res)
            print(
                f"  train {name}: RssAnon {res['rss_anon_mb']:.0f} MB, VmHWM {res['vm_hwm_mb']:.0f} MB, "
                f"first step {res['first_step_s']:.2f} s",
                flush=True,
            )
    out: dict = {"runs": runs}
    for name, rs in runs.items():
        out[name] = {
            "rss_anon_mb": max(x["rss_anon_mb"] for x in rs),
            "vm_hwm_mb": max(x["vm_hwm_mb"] for x in rs),
            "first_step_s": median([x["first_step_s"] for x in rs]),
            "first_step_cpu_s": median([x["first_step_cpu_s"] or 0.0 for x in rs]),
        }
    out["import_s"] = median([import_seconds() for _ in range(max(1, p["train_runs"]))])
    out["harness"] = data_time_share(dirs["big"], p, work / "run-harness")
    for name in runs:
        shutil.rmtree(work / f"run-{name}", ignore_errors=True)
    shutil.rmtree(work / "run-harness", ignore_errors=True)
    return out


# ---------------------------------------------------------------------------- the benchmark
def prepared(corpus: dict, tok: Path, out: Path, workers: int) -> dict:
    """A DATA_DIR of `corpus` in tokenizer `tok` (genlab prepare, `workers`), reused when complete;
    with the seconds its prepare took (recorded next to it)."""
    from genlab.data.shards import read_manifest, sha256_file

    timing = out.with_name(out.name + ".time.json")
    try:
        m = read_manifest(out)
        if m["tokenizer"]["sha256"] == sha256_file(tok) and m["settings"]["sources"] == [corpus["path"]]:
            return {"path": str(out), "reused": True, **json.loads(timing.read_text())}
    except Exception:  # missing, unfinished or another corpus: prepare it again
        pass
    res = _genlab_prepare(corpus["path"], tok, out, workers)
    res["mb_per_s"] = res["text_bytes"] / 1e6 / res["seconds"]
    res["shard_bytes"] = sum(f.stat().st_size for f in out.glob("*.bin"))
    timing.write_text(json.dumps(res) + "\n")
    return {"path": str(out), "reused": False, **res}


def _uptime() -> str:
    try:
        return " ".join(open("/proc/loadavg").read().split()[:3])
    except OSError:
        return "?"


def run(steps: int | None = None, quick: bool = False) -> dict:
    p = dict(QUICK if quick else DEFAULTS)
    if steps is not None:
        p["train_steps"] = steps
    work = bench_dir()
    old_par = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one thread per process everywhere: workers = processes
    loads = {"start": _uptime()}
    try:
        corpora = {
            "big": make_corpus(p["big_mb"], p["seed"], work),
            "small": make_corpus(p["small_mb"], p["seed"], work),
        }
        for k, c in corpora.items():
            how = "reused" if c["reused"] else f"written in {c['seconds']:.1f} s"
            mb, n = c["text_bytes"] / 1e6, c["documents"]
            print(f"corpus {k}: {c['path']} ({mb:,.0f} MB of text, {n:,} documents, {how})", flush=True)
        tok = bench_tokenizer(work, p["vocab"])
        tput = prepare_throughput(corpora["small"], tok, p, work)
        loads["after_throughput"] = _uptime()
        dirs = {k: work / f"datadir-{p[k + '_mb']:g}MB-s{p['seed']}" for k in corpora}
        data_dirs = {k: prepared(corpora[k], tok, dirs[k], p["workers"]) for k in corpora}
        loads["after_prepare"] = _uptime()
        train = training(dirs, p, work)
        loads["end"] = _uptime()
    finally:
        if old_par is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = old_par
    big, small, h = train["big"], train["small"], train["harness"]
    t = dict(TARGETS)
    t["prepare_ratio_met"] = tput["ratio_genlab_datasets"] >= t["prepare_ratio_min"]
    t["rss_anon_met"] = big["rss_anon_mb"] < t["rss_anon_max_mb"]
    t["rss_anon_excess_mb"] = big["rss_anon_mb"] - small["rss_anon_mb"]
    t["rss_anon_excess_met"] = t["rss_anon_excess_mb"] <= t["rss_anon_excess_max_mb"]
    t["first_step_met"] = big["first_step_s"] < t["first_step_max_s"]
    t["data_share_met"] = h["data_share_median"] < t["data_share_max"]

    print_table(
        f"prepare throughput, {tput['text_mb']:,.0f} MB of text ({tput['documents']:,} documents), "
        f"{p['workers']} workers, median of {p['rounds']}",
        ["pipeline", "median s", "MB/s", "CPU s", "tokens", "vs datasets"],
        [
            [
                name,
                f"{tput[name]['median_s']:.1f}",
                f"{tput[name]['mb_per_s']:.2f}",
                f"{tput[name]['cpu_s']:.1f}",
                ",".join(map(str, tput["tokens"][name])),
                f"{tput[name]['mb_per_s'] / tput['datasets']['mb_per_s']:.2f}x",
            ]
            for name in ("genlab", "datasets", "encode_batch")
        ],
    )
    print_table(
        "DATA_DIRs (genlab prepare, one run each)",
        ["corpus", "text MB", "tokens", "shard MB", "prepare s", "MB/s"],
        [
            [
                k,
                f"{d['text_bytes'] / 1e6:,.0f}",
                f"{d['tokens']:,}",
                f"{d['shard_bytes'] / 1e6:,.0f}",
                f"{d['seconds']:.0f}",
                f"{d['mb_per_s']:.2f}",
            ]
            for k, d in data_dirs.items()
        ],
    )
    print_table(
        f"genlab train --preset lm-small from a DATA_DIR, {p['train_steps']} steps, {p['train_runs']} runs each",
        ["DATA_DIR", "peak RssAnon MB", "VmHWM MB", "command to first step s", "its CPU s"],
        [
            [
                k,
                f"{train[k]['rss_anon_mb']:.0f}",
                f"{train[k]['vm_hwm_mb']:.0f}",
                f"{train[k]['first_step_s']:.2f}",
                f"{train[k]['first_step_cpu_s']:.2f}",
            ]
            for k in ("big", "small")
        ],
    )
    print(
        f"import {train['import_s']:.2f} s, Trainer set-up {h['setup_s']:.2f} s, first step {h['first_step_s']:.2f} s, "
        f"train split SHA-256s {h['open_train_split_sha256_s']:.2f} s "
        f"(sizes only {h['open_train_split_size_check_s']:.3f} s); "
        f"data time per step {h['data_s_median'] * 1e3:.2f} ms of {h['step_s_median'] * 1e3:.0f} ms "
        f"({100 * h['data_share_median']:.2f}%, max {100 * h['data_share_max']:.2f}%); load {loads}"
    )
    return {
        "benchmark": "data",
        "machine": machine_info(),
        "config": p,
        "load_avg": loads,
        "corpora": corpora,
        "tokenizer": str(tok),
        "prepare_throughput": tput,
        "data_dirs": data_dirs,
        "training": train,
        "targets": t,
    }
