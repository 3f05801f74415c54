"""data.mix: rows drawn from several DATA_DIRs by weight (genlab.data.mix). Shares match the weights
(chi-square), the stream is a pure function of its flat int state (deterministic, resumable bitwise),
per-source tokens and epochs reach metrics.jsonl, and bad input is one line with exit status 2."""

import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from scipy.stats import chi2

from genlab.cli import main
from genlab.config import resolve, to_toml
from genlab.config.parse import from_toml_file
from genlab.data.corpus import open_stream
from genlab.data.mix import draw_sources, open_mix, source_names
from genlab.train.trainer import train

from .helpers import make_docs, run_prepare, write_jsonl

pytestmark = pytest.mark.usefixtures("one_thread")
QUIET = {"progress": False, "log": lambda *a: None}


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    """Two byte-level DATA_DIRs, code/ and web/, of different documents (and one of a BPE tokenizer)."""
    root = tmp_path_factory.mktemp("mix")
    out = {}
    for name, seed, n in (("code", 1, 60), ("web", 2, 40)):
        src = write_jsonl(root / f"{name}.jsonl", make_docs(n, seed))
        out[name] = run_prepare(src, root / name, val_fraction=0.1)
    out["bpe"] = run_prepare(root / "web.jsonl", root / "bpe", tokenizer="", vocab_size=300, val_fraction=0.1)
    return out


def _mix(dirs, **weights):
    return {str(dirs[k]): w for k, w in weights.items()}


def _chi2_p(counts, weights) -> float:
    counts = np.asarray(counts, dtype=np.float64)
    expected = counts.sum() * np.asarray(weights) / sum(weights)
    return float(chi2.sf(((counts - expected) ** 2 / expected).sum(), len(counts) - 1))


# ---------------------------------------------------------------------------- the draw and the stream
def test_draws_match_the_weights_chi_square():
    weights = [0.5, 0.3, 0.15, 0.05]
    src = draw_sources(seed=3, first_row=0, n=200_000, weights=weights)
    counts = np.bincount(src, minlength=4)
    assert _chi2_p(counts, weights) > 0.001
    assert _chi2_p(counts, [0.25, 0.25, 0.25, 0.25]) < 0.001  # the test has the power to see wrong weights
    assert _chi2_p(counts, [0.48, 0.32, 0.15, 0.05]) < 0.001
    # a pure function of (seed, row): any window is the same rows of the whole sequence
    assert np.array_equal(draw_sources(3, 1234, 100, weights), src[1234:1334])
    assert not np.array_equal(draw_sources(4, 0, 1000, weights), src[:1000])


def test_stream_shares_positions_and_tokens(dirs):
    weights = _mix(dirs, code=0.7, web=0.3)
    mix = open_mix(weights, 64, 8, seed=0, buffer=50)
    assert mix.names == ["code", "web"]
    state = mix.initial_state()
    counts = np.zeros(2, dtype=np.int64)
    for _ in range(600):  # 4800 rows: both sources go through several epochs
        rows, sources, after = mix.layout_at(state)
        assert len(rows) == 8 and after[0] == state[0] + 8
        counts += np.bincount(sources, minlength=2)
        state = after
    assert _chi2_p(counts, [0.7, 0.3]) > 0.001
    assert _chi2_p(counts, [0.6, 0.4]) < 0.001
    m = mix.metrics(state)
    assert m["epoch/code"] >= 2 and m["epoch/web"] >= 2
    # each source's tokens: finished epochs plus the rows of the current one
    for i, name in enumerate(mix.names):
        s = mix.streams[i]
        epoch, block, row, tokens = state[1 + 4 * i : 5 + 4 * i]
        done = [r for b in range(block) for r in s.block_rows(epoch, b)] + s.block_rows(epoch, block)[:row]
        assert tokens == epoch * s.n_tokens + sum(e - st for r in done for _, st, e in r)
        assert m[f"tokens/{name}"] == tokens


