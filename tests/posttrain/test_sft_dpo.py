"""Post-training: --init-from, task = sft (chat template, assistant-only loss), task = dpo (DPO / IPO)."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch

from genlab.config import resolve
from genlab.data.chat import DEFAULT_TEMPLATE, ChatTemplate, add_chat_tokens
from genlab.data.packing import IGNORE
from genlab.data.tokenizer import EOT, BPETokenizer, load_tokenizer
from genlab.families.posttrain.dpo import dpo_loss
from genlab.train import checkpoint
from genlab.train.trainer import prepare_training, train

pytestmark = pytest.mark.usefixtures("one_thread")

CONVS = [
    [
        {"role": "system", "content": "You answer briefly."},
        {"role": "user", "content": "What does lorem mean?"},
        {"role": "assistant", "content": "It is filler text."},
        {"role": "user", "content": "And ipsum?"},
        {"role": "assistant", "content": "More filler, dolor sit amet."},
    ],
    [{"role": "user", "content": "Say amet."}, {"role": "assistant", "content": "amet"}],
]


def quiet(*a, **k):
    pass


@pytest.fixture(scope="module")
def base(tmp_path_factory, tiny_overrides):
    """A tiny BPE language model run (2 steps) and its corpus."""
    d = tmp_path_factory.mktemp("posttrain")
    corpus = d / "corpus.txt"
    words = "lorem ipsum dolor sit amet filler text what does mean answer briefly more say".split()
    rng = np.random.default_rng(0)
    corpus.write_text("\n\n".join(" ".join(rng.choice(words, 30)) for _ in range(60)), encoding="utf-8")
    extra = ["data.tokenizer=bpe", "data.vocab_size=300", "train.eval_every=2", "train.ckpt_every=2"]
    run, _ = train(resolve(None, None, tiny_overrides(corpus, 2, extra)), d / "base", progress=False, log=quiet)
    return run.path


def conv_file(path, convs, repeat=6):
    path.write_text("".join(json.dumps({"messages": c}) + "\n" for c in convs * repeat), encoding="utf-8")
    return path


def sft_overrides(base, data, steps=4, extra=()):
    return [
        f"train.init_from={base}",
        f"data.path={data}",
        "data.packing_length=128",
        "data.val_fraction=0",
        f"train.steps={steps}",
        "train.batch_rows=2",
        "train.log_every=1",
        "train.eval_every=2",
        "train.ckpt_every=2",
        "train.warmup_steps=1",
        *extra,
    ]


def sft_cfg(base, data, steps=4, extra=(), preset="sft-small"):
    from genlab.train.init_from import resolve_config

    return resolve_config(preset, None, sft_overrides(base, data, steps, extra))


def test_template_matches_transformers_and_mask_is_token_exact():
    from transformers import PreTrainedTokenizerFast

    tok = BPETokenizer.train([" ".join(m["content"] for m in c) for c in CONVS] * 20, 300)
    t = ChatTemplate(DEFAULT_TEMPLATE, bos_token=EOT, eos_token=EOT)
    assert add_chat_tokens(tok, t) == ["<|system|>", "<|end|>", "<|user|>", "<|assistant|>"]
    hf = PreTrainedTokenizerFast(tokenizer_object=tok.tok, bos_token=EOT, eos_token=EOT)
    end = tok.tok.token_to_id("<|end|>")
    for conv in CONVS:
        assert t.render(conv) == hf.apply_chat_template(conv, tokenize=False, chat_template=DEFAULT_TEMPLATE)
        assert t.render(conv[:-1], True) == hf.apply_chat_template(
            conv[:-1], tokenize=False, add_generation_prompt=True, chat_template=DEFAULT_TEMPLATE
        )
        ids, mask = t.encode_with_mask(tok, conv)
        out = hf.apply_chat_template(
            conv, chat_template=DEFAULT_TEMPLATE, return_assistant_tokens_mask=True, return_dict=True
        )
        assert ids == out["input_ids"] and mask.astype(int).tolist() == out["assistant_masks"]
        # by hand: the masked tokens are each answer's tokens and its <|end|>, nothing else
        want = [i for m in conv if m["role"] == "assistant" for i in tok.encode(m["content"]) + [end]]
        assert [i for i, k in zip(ids, mask) if k] == want
        assert ids[0] == tok.bos_id and sum(i == end for i in ids) == len(conv)


def test_sft_batches_have_targets_on_answers_only(base, tmp_path):
    cfg = sft_cfg(base, conv_file(tmp_path / "c.jsonl", CONVS, repeat=1))
    run, trainer = prepare_training(cfg, tmp_path / "run", progress=False, log=quiet)
    task = trainer.task
    batch, _ = task.next_batch(task.initial_state())
    end = task.tokenizer.tok.token_to_id("<|end|>")
    want = sorted(
        i for c in CONVS for m in c if m["role"] == "assistant" for i in task.tokenizer.encode(m["content"]) + [end]
    )
    assert sorted(batch.targets[batch.targets != IGNORE].tolist()) == want
    assert batch.n_targets == len(want) and len(batch.cu_seqlens) == 3  # two conversations, packed apart
    assert (run.path / "chat_template.jinja").read_text() == DEFAULT_TEMPLATE
    assert task.tokenizer.vocab_size == trainer.model.head.weight.shape[0]
    run.release()


@pytest.mark.slow
def test_sft_and_dpo_runs_resume_bitwise(base, tmp_path, capsys):
    from transformers import AutoTokenizer

    from genlab.data.chat import load_chat_template
    from genlab.interop.hf import export_hf

    data = conv_file(tmp_path / "c.jsonl", CONVS)
    full, last = train(sft_cfg(base, data, 4), tmp_path / "sft", progress=False, log=quiet)
    recs = [json.loads(x) for x in (full.path / "metrics.jsonl").read_text().splitlines()]
    assert recs[-1]["epoch"] > 0 and "val_loss" not in last  # val_fraction 0: no held-out split
    _cut_and_resume(full.path, tmp_path / "sft-part", 2)
    # the Hugging Face export renders and tokenizes conversations as genlab does
    export_hf(full.path, tmp_path / "hf")
    hf = AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    ours = load_chat_template(full.path, bos_token=EOT)
    tok = load_tokenizer(full.path / "tokenizer.json")
    for conv in CONVS:
        assert hf.apply_chat_template(conv, return_dict=True)["input_ids"] == ours.encode(tok, conv, False)
    capsys.readouterr()
    pairs = tmp_path / "p.jsonl"
    rows = [
        {"prompt": "Say amet.", "chosen": "amet", "rejected": "lorem lorem"},
        {"prompt": [{"role": "user", "content": "What does lorem mean?"}], "chosen": "filler", "rejected": "amet"},
        {"prompt": "Same?", "chosen": "yes", "rejected": "yes"},  # identical: counted, skipped
    ]
    pairs.write_text("".join(json.dumps(r) + "\n" for r in rows * 4), encoding="utf-8")
    cfg = sft_cfg(full.path, pairs, 4, ["train.lr=1e-3", "train.sft_weight=0"], preset="dpo-small")
    dpo, _ = train(cfg, tmp_path / "dpo", progress=False, log=quiet)
    assert "12 pairs (8 train, 0 held out), 4 with identical chosen and rejected skipped" in capsys.readouterr().out
    recs = [json.loads(x) for x in (dpo.path / "metrics.jsonl").read_text().splitlines()]
    assert abs(recs[0]["loss"] - math.log(2)) < 1e-4  # the policy starts at the reference: h = 0
    assert {"reward_acc", "reward_margin", "reward_chosen", "reward_rejected"} <= set(recs[0])
    _cut_and_resume(dpo.path, tmp_path / "dpo-part", 2)


def _cut_and_resume(src, part, at):
    shutil.copytree(src, part)
    for c in checkpoint.list_checkpoints(part):
        if c.name != f"step_{at:08d}":
            shutil.rmtree(c)
    keep = [ln for ln in (part / "metrics.jsonl").read_text().splitlines() if json.loads(ln)["step"] <= at]
    (part / "metrics.jsonl").write_text("".join(ln + "\n" for ln in keep))
    train(None, part, resume=True, progress=False, log=quiet)
    losses = [(r["step"], r["loss"]) for r in map(json.loads, (part / "metrics.jsonl").read_text().splitlines())]
    want = [(r["step"], r["loss"]) for r in map(json.loads, (src / "metrics.jsonl").read_text().splitlines())]
    assert losses == want


def test_dpo_loss_is_the_papers_formula_and_its_gradients_point_the_right_way():
    g = torch.Generator().manual_seed(0)
    pc, pr, rc, rr = (torch.randn(6, generator=g, dtype=torch.float64) * 5 - 20 for _ in range(4))
    beta = 0.3
    losses, rw, rl = dpo_loss(pc, pr, rc, rr, beta)
    for i in range(6):  # -log sigmoid(beta * ((pc - rc) - (pr - rr))), written out
        h = (pc[i] - rc[i]).item() - (pr[i] - rr[i]).item()
        assert losses[i].item() == pytest.approx(math.log1p(math.exp(-beta * h)), rel=1e-12)
        assert rw[i].item() == pytest.approx(beta * (pc[i] - rc[i]).item())
    nc, nr = torch.full((6,), 4.0, dtype=torch.float64), torch.full((6,), 7.0, dtype=torch.float64)
    ipo, _, _ = dpo_loss(pc, pr, rc, rr, beta, "ipo", nc, nr)
    want = (((pc - rc) / 4 - (pr - rr) / 7) - 1 / (2 * beta)) ** 2
    assert torch.allclose(ipo, want)
    for kind in ("sigmoid", "ipo"):  # raising chosen / lowering rejected lowers the loss (h far below IPO's target)
        a, b = pc.clone().requires_grad_(), pr.clone().requires_grad_()
        dpo_loss(a, b, rc, rr - 100, beta, kind, nc, nr)[0].sum().backward()
        assert (a.grad < 0).all() and (b.grad > 0).all()


def test_init_from_hf_directory_has_the_hf_models_logits(base, tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from genlab.data.tokenizer import load_tokenizer
    from genlab.interop.hf import import_for_init
    from genlab.train.init_from import adopt_model

    tok = load_tokenizer(base / "tokenizer.json")
    hf_dir = tmp_path / "hf"
    PreTrainedTokenizerFast(tokenizer_object=tok.tok, bos_token=EOT, eos_token=EOT).save_pretrained(hf_dir)
    torch.manual_seed(0)
    hc = LlamaConfig(
        vocab_size=tok.vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=False,
        bos_token_id=tok.bos_id,
        eos_token_id=tok.bos_id,
    )
    hf = LlamaForCausalLM(hc).eval()
    hf.save_pretrained(hf_dir)
    import_for_init(hf_dir, log=quiet)
    corpus = tmp_path / "c.txt"
    corpus.write_text("lorem ipsum dolor\n\nsit amet filler\n", encoding="utf-8")
    cfg = resolve(None, None, [f"data.path={corpus}", f"train.init_from={hf_dir}", "train.steps=1"])
    cfg = adopt_model(cfg, str(hf_dir), {})
    run, trainer = prepare_training(cfg, tmp_path / "run", progress=False, log=quiet)
    ids = torch.tensor(tok.encode("lorem ipsum dolor sit amet"))
    model = trainer.model.eval()
    with torch.no_grad():
        h = model(ids, torch.arange(len(ids)), torch.tensor([0, len(ids)], dtype=torch.int32), len(ids))
        ours = model.head(h)
        theirs = hf(ids[None]).logits[0]
    assert torch.allclose(ours, theirs, atol=1e-4, rtol=0)
    run.release()


def one_line(capsys, argv) -> str:
    from genlab.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    return err


@pytest.mark.parametrize(
    "line, needle",
    [
        ("{not json", "c.jsonl:2: not valid JSON"),
        (json.dumps({"messages": [{"role": "robot", "content": "x"}]}), "unknown role 'robot'"),
        (json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": " "}]}), "empty"),
        (json.dumps({"text": "x"}), "c.jsonl:2: a conversation needs a 'messages' list"),
    ],
)
def test_bad_sft_data_is_one_line_and_leaves_no_run_dir(base, tmp_path, capsys, line, needle):
    p = tmp_path / "c.jsonl"
    p.write_text(json.dumps({"messages": CONVS[1]}) + "\n" + line + "\n", encoding="utf-8")
    out = tmp_path / "run"
    err = one_line(capsys, ["train", "--preset", "sft-small", "--init-from", str(base), "--set", f"data.path={p}"])
    assert needle in err
    err = one_line(
        capsys,
        ["train", "--preset", "sft-small", "--init-from", str(base), "--set", f"data.path={p}", "--out", str(out)],
    )
    assert not out.exists()


def test_bad_sources_and_templates(base, tmp_path, capsys, tiny_overrides):
    data = conv_file(tmp_path / "c.jsonl", CONVS, 1)
    sft = ["train", "--preset", "sft-small", "--set", f"data.path={data}", "--out", str(tmp_path / "r")]
    assert "neither a genlab run directory" in one_line(capsys, sft + ["--init-from", str(tmp_path)])
    assert "does not exist" in one_line(capsys, sft + ["--init-from", str(tmp_path / "nope")])
    assert "give --init-from RUN" in one_line(capsys, sft)
    assert "change the shape" in one_line(capsys, sft + ["--init-from", str(base), "--set", "model.d_model=64"])
    bad = tmp_path / "bad.jinja"
    bad.write_text("{% for m in messages %}{{ m.content | nosuchfilter }}{% endfor %}")
    err = one_line(capsys, sft + ["--init-from", str(base), "--set", f"data.chat_template={bad}"])
    assert "chat template does not parse" in err
    bad.write_text("{% generation %}{{ messages[0]['content'] ~ 1 // 0 }}{% endgeneration %}")
    assert "chat template failed to render" in one_line(
        capsys, sft + ["--init-from", str(base), "--set", f"data.chat_template={bad}"]
    )
    # a byte-level run has no room for the template's special tokens
    corpus = tmp_path / "t.txt"
    corpus.write_text("lorem ipsum\n\ndolor sit\n", encoding="utf-8")
    byte_run, _ = train(resolve(None, None, tiny_overrides(corpus, 1)), tmp_path / "byte", progress=False, log=quiet)
    assert "need a BPE tokenizer" in one_line(capsys, sft + ["--init-from", str(byte_run.path)])
    assert not (tmp_path / "r").exists()
    err = one_line(capsys, ["train", "--init-from", str(base), "--resume", "--out", str(base)])
    assert "use one" in err


@pytest.mark.slow
def test_sft_and_dpo_of_a_deepseek_run(tmp_path, tiny_overrides):
    """MLA + MoE + MTP: the sft and dpo tasks take the deepseek model section from the source run."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(f"lorem ipsum {i} dolor sit amet filler text" for i in range(40)), encoding="utf-8")
    extra = ["model.arch=deepseek", "model.mtp_depth=1", "data.tokenizer=bpe", "data.vocab_size=300"]
    base, _ = train(resolve(None, None, tiny_overrides(corpus, 2, extra)), tmp_path / "b", progress=False, log=quiet)
    cfg = sft_cfg(base.path, conv_file(tmp_path / "c.jsonl", CONVS), 2, ["model.balance_gamma=0.01"])
    assert cfg.family.name == "deepseek-sft" and cfg.model.mtp_depth == 1 and cfg.model.balance_gamma == 0.01
    sft, last = train(cfg, tmp_path / "sft", progress=False, log=quiet)
    assert math.isfinite(last["loss"])
    pairs = tmp_path / "p.jsonl"
    pairs.write_text(
        json.dumps({"prompt": "Say amet.", "chosen": "amet", "rejected": "lorem"}) + "\n", encoding="utf-8"
    )
    cfg = sft_cfg(sft.path, pairs, 2, ["train.sft_weight=0"], preset="dpo-small")
    assert cfg.family.name == "deepseek-dpo"
    _, last = train(cfg, tmp_path / "dpo", progress=False, log=quiet)
    assert abs(last["loss"] - math.log(2)) < 0.1
