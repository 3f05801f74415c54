"""Multi-token prediction: targets never cross packed documents, the loss formula, speculative
decoding == greedy, and the deepseek model trained by genlab's trainer (bias in the checkpoint)."""

import json

import pytest
import torch
import torch.nn.functional as F

from genlab.data.packing import IGNORE, Batch

from .helpers import build


def _batch(docs):
    ids = torch.cat(docs)
    tg = torch.cat([torch.cat([d[1:], torch.tensor([IGNORE])]) for d in docs])
    pos = torch.cat([torch.arange(len(d)) for d in docs])
    cu = torch.tensor([0, *torch.tensor([len(d) for d in docs]).cumsum(0).tolist()], dtype=torch.int32)
    return Batch(ids, tg, pos, cu, max(len(d) for d in docs), len(ids), len(ids), 1)


def test_mtp_losses_stay_inside_documents_and_match_per_document_reference():
    model = build(mtp_depth=2, seed=1)
    docs = [torch.randint(0, 50, (9,)), torch.randint(0, 50, (6,)), torch.randint(0, 50, (2,))]
    b = _batch(docs)
    packed = model.mtp_losses(b, model(b.input_ids, b.position_ids, b.cu_seqlens, b.max_seqlen))
    # reference: each document alone, explicit targets t_{i+k+1}, summed then divided by the count
    for k in (1, 2):
        tot, n = 0.0, 0
        for d in docs:
            one = _batch([d])
            h = model(one.input_ids, one.position_ids, one.cu_seqlens, one.max_seqlen)
            for kk in range(1, k + 1):
                m = model.mtp[kk - 1]
                T = len(d)
                emb_ids = torch.tensor([int(d[i + kk]) if i + kk < T else 0 for i in range(T)])
                cos, sin = model.rope(one.position_ids, T)
                h = m(h, model.embed(emb_ids), cos, sin, one.cu_seqlens, T)
            logits = model.head(model.mtp[k - 1].norm(h))
            for i in range(len(d) - k - 1):
                tot += float(F.cross_entropy(logits[i : i + 1], d[i + k + 1 : i + k + 2]).detach())
                n += 1
        assert abs(float(packed[k - 1].detach()) - tot / n) < 1e-4, (k, tot / n)


def test_aux_loss_adds_lambda_over_depth_times_mtp_losses():
    model = build(mtp_depth=2, mtp_lambda=0.5, balance="none", seed=2).train()
    b = _batch([torch.randint(0, 50, (10,)), torch.randint(0, 50, (7,))])
    h = model(b.input_ids, b.position_ids, b.cu_seqlens, b.max_seqlen)
    extra = model.aux_loss(b, h)
    torch.manual_seed(0)
    ref = sum(model.mtp_losses(b, h)) * 0.5 / 2
    assert abs(float(extra) - float(ref)) < 1e-5
    assert model.eval().aux_loss(b, h) is None  # evaluation: main head only


def test_speculative_decoding_equals_greedy():
    from genlab.generate import SamplingSettings, generate, speculative_greedy

    model = build(mtp_depth=1, seed=3)
    for prompt in ([1, 2, 3], [7]):
        ref = list(generate(model, prompt, SamplingSettings(16, temperature=0)))
        got, stats = speculative_greedy(model, prompt, 16)
        assert got == ref
        assert stats["drafted"] > 0 and 0 <= stats["acceptance"] <= 1
        assert stats["main_forwards"] < 17 or stats["accepted"] == 0


def test_speculative_decoding_accepts_when_mtp_copies_the_main_model():
    """A draft that is always right: MTP module 1 on a 'repeat forever' model. Acceptance must be 1."""
    from genlab.generate import speculative_greedy

    model = build(mtp_depth=1, seed=4)
    with torch.no_grad():  # all-zero logits from both heads: both always pick token 0
        for norm in (model.norm, model.mtp[0].norm):
            norm.weight.zero_()
    out, stats = speculative_greedy(model, [1, 2], 10)
    assert out == [0] * 10 and stats["acceptance"] == 1.0 and stats["main_forwards"] <= 6


