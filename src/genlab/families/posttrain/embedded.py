"""Embedded post-training data, offline: instruction conversations and preference pairs built from
what ships with Python, generated on demand (never stored in the repository).

Source documents:
  - the sections of pydoc's topic pages (`pydoc_data.topics`: "The "with" statement", "Naming and
    binding", ...), one document per distinct section title;
  - the docstrings of the public callables (functions, classes, and the methods classes define) of
    a fixed list of standard-library modules, STDLIB_MODULES, plus a few builtin types.

`sft_conversations(split, seed)` gives rows in the messages format
    {"messages": [{"role": "system" | "user" | "assistant", "content": str}, ...], "source": str}
("What does `json.dumps` do?" -> its signature and the first paragraphs of its docstring; "Explain
the `with` statement." -> the first paragraphs of the topic section). The question is phrased by one
of several templates; some conversations start with a short system message, some have a second
turn ("Tell me more." -> the paragraphs that follow). The seed chooses the phrasings, the system
messages and the second turns; which documents there are does not depend on it.

`preference_pairs(split, seed)` gives rows in TRL's conversational preference format with an explicit
prompt: {"prompt": [messages up to the last user turn], "chosen": str, "rejected": str, "source": str};
chosen and rejected are the texts of the final assistant turn. The chosen answer is the document's;
the rejected one is another document's answer ("other"), or the right answer corrupted: sentences
shuffled ("shuffled"), a third of its words replaced by another document's ("swapped"), or cut off in
the middle of a sentence ("truncated"). `rejected_kind` names which. Never equal to chosen.

The split is by source document: a document's every conversation and pair is in "train" or in "val"
by a hash of its source name (`genlab.data.text.split_score`, VAL_FRACTION of them in "val"), the
same for every seed. The data depends on the Python version's documentation (deterministic for one
Python).
"""

from __future__ import annotations

import importlib
import inspect
import json
import random
import re
import sys
import warnings
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from genlab.data.text import split_score
from genlab.errors import GenlabError

SPLITS = ("train", "val")
VAL_FRACTION = 0.1
REJECTED_KINDS = ("other", "shuffled", "swapped", "truncated")

# the modules whose public documented callables become documents (in this order; missing ones skipped)
STDLIB_MODULES = (
    "json",
    "os.path",
    "re",
    "collections",
    "itertools",
    "functools",
    "math",
    "string",
    "textwrap",
    "shutil",
    "pathlib",
    "datetime",
    "random",
    "statistics",
    "heapq",
    "bisect",
    "operator",
    "copy",
    "fractions",
    "difflib",
    "glob",
    "fnmatch",
    "csv",
    "base64",
    "hashlib",
    "zlib",
    "time",
    "calendar",
    "urllib.parse",
    "html",
    "unicodedata",
    "contextlib",
    "dataclasses",
    "tempfile",
    "uuid",
    "secrets",
    "ipaddress",
    "pprint",
    "shlex",
    "enum",
    "struct",
    "cmath",
    "argparse",
    "logging",
    "threading",
    "queue",
    "subprocess",
    "zipfile",
    "gzip",
    "configparser",
    "graphlib",
    "array",
    "weakref",
    "pickle",
    "traceback",
    "warnings",
    "types",
    "abc",
    "timeit",
    "unittest",
)
# builtin functions and the methods of these builtin types
BUILTIN_TYPES = ("str", "bytes", "list", "dict", "set", "frozenset", "tuple", "int", "float", "range")

SYSTEM_PROMPTS = (
    "You are a helpful assistant who answers questions about Python.",
    "You are an expert Python programmer. Answer precisely.",
    "Answer questions about the Python standard library using its documentation.",
    "You are a concise and accurate assistant.",
)
FUNCTION_QUESTIONS = (
    "What does `{name}` do?",
    "What does `{name}` do in Python?",
    "Explain `{name}`.",
    "What is `{name}` for?",
    "How do I use `{name}`?",
    "Can you describe `{name}`?",
    "Tell me about `{name}`.",
    "I came across `{name}` in some code. What does it do?",
)
RETURN_QUESTIONS = ("What does `{name}` return?", "What is returned by `{name}`?")
CLASS_QUESTIONS = (
    "What is `{name}`?",
    "What is the `{name}` class for?",
    "Explain the `{name}` class.",
    "Tell me about `{name}`.",
    "What does `{name}` represent?",
)
TOPIC_QUESTIONS = (
    "Explain {title}.",
    "Tell me about {title} in Python.",
    "How does {title} work in Python?",
    "Can you describe {title}?",
    "What should I know about {title}?",
    "Give me an overview of {title} in Python.",
)
STATEMENT_QUESTIONS = ("What does the `{kw}` statement do?", "How does the `{kw}` statement work?")
FOLLOW_UPS = ("Tell me more.", "Can you give more detail?", "Go on.", "What else should I know?")

