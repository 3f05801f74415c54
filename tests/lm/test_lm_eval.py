"""`genlab eval RUN --tasks ...`: lm-evaluation-harness through genlab's adapter (interop/lm_eval.py), offline,
on task YAMLs written here over a local JSONL file. The harness's per-example numbers must be genlab's own:
log-probabilities computed directly with the model, one unpacked document at a time."""

import json

import pytest
import torch

from genlab.cli import main
from genlab.config import preset, resolve, to_toml
from genlab.interop.lm_eval import evaluate_tasks, rolling_windows
from genlab.train.rundir import load_run
from genlab.train.trainer import train

pytest.importorskip("lm_eval")
pytestmark = pytest.mark.usefixtures("one_thread")

WORDS = ["fox", "dog", "cat", "bird", "fish"]
N_DOCS = 12


def _docs():
    docs = []
    for i in range(N_DOCS):
        k = 2 + i % 3
        docs.append(
            {
                "q": f"document {i}: the quick brown",
                "choices": WORDS[:k],
                "label": i % k,
                "text": "the quick brown fox jumps over the lazy dog." * (1 + i % 2),
                "answer": "fox",
            }
        )
    return docs


TASKS = {
    "toy_mc": """
output_type: multiple_choice
doc_to_text: "{{q}}"
doc_to_target: "{{label}}"
doc_to_choice: "{{choices}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
""",
    "toy_ppl": """
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{text}}"
metric_list:
  - metric: word_perplexity
    aggregation: weighted_perplexity
    higher_is_better: false
""",
    "toy_gen": """
output_type: generate_until
doc_to_text: "{{q}}"
doc_to_target: "{{answer}}"
generation_kwargs:
  until: [".", "quick"]
  max_gen_toks: 12
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
""",
}


@pytest.fixture(scope="module", autouse=True)
def offline():
    mp = pytest.MonkeyPatch()
    mp.setenv("HF_DATASETS_OFFLINE", "1")
    mp.setenv("HF_HUB_OFFLINE", "1")
    yield
    mp.undo()


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("lm_eval_tasks")
    data = d / "toy.jsonl"
    data.write_text("".join(json.dumps(doc) + "\n" for doc in _docs()))
    for name, body in TASKS.items():
        head = (
            f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\n"
            f"  cache_dir: {d / 'hf-cache'}\ntest_split: test\n"  # not ~/.cache/huggingface
        )
        (d / f"{name}.yaml").write_text(head + body + "metadata:\n  version: 1.0\n")
    return d


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_overrides):
    """A tiny BPE run (a start token before every document) and a tiny byte run (none)."""
    d = tmp_path_factory.mktemp("lm_eval_runs")
    corpus = d / "corpus.jsonl"
    texts = [f"document {i}: " + "the quick brown fox jumps over the lazy dog. " * (1 + i % 4) for i in range(40)]
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    out = {}
    for tok, extra in (("bpe", ["data.tokenizer=bpe", "data.vocab_size=300"]), ("byte", [])):
        cfg = resolve(None, None, tiny_overrides(corpus, steps=3, extra=extra))
        run, _ = train(cfg, d / tok, progress=False, log=lambda *a: None)
        out[tok] = run.path
    return out


def _direct_logprob(model, ids: list[int], n_cont: int) -> tuple[float, bool]:
    """Sum of log P(token | everything before it) over the last n_cont tokens of `ids`: one document,
    one forward pass, the full log-softmax."""
    with torch.no_grad():
        x = torch.tensor(ids[:-1])
        h = model(x, torch.arange(len(x)), torch.tensor([0, len(x)], dtype=torch.int32), len(x))
        logp = model.head(h).double().log_softmax(-1)
    tg = torch.tensor(ids[1:])
    lp = logp.gather(1, tg[:, None])[:, 0][-n_cont:]
    greedy = bool((logp.argmax(-1) == tg)[-n_cont:].all())
    return float(lp.sum()), greedy


def _ids(tok, text: str) -> list[int]:
    return ([tok.bos_id] if tok.bos_id is not None else []) + tok.encode(text)


