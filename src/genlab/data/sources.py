"""Streaming document readers: every corpus format genlab takes, one document at a time.

    .txt (and .md, .rst, .py, .text)   one file: form feeds separate documents; without them,
                                       paragraphs are grouped into documents of >= 4096 characters
    .jsonl, .jsonl.gz, .jsonl.zst      one JSON object per line; the text is its `text_field`
    .parquet                           the `text_field` column, read one row group at a time
    a Hugging Face datasets directory  written by `Dataset.save_to_disk` (Arrow stream files)
    any other directory                its files of the kinds above, in sorted path order (a text
                                       file there is one document)

Nothing holds more than one document (or one parquet row group / Arrow batch) in memory. Errors
are one-line GenlabErrors naming the file and the line or row. `documents` is the only entry point.
"""

from __future__ import annotations

import gzip
import io
import json
import re
from collections.abc import Iterator
from pathlib import Path

from genlab.errors import GenlabError

DOC_CHARS = 4096  # a .txt file without form feeds: paragraphs grouped into documents this long
TEXT_SUFFIXES = (".txt", ".md", ".rst", ".py", ".text")
DATA_SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.zst", ".parquet")
_BLANK = re.compile(r"\s*\n")


def kind_of(path: Path) -> str | None:
    """'txt' | 'jsonl' | 'jsonl.gz' | 'jsonl.zst' | 'parquet' | 'hf' | 'dir' | None (not a corpus file)."""
    if path.is_dir():
        return "hf" if (path / "state.json").is_file() or (path / "dataset_dict.json").is_file() else "dir"
    name = path.name.lower()
    for suffix in DATA_SUFFIXES:
        if name.endswith(suffix):
            return suffix[1:]
    return "txt" if path.suffix.lower() in TEXT_SUFFIXES else None


def documents(path: str | Path, text_field: str = "text") -> Iterator[str]:
    """The non-blank documents of one source (a file or a directory), in a fixed order."""
    p = Path(path)
    if not p.exists():
        raise GenlabError(
            f"corpus {str(p)!r} does not exist; give a text file, .jsonl(.gz/.zst), .parquet, a Hugging Face "
            "datasets directory or a directory of these"
        )
    kind = kind_of(p)
    if kind == "dir":
        yield from _directory(p, text_field)
    elif kind == "txt" or kind is None:  # an unknown suffix is read as text, as before
        yield from (d for d in _txt(p) if d.strip())
    else:
        yield from (d for d in READERS[kind](p, text_field) if d.strip())


def _directory(p: Path, text_field: str) -> Iterator[str]:
    files = sorted(f for f in p.rglob("*") if f.is_file() and kind_of(f) is not None)
    if not files:
        raise GenlabError(f"corpus directory {str(p)!r} has no text files ({', '.join(TEXT_SUFFIXES + DATA_SUFFIXES)})")
    for f in files:
        kind = kind_of(f)
        if kind == "txt":  # in a directory, a text file is one document
            text = _read_utf8(f)
            if text.strip():
                yield text
        else:
            yield from (d for d in READERS[kind](f, text_field) if d.strip())


# ---------------------------------------------------------------------------- plain text
def _read_utf8(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise GenlabError(
            f"{path}: not UTF-8 text (invalid byte at offset {e.start}); genlab reads corpora as UTF-8"
        ) from None
    except OSError as e:
        raise GenlabError(f"{path}: cannot be read ({e.strerror})") from None


def _open_text(path: Path):
    try:
        return open(path, encoding="utf-8")  # universal newlines, as Path.read_text
    except OSError as e:
        raise GenlabError(f"{path}: cannot be read ({e.strerror})") from None


def _utf8_error(path: Path, e: UnicodeDecodeError, where: str = "") -> GenlabError:
    return GenlabError(f"{path}{where}: not UTF-8 text ({e.reason}); genlab reads corpora as UTF-8")


def _has_form_feed(path: Path) -> bool:
    with open(path, "rb") as f:
        return any(b"\f" in block for block in iter(lambda: f.read(1 << 20), b""))


def _txt(path: Path, doc_chars: int = DOC_CHARS) -> Iterator[str]:
    """Form feeds separate documents; else a document closes at a paragraph break (before a blank
    line) once it holds >= doc_chars characters."""
    try:
        if _has_form_feed(path):
            yield from _split_stream(path, "\f")
            return
        cur, para = "", ""
        with _open_text(path) as f:
            for i, line in enumerate(f):
                if i and _BLANK.match(line):  # a paragraph break before every blank line but the first line
                    cur += para
                    para = ""
                    if len(cur) >= doc_chars:
                        yield cur
                        cur = ""
                para += line
        cur += para
        if cur:
            yield cur
    except UnicodeDecodeError as e:
        raise _utf8_error(path, e) from None


def _split_stream(path: Path, sep: str) -> Iterator[str]:
    buf = ""
    with _open_text(path) as f:
        for block in iter(lambda: f.read(1 << 20), ""):
            parts = (buf + block).split(sep)
            buf = parts.pop()
            yield from parts
    yield buf


# ---------------------------------------------------------------------------- JSON lines
def _jsonl_lines(path: Path, stream) -> Iterator[tuple[int, str]]:
    """(line number, text) of each line; each line is decoded on its own, so a UTF-8 error names its line
    (a TextIOWrapper decodes blocks of 8 KB ahead of the line being read)."""
    lines = stream if isinstance(stream, io.BufferedReader) else io.BufferedReader(stream, 1 << 20)
    lineno = 0
    try:
        for lineno, raw in enumerate(lines, 1):  # noqa: B007 - lineno also names the line of a read error
            try:
                yield lineno, raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise _utf8_error(path, e, f":{lineno}") from None
    except (OSError, EOFError) as e:  # truncated or corrupt compressed stream
        raise GenlabError(f"{path}:{lineno + 1}: cannot be decompressed ({e}); is the file complete?") from None


def _jsonl_docs(path: Path, stream, text_field: str) -> Iterator[str]:
    for lineno, line in _jsonl_lines(path, stream):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise GenlabError(
                f'{path}:{lineno}: not valid JSON ({e.msg}); each line must be an object like {{"{text_field}": "..."}}'
            ) from None
        if not isinstance(obj, dict) or not isinstance(obj.get(text_field), str):
            raise GenlabError(f'{path}:{lineno}: each line must be an object with a string "{text_field}" field')
        yield obj[text_field]


def _jsonl(path: Path, text_field: str) -> Iterator[str]:
    with open(path, "rb") as raw:
        yield from _jsonl_docs(path, raw, text_field)


def _jsonl_gz(path: Path, text_field: str) -> Iterator[str]:
    with open(path, "rb") as raw, gzip.GzipFile(fileobj=raw) as z:
        yield from _jsonl_docs(path, z, text_field)


def _jsonl_zst(path: Path, text_field: str) -> Iterator[str]:
    try:
        import zstandard  # optional: pip install 'genlab[data]'
    except ImportError:
        raise GenlabError(f"{path}: reading .zst needs the zstandard package (pip install 'genlab[data]')") from None
    with open(path, "rb") as raw:
        try:
            stream = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)
        except zstandard.ZstdError as e:
            raise GenlabError(f"{path}: not a zstandard stream ({e})") from None
        try:
            yield from _jsonl_docs(path, stream, text_field)
        except zstandard.ZstdError as e:
            raise GenlabError(f"{path}: cannot be decompressed ({e}); is the file complete?") from None


