"""genlab.from_pretrained(PATH, device, dtype) -> Pretrained (genlab/interop/pretrained.py): (batch, seq)
logits == the packed forward per sequence, generate == `genlab sample` at temperature 0,
save_pretrained round trips (genlab run dir and HF), dtype and device honoured, bad input."""

import json

import pytest
import torch

import genlab
from genlab.cli import main
from genlab.errors import GenlabError
from genlab.interop.pretrained import Pretrained

pytestmark = pytest.mark.usefixtures("one_thread")

RUNS = {
    "byte": [],
    "bpe": ["data.tokenizer=bpe", "data.vocab_size=300", "model.tie_embeddings=true"],
}


@pytest.fixture(scope="module")
def runs(tiny_overrides, tmp_path_factory):
    from genlab.config import resolve
    from genlab.train.trainer import train

    root = tmp_path_factory.mktemp("pretrained")
    corpus = root / "corpus.jsonl"
    texts = [f"document {i}: " + "the quick brown fox jumps over the lazy dog. " * (1 + i % 4) for i in range(40)]
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    out = {}
    for name, extra in RUNS.items():
        cfg = resolve(None, None, tiny_overrides(corpus, steps=6, extra=extra))
        run, _ = train(cfg, root / name, progress=False, log=lambda *a: None)
        out[name] = run.path
    return out


def packed_logits(model, ids: list[int]) -> torch.Tensor:
    T = len(ids)
    return model.head(model(torch.tensor(ids), torch.arange(T), torch.tensor([0, T], dtype=torch.int32), T))