def test_rows_read_their_own_source_and_one_source_equals_the_plain_stream(dirs):
    mix = open_mix(_mix(dirs, code=1.0, web=1.0), 64, 8, seed=5, buffer=50)
    rows, sources, _ = mix.layout_at(mix.initial_state())
    batch = mix.materialize(rows, sources)
    want = np.concatenate([mix.streams[i].store.tokens(d, s, e) for r, i in zip(rows, sources) for d, s, e in r])
    assert set(sources) == {0, 1} and np.array_equal(batch.input_ids.numpy(), want)
    # a mixture of one source takes the rows of data.path=DATA_DIR, batch for batch, within an epoch
    one = open_mix(_mix(dirs, code=2.5), 64, 8, seed=5, buffer=50)
    plain = open_stream(dirs["code"], "train", 64, 8, 5, 50, True)
    a, b = one.initial_state(), (0, 0, 0)
    for _ in range(5):
        (ra, _, a), (rb, b) = one.layout_at(a), plain.layout_at(b)
        assert ra == rb


def test_names_and_the_state_length_are_checked(dirs, tmp_path):
    assert source_names(["/a/code", "/b/web"]) == ["code", "web"]
    assert source_names(["/a/code", "/b/code"]) == ["/a/code", "/b/code"]
    mix = open_mix(_mix(dirs, code=1.0, web=1.0), 64, 8, seed=0, buffer=50)
    with pytest.raises(Exception, match="cannot change on resume"):
        mix.layout_at((0, 0, 0))


# ---------------------------------------------------------------------------- config
def test_config_table_toml_round_trip_and_set(dirs, tmp_path):
    a, b = str(dirs["code"]), str(dirs["web"])
    cfg = resolve(None, None, [f"data.mix={a}=0.7,{b}=0.3"])
    assert cfg.data.mix == {a: 0.7, b: 0.3}
    text = to_toml(cfg)
    assert "[data.mix]" in text
    (tmp_path / "c.toml").write_text(text)
    assert from_toml_file(tmp_path / "c.toml").data.mix == {a: 0.7, b: 0.3}
    (tmp_path / "d.toml").write_text(f'[data.mix]\n"{a}" = 2\n"{b}" = 1\n')
    assert resolve(None, str(tmp_path / "d.toml"), []).data.mix == {a: 2.0, b: 1.0}
    assert resolve(None, str(tmp_path / "d.toml"), ["data.mix="]).data.mix == {}  # off again
    assert resolve(None, None, []).data.mix == {}


