"""genlab chat: the session (history, commands, end of turn, context overflow) in process, then the
command under a pseudo terminal typing two turns, /reset and /exit."""

import io
import json
import os
import pty
import select
import subprocess
import sys
import time

import pytest

from genlab.cli import main
from genlab.data.chat import DEFAULT_TEMPLATE, PLAIN_TEMPLATE, ChatTemplate
from genlab.families.posttrain.chat import ChatSession, chat_loop, open_session, printable, until_stop
from genlab.generate import SamplingSettings, generate, stream_text

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def run(tiny_overrides, tmp_path_factory):
    """A tiny byte-level LM run (no chat template: PLAIN_TEMPLATE), packing length 128."""
    from genlab.config import resolve
    from genlab.train.trainer import train

    root = tmp_path_factory.mktemp("chat")
    corpus = root / "corpus.jsonl"
    texts = [f"User: question {i}\nAssistant: the quick brown fox {i}.\n" * (1 + i % 3) for i in range(40)]
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    cfg = resolve(None, None, tiny_overrides(corpus, steps=1, extra=["data.packing_length=128"]))
    r, _ = train(cfg, root / "run", progress=False, log=lambda *a: None)
    return r.path


def _session(run, **kw) -> tuple[ChatSession, io.StringIO]:
    out = io.StringIO()
    s = SamplingSettings(**{"max_new_tokens": 12, "temperature": 1.0, "seed": 0, **kw})
    return open_session(run, "cpu", s, out), out


def _expected(session: ChatSession, history: list[dict], seed: int) -> str:
    """The answer computed independently: render, generate with the turn's seed, cut at the stop string."""
    ids = [session.tokenizer.bos_id] if session.tokenizer.bos_id is not None else []
    ids += list(PLAIN_TEMPLATE_TEXT(history).encode("utf-8"))
    s = SamplingSettings(max_new_tokens=12, temperature=1.0, seed=seed)
    text = "".join(stream_text(session.tokenizer, generate(session.model, ids, s)))
    return text.split("\nUser:")[0].strip()


def PLAIN_TEMPLATE_TEXT(history):  # noqa: N802 - what PLAIN_TEMPLATE renders, written out by hand
    parts = []
    for m in history:
        parts.append(f"User: {m['content']}\n" if m["role"] == "user" else f"Assistant: {m['content']}\n")
    return "".join(parts) + "Assistant:"


def test_session_history_commands_and_seeds(run):
    session, out = _session(run)
    assert session.template.source == PLAIN_TEMPLATE and session.context == 128
    a1 = session.reply("hello")
    assert a1 == _expected(session, [{"role": "user", "content": "hello"}], seed=0)
    a2 = session.reply("and then?")
    h = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": a1}]
    assert a2 == _expected(session, h + [{"role": "user", "content": "and then?"}], seed=1)
    assert [m["content"] for m in session.history] == ["hello", a1, "and then?", a2]
    assert printable(a1) in out.getvalue() and printable(a2) in out.getvalue()

    for line, said in (
        ("/temperature 0", "[temperature 0]"),
        ("/temperature hot", "give a finite number >= 0"),
        ("/temperature -1", "give a finite number >= 0"),
        ("/system Be brief.", "[system message set: Be brief.]"),
        ("/nope", "unknown command /nope"),
        ("/help", "/reset"),
        ("/reset", "[history cleared]"),
    ):
        assert session.command(line) is True
        assert said in out.getvalue().splitlines()[-1]
    assert session.settings.temperature == 0 and session.system == "Be brief." and session.history == []
    assert session.encode([{"role": "user", "content": "x"}])[: len("Be brief.")] == list(b"Be brief.")
    assert session.command("/exit") is False


def test_context_overflow_drops_the_oldest_turns(run):
    session, out = _session(run, temperature=0.0)
    long = "x" * 40  # a turn takes ~50 tokens of the 128 - 12 the prompt may use
    for i in range(3):
        session.reply(f"{i}{long}")
    said = out.getvalue()
    assert "[context full (128 tokens): dropped the oldest 1 turn(s)]" in said
    assert session.history[0]["content"] != f"0{long}" and session.history[-2]["content"] == f"2{long}"
    assert len(session.encode(session.history[:-1])) <= session.prompt_budget()
    assert session.reply("y" * 200) == ""  # alone too long: said, nothing sent, history kept
    assert "shorten it" in out.getvalue().splitlines()[-1] and session.history[-2]["content"] == f"2{long}"


