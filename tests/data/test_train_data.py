"""Training on prepared corpora (issue 15): raw text and its `genlab prepare` give the same batches and
losses, a run on a DATA_DIR resumes bitwise, and a resumed run refuses a DATA_DIR of another tokenizer."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from genlab.cli import main
from genlab.config import resolve
from genlab.train.trainer import prepare_training, train

pytestmark = pytest.mark.usefixtures("one_thread")
QUIET = {"progress": False, "log": lambda *a: None}


def _prepare(capsys, src, out, *flags):
    assert main(["prepare", str(src), "--out", str(out), "--no-progress", *flags]) == 0
    capsys.readouterr()
    return out


def _batches(cfg, out, n):
    run, trainer = prepare_training(cfg, out, **QUIET)
    state, ids = trainer.task.initial_state(), []
    for _ in range(n):
        batch, state = trainer.task.next_batch(state)
        ids.append(batch.to("cpu").input_ids.clone())
    run.release()
    return ids, (run.path / "tokenizer.json").read_bytes()


def _losses(run):
    return [json.loads(line).get("loss") for line in (run / "metrics.jsonl").read_text().splitlines()]


def _final_weights(run):
    return load_file(str(sorted((run / "checkpoints").iterdir())[-1] / "model.safetensors"))


@pytest.mark.parametrize("tokenizer", ["byte", "bpe"])
def test_raw_text_and_its_prepared_dir_give_identical_batches(tiny_corpus, tiny_overrides, tmp_path, capsys, tokenizer):
    flags = ["--tokenizer", "byte"] if tokenizer == "byte" else ["--vocab-size", "300"]
    data_dir = _prepare(capsys, tiny_corpus, tmp_path / "prepared", *flags)
    extra = (f"data.tokenizer={tokenizer}", "data.vocab_size=300")
    raw = resolve(None, None, tiny_overrides(tiny_corpus, 4, extra))
    prepared = resolve(None, None, tiny_overrides(data_dir, 4, extra))
    ids_raw, tok_raw = _batches(raw, tmp_path / "b-raw", 6)
    ids_prep, tok_prep = _batches(prepared, tmp_path / "b-prep", 6)
    assert tok_raw == tok_prep  # the same tokenizer, byte for byte
    assert all(torch.equal(a, b) for a, b in zip(ids_raw, ids_prep, strict=True))
    train(raw, tmp_path / "raw", **QUIET)
    train(prepared, tmp_path / "prep", **QUIET)
    assert _losses(tmp_path / "raw") == _losses(tmp_path / "prep")


def test_resume_on_a_data_dir_is_bitwise(tiny_corpus, tiny_overrides, tmp_path, capsys):
    data_dir = _prepare(capsys, tiny_corpus, tmp_path / "prepared", "--tokenizer", "byte")
    train(resolve(None, None, tiny_overrides(data_dir, 6)), tmp_path / "full", **QUIET)
    train(resolve(None, None, tiny_overrides(data_dir, 3)), tmp_path / "part", **QUIET)
    train(None, tmp_path / "part", resume=True, overrides=["train.steps=6"], **QUIET)
    a, b = _final_weights(tmp_path / "full"), _final_weights(tmp_path / "part")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert _losses(tmp_path / "full") == _losses(tmp_path / "part")


def test_resumed_run_refuses_a_data_dir_of_another_tokenizer(tiny_corpus, tiny_overrides, tmp_path, capsys):
    data_dir = _prepare(capsys, tiny_corpus, tmp_path / "prepared", "--tokenizer", "byte")
    other = _prepare(capsys, tiny_corpus, tmp_path / "bpe", "--vocab-size", "300")
    run = tmp_path / "run"
    train(resolve(None, None, tiny_overrides(data_dir, 3)), run, **QUIET)

    def refused(*sets):
        argv = ["train", "--no-progress", "--resume", "--out", str(run), "--set", "train.steps=6"]
        assert main(argv + [x for s in sets for x in ("--set", s)]) == 2
        err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert len(err) == 1 and err[0].startswith("genlab: error:") and "another tokenizer" in err[0], err
        return err[0]

    assert str(other) in refused(f"data.path={other}")
    shutil.rmtree(data_dir)  # the same path, prepared again with another tokenizer
    shutil.copytree(other, data_dir)
    assert str(data_dir) in refused()
