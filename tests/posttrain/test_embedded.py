"""The embedded post-training data: deterministic by seed, split by source document, valid rows."""

import json
import random
import re

import pytest

from genlab.cli import main
from genlab.data.chat import ROLES, check_messages
from genlab.errors import GenlabError
from genlab.families.posttrain import embedded as E


@pytest.fixture(scope="module")
def data():
    return {
        (kind, split, seed): fn(split, seed)
        for kind, fn in (("sft", E.sft_conversations), ("dpo", E.preference_pairs))
        for split in E.SPLITS
        for seed in (0, 1)
    }


def test_deterministic_by_seed_and_seed_changes_phrasing(data):
    assert E.sft_conversations("val", 0) == data["sft", "val", 0]
    assert E.preference_pairs("val", 1) == data["dpo", "val", 1]
    a, b = data["sft", "train", 0], data["sft", "train", 1]
    assert [r["source"] for r in a] == [r["source"] for r in b]  # the same documents, phrased otherwise
    assert sum(x["messages"] != y["messages"] for x, y in zip(a, b)) > len(a) // 2
    assert data["dpo", "train", 0] != data["dpo", "train", 1]


def test_splits_are_disjoint_by_source_and_about_ten_percent(data):
    for seed in (0, 1):
        for kind in ("sft", "dpo"):
            train = {r["source"] for r in data[kind, "train", seed]}
            val = {r["source"] for r in data[kind, "val", seed]}
            assert train and val and not train & val
            assert 0.05 < len(val) / (len(train) + len(val)) < 0.15
    # a source's text never appears as an answer on the other side either
    train_answers = {m["content"] for r in data["sft", "train", 0] for m in r["messages"] if m["role"] == "assistant"}
    val_answers = {m["content"] for r in data["sft", "val", 0] for m in r["messages"] if m["role"] == "assistant"}
    assert not train_answers & val_answers
    with pytest.raises(GenlabError, match="unknown split 'test'"):
        E.sft_conversations("test")


