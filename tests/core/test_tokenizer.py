from hypothesis import given, settings
from hypothesis import strategies as st

from genlab.data.text import embedded_corpus
from genlab.data.tokenizer import BPETokenizer, ByteTokenizer, load_tokenizer

SAMPLES = [
    "héllo wörld",
    "日本語のテキストと中文",
    "emoji 🎉🧪👩‍👩‍👧 flags 🇯🇵",
    "\x00\t\r\n  trailing  ",
    "mixed: def f(x):\n    return x ** 2  # ±∞",
    "text that spells <|endoftext|> is still text",
]

_BPE = None


def bpe():
    global _BPE
    if _BPE is None:
        _BPE = BPETokenizer.train(embedded_corpus()[:40] + SAMPLES, 600)
    return _BPE


def test_bpe_round_trip_cjk_emoji():
    tok = bpe()
    for s in SAMPLES:
        assert tok.decode(tok.encode(s)) == s


def test_byte_round_trip_and_vocab():
    tok = ByteTokenizer()
    assert tok.vocab_size == 256
    for s in SAMPLES:
        ids = tok.encode(s)
        assert max(ids) < 256 and tok.decode(ids) == s


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_round_trip_any_text(s):
    assert bpe().decode(bpe().encode(s)) == s
    assert ByteTokenizer().decode(ByteTokenizer().encode(s)) == s


def test_token_bytes_sum_to_utf8_length():
    tok = bpe()
    tb = tok.token_bytes()
    for s in SAMPLES:
        assert sum(tb[i] for i in tok.encode(s)) == len(s.encode("utf-8"))


def test_save_load(tmp_path):
    tok = bpe()
    tok.save(tmp_path / "t.json")
    again = load_tokenizer(tmp_path / "t.json")
    assert again.encode(SAMPLES[2]) == tok.encode(SAMPLES[2]) and again.vocab_size == tok.vocab_size
    ByteTokenizer().save(tmp_path / "b.json")
    assert isinstance(load_tokenizer(tmp_path / "b.json"), ByteTokenizer)