def _results(run, task_dir, tasks, limit=None):
    return evaluate_tasks(run, tasks, limit=limit, batch_size=5, include_path=str(task_dir), log_samples=True)


@pytest.mark.parametrize("tok", ["bpe", "byte"])
def test_multiple_choice_loglikelihoods_and_accuracy_are_genlabs_own(runs, task_dir, tok):
    res = _results(runs[tok], task_dir, ["toy_mc"])
    _, _, task, model = load_run(runs[tok])
    samples = sorted(res["samples"]["toy_mc"], key=lambda s: s["doc_id"])
    assert len(samples) == N_DOCS
    correct = []
    for s in samples:
        doc = s["doc"]
        ours = []
        for choice, resp in zip(doc["choices"], s["resps"]):
            ctx = _ids(task.tokenizer, doc["q"])
            cont = task.tokenizer.encode(" " + choice)  # lm-eval's target delimiter is " "
            assert task.tokenizer.encode(doc["q"] + " " + choice) == task.tokenizer.encode(doc["q"]) + cont
            lp, greedy = _direct_logprob(model, ctx + cont, len(cont))
            got_lp, got_greedy = resp[0]
            assert abs(got_lp - lp) < 1e-4, (doc, choice, got_lp, lp)
            assert got_greedy == greedy
            ours.append(lp)
        correct.append(max(range(len(ours)), key=ours.__getitem__) == doc["label"])
    assert res["tasks"]["toy_mc"]["acc,none"] == pytest.approx(sum(correct) / len(correct), abs=1e-12)


def test_rolling_loglikelihood_is_the_documents_log_probability(runs, task_dir):
    res = _results(runs["bpe"], task_dir, ["toy_ppl"])
    _, _, task, model = load_run(runs["bpe"])
    samples = res["samples"]["toy_ppl"]
    assert len(samples) == N_DOCS
    for s in samples:
        ids = _ids(task.tokenizer, s["doc"]["text"])
        assert len(ids) <= task.cfg.data.packing_length  # one window: the whole document in one pass
        lp, _ = _direct_logprob(model, ids, len(ids) - 1)
        got = s["resps"][0][0]
        got = got[0] if isinstance(got, (tuple, list)) else got
        assert abs(got - lp) < 1e-4


def test_rolling_windows_predict_every_token_once_within_the_window():
    tokens = list(range(10, 40))
    for prefix, L in ((0, 8), (0, 30), (None, 7)):
        wins = rolling_windows(tokens, prefix, L)
        predicted = [t for _, cont in wins for t in cont]
        assert predicted == (tokens if prefix is not None else tokens[1:])
        assert all(len((ctx + cont)[:-1]) <= L for ctx, cont in wins)


def test_generate_until_is_greedy_and_stops_at_the_stop_strings(runs, task_dir):
    res = _results(runs["bpe"], task_dir, ["toy_gen"], limit=3)
    _, _, task, model = load_run(runs["bpe"])
    tok = task.tokenizer
    for s in res["samples"]["toy_gen"]:
        ids = _ids(tok, s["doc"]["q"])
        got: list[int] = []
        text = ""
        for _ in range(12):  # greedy, recomputing the whole sequence each step (no cache)
            with torch.no_grad():
                x = torch.tensor(ids + got)
                h = model(x, torch.arange(len(x)), torch.tensor([0, len(x)], dtype=torch.int32), len(x))
            nxt = int(model.head(h[-1]).argmax())
            if nxt == tok.bos_id:
                break
            got.append(nxt)
            text = tok.decode(got)
            if "." in text or "quick" in text:
                break
        want = text[: min([text.find(u) for u in (".", "quick") if u in text], default=len(text))]
        assert s["resps"][0][0] == want


