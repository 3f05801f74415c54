"""`genlab bench harness`: lm-evaluation-harness on an lm-small run (a few training steps: speed, not
accuracy), `examples` local examples per task of three kinds, written from the embedded corpus:

    bench_mc     4-way multiple choice (hellaswag-like): 12 lines of code, which line comes next
    bench_ppl    loglikelihood_rolling over 2,000-character chunks (several windows each)
    bench_gen    generate_until "\\n", at most 32 tokens (greedy)

Timed: `genlab eval RUN --tasks bench_mc,bench_ppl,bench_gen --include-path DIR` end to end in a fresh
process (the target: under a minute on 2 cores), then, in this process on the same loaded tasks, the
harness's evaluate() with genlab's adapter (packed documents) against lm-eval's `hf` model on the run's
Hugging Face export (`genlab export`; padded batches), per task. Needs the eval and bench extras.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from genlab.bench.common import bench_thread_scope, machine_info, print_table
from genlab.config import resolve
from genlab.data.text import embedded_corpus
from genlab.interop.hf import export_hf
from genlab.interop.lm_eval import DEFAULT_BATCH_SIZE, GenlabLM, load_lm_run, task_manager
from genlab.train.trainer import train

DEFAULTS = {"preset": "lm-small", "train_steps": 2, "examples": 100, "batch_size": DEFAULT_BATCH_SIZE, "hf": True}
QUICK = {"preset": "lm-tiny", "train_steps": 1, "examples": 8, "batch_size": 8, "hf": False}
TASKS = ("bench_mc", "bench_ppl", "bench_gen")


def write_tasks(d: Path, n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    docs = embedded_corpus()
    lines = [ln for doc in docs for ln in doc.splitlines() if len(ln.strip()) > 20]
    rows = []
    for i in range(n):
        doc = docs[rng.randrange(len(docs))].splitlines()
        while len(doc) < 40:
            doc = docs[rng.randrange(len(docs))].splitlines()
        s = rng.randrange(len(doc) - 13)
        ctx, nxt = "\n".join(doc[s : s + 12]) + "\n", doc[s + 12]
        choices = [nxt] + rng.sample(lines, 3)
        rng.shuffle(choices)
        start = rng.randrange(max(1, len(docs[i % len(docs)]) - 2000))
        rows.append(
            {
                "ctx": ctx,
                "choices": choices,
                "label": choices.index(nxt),
                "text": docs[i % len(docs)][start : start + 2000],
                "answer": nxt,
            }
        )
    d.mkdir(parents=True, exist_ok=True)
    data = d / "bench.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    head = (
        f"dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\n"
        f"  cache_dir: {d / 'hf-cache'}\ntest_split: test\n"
    )
    bodies = {
        "bench_mc": 'output_type: multiple_choice\ndoc_to_text: "{{ctx}}"\ndoc_to_target: "{{label}}"\n'
        'doc_to_choice: "{{choices}}"\ntarget_delimiter: ""\nmetric_list:\n  - metric: acc\n',
        "bench_ppl": 'output_type: loglikelihood_rolling\ndoc_to_text: ""\ndoc_to_target: "{{text}}"\n'
        "metric_list:\n  - metric: bits_per_byte\n",
        "bench_gen": 'output_type: generate_until\ndoc_to_text: "{{ctx}}"\ndoc_to_target: "{{answer}}"\n'
        'generation_kwargs:\n  until: ["\\n"]\n  max_gen_toks: 32\nmetric_list:\n  - metric: exact_match\n',
    }
    for name, body in bodies.items():
        (d / f"{name}.yaml").write_text(f"task: {name}\n{head}{body}metadata:\n  version: 1.0\n")
    return list(bodies)


def _evaluate(lm, tm, name: str, limit: int) -> tuple[float, dict]:
    from lm_eval.evaluator import evaluate

    loaded = tm.load([name])
    for t in loaded["tasks"].values():
        t.set_config(key="num_fewshot", value=0)
    t0 = time.perf_counter()
    res = evaluate(lm, loaded, limit=limit, bootstrap_iters=0, log_samples=False)
    return time.perf_counter() - t0, {k: v for k, v in res["results"][name].items() if "," in k and "stderr" not in k}


def run(steps: int | None = None, quick: bool = False) -> dict:
    p = dict(QUICK if quick else DEFAULTS)
    if steps is not None:
        p["train_steps"] = steps
    with bench_thread_scope(quick), tempfile.TemporaryDirectory(prefix="genlab-bench-harness-") as tmp:
        return _run(p, Path(tmp))


def _run(p: dict, tmp: Path) -> dict:
    import torch

    cfg = resolve(p["preset"], None, [f"train.steps={p['train_steps']}", "train.eval_every=1000000"])
    run_dir, _ = train(cfg, tmp / "run", progress=False, log=lambda *a: None)
    names = write_tasks(tmp / "tasks", p["examples"])
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    cmd = ["genlab", "eval", str(run_dir.path), "--tasks", ",".join(names), "--include-path", str(tmp / "tasks")]
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    r = subprocess.run(
        [sys.executable, "-m", "genlab", *cmd[1:], "--json"], env=env, capture_output=True, text=True, check=False
    )
    cli_s = time.perf_counter() - t0
    if r.returncode != 0:
        raise RuntimeError(f"genlab eval failed: {r.stderr.strip().splitlines()[-1:]}")
    cli = json.loads(r.stdout.strip().splitlines()[-1])
    res = {
        "benchmark": "harness",
        "machine": machine_info(),
        "config": p,
        "cli": {
            "command": " ".join(cmd),
            "seconds": cli_s,
            "load_avg_before": load_before,
            "load_avg_after": os.getloadavg()[0],
            "results": cli["tasks"],
        },
        "per_task": {},
    }
    os.environ.update({"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"})
    tm = task_manager(names, str(tmp / "tasks"))
    _, task, model = load_lm_run(run_dir.path)
    ours = GenlabLM(model, task.tokenizer, task.cfg.data.packing_length, p["batch_size"])
    hf = None
    if p["hf"]:
        from lm_eval.models.huggingface import HFLM

        export_hf(run_dir.path, tmp / "hf")
        hf = HFLM(pretrained=str(tmp / "hf"), batch_size=p["batch_size"], device="cpu", dtype=torch.float32)
    rows = []
    for name in names:
        g_s, g_m = _evaluate(ours, tm, name, p["examples"])
        entry = {"genlab_s": g_s, "genlab": g_m}
        if hf is not None:
            h_s, h_m = _evaluate(hf, tm, name, p["examples"])
            entry.update(hf_s=h_s, hf=h_m, speedup=h_s / g_s)
        res["per_task"][name] = entry
        rows.append(
            [
                name,
                f"{g_s:.2f}",
                f"{entry['hf_s']:.2f}" if hf else "-",
                f"{entry['speedup']:.2f}x" if hf else "-",
                json.dumps({k.split(",")[0]: round(v, 4) for k, v in g_m.items()}),
                json.dumps({k.split(",")[0]: round(v, 4) for k, v in entry["hf"].items()}) if hf else "-",
            ]
        )
    print_table(
        f"lm-eval, {p['preset']} run, {p['examples']} examples per task, batch {p['batch_size']} "
        f"(`{res['cli']['command']}`: {cli_s:.1f} s end to end, load {load_before:.2f})",
        ["task", "genlab adapter s", "export + hf s", "hf / genlab", "genlab metrics", "hf metrics"],
        rows,
    )
    return res
