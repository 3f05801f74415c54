"""`genlab export --format hf` of every LM run, read back by transformers: dense runs as LlamaForCausalLM
(byte and BPE tokenizers), deepseek runs as DeepseekV3ForCausalLM. Same logits (fp32, 1e-4), same greedy
text, AutoTokenizer ids == genlab's on fuzzed strings, sharded weights, chat template, `genlab import`
round trip, and bad input."""

import json
import random

import pytest
import torch

from genlab.cli import main
from genlab.generate import SamplingSettings, generate

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.usefixtures("one_thread")

DEEPSEEK = [
    "model.arch=deepseek",
    "model.q_lora_rank=16",
    "model.kv_lora_rank=16",
    "model.qk_nope_head_dim=8",
    "model.qk_rope_head_dim=4",
    "model.v_head_dim=8",
    "model.ffn_hidden=64",
    "model.n_routed_experts=4",
    "model.num_experts_per_tok=2",
    "model.n_group=2",
    "model.topk_group=1",
    "model.moe_intermediate_size=16",
    "model.mtp_depth=1",
]
RUNS = {
    "dense_byte": ["model.rope_theta=500.0"],  # GQA (n_kv_head=2 from tiny_overrides), untied head
    "dense_bpe": [
        "data.tokenizer=bpe",
        "data.vocab_size=320",
        "model.tie_embeddings=true",
        "model.norm_eps=1e-6",
        "model.rope_theta=50000.0",
    ],
    "deepseek": DEEPSEEK,
}
PROMPTS = ["the quick", "document 7: the lazy", "日本語の", " "]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    texts = [
        f"document {i}: "
        + ("the quick brown fox jumps over the lazy dog. " * (1 + i % 5))
        + ("日本語のテキスト 🎉 " if i % 3 == 0 else "")
        for i in range(40)
    ]
    p = tmp_path_factory.mktemp("corpus") / "corpus.jsonl"
    p.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts), encoding="utf-8")
    return p


@pytest.fixture(scope="module")
def runs(corpus, tiny_overrides, tmp_path_factory):
    """{name: (run dir, HF export dir)}, trained and exported once per module."""
    from genlab.config import resolve
    from genlab.train.trainer import train

    root = tmp_path_factory.mktemp("hf_export")
    out = {}
    for name, extra in RUNS.items():
        sets = tiny_overrides(corpus, steps=12, extra=extra)
        run, _ = train(resolve(None, None, sets), root / name, progress=False, log=lambda *a: None)
        assert main(["export", str(run.path), str(root / f"{name}_hf"), "--format", "hf"]) == 0
        out[name] = (run.path, root / f"{name}_hf")
    return out


def genlab_logits(model, ids: list[int]) -> torch.Tensor:
    x = torch.tensor(ids)
    T = len(ids)
    return model.head(model(x, torch.arange(T), torch.tensor([0, T], dtype=torch.int32), T))


def load_both(run_dir, hf_dir):
    from genlab.train.rundir import load_run

    _, _, task, model = load_run(str(run_dir))
    hf = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    tok = transformers.AutoTokenizer.from_pretrained(hf_dir)
    return task, model, hf, tok


@pytest.mark.parametrize("name", list(RUNS))
def test_transformers_logits_equal_genlab(runs, name):
    task, model, hf, tok = load_both(*runs[name])
    hc = json.loads((runs[name][1] / "config.json").read_text())
    assert hc["architectures"] == (["DeepseekV3ForCausalLM"] if name == "deepseek" else ["LlamaForCausalLM"])
    worst = 0.0
    with torch.no_grad():
        for prompt in PROMPTS + ["the quick brown fox jumps over the lazy dog. " * 2]:
            ids = tok(prompt)["input_ids"]  # the BOS (BPE runs) added as genlab's prompts get it
            assert ids == task.prompt_ids(prompt)
            ref = hf(torch.tensor([ids])).logits[0]
            worst = max(worst, float((ref - genlab_logits(model, ids)).abs().max()))
    assert worst < 1e-4, worst