def test_cli_limit_json_and_the_same_numbers(runs, task_dir, capsys):
    code = main(
        ["eval", str(runs["bpe"]), "--tasks", "toy_mc,toy_ppl", "--include-path", str(task_dir), "--limit", "4"]
        + ["--json", "--batch-size", "3"]
    )
    out = capsys.readouterr().out
    assert code == 0
    res = json.loads(out.strip().splitlines()[-1])
    assert res["n_samples"] == {"toy_mc": 4, "toy_ppl": 4}
    lib = _results(runs["bpe"], task_dir, ["toy_mc"], limit=4)
    assert res["tasks"]["toy_mc"]["acc,none"] == lib["tasks"]["toy_mc"]["acc,none"]
    code = main(["eval", str(runs["bpe"]), "--tasks", "toy_mc", "--include-path", str(task_dir), "--limit", "2"])
    out = capsys.readouterr().out
    assert code == 0 and "toy_mc" in out and "acc" in out


# ----------------------------------------------------------------------------- bad input
def _one_line_error(capsys, argv, *words):
    code = main(argv)
    err = capsys.readouterr().err
    lines = [l for l in err.splitlines() if l.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("genlab: error:"), err
    for w in words:
        assert w in lines[0], (w, lines[0])


@pytest.mark.slow  # indexes lm-eval's ~15k built-in task names (about 10 s)
def test_unknown_task_is_one_line(runs, task_dir, capsys):
    argv = ["eval", str(runs["bpe"]), "--tasks", "toy_mc,no_such_task", "--include-path", str(task_dir)]
    _one_line_error(capsys, argv, "no_such_task", "lm-eval ls tasks")


def test_bad_arguments_are_one_line(runs, task_dir, capsys, tmp_path):
    run = str(runs["bpe"])
    _one_line_error(capsys, ["eval", run, "--tasks", "toy_mc", "--limit", "0"], "--limit", ">= 1")
    _one_line_error(capsys, ["eval", run, "--tasks", "toy_mc", "--batch-size", "0"], "--batch-size")
    _one_line_error(capsys, ["eval", run, "--tasks", "toy_mc,,"], "--tasks")
    _one_line_error(capsys, ["eval", run, "--limit", "3"], "--limit goes with --tasks")
    _one_line_error(capsys, ["eval", run, "--tasks", "toy_mc", "--data", "x.txt"], "--data")
    _one_line_error(capsys, ["eval", run, "--tasks", "toy_mc", "--include-path", str(tmp_path / "no")], "not a dir")
    _one_line_error(capsys, ["eval", run, "--tasks", "toy_mc", "--device", "nonsense"], "--device")


def test_lm_eval_not_installed_names_the_extra(runs, capsys, monkeypatch):
    import sys

    for name in [m for m in sys.modules if m == "lm_eval" or m.startswith("lm_eval.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # import lm_eval -> ImportError
    _one_line_error(capsys, ["eval", str(runs["bpe"]), "--tasks", "arc_easy"], "pip install 'genlab[eval]'")


@pytest.mark.parametrize("name", ["made-digits", "ldm-digits", "oadtr-synth"])
def test_non_lm_runs_are_refused_in_one_line(name, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.toml").write_text(to_toml(preset(name).validate()))
    _one_line_error(capsys, ["eval", str(run), "--tasks", "arc_easy"], "language model run")


def test_non_causal_lm_run_is_refused(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.toml").write_text(to_toml(preset("mlm-small").validate()))
    _one_line_error(capsys, ["eval", str(run), "--tasks", "arc_easy"], "causal")


def test_plain_eval_is_unchanged(runs, capsys):
    assert main(["eval", str(runs["byte"]), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert set(res) >= {"run", "data", "val_loss", "val_ppl", "val_bpb", "val_tokens"}


@pytest.mark.slow  # trains lm-tiny for a step and starts `genlab eval` in a fresh process (~30 s)
def test_bench_harness_quick():
    from genlab.bench import harness

    r = harness.run(quick=True)
    assert set(r["cli"]["results"]) == set(harness.TASKS)
    for name in harness.TASKS:  # the CLI process and the in-process adapter agree
        for k, v in r["per_task"][name]["genlab"].items():
            assert r["cli"]["results"][name][k] == pytest.approx(v, abs=1e-9)