def test_presets_keys_lists_the_table(capsys):
    assert main(["presets", "--keys"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if "data.mix" in x)
    assert "table" in line and "{str: float}" in line and "weight" in line


# ---------------------------------------------------------------------------- training
def _sets(tiny_overrides, mix, steps):
    spec = ",".join(f"{p}={w}" for p, w in mix.items())
    return [s for s in tiny_overrides("", steps) if not s.startswith("data.path")] + [f"data.mix={spec}"]


def _weights(run):
    ckpts = sorted((run / "checkpoints").iterdir())
    return load_file(str(ckpts[-1] / "model.safetensors"))


def _metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_training_is_resumable_bitwise_and_reports_each_source(dirs, tiny_overrides, tmp_path):
    mix = _mix(dirs, code=0.7, web=0.3)
    full = tmp_path / "full"
    train(resolve(None, None, _sets(tiny_overrides, mix, 6)), full, **QUIET)
    part = tmp_path / "part"
    train(resolve(None, None, _sets(tiny_overrides, mix, 3)), part, **QUIET)
    train(None, part, resume=True, overrides=["train.steps=6"], **QUIET)
    a, b = _weights(full), _weights(part)
    assert all(torch.equal(a[k], b[k]) for k in a)
    ma, mb = _metrics(full), _metrics(part)
    assert [r["loss"] for r in ma] == [r["loss"] for r in mb]
    keep = ("tokens/code", "tokens/web", "epoch/code", "epoch/web", "val_loss", "val_loss/code", "val_loss/web")
    assert [{k: r.get(k) for k in keep} for r in ma] == [{k: r.get(k) for k in keep} for r in mb]
    for r in ma:  # every token is some source's; a flat int state in the checkpoint
        assert r["tokens/code"] + r["tokens/web"] == r["tokens"]
    last = ma[-1]
    assert last["tokens/code"] > last["tokens/web"]
    ev = ma[-1]  # weighted mean of the sources' validation losses
    assert math.isclose(ev["val_loss"], 0.7 * ev["val_loss/code"] + 0.3 * ev["val_loss/web"], rel_tol=1e-9)
    st = torch.load(sorted((full / "checkpoints").iterdir())[-1] / "state.pt", weights_only=True)
    assert len(st["data_state"]) == 9 and all(type(x) is int for x in st["data_state"])
    assert st["data_state"][0] == 6 * 4  # rows given: steps x batch_rows


def test_token_shares_follow_the_weights(dirs, tiny_overrides, tmp_path):
    """Over a longer run the per-source token counts in metrics.jsonl follow the weights (rows are
    drawn by weight; rows are nearly full, so tokens follow rows)."""
    mix = _mix(dirs, code=0.8, web=0.2)
    sets = _sets(tiny_overrides, mix, 40) + ["model.n_layer=1", "train.eval_every=1000", "train.ckpt_every=1000"]
    train(resolve(None, None, sets), tmp_path / "run", **QUIET)
    last = _metrics(tmp_path / "run")[-1]
    share = last["tokens/code"] / last["tokens"]
    assert abs(share - 0.8) < 0.1, share


# ---------------------------------------------------------------------------- bad input
def _error(capsys, argv, *words):
    capsys.readouterr()
    code = main(argv)
    cap = capsys.readouterr()
    lines = [line for line in cap.err.splitlines() if line.strip()]
    assert code == 2, (code, cap.err)
    assert len(lines) == 1 and lines[0].startswith("genlab: error:"), cap.err
    assert "Traceback" not in cap.err + cap.out
    for w in words:
        assert str(w) in lines[0], (w, lines[0])


@pytest.mark.parametrize(
    "weight, words",
    [
        ("0", ["must be a finite number > 0"]),
        ("-1", ["> 0"]),
        ("nan", ["finite"]),
        ("inf", ["finite"]),
        ("x", ["number"]),
    ],
)
def test_bad_weights(dirs, capsys, tmp_path, weight, words):
    out = tmp_path / "run"
    argv = ["train", "--no-progress", "--out", str(out), "--set", f"data.mix={dirs['code']}={weight},{dirs['web']}=1"]
    _error(capsys, argv, "data.mix", *words)
    assert not out.exists()


def test_bad_sources(dirs, capsys, tmp_path):
    out, code, web = tmp_path / "run", dirs["code"], dirs["web"]
    base = ["train", "--no-progress", "--out", str(out), "--set"]
    _error(
        capsys, [*base, f"data.mix={code}=1,{tmp_path / 'nowhere'}=1"], "nowhere", "does not exist", "genlab prepare"
    )
    (tmp_path / "plain").mkdir()
    _error(capsys, [*base, f"data.mix={code}=1,{tmp_path / 'plain'}=1"], "plain", "not a prepared DATA_DIR")
    _error(capsys, [*base, f"data.mix={code}=1,{dirs['bpe']}=1"], "bpe", "another tokenizer", str(code))
    _error(capsys, [*base, f"data.mix={code}=1", "--set", f"data.path={web}"], "data.mix", "data.path", "exclude")
    _error(capsys, [*base, "data.mix=justapath"], "data.mix", "key=value")
    assert not out.exists()


def test_resume_with_another_mix_or_tokenizer_is_refused(dirs, tiny_overrides, tmp_path, capsys):
    run = tmp_path / "run"
    train(resolve(None, None, _sets(tiny_overrides, _mix(dirs, code=1.0, web=1.0), 3)), run, **QUIET)
    config = (run / "config.toml").read_text()
    resume = ["train", "--no-progress", "--resume", "--out", str(run), "--set", "train.steps=6", "--set"]
    _error(capsys, [*resume, f"data.mix={dirs['code']}=1"], "mixture of 2 sources", "cannot change on resume")
    _error(capsys, [*resume, "data.mix=", "--set", f"data.path={dirs['code']}"], "cannot change on resume")
    bpe = dirs["bpe"]  # the same BPE DATA_DIR twice: one tokenizer, not the run's
    _error(capsys, [*resume, f"data.mix={bpe}=1,{bpe}/=1"], bpe, "another tokenizer than the run's")
    assert (run / "config.toml").read_text() == config  # a refused resume changes nothing
    assert main(["train", "--no-progress", "--resume", "--out", str(run), "--set", "train.steps=4"]) == 0
