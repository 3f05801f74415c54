"""`genlab sweep`: a tiny grid end to end; every point an ordinary run dir; resumable; one CSV;
bad input leaves no sweep directory."""

import csv
import json

import pytest

from genlab.cli import main
from genlab.errors import GenlabError
from genlab.scaling import sweep
from genlab.train.rundir import RunDir

# two budgets; at each one lr x batch pair (shared with the IsoFLOP middle) and a second lr, and
# IsoFLOP sizes 50x and 200x M_opt (the smallest shapes): 1-7 steps per point, 64-token rows
TINY = [
    "--budgets",
    "5e7,1e8",
    "--lr-factors",
    "1,2",
    "--batch-factors",
    "1",
    "--size-factors",
    "50,200",
    "--lr-batch-size",
    "50",
]


def _sets(corpus):
    return [f"--set=data.path={corpus}", "--set=data.packing_length=64", "--set=data.val_fraction=0.2"]


def _rows(path):
    with open(path) as fh:
        return list(csv.DictReader(fh))


def test_tiny_sweep_runs_resumes_and_collects(tiny_corpus, tmp_path, capsys, monkeypatch):
    import genlab.scaling.fit

    monkeypatch.setattr(genlab.scaling.fit, "CHINCHILLA_STARTS", 8)  # the fit's plumbing only
    out = tmp_path / "sw"
    argv = ["sweep", "--out", str(out), *TINY, *_sets(tiny_corpus)]
    assert main(argv) == 0
    spec = json.loads((out / "sweep.json").read_text())
    rows = _rows(out / "results.csv")
    assert [r["point"] for r in rows] == [p["point"] for p in spec["points"]] and len(rows) == 6
    for r in rows:
        run = RunDir.open(out / "points" / r["point"])  # an ordinary run dir
        assert run.status()["status"] == "finished" and run.status()["step"] == int(r["steps"])
        assert float(r["val_loss"]) > 0 and int(r["tokens"]) > 0
        assert float(r["compute"]) == pytest.approx(float(r["M"]) * int(r["tokens"]))
    both = [r for r in rows if r["lr_batch"] == "1" and r["isoflop"] == "1"]
    assert len(both) == 2  # the shared point of each budget was run once
    assert {r["budget"] for r in rows} == {"50000000.0", "100000000.0"}
    capsys.readouterr()

    # rerun: every point is skipped
    mtimes = {r["point"]: (out / "points" / r["point"] / "result.json").stat().st_mtime_ns for r in rows}
    assert main(["sweep", "--out", str(out)]) == 0
    assert capsys.readouterr().out.count("done before") == len(rows)
    # a point that died before its first checkpoint, and one without its result: only they rerun
    first, second = rows[0]["point"], rows[1]["point"]
    for name in ("result.json", "checkpoints", "run.json", "metrics.jsonl"):
        p = out / "points" / first / name
        if p.is_dir():
            import shutil

            shutil.rmtree(p)
        else:
            p.unlink()
    (out / "points" / second / "result.json").unlink()
    assert main(argv) == 0
    log = capsys.readouterr().out
    assert log.count("done before") == len(rows) - 2
    for r in rows[2:]:
        assert (out / "points" / r["point"] / "result.json").stat().st_mtime_ns == mtimes[r["point"]]
    again = _rows(out / "results.csv")
    assert [r["point"] for r in again] == [r["point"] for r in rows]
    assert again[1]["val_loss"] == rows[1]["val_loss"]  # resumed from its final checkpoint: same model

    # the fit runs on it: lr laws from two budgets, IsoFLOP minima from two sizes per budget
    assert main(["fit", str(out / "results.csv"), "--bootstrap", "5"]) == 0
    fit = json.loads((out / "fit" / "fit.json").read_text())
    assert "e" in fit["hparams"]["lr"] and "e" in fit["isoflop"]["M"]


def test_sweep_refuses_a_different_grid_and_bad_input(tiny_corpus, tmp_path, capsys):
    out = tmp_path / "sw"
    spec = sweep.make_spec(
        budgets=[5e7],
        lr_factors=[1],
        batch_factors=[1],
        size_factors=[1],
        lr_batch_size=1,
        overrides=[f"data.path={tiny_corpus}", "data.packing_length=64", "data.val_fraction=0.2"],
    )
    sweep.open_sweep(out, spec)  # creates the directory and sweep.json only
    assert (out / "sweep.json").is_file() and not any((out / "points").iterdir())
    other = dict(spec, points=spec["points"] + [dict(spec["points"][0], point="another")])
    with pytest.raises(GenlabError, match="different sweep"):
        sweep.open_sweep(out, other)
    for extra, words in (
        (["--budgets", "1e8,-1"], "must be a finite number > 0"),
        (["--budgets", "1e8", "--set", "model.n_head=3"], "divisible"),
        (["--budgets", "1e8", "--set", "data.path=/nonexistent.txt"], "does not exist"),
        (["--kind", "grid"], "invalid choice"),
        (["--estimate"], "--dry-run"),
    ):
        new = tmp_path / "new"
        assert main(["sweep", "--out", str(new), *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and words in err[0], (extra, err)
        assert not new.exists()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("y")
    assert main(["sweep", "--out", str(tmp_path / "full"), "--budgets", "1e8"]) == 2
    assert "holds no sweep.json" in capsys.readouterr().err


def test_default_grid_dry_run(capsys, tmp_path):
    assert main(["sweep", "--out", str(tmp_path / "d"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "39 points" in out and not (tmp_path / "d").exists()
    spec = sweep.make_spec()
    assert sorted({p["budget"] for p in spec["points"]}) == list(sweep.BUDGETS)
    # every point trains on D = C / M tokens within a few percent (steps are whole numbers)
    for p in spec["points"]:
        tokens = p["steps"] * p["batch_seqs"] * p["seq_len"]
        assert abs(p["M"] * tokens / p["budget"] - 1) < 0.05