ANSWER_MIN, ANSWER_MAX = 120, 900  # characters of an answer: whole paragraphs up to ANSWER_MAX
DOC_MIN, DOC_MAX = 40, 20_000  # docstrings shorter or longer than this are skipped
_RESERVED = ("\ue000", "\ue001")  # chat.py's generation markers


# ---------------------------------------------------------------------------- documents
def _clean(text: str) -> str:
    """reST markup as plain Markdown-ish text: ``x`` and :role:`x` -> `x`."""
    text = re.sub(r":[\w:]+:`~?([^`]+)`", r"`\1`", text)
    text = re.sub(r"``([^`]+)``", r"`\1`", text)
    return "".join(ch for ch in text if ch not in _RESERVED)


def _paragraphs(text: str) -> list[str]:
    """Blank-line separated blocks; a block of plain prose lines is joined into one line."""
    out = []
    for block in re.split(r"\n\s*\n", text.strip("\n")):
        block = block.rstrip()
        if not block.strip():
            continue
        lines = block.split("\n")
        prose = all(ln and not ln[0].isspace() for ln in lines) and not any(
            ln.lstrip().startswith((">>>", "-", "*", "...")) or "::=" in ln for ln in lines
        )
        out.append(" ".join(ln.strip() for ln in lines) if prose else block)
    return out


def _sentence_cut(text: str, limit: int) -> str | None:
    """`text` cut after the last sentence end within `limit` characters (None: no sentence end)."""
    ends = [m.end() for m in re.finditer(r"[.!?:](?=\s|$)", text[:limit])]
    return text[: ends[-1]] if ends and ends[-1] >= 40 else None


def _take(paras: list[str], limit: int = ANSWER_MAX) -> tuple[str, list[str]] | None:
    """(whole leading paragraphs within `limit` characters, the paragraphs left); None when even the
    first has no sentence end within the limit."""
    first = paras[0]
    if len(first) > limit:
        cut = _sentence_cut(first, limit)
        return None if cut is None else (cut, paras[1:])
    taken, n = [first], len(first)
    for p in paras[1:]:
        if n + 2 + len(p) > limit:
            break
        taken.append(p)
        n += 2 + len(p)
    while len(taken) > 1 and taken[-1].endswith(":"):  # never end on a paragraph that announces more
        taken.pop()
    return "\n\n".join(taken), paras[len(taken) :]


def _more(rest: list[str]) -> str | None:
    """The answer to "Tell me more.": the paragraphs after an answer, when there are enough of them."""
    taken = _take(rest) if rest else None
    return taken[0] if taken and len(taken[0]) >= DOC_MIN else None


@dataclass(frozen=True)
class Doc:
    """One source document: `source` (the split key), its kind ("topic", "function", "class", "method"),
    the name questions use, its answer, the paragraphs that follow (a second turn's answer) and whether
    its docstring starts with "Return ..." (so "What does it return?" makes sense)."""

    source: str
    kind: str
    name: str
    answer: str
    more: str | None
    returns: bool = False

    @property
    def split(self) -> str:
        return "val" if split_score(self.source) < VAL_FRACTION else "train"


def _topic_sections() -> list[tuple[str, str]]:
    """(title, body) of every section of every pydoc topic page, in page order."""
    from pydoc_data.topics import topics

    out = []
    for key in sorted(topics):
        lines = topics[key].split("\n")
        heads = [
            i - 1 for i in range(1, len(lines)) if re.fullmatch(r"([*=\-^~])\1{3,}", lines[i]) and lines[i - 1].strip()
        ]
        for j, h in enumerate(heads):
            end = heads[j + 1] if j + 1 < len(heads) else len(lines)
            out.append((lines[h].strip(), "\n".join(lines[h + 2 : end])))
    return out


def _topic_title(title: str) -> str:
    """'The "with" statement' -> 'the `with` statement'; 'Binary arithmetic operations' -> 'binary ...'."""
    t = re.sub(r'"([^"]+)"', r"`\1`", title)
    words = t.split()
    if words and words[0][:1].isupper() and words[0][1:].islower():
        t = t[0].lower() + t[1:]
    return t


def _topic_docs() -> list[Doc]:
    docs, seen = [], set()
    for title, body in _topic_sections():
        key = title.lower()
        paras = _paragraphs(_clean(body))
        if key in seen or not paras:
            continue
        taken = _take(paras)
        if taken is None or len(taken[0]) < ANSWER_MIN:
            continue
        seen.add(key)
        docs.append(Doc(f"topic:{title}", "topic", title, taken[0], _more(taken[1])))
    return docs