@pytest.mark.parametrize("name", list(RUNS))
def test_greedy_generation_same_text(runs, name):
    task, model, hf, tok = load_both(*runs[name])
    s = SamplingSettings(max_new_tokens=32, temperature=0.0)
    for prompt in PROMPTS:
        ids = task.prompt_ids(prompt)
        ours = list(generate(model, ids, s, stop_id=task.tokenizer.bos_id))  # stops at the next document
        enc = tok(prompt, return_tensors="pt")
        with torch.no_grad():
            out = hf.generate(**enc, max_new_tokens=32, do_sample=False)[0, len(ids) :].tolist()
        assert out == ours, prompt
        assert tok.decode(out, skip_special_tokens=True) == task.tokenizer.decode(ours)


def fuzz_strings(n=300, seed=0):
    rng = random.Random(seed)
    atoms = [
        "a",
        "the",
        " fox",
        "é",
        "日本語",
        "🎉",
        "👩‍👩‍👧",
        "\u0301",
        " ",
        "  ",
        "\t",
        "\n",
        "\r\n",
        "   \n\n  ",
        "<|endoftext|>",
        "<|endoftext",
        "'s",
        "123",
        "!?",
        "\x00",
        "\u00a0",
        "ÿ",
    ]
    out = ["", " ", "<|endoftext|>", "a<|endoftext|>b", "\n" * 5, " " * 17]
    for _ in range(n):
        k = rng.randint(1, 12)
        out.append("".join(rng.choice(atoms) if rng.random() < 0.8 else chr(rng.randint(32, 0x2FFF)) for _ in range(k)))
    return out


@pytest.mark.parametrize("name", ["dense_byte", "dense_bpe"])
def test_autotokenizer_ids_equal_genlab(runs, name):
    from genlab.train.rundir import load_run

    _, _, task, _ = load_run(str(runs[name][0]))
    tok = transformers.AutoTokenizer.from_pretrained(runs[name][1])
    g = task.tokenizer
    special = json.loads((runs[name][1] / "special_tokens_map.json").read_text())
    if name == "dense_bpe":
        assert tok.bos_token_id == tok.eos_token_id == g.bos_id and special["bos_token"] == "<|endoftext|>"
    else:
        assert tok.bos_token_id is None and special == {}
    for s in fuzz_strings():
        bare = tok(s, add_special_tokens=False)["input_ids"]
        assert bare == g.encode(s), repr(s)
        assert tok(s)["input_ids"] == ([] if g.bos_id is None else [g.bos_id]) + bare, repr(s)
        assert tok.decode(bare) == g.decode(bare), repr(s)
        if name == "dense_byte":
            assert bare == list(s.encode("utf-8"))


@pytest.mark.parametrize("name", list(RUNS))
def test_genlab_import_of_export_same_logits(runs, name, tmp_path):
    import genlab
    from genlab.data.tokenizer import ByteTokenizer

    run_dir, hf_dir = runs[name]
    assert main(["import", str(hf_dir), str(tmp_path / "back")]) == 0
    a, tok_a = genlab.from_pretrained(run_dir)
    b, tok_b = genlab.from_pretrained(tmp_path / "back")
    assert isinstance(tok_b, ByteTokenizer) == isinstance(tok_a, ByteTokenizer)
    ids = tok_a.encode("the quick brown fox 日本")
    with torch.no_grad():
        assert (genlab_logits(a, ids) - genlab_logits(b, ids)).abs().max() < 1e-6


def test_sharded_export_loads(runs, tmp_path):
    import genlab

    run_dir, hf_dir = runs["dense_byte"]
    out = tmp_path / "sharded"
    assert main(["export", str(run_dir), str(out), "--shard-size", "20KB"]) == 0
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and not (out / "model.safetensors").exists()
    assert all((out / s).is_file() for s in shards)
    one = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    many = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    ids = torch.tensor([list(b"sharded weights")])
    with torch.no_grad():
        assert torch.equal(one(ids).logits, many(ids).logits)
    model, _ = genlab.from_pretrained(out)  # genlab reads the shards too
    with torch.no_grad():
        assert (genlab_logits(model, ids[0].tolist()) - one(ids).logits[0]).abs().max() < 1e-4


