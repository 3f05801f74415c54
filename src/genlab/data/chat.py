"""Chat templates: conversations -> text -> token ids, with the assistant tokens marked for the loss.

A template is a Jinja2 string rendered the way Hugging Face's `apply_chat_template` renders one
(a sandboxed environment with trim_blocks and lstrip_blocks, `raise_exception`, the `generation` tag
around the text the assistant wrote, `messages`, `add_generation_prompt`, `bos_token`, `eos_token`).
A run stores its template next to its tokenizer as `chat_template.jinja`, the file transformers
saves too; a run without one is served with PLAIN_TEMPLATE ("User: ... / Assistant: ...").

genlab's own template (DEFAULT_TEMPLATE) uses four special tokens, CHAT_TOKENS, which
`add_chat_tokens` appends to a BPE tokenizer that lacks them. The loss mask is exact at the token
level: a token is an assistant token when its characters lie inside a `generation` block, which in
DEFAULT_TEMPLATE covers the answer and its end-of-turn token `<|end|>` (so a model learns to stop).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from genlab.errors import GenlabError

TEMPLATE_FILE = "chat_template.jinja"
ROLES = ("system", "user", "assistant")
END = "<|end|>"
CHAT_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>", END)

# genlab's template: <|endoftext|><|user|>\nQ<|end|>\n<|assistant|>\nA<|end|>\n ...; the answer and its
# <|end|> form the generation block (the loss); add_generation_prompt ends the text with "<|assistant|>\n".
DEFAULT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ '<|system|>\\n' ~ message['content'] ~ '<|end|>\\n' }}"
    "{% elif message['role'] == 'user' %}{{ '<|user|>\\n' ~ message['content'] ~ '<|end|>\\n' }}"
    "{% elif message['role'] == 'assistant' %}{{ '<|assistant|>\\n' }}"
    "{% generation %}{{ message['content'] ~ '<|end|>' }}{% endgeneration %}{{ '\\n' }}"
    "{% else %}{{ raise_exception('unknown role ' ~ message['role']) }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)

# for runs trained without a chat template (a pretrained run served by genlab serve): plain text turns,
# stopped by the next "\nUser:"
PLAIN_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] ~ '\\n\\n' }}"
    "{% elif message['role'] == 'user' %}{{ 'User: ' ~ message['content'] ~ '\\n' }}"
    "{% else %}{{ 'Assistant: ' }}{% generation %}{{ message['content'] }}{% endgeneration %}{{ '\\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)
PLAIN_STOP = ("\nUser:",)

# marks around generation blocks while rendering (private-use characters, removed from the text)
_OPEN, _CLOSE = "\ue000", "\ue001"


def _environment():
    import jinja2
    from jinja2 import nodes
    from jinja2.ext import Extension, loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class Generation(Extension):
        """`{% generation %}...{% endgeneration %}`: the text in between is the assistant's."""

        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return nodes.CallBlock(self.call_method("_mark", []), [], [], body).set_lineno(lineno)

        def _mark(self, caller):
            return _OPEN + caller() + _CLOSE

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[Generation, loopcontrols])
    env.filters["tojson"] = lambda x, indent=None: json.dumps(x, indent=indent, ensure_ascii=False)
    env.globals["raise_exception"] = raise_exception
    return env


def check_messages(messages, where: str = "conversation", need_assistant: bool = False) -> list[dict]:
    """`messages` as a list of {"role", "content"} with known roles and string content; one-line errors."""
    if not isinstance(messages, list) or not messages:
        raise GenlabError(f"{where}: 'messages' must be a non-empty list of {{'role', 'content'}} objects")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise GenlabError(f"{where}: message {i} must be an object with 'role' and 'content'")
        role, content = m["role"], m["content"]
        if role not in ROLES:
            raise GenlabError(f"{where}: message {i} has unknown role {role!r}; allowed: {', '.join(ROLES)}")
        if not isinstance(content, str):
            raise GenlabError(f"{where}: message {i} ({role}) content must be a string")
        if _OPEN in content or _CLOSE in content:
            raise GenlabError(f"{where}: message {i} contains the reserved characters U+E000 / U+E001")
        if role == "assistant" and not content.strip():
            raise GenlabError(f"{where}: message {i} is an empty assistant turn")
        out.append({"role": role, "content": content})
    if need_assistant and not any(m["role"] == "assistant" for m in out):
        raise GenlabError(f"{where}: no assistant turn (nothing to learn from)")
    return out


