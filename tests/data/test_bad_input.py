"""Bad input to `genlab prepare` and `genlab data stats`: one line on stderr naming the file (and the
line or row) and what is allowed, exit status 2, no traceback, and no half-made DATA_DIR left behind."""

import gzip
import json

import pytest

from genlab.cli import main
from genlab.data.shards import MANIFEST, read_manifest

from .helpers import make_docs, run_prepare, write_jsonl


def _error(capsys, argv, *words) -> str:
    capsys.readouterr()  # what came before (e.g. datasets' progress bars)
    code = main(argv)
    cap = capsys.readouterr()
    lines = [line for line in cap.err.splitlines() if line.strip()]
    assert code == 2, (code, cap.err)
    assert len(lines) == 1 and lines[0].startswith("genlab: error:"), cap.err
    assert "Traceback" not in cap.err + cap.out
    for w in words:
        assert str(w) in lines[0], (w, lines[0])
    return lines[0]


def _prepare(capsys, src, out, *words, extra=()):
    line = _error(
        capsys, ["prepare", str(src), "--out", str(out), "--tokenizer", "byte", "--no-progress", *extra], *words
    )
    assert not out.exists(), "a failed prepare left a DATA_DIR behind"
    return line


# ---------------------------------------------------------------------------- sources
def test_non_utf8_text(tmp_path, capsys):
    src = tmp_path / "latin1.txt"
    src.write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    _prepare(capsys, src, tmp_path / "d", src, "not UTF-8")


def test_non_utf8_jsonl_names_the_line(tmp_path, capsys):
    src = tmp_path / "c.jsonl"
    src.write_bytes(b'{"text": "fine"}\n{"text": "fine too"}\n{"text": "caf\xe9"}\n')
    _prepare(capsys, src, tmp_path / "d", f"{src}:3", "not UTF-8")


@pytest.mark.parametrize("compress", [False, True])
def test_missing_text_field_names_the_line(tmp_path, capsys, compress):
    lines = [json.dumps({"text": "a"}), json.dumps({"text": "b"}), json.dumps({"content": "c"})]
    data = ("\n".join(lines) + "\n").encode()
    src = tmp_path / ("c.jsonl.gz" if compress else "c.jsonl")
    src.write_bytes(gzip.compress(data) if compress else data)
    _prepare(capsys, src, tmp_path / "d", f"{src}:3", '"text"')


def test_bad_json_line(tmp_path, capsys):
    src = tmp_path / "c.jsonl"
    src.write_text('{"text": "a"}\n{"text": \n')
    _prepare(capsys, src, tmp_path / "d", f"{src}:2", "not valid JSON")