# ---------------------------------------------------------------------------- Arrow: parquet, HF datasets
def _pyarrow():
    try:
        import pyarrow  # optional: pip install 'genlab[data]'
        import pyarrow.ipc
        import pyarrow.parquet
    except ImportError:
        raise GenlabError("reading parquet / datasets directories needs pyarrow (pip install 'genlab[data]')") from None
    return pyarrow


def _column_docs(path: Path, batch, text_field: str, first_row: int) -> Iterator[str]:
    if text_field not in batch.schema.names:
        raise GenlabError(
            f"{path}: no {text_field!r} column (columns: {', '.join(batch.schema.names)}); pass --text-field NAME"
        )
    for i, v in enumerate(batch.column(text_field).to_pylist()):
        if not isinstance(v, str):
            raise GenlabError(f"{path}: row {first_row + i}: {text_field!r} is {type(v).__name__}, not a string")
        yield v


def _parquet(path: Path, text_field: str) -> Iterator[str]:
    pa = _pyarrow()
    try:
        pf = pa.parquet.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise GenlabError(f"{path}: not a readable parquet file ({str(e).splitlines()[0][:160]})") from None
    row = 0
    for rg in range(pf.num_row_groups):
        try:
            batch = pf.read_row_group(rg, columns=[text_field] if text_field in pf.schema_arrow.names else None)
        except (pa.ArrowException, OSError) as e:
            raise GenlabError(f"{path}: row group {rg} cannot be read ({str(e).splitlines()[0][:160]})") from None
        yield from _column_docs(path, batch, text_field, row)
        row += batch.num_rows


def _hf(path: Path, text_field: str) -> Iterator[str]:
    """A `save_to_disk` directory: state.json lists the Arrow stream files; a DatasetDict directory
    (dataset_dict.json) is read split by split, "train" first."""
    if (path / "dataset_dict.json").is_file():
        splits = _json(path / "dataset_dict.json").get("splits", [])
        for split in sorted(splits, key=lambda s: s != "train"):
            yield from _hf(path / split, text_field)
        return
    pa = _pyarrow()
    files = [f.get("filename") for f in _json(path / "state.json").get("_data_files", [])]
    if not files or not all(isinstance(f, str) for f in files):
        raise GenlabError(f"{path}/state.json lists no _data_files; is this a datasets save_to_disk directory?")
    row = 0
    for name in files:
        f = path / name
        try:
            with pa.memory_map(str(f)) as source:
                reader = pa.ipc.open_stream(source)
                for batch in reader:
                    yield from _column_docs(f, batch, text_field, row)
                    row += batch.num_rows
        except (pa.ArrowException, OSError) as e:
            raise GenlabError(f"{f}: not a readable Arrow stream file ({str(e).splitlines()[0][:160]})") from None


def _json(path: Path) -> dict:
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise GenlabError(f"{path}: not readable JSON ({e})") from None
    if not isinstance(obj, dict):
        raise GenlabError(f"{path}: must hold a JSON object")
    return obj


READERS = {"jsonl": _jsonl, "jsonl.gz": _jsonl_gz, "jsonl.zst": _jsonl_zst, "parquet": _parquet, "hf": _hf}