@dataclass(frozen=True)
class ChatTemplate:
    source: str
    bos_token: str = ""
    eos_token: str = ""

    @cached_property
    def _template(self):
        import jinja2

        try:
            return _environment().from_string(self.source)
        except jinja2.exceptions.TemplateError as e:
            raise GenlabError(f"chat template does not parse: {_first_line(e)}") from None

    def render_marked(self, messages: list[dict], add_generation_prompt: bool = False) -> str:
        import jinja2

        try:
            return self._template.render(
                messages=messages,
                add_generation_prompt=add_generation_prompt,
                bos_token=self.bos_token,
                eos_token=self.eos_token,
            )
        except jinja2.exceptions.TemplateError as e:
            raise GenlabError(f"chat template failed to render: {_first_line(e)}") from None
        except Exception as e:  # a template may fail in any way (a bad index, a type error)
            raise GenlabError(f"chat template failed to render: {type(e).__name__}: {_first_line(e)}") from None

    def render(self, messages: list[dict], add_generation_prompt: bool = False) -> str:
        """The text, as transformers' apply_chat_template(tokenize=False) gives it."""
        return self.render_marked(messages, add_generation_prompt).replace(_OPEN, "").replace(_CLOSE, "")

    def render_spans(self, messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
        """(text, [(start, end) character ranges of the generation blocks])."""
        marked = self.render_marked(messages)
        parts = re.split(f"([{_OPEN}{_CLOSE}])", marked)
        text, spans, pos, start = [], [], 0, None
        for p in parts:
            if p == _OPEN:
                start = pos
            elif p == _CLOSE:
                if start is not None:
                    spans.append((start, pos))
                start = None
            else:
                text.append(p)
                pos += len(p)
        return "".join(text), spans

    @property
    def has_generation(self) -> bool:
        return "generation" in self.source and "endgeneration" in self.source

    @cached_property
    def end_of_turn(self) -> str | None:
        """What the template writes right after an answer when that is a special-looking token
        (`<|end|>`, `<|im_end|>`, `</s>`): found by rendering a probe conversation."""
        probe = "\u2063probe\u2063"
        text = self.render([{"role": "user", "content": "q"}, {"role": "assistant", "content": probe}])
        after = text[text.rindex(probe) + len(probe) :] if probe in text else ""
        m = re.match(r"\s*(<\|[^|<>\s]+\|>|</s>|<\uff5cend\u2581of\u2581sentence\uff5c>)", after)
        return m.group(1) if m else None

    def encode(self, tokenizer, messages: list[dict], add_generation_prompt: bool = True) -> list[int]:
        return encode_text(tokenizer, self.render(messages, add_generation_prompt))[0]

    def encode_with_mask(
        self, tokenizer, messages: list[dict], last_turn: bool = False
    ) -> tuple[list[int], np.ndarray]:
        """(token ids, bool mask: True on assistant tokens, i.e. those inside a generation block; `last_turn`:
        the last block only, the answer a preference pair compares)."""
        if not self.has_generation:
            raise GenlabError(
                "the chat template has no {% generation %} block, so the assistant tokens cannot be found; "
                "wrap the assistant's text in {% generation %}...{% endgeneration %}"
            )
        text, spans = self.render_spans(messages)
        if last_turn:
            spans = spans[-1:]
        ids, starts, ends = encode_text(tokenizer, text)
        mask = np.zeros(len(ids), dtype=bool)
        for a, b in spans:  # a token belongs to the answer when it overlaps the block
            mask |= (starts < b) & (ends > a)
        return ids, mask

    def stop_ids(self, tokenizer) -> list[int]:
        """Token ids that end an answer: the end-of-turn token (when the tokenizer has it) and EOS."""
        out = []
        for t in (self.end_of_turn, self.eos_token or None):
            i = special_id(tokenizer, t) if t else None
            if i is not None and i not in out:
                out.append(i)
        return out

    @property
    def stop_strings(self) -> tuple[str, ...]:
        return PLAIN_STOP if self.source == PLAIN_TEMPLATE else ()


def _first_line(e: Exception) -> str:
    s = str(e).strip().splitlines()
    return s[0][:200] if s else type(e).__name__


def special_id(tokenizer, token: str) -> int | None:
    """The id of special token `token` in `tokenizer` (None: byte tokenizer, or not in its vocabulary)."""
    tok = getattr(tokenizer, "tok", None)  # BPETokenizer wraps a `tokenizers.Tokenizer`
    return None if tok is None else tok.token_to_id(token)


def encode_text(tokenizer, text: str) -> tuple[list[int], np.ndarray, np.ndarray]:
    """(ids, start, end character offsets) of rendered chat text: special tokens written by the template
    are recognised (the plain `encode` treats them as text so corpora stay lossless)."""
    if tokenizer.kind == "byte":
        raw = [list(ch.encode("utf-8")) for ch in text]
        ids = [b for r in raw for b in r]
        starts = np.array([i for i, r in enumerate(raw) for _ in r], dtype=np.int64)
        return ids, starts, starts + 1
    enc = tokenizer.chat_encoder.encode(text, add_special_tokens=False)
    off = np.array(enc.offsets, dtype=np.int64).reshape(-1, 2)
    return list(enc.ids), off[:, 0], off[:, 1]


def add_chat_tokens(tokenizer, template: ChatTemplate) -> list[str]:
    """Add the special tokens `template` names (`<|...|>`) that `tokenizer` lacks; returns those added.
    A byte tokenizer has no room for them: an error unless the template names none."""
    needed = [t for t in dict.fromkeys(re.findall(r"<\|[^|<>\s']+\|>", template.source)) if t != "<|endoftext|>"]
    missing = [t for t in needed if special_id(tokenizer, t) is None]
    if missing and tokenizer.kind == "byte":
        raise GenlabError(
            f"the chat template's special tokens {', '.join(missing)} need a BPE tokenizer (this run uses bytes); "
            "pretrain with data.tokenizer=bpe"
        )
    if missing:
        tokenizer.add_special_tokens(missing)
    return missing


def load_chat_template(run_dir: Path | str, default: str = PLAIN_TEMPLATE, bos_token: str = "") -> ChatTemplate:
    """The run's chat_template.jinja, or `default` when the run has none."""
    p = Path(run_dir) / TEMPLATE_FILE
    source = p.read_text(encoding="utf-8") if p.is_file() else default
    return ChatTemplate(source, bos_token=bos_token, eos_token=bos_token)


def read_template_arg(value: str) -> str:
    """data.chat_template: '' = genlab's DEFAULT_TEMPLATE, else a path to a .jinja file."""
    if not value:
        return DEFAULT_TEMPLATE
    p = Path(value)
    if not p.is_file():
        raise GenlabError(f"data.chat_template = {value!r}: no such file (give a .jinja file, or '' for genlab's)")
    try:
        return p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise GenlabError(f"data.chat_template = {value!r}: cannot read it ({e})") from None
