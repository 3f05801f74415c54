"""Bad input of every kind: one line on stderr naming the problem, exit status 2, no traceback,
and no run directory left behind."""

import json
import subprocess
import sys

import pytest

from genlab.cli import main


def _run(capsys, argv):
    code = main(argv)
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def _assert_one_line_error(code, err, *words):
    assert code == 2
    lines = [l for l in err.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("genlab: error:"), err
    assert "Traceback" not in err
    for w in words:
        assert w in lines[0], (w, lines[0])


def _train_argv(out, *sets):
    return ["train", "--no-progress", "--out", str(out), *[f"--set={s}" for s in sets]]


@pytest.mark.parametrize(
    "sets,words",
    [
        (["data.path=/nonexistent/corpus.txt"], ["does not exist"]),
        (["model.d_modle=3"], ["unknown config key", "d_model"]),
        (["nosection.x=1"], ["unknown config key"]),
        (["train.lr=fast"], ["train.lr", "must be a number"]),
        (["train.steps=-5"], ["train.steps", "out of range"]),
        (["data.packing_length=1"], ["data.packing_length", "allowed"]),
        (["data.tokenizer=words"], ["data.tokenizer", "bpe, byte"]),
        (["model.n_head=5"], ["divisible"]),
        (["train.lr=nan"], ["finite"]),
        (["train.steps"], ["key=value"]),
    ],
)
def test_bad_config_values(capsys, tmp_path, sets, words):
    code, _, err = _run(capsys, _train_argv(tmp_path / "run", *sets))
    _assert_one_line_error(code, err, *words)
    assert not (tmp_path / "run").exists()


def test_empty_and_blank_corpus(capsys, tmp_path):
    for name, content in (("empty.txt", ""), ("blank.jsonl", "\n\n"), ("ws.txt", "   \n\t")):
        p = tmp_path / name
        p.write_text(content)
        code, _, err = _run(capsys, _train_argv(tmp_path / "run", f"data.path={p}"))
        _assert_one_line_error(code, err, "empty")
    d = tmp_path / "emptydir"
    d.mkdir()
    code, _, err = _run(capsys, _train_argv(tmp_path / "run", f"data.path={d}"))
    _assert_one_line_error(code, err, "no text files")
    assert not (tmp_path / "run").exists()


def test_non_utf8_corpus(capsys, tmp_path):
    p = tmp_path / "latin1.txt"
    p.write_bytes("caf\xe9 na\xefve ".encode("latin-1") * 50)
    code, _, err = _run(capsys, _train_argv(tmp_path / "run", f"data.path={p}"))
    _assert_one_line_error(code, err, "not UTF-8")
    assert not (tmp_path / "run").exists()


def test_bad_jsonl(capsys, tmp_path):
    p = tmp_path / "c.jsonl"
    p.write_text('{"text": "ok"}\n{"txt": "no text field"}\n')
    code, _, err = _run(capsys, _train_argv(tmp_path / "run", f"data.path={p}"))
    _assert_one_line_error(code, err, ":2:", '"text"')
    p.write_text('{"text": "ok"}\nnot json\n')
    code, _, err = _run(capsys, _train_argv(tmp_path / "run", f"data.path={p}"))
    _assert_one_line_error(code, err, "not valid JSON")


def test_bad_config_file(capsys, tmp_path):
    p = tmp_path / "c.toml"
    p.write_text("[train\nlr = 1")
    code, _, err = _run(capsys, ["train", "--config", str(p), "--out", str(tmp_path / "run")])
    _assert_one_line_error(code, err, "not valid TOML")
    p.write_text("[train]\nlr = [1, 2]\n")
    code, _, err = _run(capsys, ["train", "--config", str(p), "--out", str(tmp_path / "run")])
    _assert_one_line_error(code, err, "train.lr")
    p.write_text("[optimizer]\nlr = 1\n")
    code, _, err = _run(capsys, ["train", "--config", str(p), "--out", str(tmp_path / "run")])
    _assert_one_line_error(code, err, "unknown key", "optimizer")
    code, _, err = _run(capsys, ["train", "--config", str(tmp_path / "missing.toml")])
    _assert_one_line_error(code, err, "does not exist")


def test_bad_cli_arguments(capsys, tmp_path):
    code, _, err = _run(capsys, ["train", "--preset", "nope"])
    _assert_one_line_error(code, err, "unknown preset", "lm-tiny")
    code, _, err = _run(capsys, ["train", "--steps", "zero"])
    _assert_one_line_error(code, err, "--steps")
    code, _, err = _run(capsys, ["frobnicate"])
    _assert_one_line_error(code, err, "invalid choice")
    code, _, err = _run(capsys, ["train", "--resume"])
    _assert_one_line_error(code, err, "--out")


@pytest.mark.parametrize("cmd", [["sample"], ["eval"], ["info"], ["plot"], ["train", "--resume", "--out"]])
def test_nonexistent_run_dir(capsys, tmp_path, cmd):
    code, _, err = _run(capsys, cmd + [str(tmp_path / "no-such-run")])
    _assert_one_line_error(code, err, "does not exist")


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, tiny_overrides):
    import tempfile
    from pathlib import Path

    base = tmp_path_factory.mktemp("cli")
    corpus = base / "c.jsonl"
    corpus.write_text(
        "".join(json.dumps({"text": f"line {i} " * 20 + "日本 🎉"}, ensure_ascii=False) + "\n" for i in range(30)),
        encoding="utf-8",
    )
    out = base / "run"
    assert main(_train_argv(out, *tiny_overrides(corpus, steps=6))) == 0
    del tempfile, Path
    return out