def test_dense_config_and_files(runs):
    from genlab.train.rundir import load_run

    run_dir, hf_dir = runs["dense_bpe"]
    _, cfg, task, _ = load_run(str(run_dir))
    hc = json.loads((hf_dir / "config.json").read_text())
    m = cfg.model
    assert hc["model_type"] == "llama" and hc["rope_parameters"]["rope_theta"] == 50000.0
    assert hc["rms_norm_eps"] == 1e-6 and hc["tie_word_embeddings"] is True
    assert hc["num_key_value_heads"] == 2 and hc["intermediate_size"] == m.ffn_width()
    assert hc["max_position_embeddings"] == 64 and hc["torch_dtype"] == "float32"
    assert hc["bos_token_id"] == hc["eos_token_id"] == task.tokenizer.bos_id
    gen = json.loads((hf_dir / "generation_config.json").read_text())
    assert gen["eos_token_id"] == task.tokenizer.bos_id
    tc = json.loads((hf_dir / "tokenizer_config.json").read_text())
    assert tc["model_max_length"] == 64 and tc["bos_token"] == "<|endoftext|>" and "chat_template" not in tc
    from safetensors import safe_open

    with safe_open(str(hf_dir / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert "lm_head.weight" not in keys and "model.layers.1.self_attn.k_proj.weight" in keys


def test_chat_template_exported(runs, tmp_path):
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(runs["dense_bpe"][0], run_dir)
    template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    (run_dir / "chat_template.jinja").write_text(template)
    assert main(["export", str(run_dir), str(tmp_path / "hf")]) == 0
    assert json.loads((tmp_path / "hf" / "tokenizer_config.json").read_text())["chat_template"] == template
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert text == "user: hi\n"
    assert main(["import", str(tmp_path / "hf"), str(tmp_path / "back")]) == 0  # kept by the round trip
    assert (tmp_path / "back" / "chat_template.jinja").read_text() == template


def one_line_error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err and "\n" not in err, err
    return err


@pytest.mark.parametrize(
    "extra,needle",
    [
        (["model.arch=lstm", "model.n_kv_head=0"], "model.arch = 'lstm'"),
        (["train.objective=masked"], "train.objective"),
    ],
)
def test_unexportable_runs_refused(corpus, tiny_overrides, tmp_path, capsys, extra, needle):
    from genlab.config import resolve
    from genlab.train.trainer import train

    run, _ = train(resolve(None, None, tiny_overrides(corpus, 2, extra)), tmp_path / "r", progress=False, log=print)
    capsys.readouterr()
    assert needle in one_line_error(capsys, ["export", str(run.path), str(tmp_path / "hf")])
    assert not (tmp_path / "hf").exists()


def test_bad_output_and_shard_size(runs, tmp_path, capsys):
    run_dir, _ = runs["dense_byte"]
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("keep me")
    assert "not empty" in one_line_error(capsys, ["export", str(run_dir), str(tmp_path / "full")])
    assert (tmp_path / "full" / "x").read_text() == "keep me"
    assert "--shard-size" in one_line_error(
        capsys, ["export", str(run_dir), str(tmp_path / "o"), "--shard-size", "lots"]
    )
    assert "--shard-size" in one_line_error(capsys, ["export", str(run_dir), str(tmp_path / "o"), "--shard-size", "0"])


def test_non_lm_run_refused(npz16, tmp_path, capsys):
    from genlab.config import resolve
    from genlab.train.trainer import train

    sets = [f"data.path={npz16}", "model.d_model=24", "train.batch_rows=20", "train.steps=2", "train.ckpt_every=2"]
    run, _ = train(resolve("made-digits", None, sets), tmp_path / "r", progress=False, log=lambda *a: None)
    assert "language-model runs" in one_line_error(capsys, ["export", str(run.path), str(tmp_path / "hf")])