class _Opaque:
    def __repr__(self) -> str:
        return "..."


_OPAQUE = _Opaque()


def _from_stdlib(obj) -> bool:
    """Defined by Python itself, not added by a library imported into this process (transformers adds
    methods to logging.Logger, for one): the embedded data must not depend on what else is imported."""
    mod = getattr(obj, "__module__", None)
    return mod is None or mod.split(".")[0] in sys.stdlib_module_names


def _signature(obj, name: str) -> str:
    """`name(args)` without self / cls; '' when there is none or it is too long to be an answer's head."""
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return ""
    params = list(sig.parameters.values())
    if params and params[0].name in ("self", "cls"):
        params = params[1:]
    # a default whose repr names an object (`<built-in method match ... at 0x7f...>`) differs from process
    # to process: written as `...` so the data is the same in every process
    params = [p.replace(default=_OPAQUE) if p.default is not p.empty and "<" in repr(p.default) else p for p in params]
    text = str(sig.replace(parameters=params))
    return f"{name}{text}" if len(text) <= 160 else ""


def _callable_doc(obj, name: str, kind: str) -> Doc | None:
    raw = obj.__doc__ if isinstance(getattr(obj, "__doc__", None), str) else None
    if not raw or not DOC_MIN <= len(raw) <= DOC_MAX:
        return None
    text = _clean(inspect.cleandoc(raw))
    paras = _paragraphs(text)
    if paras and re.fullmatch(r"[\w.]+\(.*\)(\s*->.*)?", paras[0].split("\n")[0]):  # a C signature line
        paras[0] = "\n".join(paras[0].split("\n")[1:]).strip()
        paras = [p for p in paras if p]
    if not paras or len(paras[0]) < 20:
        return None
    sig = _signature(obj, name)
    head = f"`{sig}`\n\n" if sig else ""
    taken = _take(paras, ANSWER_MAX - len(head))
    if taken is None:
        return None
    if len(taken[0]) < DOC_MIN:
        return None
    returns = bool(re.match(r"(Return|Returns|Get|Compute)\b", paras[0]))
    return Doc(f"py:{name}", kind, name, head + taken[0], _more(taken[1]), returns)


def _members(mod, prefix: str) -> list[tuple[str, object, str]]:
    """(qualified name, object, kind) of a module's public callables and their classes' own methods."""
    names = getattr(mod, "__all__", None) or [n for n in dir(mod) if not n.startswith("_")]
    out = []
    for n in sorted(set(names)):
        obj = getattr(mod, n, None)
        if n.startswith("_") or obj is None or not callable(obj) or inspect.ismodule(obj) or not _from_stdlib(obj):
            continue
        q = f"{prefix}{n}"
        if inspect.isclass(obj):
            out.append((q, obj, "class"))
            for m in sorted(vars(obj)):
                attr = vars(obj)[m]
                if isinstance(attr, (staticmethod, classmethod)):
                    attr = attr.__func__
                if not m.startswith("_") and callable(attr) and _from_stdlib(attr):
                    out.append((f"{q}.{m}", attr, "method"))
        else:
            out.append((q, obj, "function"))
    return out


def _callable_docs() -> list[Doc]:
    import builtins

    members = [
        (n, o, k)
        for n, o, k in _members(builtins, "")
        if k == "function" or (k == "class" and n in BUILTIN_TYPES) or n.split(".")[0] in BUILTIN_TYPES
    ]
    for m in STDLIB_MODULES:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                mod = importlib.import_module(m)
        except ImportError:
            continue
        members += _members(mod, f"{m}.")
    docs, seen_names, seen_text = [], set(), set()
    for name, obj, kind in members:
        if name in seen_names or (kind == "class" and issubclass(obj, BaseException)):
            continue
        d = _callable_doc(obj, name, kind)
        key = d and re.sub(r"^`[^`]*`\n\n", "", d.answer)  # the same docstring under two names: once
        if d is None or key in seen_text:
            continue
        seen_names.add(name)
        seen_text.add(key)
        docs.append(d)
    return docs


@lru_cache(maxsize=1)
def documents() -> tuple[Doc, ...]:
    """Every source document, topics first, in a fixed order."""
    return tuple(_topic_docs() + _callable_docs())


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise GenlabError(f"unknown split {split!r}; choose one of: {', '.join(SPLITS)}")


def _docs(split: str) -> list[Doc]:
    _check_split(split)
    return [d for d in documents() if d.split == split]


