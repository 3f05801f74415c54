"""Fuzzing bad input with hypothesis: whatever arrives, genlab answers with a GenlabError (a clear
one-line message) or succeeds; it never crashes with another exception and never hangs."""

import json
import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from genlab import config as C
from genlab.cli import main
from genlab.config import RunConfig, apply_overrides, apply_settings
from genlab.data.packing import TokenDataset
from genlab.data.text import load_corpus
from genlab.data.tokenizer import load_tokenizer
from genlab.errors import GenlabError

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

toml_scalars = st.one_of(
    st.integers(-(10**12), 10**12),
    st.floats(allow_nan=True),
    st.booleans(),
    st.text(max_size=20),
    st.lists(st.integers(), max_size=3),
)


ALL_KEYS = sorted(
    {"task", "preset"} | {i.key for f in C.families() for keys in C.section_keys(f).values() for i in keys.values()}
)


@FUZZ
@given(
    st.lists(
        st.tuples(
            st.sampled_from(ALL_KEYS + ["model.nope", "x", "train.", ".lr", "data.path.x"]),
            st.text(string.printable, max_size=12),
        ),
        max_size=6,
    )
)
def test_overrides_never_crash(pairs):
    try:
        apply_overrides(RunConfig(), [f"{k}={v}" for k, v in pairs]).validate()
    except GenlabError as e:
        assert str(e) and "\n" not in str(e)


@FUZZ
@given(
    st.dictionaries(
        st.sampled_from(["task", "preset", "data", "model", "train", "junk"]),
        st.one_of(toml_scalars, st.dictionaries(st.text(max_size=15), toml_scalars, max_size=4)),
        max_size=4,
    )
)
def test_config_tables_never_crash(table):
    try:
        apply_settings(RunConfig(), table, "fuzz.toml").validate()
    except GenlabError as e:
        assert str(e)


@FUZZ
@given(st.binary(max_size=300))
def test_toml_file_bytes_never_crash(tmp_path_factory, data):
    p = tmp_path_factory.mktemp("cfg") / "c.toml"
    p.write_bytes(data)
    from genlab.config import from_toml_file

    try:
        from_toml_file(p)
    except GenlabError:
        pass


@FUZZ
@given(st.sampled_from([".txt", ".jsonl", ".md"]), st.binary(max_size=400))
def test_corpus_files_never_crash(tmp_path_factory, suffix, data):
    p = tmp_path_factory.mktemp("corpus") / f"c{suffix}"
    p.write_bytes(data)
    try:
        docs = load_corpus(str(p))
        assert docs and all(isinstance(d, str) and d.strip() for d in docs)
    except GenlabError as e:
        assert str(e)


@FUZZ
@given(st.binary(max_size=300))
def test_tokenizer_file_never_crashes(tmp_path_factory, data):
    p = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    p.write_bytes(data)
    try:
        load_tokenizer(p)
    except GenlabError:
        pass


@FUZZ
@given(
    st.lists(st.lists(st.integers(0, 500), max_size=90), min_size=1, max_size=30),
    st.integers(2, 70),
    st.integers(1, 6),
    st.sampled_from(["packed", "padded"]),
)
def test_packer_never_loses_tokens(docs, L, rows, mode):
    if not any(docs):
        with pytest.raises(ValueError):
            TokenDataset(docs, L, rows, mode=mode)
        return
    ds = TokenDataset(docs, L, rows, mode=mode)
    n = sum(b.n_real for b in ds.iter_epoch(0))
    assert n == sum(map(len, docs))


ARG_WORDS = [
    "train",
    "sample",
    "eval",
    "info",
    "plot",
    "presets",
    "bench",
    "--preset",
    "--set",
    "--steps",
    "--out",
    "--resume",
    "--prompt",
    "--top-k",
    "--top-p",
    "--temperature",
    "--json",
    "-1",
    "0",
    "nan",
    "x=y",
    "lm-tiny",
    "/nonexistent",
    "",
    "--",
    "=",
    "train.steps=0",
]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.sampled_from(ARG_WORDS), max_size=5))
def test_cli_arguments_never_traceback(capsys, argv):
    if argv[:1] in (["bench"], ["train"]) and "--help" not in argv:
        # never start real training or a benchmark: point any run at a missing corpus
        argv = argv + ["--set", "data.path=/nonexistent/corpus"] if argv[0] == "train" else argv[:1] + ["nope"]
    try:
        code = main(argv)
    except SystemExit as e:  # --help / --version style exits from argparse
        code = e.code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    if code not in (0, None):
        assert code == 2 and err.startswith("genlab: error:"), err


def test_jsonl_with_every_bad_line_shape(tmp_path):
    for line in ["[1, 2]", '{"text": 3}', '"text"', '{"text": null}', "{", "\x00"]:
        p = tmp_path / "c.jsonl"
        p.write_text(json.dumps({"text": "fine"}) + "\n" + line + "\n")
        with pytest.raises(GenlabError, match=":2:"):
            load_corpus(str(p))
