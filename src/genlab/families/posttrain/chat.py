"""`genlab chat RUN`: a terminal conversation with a language-model run, through the run's chat template.

Each turn renders the system message and the history with the template (`genlab.data.chat`: the run's
chat_template.jinja, or PLAIN_TEMPLATE for a run trained without one), adds the generation prompt, and
streams the answer token by token until an end-of-turn token (the template's `<|end|>` and the
tokenizer's end of text), a stop string (PLAIN_TEMPLATE: the next "\\nUser:") or `max_new_tokens`.
When the conversation no longer fits the model's context (its training length, less room for the
answer) the oldest turns are dropped, and the user is told so.

Slash commands: /help, /reset (forget the history), /system TEXT (set the system message; /system
alone clears it), /temperature X, /exit (or Ctrl-D). Ctrl-C stops an answer being written.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
import sys
from collections.abc import Callable, Iterable, Iterator

from genlab.data.chat import TEMPLATE_FILE, ChatTemplate, load_chat_template
from genlab.data.tokenizer import EOT
from genlab.errors import GenlabError
from genlab.generate import SamplingSettings, generate, stream_text

USER_PROMPT = "> "
HELP = (
    "commands: /reset forgets the conversation; /system TEXT sets the system message (/system alone clears it); "
    "/temperature X sets the sampling temperature (0 = greedy); /help; /exit (or Ctrl-D) leaves. "
    "Ctrl-C stops an answer."
)
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def printable(text: str) -> str:
    """`text` as shown on a terminal: control characters (escape sequences, bells, carriage returns)
    other than newline and tab become U+FFFD, so a model cannot drive the terminal."""
    return _CONTROL.sub("\ufffd", text)


def until_stop(pieces: Iterable[str], stops: tuple[str, ...]) -> Iterator[str]:
    """Text pieces up to the first stop string (excluded); a piece that could be the start of a stop
    string is held back until the text after it decides. Stops pulling from `pieces` at a stop."""
    buf = ""
    for p in pieces:
        buf += p
        hits = [i for i in (buf.find(s) for s in stops) if i >= 0]
        if hits:
            if min(hits):
                yield buf[: min(hits)]
            return
        hold = max((k for s in stops for k in range(1, len(s)) if buf.endswith(s[:k])), default=0)
        if len(buf) > hold:
            yield buf[: len(buf) - hold]
            buf = buf[len(buf) - hold :]
    if buf:
        yield buf


class ChatSession:
    """A conversation with one model: the history, the settings, and one streamed answer per turn.

    `context` is the most tokens the model sees at once (prompt + answer); `out` receives the answers
    and messages as they are written."""

    def __init__(
        self,
        model,
        tokenizer,
        template: ChatTemplate,
        settings: SamplingSettings,
        context: int,
        out=None,
        title: str = "the model",
    ):
        self.model, self.tokenizer, self.template, self.title = model, tokenizer, template, title
        self.settings, self.context = settings, context
        self.out = out or sys.stdout
        self.system: str | None = None
        self.history: list[dict] = []
        self.turns = 0  # answers so far: the seed of each answer is settings.seed + turns
        self.stop_ids = set(template.stop_ids(tokenizer))
        self.stop_strings = template.stop_strings

    def say(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()

    # ------------------------------------------------------------------ prompts
    def messages(self, history: list[dict]) -> list[dict]:
        return ([{"role": "system", "content": self.system}] if self.system else []) + history

    def encode(self, history: list[dict]) -> list[int]:
        ids = self.template.encode(self.tokenizer, self.messages(history), add_generation_prompt=True)
        bos = self.tokenizer.bos_id
        if bos is not None and ids[:1] != [bos]:  # a template without {{ bos_token }} (PLAIN_TEMPLATE)
            ids = [bos] + ids
        return ids

    def prompt_budget(self) -> int:
        """Tokens the prompt may take: the context less room for the answer (at least half the context)."""
        return self.context - min(self.settings.max_new_tokens, self.context // 2)

    def fit(self, history: list[dict]) -> tuple[list[int], int]:
        """(prompt ids of `history` without its oldest turns as needed, number of messages dropped).
        A GenlabError when even the last message alone does not fit."""
        budget, dropped = self.prompt_budget(), 0
        while True:
            ids = self.encode(history[dropped:])
            if len(ids) <= budget:
                return ids, dropped
            if len(history) - dropped <= 1:
                raise GenlabError(
                    f"this message takes {len(ids)} tokens with the template; the model's context holds "
                    f"{self.context} (with {self.context - budget} kept for the answer): shorten it"
                )
            dropped += 2 if history[dropped]["role"] == "user" and len(history) - dropped > 2 else 1

    # ------------------------------------------------------------------ one turn
    def reply(self, text: str) -> str:
        """Send a user message, stream the answer to `out`, keep both in the history; the answer."""
        history = self.history + [{"role": "user", "content": text}]
        try:
            ids, dropped = self.fit(history)
        except GenlabError as e:
            self.say(f"[{e}]")
            return ""
        if dropped:
            n = dropped // 2 + dropped % 2
            self.say(f"[context full ({self.context} tokens): dropped the oldest {n} turn(s)]")
            history = history[dropped:]
        s = dataclasses.replace(
            self.settings,
            seed=self.settings.seed + self.turns,
            max_new_tokens=min(self.settings.max_new_tokens, self.context - len(ids)),
        )
        self.turns += 1
        tokens = itertools.takewhile(lambda t: t not in self.stop_ids, generate(self.model, ids, s))
        answer, started = [], False
        try:
            for piece in until_stop(stream_text(self.tokenizer, tokens), self.stop_strings):
                answer.append(piece)
                if not started:  # "Assistant:" is followed by " text": start at the text
                    piece = piece.lstrip()
                    started = bool(piece)
                if piece:
                    self.out.write(printable(piece))
                    self.out.flush()
        except KeyboardInterrupt:
            self.out.write(" [stopped]")
        text_out = "".join(answer).strip()
        self.say("" if started else "[no answer]")
        if text_out:
            self.history = history + [{"role": "assistant", "content": text_out}]
        else:  # an empty assistant turn cannot be rendered again: forget the question too
            self.history = history[:-1]
        return text_out

    # ------------------------------------------------------------------ commands
    def command(self, line: str) -> bool:
        """Handle one input line (a message or a /command); False when the user leaves."""
        line = line.strip()
        if not line:
            return True
        if not line.startswith("/"):
            self.reply(line)
            return True
        name, _, arg = line.partition(" ")
        arg = arg.strip()
        if name in ("/exit", "/quit"):
            return False
        if name == "/help":
            self.say(HELP)
        elif name == "/reset":
            self.history = []
            self.say("[history cleared]")
        elif name == "/system":
            self.system = arg or None
            self.say(f"[system message set: {arg}]" if arg else "[system message cleared]")
        elif name == "/temperature":
            try:
                self.settings = dataclasses.replace(self.settings, temperature=float(arg))
                self.say(f"[temperature {self.settings.temperature:g}]")
            except (ValueError, GenlabError):
                self.say(f"[/temperature {arg!r}: give a finite number >= 0 (0 = greedy)]")
        else:
            self.say(f"[unknown command {name}; /help lists the commands]")
        return True


def chat_loop(session: ChatSession, read: Callable[[str], str] = input) -> None:
    """Read lines until /exit, end of input (Ctrl-D) or Ctrl-C at the prompt."""
    session.say(f"chat with {session.title}; /help for commands, /exit or Ctrl-D to leave")
    while True:
        try:
            line = read(USER_PROMPT)
        except (EOFError, KeyboardInterrupt):
            session.say("")
            return
        if not session.command(line):
            return


def open_session(run_path, device: str, settings: SamplingSettings, out=None) -> ChatSession:
    """A ChatSession on a language-model run (genlab.train.rundir.load_run); one-line errors for other runs."""
    from genlab.train.rundir import load_run

    run, cfg, task, model = load_run(run_path, device)
    tokenizer = getattr(task, "tokenizer", None)
    if tokenizer is None or not hasattr(model, "new_cache") or getattr(task, "objective", "causal") != "causal":
        what = cfg.family.name if getattr(task, "objective", "causal") == "causal" else f"{task.objective} LM"
        raise GenlabError(f"{run.path} is a {what} run; genlab chat needs a causal language-model run")
    template = load_chat_template(run.path, bos_token=EOT if tokenizer.bos_id is not None else "")
    context = int(getattr(cfg.data, "packing_length", 2048))
    own = (run.path / TEMPLATE_FILE).is_file()
    title = f"{run.path} ({'its chat template' if own else 'no chat template: plain User:/Assistant: turns'})"
    return ChatSession(model, tokenizer, template, settings, context, out, title)


def line_reader() -> Callable[[str], str]:
    """`input`, with line editing and history (readline) when the input is a terminal."""
    if sys.stdin.isatty():
        try:
            import readline  # noqa: F401  (importing it gives input() line editing)
        except ImportError:  # pragma: no cover - Windows
            pass
    return input