# ---------------------------------------------------------------------------- conversations
def _question(d: Doc, rng: random.Random) -> str:
    if d.kind == "topic":
        m = re.fullmatch(r'The "(\w+)" statement', d.name)
        choices = TOPIC_QUESTIONS + (STATEMENT_QUESTIONS if m else ())
        return rng.choice(choices).format(title=_topic_title(d.name), kw=m.group(1) if m else "")
    if d.kind == "class":
        return rng.choice(CLASS_QUESTIONS).format(name=d.name)
    choices = FUNCTION_QUESTIONS + (RETURN_QUESTIONS if d.returns else ())
    return rng.choice(choices).format(name=d.name)


def _conversation(d: Doc, seed: int) -> dict:
    rng = random.Random(f"{seed}:{d.source}")
    msgs = []
    if rng.random() < 0.25:
        msgs.append({"role": "system", "content": rng.choice(SYSTEM_PROMPTS)})
    msgs += [{"role": "user", "content": _question(d, rng)}, {"role": "assistant", "content": d.answer}]
    if d.more and rng.random() < 0.5:
        msgs += [{"role": "user", "content": rng.choice(FOLLOW_UPS)}, {"role": "assistant", "content": d.more}]
    return {"messages": msgs, "source": d.source}


def sft_conversations(split: str = "train", seed: int = 0) -> list[dict]:
    """Instruction conversations of `split` ("train" or "val"), one per source document, in a fixed
    order; the seed chooses the phrasings, system messages and second turns."""
    return [_conversation(d, seed) for d in _docs(split)]


# ---------------------------------------------------------------------------- preference pairs
def _sentences(text: str) -> list[str]:
    return [s for s in re.split(r"(?<=[.!?])\s+", text.strip()) if s]


def _corrupt(chosen: str, other: str, kind: str, rng: random.Random) -> str | None:
    """`chosen` corrupted the `kind` way (None when it cannot be, e.g. a single sentence to shuffle)."""
    if kind == "other":
        return other
    if kind == "shuffled":
        sents = _sentences(chosen)
        if len(sents) < 3:
            return None
        for _ in range(5):
            rng.shuffle(sents)
            out = " ".join(sents)
            if out != " ".join(_sentences(chosen)):
                return out
        return None
    if kind == "swapped":
        words, donor = chosen.split(" "), [w for w in other.split() if w.isalpha()]
        if len(words) < 8 or len(donor) < 4:
            return None
        for i in rng.sample(range(len(words)), len(words) // 3):
            if words[i].isalpha():
                words[i] = rng.choice(donor)
        return " ".join(words)
    if kind == "truncated":  # stop inside a sentence: after a word that does not end one
        cuts = [m.start() for m in re.finditer(r"(?<=[A-Za-z,])\s", chosen)]
        cuts = [c for c in cuts if 0.25 * len(chosen) <= c <= 0.7 * len(chosen)]
        return chosen[: rng.choice(cuts)] if cuts else None
    raise GenlabError(f"unknown rejected kind {kind!r}; choose one of: {', '.join(REJECTED_KINDS)}")


def preference_pairs(split: str = "train", seed: int = 0) -> list[dict]:
    """One preference pair per conversation of sft_conversations(split, seed): the prompt is the
    conversation up to its last user turn (a message list), chosen its last answer, rejected another
    document's answer or a corrupted copy of chosen (kinds mixed by the seed; "other" when the drawn
    corruption does not apply)."""
    convs = sft_conversations(split, seed)
    answers = [c["messages"][-1]["content"] for c in convs]
    rows = []
    for i, c in enumerate(convs):
        rng = random.Random(f"pair:{seed}:{c['source']}")
        chosen = answers[i]
        j = rng.randrange(len(answers) - 1) if len(answers) > 1 else i
        j += j >= i  # another document's answer
        other = answers[j] if j < len(answers) and j != i else "I don't know."
        kind = rng.choice(REJECTED_KINDS)
        rejected = _corrupt(chosen, other, kind, rng)
        if rejected is None or not rejected.strip() or rejected.strip() == chosen.strip():
            kind, rejected = "other", other
        if rejected.strip() == chosen.strip():  # two documents with the same answer text: none are kept
            continue
        rows.append(
            {
                "prompt": c["messages"][:-1],
                "chosen": chosen,
                "rejected": rejected,
                "source": c["source"],
                "rejected_kind": kind,
            }
        )
    return rows


def write_jsonl(rows: list[dict], path: str | Path) -> Path:
    """Rows as JSON lines (UTF-8, one object a line); the parent directory must exist."""
    p = Path(path)
    if not p.parent.is_dir():
        raise GenlabError(f"{p}: directory {p.parent} does not exist")
    if p.is_dir():
        raise GenlabError(f"{p} is a directory; give a file name such as {p / 'data.jsonl'}")
    try:
        with open(p, "w", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
    except OSError as e:
        raise GenlabError(f"{p}: cannot write it ({e.strerror or e})") from None
    return p