def test_trainer_trains_deepseek_updates_bias_and_resumes(tiny_overrides, tiny_corpus, tmp_path):
    from genlab.config import resolve
    from genlab.train import checkpoint
    from genlab.train.trainer import train

    sets = tiny_overrides(
        tiny_corpus,
        steps=3,
        extra=[
            "model.arch=deepseek",
            "model.q_lora_rank=16",
            "model.kv_lora_rank=16",
            "model.qk_nope_head_dim=8",
            "model.qk_rope_head_dim=4",
            "model.v_head_dim=8",
            "model.ffn_hidden=64",
            "model.n_routed_experts=4",
            "model.num_experts_per_tok=2",
            "model.moe_intermediate_size=16",
            "model.mtp_depth=1",
            "model.balance_gamma=0.01",
            "train.grad_accum=2",
            "train.eval_every=3",
        ],
    )
    run, last = train(resolve(None, None, sets), tmp_path / "run", progress=False, log=lambda *a: None)
    recs = [json.loads(line) for line in (run.path / "metrics.jsonl").read_text().splitlines()]
    assert "maxvio/L1" in recs[-1] and "load/L1" in recs[-1] and "mtp_loss_1" in recs[-1]
    # loads summed over both micro-batches of a step: every target token routed to k experts
    assert sum(recs[0]["load/L1"]) == 2 * recs[0]["tokens"]  # tokens: real tokens of both micro-batches
    from safetensors.torch import load_file

    sd = load_file(str(checkpoint.latest_valid(run.path) / "model.safetensors"))
    bias = sd["blocks.1.mlp.bias"]
    assert bias.dtype == torch.float32 and bias.abs().sum() > 0  # the balance bias moved and is saved
    assert int(sd["steps_done"]) == 3


def test_gamma_and_lambda_schedules_follow_optimizer_steps():
    model = build(
        mtp_depth=1, mtp_lambda=0.3, mtp_lambda_late=0.1, mtp_lambda_until=2, balance_gamma=0.01, balance_gamma_until=1
    ).train()
    moe = model.blocks[1].mlp
    assert model.mtp_lambda() == 0.3
    moe.load.copy_(torch.arange(8.0))
    model.on_optimizer_step()  # step 0 -> 1: gamma 0.01 applies
    moved = moe.bias.clone()
    assert moved.abs().max() == 0.01
    moe.load.copy_(torch.arange(8.0))
    model.on_optimizer_step()  # from step 1 on gamma is 0: frozen
    assert torch.equal(moe.bias, moved) and model.mtp_lambda() == 0.1


def test_gamma_can_follow_the_learning_rate_schedule():
    for schedule, expected in (("constant", 0.01), ("lr", 0.0025)):
        model = build(balance_gamma=0.01, balance_gamma_schedule=schedule).train()
        moe = model.blocks[1].mlp
        moe.load.copy_(torch.arange(8.0))
        model.on_optimizer_step(lr_factor=0.25)  # the trainer passes lr / peak lr
        assert float(moe.bias.abs().max()) == pytest.approx(expected)


def test_a_skipped_step_leaves_the_balance_bias_but_resets_the_loads():
    """The trainer passes skipped=True when it discards a step's update (loss spike, NaN): the MoE
    bias is not moved by that step's loads either, the loads are still reported and cleared, and
    the step counts for the gamma / lambda schedules like any other."""
    model = build(balance_gamma=0.01).train()
    moe = model.blocks[1].mlp
    moe.load.copy_(torch.arange(8.0))
    out = model.on_optimizer_step(skipped=True)
    assert torch.equal(moe.bias, torch.zeros_like(moe.bias)) and float(moe.load.sum()) == 0
    assert out["load/L1"] == list(range(8)) and int(model.steps_done) == 1
    moe.load.copy_(torch.arange(8.0))
    model.on_optimizer_step()
    assert float(moe.bias.abs().max()) == pytest.approx(0.01)