def test_existing_run_dir_is_not_overwritten(capsys, trained_run, tmp_path):
    before = (trained_run / "metrics.jsonl").read_text()
    code, _, err = _run(capsys, _train_argv(trained_run, "train.steps=2"))
    _assert_one_line_error(code, err, "already exists", "--resume")
    assert (trained_run / "metrics.jsonl").read_text() == before


def test_commands_on_a_trained_run(capsys, trained_run):
    code, out, _ = _run(capsys, ["eval", str(trained_run), "--json"])
    assert code == 0
    res = json.loads(out)
    assert res["val_loss"] > 0 and res["val_ppl"] > 1 and res["val_bpb"] > 0
    other = trained_run.parent / "other.txt"
    other.write_text("a different text to score. " * 40, encoding="utf-8")
    code, out, _ = _run(capsys, ["eval", str(trained_run), "--data", str(other), "--json"])
    n = len("a different text to score. " * 40)  # byte tokens, cut into chunks of 64: one target lost per chunk
    assert code == 0 and json.loads(out)["val_tokens"] == n - -(-n // 64)
    code, out, _ = _run(
        capsys, ["sample", str(trained_run), "--prompt", "line 日本", "--max-new-tokens", "12", "--seed", "1"]
    )
    assert code == 0 and out.startswith("line 日本")
    code, out, _ = _run(capsys, ["info", str(trained_run)])
    assert code == 0 and "parameters" in out and "FLOPs/token" in out
    code, out, _ = _run(capsys, ["plot", str(trained_run)])
    assert code == 0 and (trained_run / "loss.png").stat().st_size > 1000
    code, _, err = _run(capsys, ["sample", str(trained_run), "--top-p", "2"])
    _assert_one_line_error(code, err, "--top-p")


def test_corrupted_and_truncated_checkpoint(capsys, trained_run, tmp_path):
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(trained_run, run)
    for ck in (run / "checkpoints").iterdir():
        f = ck / "model.safetensors"
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    code, _, err = _run(capsys, ["sample", str(run)])
    lines = [l for l in err.splitlines() if l.startswith("genlab: error:")]
    assert code == 2 and len(lines) == 1 and "no complete checkpoint" in lines[0] and "Traceback" not in err
    assert "truncated" in err  # each skipped checkpoint is named with its problem
    code, _, err = _run(capsys, ["train", "--no-progress", "--resume", "--out", str(run)])
    assert code == 2 and "no complete checkpoint" in err


def test_real_process_exit_code_and_no_traceback(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "genlab", "train", "--set", "data.packing_length=1", "--out", str(tmp_path / "r")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().count("\n") == 0 and "packing_length" in r.stderr
    assert not (tmp_path / "r").exists()


def test_presets_listed(capsys):
    code, out, _ = _run(capsys, ["presets"])
    assert code == 0 and "lm-tiny" in out and "demo default" in out