def test_end_of_turn_and_stop_strings():
    pieces = ["Hel", "lo\nUs", "er", ": more"]
    assert "".join(until_stop(pieces, ("\nUser:",))) == "Hello"
    assert "".join(until_stop(["a\nU", "nder"], ("\nUser:",))) == "a\nUnder"  # held back, then released
    assert list(until_stop(["ab", "c"], ())) == ["ab", "c"]
    assert printable("a\x1b[2Jb\tc\n\x07") == "a\ufffd[2Jb\tc\n\ufffd"

    class Tok:  # a stand-in BPE tokenizer whose ids are characters, with genlab's special tokens
        kind, bos_id = "bpe", 0

    tpl = ChatTemplate(DEFAULT_TEMPLATE, bos_token="<|endoftext|>", eos_token="<|endoftext|>")
    session = ChatSession(None, Tok(), tpl, SamplingSettings(), 64)
    assert session.stop_ids == set() and session.stop_strings == ()  # Tok has no `tok`: no special ids


@pytest.mark.slow  # a fresh Python process (torch import) under a pseudo terminal: ~4-6 s
def test_chat_under_a_pseudo_terminal(run):
    session, _ = _session(run)
    a1 = session.reply("hi there")
    a2 = session.reply("tell me more")
    session.command("/reset")
    a3 = session.reply("again")
    primary, secondary = pty.openpty()
    env = {**os.environ, "TERM": "dumb", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}  # as one_thread
    cmd = [sys.executable, "-m", "genlab", "chat", str(run), "--device", "cpu"]
    cmd += ["--temperature", "1", "--top-p", "1", "--max-new-tokens", "12", "--seed", "0"]
    proc = subprocess.Popen(cmd, stdin=secondary, stdout=secondary, stderr=secondary, env=env, close_fds=True)
    os.close(secondary)
    got = b""

    def wait_prompts(n: int, timeout: float = 20.0) -> None:
        """Until the n-th "> " prompt (after the banner line) is on the screen."""
        nonlocal got
        end = time.monotonic() + timeout
        while got.replace(b"\r\n", b"\n").count(b"\n> ") < n:
            assert time.monotonic() < end and proc.poll() is None, got
            if select.select([primary], [], [], 0.2)[0]:
                got += os.read(primary, 4096)

    try:
        for n, line in enumerate(("hi there", "tell me more", "/reset", "again", "/exit"), 1):
            wait_prompts(n)
            os.write(primary, line.encode() + b"\n")
        assert proc.wait(timeout=20) == 0
        while select.select([primary], [], [], 0.1)[0]:
            try:
                got += os.read(primary, 4096)
            except OSError:  # the child closed the terminal
                break
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(primary)
    text = got.decode("utf-8", errors="replace").replace("\r\n", "\n")
    for typed, answer in (("hi there", a1), ("tell me more", a2), ("again", a3)):
        assert f"> {typed}\n{printable(answer) or '[no answer]'}" in text, (typed, answer, text)
    assert "[history cleared]" in text and "Traceback" not in text


def test_bad_input_one_line(run, tmp_path, capsys, npz16):
    from genlab.config import resolve
    from genlab.train.trainer import train

    dens = resolve("made-digits", None, [f"data.path={npz16}", "train.steps=1", "train.eval_every=1"])
    d, _ = train(dens, tmp_path / "density", progress=False, log=lambda *a: None)
    for argv, msg in (
        (["chat", str(d.path), "--device", "cpu"], "genlab chat needs a causal language-model run"),
        (["chat", str(tmp_path / "missing")], "missing"),
        (["chat", str(run), "--temperature", "-1"], "must be a finite number >= 0"),
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert msg in err and len(err.strip().splitlines()) == 1, err


def test_chat_loop_ends_on_eof_and_exit(run):
    session, out = _session(run)
    lines = iter(["/system be nice", "/exit", "never read"])
    chat_loop(session, lambda prompt: next(lines))
    assert session.system == "be nice" and "/help for commands" in out.getvalue()
    session2, _ = _session(run)

    def eof(prompt):
        raise EOFError

    chat_loop(session2, eof)  # returns quietly