def test_truncated_gzip(tmp_path, capsys):
    src = tmp_path / "c.jsonl.gz"
    data = gzip.compress("".join(json.dumps({"text": d}) + "\n" for d in make_docs(50)).encode())
    src.write_bytes(data[: len(data) // 2])
    _prepare(capsys, src, tmp_path / "d", src, "is the file complete")


def test_truncated_parquet(tmp_path, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    src = tmp_path / "c.parquet"
    pq.write_table(pa.table({"text": make_docs(40)}), src, row_group_size=10)
    data = src.read_bytes()
    src.write_bytes(data[: len(data) - 100])
    _prepare(capsys, src, tmp_path / "d", src, "not a readable parquet file")


def test_parquet_missing_column_and_non_string_row(tmp_path, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    src = tmp_path / "c.parquet"
    pq.write_table(pa.table({"content": ["a", "b"], "id": [1, 2]}), src)
    _prepare(capsys, src, tmp_path / "d", src, "no 'text' column", "content, id", "--text-field")
    pq.write_table(pa.table({"text": ["a", None, "c"]}), src, row_group_size=2)
    _prepare(capsys, src, tmp_path / "d", src, "row 1", "not a string")


def test_hf_dataset_missing_column(tmp_path, capsys):
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_dict({"content": ["a", "b"]}).save_to_disk(str(tmp_path / "ds"))
    _prepare(capsys, tmp_path / "ds", tmp_path / "d", "no 'text' column", "content")


@pytest.mark.parametrize("kind", ["txt", "jsonl", "dir"])
def test_empty_source(tmp_path, capsys, kind):
    if kind == "txt":
        src = tmp_path / "empty.txt"
        src.write_text("  \n\n\t\n")
    elif kind == "jsonl":
        src = write_jsonl(tmp_path / "blank.jsonl", ["", "   "])
    else:
        src = tmp_path / "empty_dir"
        src.mkdir()
        (src / "notes.bin").write_bytes(b"\0")
    _prepare(capsys, src, tmp_path / "d", src.name, "no text files" if kind == "dir" else "is empty")


def test_missing_source(tmp_path, capsys):
    _prepare(capsys, tmp_path / "nowhere.jsonl", tmp_path / "d", "nowhere.jsonl", "does not exist")


def test_second_source_bad_leaves_nothing(tmp_path, capsys):
    good = write_jsonl(tmp_path / "good.jsonl", make_docs(5))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "x"}\n{"txt": "y"}\n')
    line = _error(
        capsys, ["prepare", str(good), str(bad), "--out", str(tmp_path / "d"), "--tokenizer", "byte", "--no-progress"]
    )
    assert f"{bad}:2" in line and not (tmp_path / "d").exists()


@pytest.mark.parametrize("where", ["file", "dir"])
def test_tokenizer_pointing_nowhere(tmp_path, capsys, where):
    src = write_jsonl(tmp_path / "c.jsonl", make_docs(5))
    tok = tmp_path / "missing.json"
    if where == "dir":
        tok = tmp_path / "model_dir"
        tok.mkdir()
    words = [str(tok), "tokenizer.json", "'byte'"]
    _prepare(capsys, src, tmp_path / "d", *words, extra=["--tokenizer", str(tok)])


def test_tokenizer_not_a_tokenizer(tmp_path, capsys):
    src = write_jsonl(tmp_path / "c.jsonl", make_docs(5))
    (tmp_path / "tok.json").write_text("{not json")
    _prepare(
        capsys, src, tmp_path / "d", "tok.json", "not valid JSON", extra=["--tokenizer", str(tmp_path / "tok.json")]
    )


def test_vocab_size_with_tokenizer_and_bad_options(tmp_path, capsys):
    src = write_jsonl(tmp_path / "c.jsonl", make_docs(5))
    out = tmp_path / "d"
    _prepare(capsys, src, out, "--vocab-size", extra=["--vocab-size", "300"])
    _prepare(capsys, src, out, "--val-fraction", "0.5", extra=["--val-fraction", "0.9"])
    _error(capsys, ["prepare", str(src), "--out", str(out), "--vocab-size", "100"], "--vocab-size", "257")
    assert not out.exists()


def test_out_not_empty(tmp_path, capsys):
    src = write_jsonl(tmp_path / "c.jsonl", make_docs(5))
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "keep.txt").write_text("mine")
    _error(capsys, ["prepare", str(src), "--out", str(tmp_path / "d"), "--tokenizer", "byte"], "not empty")
    assert [p.name for p in (tmp_path / "d").iterdir()] == ["keep.txt"]


# ---------------------------------------------------------------------------- DATA_DIR
@pytest.fixture
def data_dir(tmp_path):
    write_jsonl(tmp_path / "c.jsonl", make_docs(40, seed=1))
    return run_prepare(tmp_path / "c.jsonl", tmp_path / "data", val_fraction=0.2)


def test_flipped_byte_is_a_checksum_error(data_dir, capsys):
    shard = data_dir / "train-00000.bin"
    raw = bytearray(shard.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    shard.write_bytes(bytes(raw))
    assert main(["data", "stats", str(data_dir)]) == 0  # sizes still agree: only --verify reads the bytes
    capsys.readouterr()
    _error(capsys, ["data", "stats", str(data_dir), "--verify"], shard, "SHA-256", "corrupted")


@pytest.mark.parametrize("ext", ["bin", "idx"])
def test_cut_shard_is_a_size_error(data_dir, capsys, ext):
    shard = data_dir / f"val-00000.{ext}"
    shard.write_bytes(shard.read_bytes()[:-3])
    _error(capsys, ["data", "stats", str(data_dir)], shard, "the manifest says", "truncated")


def test_missing_shard(data_dir, capsys):
    (data_dir / "train-00000.idx").unlink()
    _error(capsys, ["data", "stats", str(data_dir)], "train-00000.idx", "missing")


def test_manifest_of_another_version(data_dir, capsys):
    m = json.loads((data_dir / MANIFEST).read_text())
    m["version"] = 2
    (data_dir / MANIFEST).write_text(json.dumps(m))
    _error(capsys, ["data", "stats", str(data_dir)], data_dir / MANIFEST, "version 2", "version 1")
    _error(
        capsys, ["prepare", str(data_dir.parent / "c.jsonl"), "--out", str(data_dir)], "version 2"
    )  # prepare does not touch it either


def test_not_a_data_dir(tmp_path, capsys):
    _error(capsys, ["data", "stats", str(tmp_path)], tmp_path / MANIFEST, "not a readable manifest")
    (tmp_path / MANIFEST).write_text(json.dumps({"format": "something else"}))
    _error(capsys, ["data", "stats", str(tmp_path)], "not a genlab prepared-corpus manifest")


def test_unfinished_data_dir(data_dir, capsys):
    m = read_manifest(data_dir)
    m["complete"] = False
    (data_dir / MANIFEST).write_text(json.dumps(m))
    _error(capsys, ["data", "stats", str(data_dir)], data_dir, "did not finish", "re-run")