def test_conversations_are_valid_and_sized(data):
    rows = data["sft", "train", 0]
    assert 1000 <= len(rows) <= 3000 and 80 <= len(data["sft", "val", 0]) <= 400
    answers = []
    for r in rows:
        msgs = check_messages(r["messages"], need_assistant=True)  # raises on anything invalid
        assert set(r) == {"messages", "source"} and r["source"]
        roles = [m["role"] for m in msgs]
        assert roles[-1] == "assistant" and set(roles) <= set(ROLES)
        body = roles[1:] if roles[0] == "system" else roles
        assert body == ["user", "assistant"] * (len(body) // 2)  # alternating, user first
        answers += [m["content"] for m in msgs if m["role"] == "assistant"]
        assert all(m["content"].strip() for m in msgs)
    assert all(40 <= len(a) <= E.ANSWER_MAX for a in answers)
    assert 200 <= sum(map(len, answers)) / len(answers) <= 600  # ~50-250 tokens of a 2k BPE
    # variety: system messages, second turns, several phrasings, topics and stdlib callables
    assert 0.1 < sum(r["messages"][0]["role"] == "system" for r in rows) / len(rows) < 0.4
    assert sum(len(r["messages"]) >= 4 + (r["messages"][0]["role"] == "system") for r in rows) > 30
    questions = {re.sub(r"`[^`]+`", "X", r["messages"][-2]["content"]) for r in rows}
    assert len(questions) > 15
    sources = {r["source"].split(":")[0] for r in rows}
    assert sources == {"topic", "py"}


def test_examples_from_the_brief():
    docs = {d.source: d for d in E.documents()}
    dumps = docs["py:json.dumps"]
    assert dumps.answer.startswith("`json.dumps(obj, *, skipkeys=False") and "JSON" in dumps.answer
    with_ = docs['topic:The "with" statement']
    assert with_.answer.startswith('The "with" statement is used to wrap the execution of a block')
    assert len(with_.answer) <= E.ANSWER_MAX and not with_.answer.rstrip().endswith(":")
    qs = {E._question(with_, random.Random(i)) for i in range(60)}
    assert "What does the `with` statement do?" in qs and "Explain the `with` statement." in qs


def test_preference_pairs(data):
    for (kind, split, _), rows in data.items():
        if kind != "dpo":
            continue
        assert len(rows) == len(data["sft", split, 0])
        for r in rows:
            assert set(r) == {"prompt", "chosen", "rejected", "source", "rejected_kind"}
            check_messages(r["prompt"])
            assert r["prompt"][-1]["role"] == "user"
            assert r["chosen"].strip() and r["rejected"].strip() and r["chosen"] != r["rejected"]
            assert r["rejected_kind"] in E.REJECTED_KINDS
    rows = data["dpo", "train", 0]
    sft = {r["source"]: r["messages"] for r in data["sft", "train", 0]}
    answers = {r["chosen"]: r["source"] for r in rows}
    kinds = {}
    for r in rows:
        assert sft[r["source"]] == r["prompt"] + [{"role": "assistant", "content": r["chosen"]}]
        kinds[r["rejected_kind"]] = kinds.get(r["rejected_kind"], 0) + 1
        if r["rejected_kind"] == "other":  # another document's answer
            assert answers.get(r["rejected"], r["source"]) != r["source"]
        elif r["rejected_kind"] == "truncated":
            assert r["chosen"].startswith(r["rejected"]) and len(r["rejected"]) < 0.75 * len(r["chosen"])
            assert not r["rejected"].rstrip().endswith((".", "!", "?"))
        elif r["rejected_kind"] == "shuffled":
            assert sorted(r["rejected"].split()) == sorted(r["chosen"].split())
        else:  # swapped: same length in words, about a third of them different
            a, b = r["chosen"].split(" "), r["rejected"].split(" ")
            assert len(a) == len(b) and sum(x != y for x, y in zip(a, b)) >= 1
    assert all(kinds.get(k, 0) >= 0.05 * len(rows) for k in E.REJECTED_KINDS), kinds


def test_cli_writes_jsonl(tmp_path, capsys, data):
    out = tmp_path / "sft.jsonl"
    assert main(["data", "embedded-sft", str(out), "--split", "val", "--seed", "1"]) == 0
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert rows == data["sft", "val", 1]
    assert f"wrote {len(rows)} conversations" in capsys.readouterr().out
    out = tmp_path / "dpo.jsonl"
    assert main(["data", "embedded-dpo", str(out)]) == 0
    assert [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()] == data["dpo", "train", 0]
    capsys.readouterr()
    for argv, msg in (
        (["data", "embedded-sft", str(tmp_path / "nope" / "x.jsonl")], "does not exist"),
        (["data", "embedded-dpo", str(tmp_path)], "is a directory"),
        (["data", "embedded-dpo", str(out), "--split", "test"], "invalid choice"),
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert msg in err and len(err.strip().splitlines()) == 1


def _digest_code(pre: str) -> str:
    return (
        f"{pre}\nimport hashlib, json\nfrom genlab.families.posttrain import embedded\n"
        "rows = [(d.source, d.answer, d.more) for d in embedded.documents()]\n"
        "print(hashlib.sha256(json.dumps(rows).encode()).hexdigest())"
    )


@pytest.mark.slow
def test_the_data_is_the_same_in_every_process():
    """Signatures with object defaults (`<built-in method ... at 0x7f...>`) and methods libraries add to
    stdlib classes (transformers: logging.Logger.warning_once) once made the data depend on the process:
    a DPO run's cached reference log-probabilities then did not match its pairs on reload."""
    import subprocess
    import sys

    out = [
        subprocess.run([sys.executable, "-c", _digest_code(pre)], capture_output=True, text=True, check=True).stdout
        for pre in ("", "import transformers, torch")
    ]
    assert out[0] == out[1] and len(out[0].strip()) == 64
    assert not any(" at 0x" in d.answer for d in E.documents())