@pytest.mark.parametrize("name", list(RUNS))
def test_batch_logits_equal_packed_forward_per_sequence(runs, name):
    m = genlab.from_pretrained(runs[name])
    assert isinstance(m, Pretrained) and m.device == torch.device("cpu") and m.dtype == torch.float32
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, m.vocab_size, (3, 11), generator=g)
    with torch.no_grad():
        logits = m(ids)
        assert logits.shape == (3, 11, m.vocab_size)
        for b in range(3):
            torch.testing.assert_close(logits[b], packed_logits(m.model, ids[b].tolist()), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(m(ids[1]), logits[1], rtol=1e-5, atol=1e-5)  # 1-D -> (seq, vocab)
        # right padding: the padded row equals its unpadded prefix; padded positions are zero
        mask = torch.ones(3, 11, dtype=torch.long)
        mask[2, 6:] = 0
        padded = m(ids, attention_mask=mask)
        torch.testing.assert_close(padded[2, :6], packed_logits(m.model, ids[2, :6].tolist()), rtol=1e-5, atol=1e-5)
        assert padded[2, 6:].abs().sum() == 0
        torch.testing.assert_close(padded[:2], logits[:2], rtol=1e-5, atol=1e-5)
        # the packed form itself
        cu = torch.tensor([0, 11, 22], dtype=torch.int32)
        flat = m.forward_packed(ids[:2].reshape(-1), torch.arange(11).repeat(2), cu, 11)
        torch.testing.assert_close(flat.view(2, 11, -1), logits[:2], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", list(RUNS))
def test_generate_equals_genlab_sample_at_temperature_0(runs, name, capsys):
    m = genlab.from_pretrained(runs[name], device="cpu")
    for prompt in ("the quick", "document 3:"):
        assert (
            main(["sample", str(runs[name]), "--prompt", prompt, "--temperature", "0", "--max-new-tokens", "24"]) == 0
        )
        printed = capsys.readouterr().out
        text = m.generate(prompt, max_new_tokens=24)
        assert printed == prompt + text + "\n"
    # ids in, ids out: the same tokens
    ids = m.prompt_ids("the quick")
    new = m.generate(ids, max_new_tokens=24)
    assert isinstance(new, list) and len(new) == 24
    assert m.tokenizer.decode(new) == m.generate("the quick", max_new_tokens=24)


def test_generate_stop_and_sampling(runs):
    m = genlab.from_pretrained(runs["byte"])
    full = m.generate("the ", max_new_tokens=30)
    ids = m.generate(m.prompt_ids("the "), max_new_tokens=30)
    stop = full[5:8]  # a string the greedy text contains: decoding ends there, the text is cut before it
    assert len(stop) == 3 and m.generate("the ", max_new_tokens=30, stop=[stop]) == full[: full.find(stop)]
    stop_id = ids[5]
    got = m.generate(m.prompt_ids("the "), max_new_tokens=30, stop=stop_id)
    assert got == ids[: ids.index(stop_id) + 1]  # ids: the stop id included, as transformers does
    a = m.generate("the ", max_new_tokens=20, temperature=0.9, top_k=20, top_p=0.9, seed=3)
    b = m.generate("the ", max_new_tokens=20, temperature=0.9, top_k=20, top_p=0.9, seed=3)
    assert a == b


@pytest.mark.parametrize("name", list(RUNS))
def test_save_pretrained_round_trip(runs, name, tmp_path):
    m = genlab.from_pretrained(runs[name])
    ids = torch.randint(0, m.vocab_size, (2, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = m(ids)
    out = m.save_pretrained(tmp_path / "run")
    assert (out / "config.toml").is_file()
    back = genlab.from_pretrained(out)
    with torch.no_grad():
        torch.testing.assert_close(back(ids), ref, rtol=0, atol=0)
    # the saved run dir is an ordinary run: genlab sample reads it
    assert main(["sample", str(out), "--prompt", "the", "--temperature", "0", "--max-new-tokens", "4"]) == 0
    hf = m.save_pretrained(tmp_path / "hf", format="hf")
    assert (hf / "config.json").is_file() and (hf / "tokenizer.json").is_file()
    back_hf = genlab.from_pretrained(hf)
    with torch.no_grad():
        torch.testing.assert_close(back_hf(ids), ref, rtol=1e-6, atol=1e-6)
    assert back_hf.generate("the quick", max_new_tokens=12) == m.generate("the quick", max_new_tokens=12)
    # a Pretrained loaded from an HF directory saves again, both ways
    again = back_hf.save_pretrained(tmp_path / "run2")
    with torch.no_grad():
        torch.testing.assert_close(genlab.from_pretrained(again)(ids), ref, rtol=1e-6, atol=1e-6)


def test_dtype_is_honoured(runs, tmp_path):
    ids = torch.randint(0, 256, (2, 7), generator=torch.Generator().manual_seed(2))
    m32 = genlab.from_pretrained(runs["byte"])
    m64 = genlab.from_pretrained(runs["byte"], dtype=torch.float64)
    mbf = genlab.from_pretrained(runs["byte"], dtype="bfloat16")
    assert all(p.dtype == torch.float64 for p in m64.model.parameters()) and m64.dtype == torch.float64
    assert all(p.dtype == torch.bfloat16 for p in mbf.model.parameters())
    with torch.no_grad():
        ref = m32(ids)
        out64 = m64(ids)
        assert out64.dtype == torch.float64
        torch.testing.assert_close(out64.float(), ref, rtol=1e-4, atol=1e-4)
    # saving a bf16 model writes fp32 weights (the master precision); they equal the bf16 values
    back = genlab.from_pretrained(mbf.save_pretrained(tmp_path / "bf16run"))
    assert back.dtype == torch.float32
    for a, b in zip(back.model.parameters(), mbf.model.parameters()):
        assert torch.equal(a, b.float())


def test_tuple_unpacking_still_gives_model_and_tokenizer(runs):
    model, tok = genlab.from_pretrained(runs["bpe"])
    assert isinstance(model, torch.nn.Module) and hasattr(tok, "encode")


def test_bad_input(runs, tmp_path, monkeypatch):
    m = genlab.from_pretrained(runs["byte"])
    for bad, match in [
        (torch.zeros(2, 3), "integers"),
        (torch.zeros(2, 3, 4, dtype=torch.long), "shape"),
        (torch.full((1, 3), 256), "0..255"),
        (torch.zeros(0, 3, dtype=torch.long), "shape"),
    ]:
        with pytest.raises(GenlabError, match=match):
            m(bad)
    with pytest.raises(GenlabError, match="right padding"):
        m(torch.zeros(1, 4, dtype=torch.long), attention_mask=torch.tensor([[0, 1, 1, 1]]))
    with pytest.raises(GenlabError, match="attention_mask has shape"):
        m(torch.zeros(1, 4, dtype=torch.long), attention_mask=torch.ones(1, 3))
    with pytest.raises(GenlabError, match="max_new_tokens"):
        m.generate("x", max_new_tokens=0)
    with pytest.raises(GenlabError, match="stop"):
        m.generate("x", stop=[""])
    with pytest.raises(GenlabError, match="format"):
        m.save_pretrained(tmp_path / "x", format="gguf")
    with pytest.raises(GenlabError, match="dtype"):
        genlab.from_pretrained(runs["byte"], dtype=torch.int8)
    with pytest.raises(GenlabError, match="not empty"):
        m.save_pretrained(runs["bpe"])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(GenlabError, match="no CUDA GPU"):
        genlab.from_pretrained(runs["byte"], device="cuda")
    with pytest.raises(GenlabError, match="neither a genlab run dir"):
        genlab.from_pretrained(tmp_path)
