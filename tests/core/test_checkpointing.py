"""Activation checkpointing policies: gradients equal `none`, RNG and MoE load counting survive recompute."""

import copy
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn

from genlab.config import RunConfig, apply_overrides
from genlab.config import preset as preset_config
from genlab.errors import GenlabError
from genlab.families import build_lm
from genlab.ops import recompute
from genlab.train.activation_checkpoint import apply_activation_checkpointing, parse_policy

POLICIES = ["full", "every:2", "selective"]

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: tiny shapes, 1 thread


def _lm(name, extra=()):
    cfg = preset_config(name)
    cfg = apply_overrides(cfg, ["model.n_layer=3", "data.vocab_size=300", *extra]).validate()
    torch.manual_seed(0)
    return build_lm(cfg.model, 300, 64)


def _batch():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 300, (48,), generator=g)
    pos = torch.cat([torch.arange(30), torch.arange(18)])
    return ids, pos, torch.tensor([0, 30, 48], dtype=torch.int32), 30


def _grads(model, policy):
    m = copy.deepcopy(model).train()
    apply_activation_checkpointing(m, policy)
    ids, pos, cu, mx = _batch()
    h = m(ids, pos, cu, mx)
    loss = torch.nn.functional.cross_entropy(m.head(h), ids.roll(-1))
    if hasattr(m, "aux_loss"):  # MoE balance loss and the MTP loss (through MTP blocks outside m.blocks)
        rows = torch.tensor([0, len(ids)])  # one packed row: the sequence-wise balance loss's segment
        batch = SimpleNamespace(
            input_ids=ids, targets=ids.roll(-1), cu_seqlens=cu, position_ids=pos, max_seqlen=mx, row_cu=rows
        )
        extra = m.aux_loss(batch, h)
        loss = loss + (extra if extra is not None else 0)
    loss.backward()
    return m, {n: p.grad for n, p in m.named_parameters() if p.grad is not None}


@pytest.mark.parametrize(
    "preset,extra",
    [("lm-tiny", ()), ("deepseek-tiny", ("model.n_layer=2", "model.balance=seq_aux", "model.balance_alpha=0.01"))],
)
def test_every_policy_gives_the_gradients_of_none(preset, extra):
    model = _lm(preset, extra)
    ref_model, ref = _grads(model, "none")
    for policy in POLICIES:
        m, got = _grads(model, policy)
        assert got.keys() == ref.keys(), policy
        for n in ref:
            assert (got[n] - ref[n]).abs().max() <= 1e-6, (policy, n)
        if hasattr(m, "moe_layers"):  # counted once per real forward, not again in the recompute
            for (_, a), (_, b) in zip(m.moe_layers(), ref_model.moe_layers()):
                assert torch.equal(a.load, b.load) and a.load.sum() > 0, policy


class _DropBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(16, 16)

    def forward(self, x):
        return x + torch.nn.functional.dropout(torch.tanh(self.lin(x)), 0.5, training=self.training)


class _DropNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList(_DropBlock() for _ in range(4))

    def forward(self, x):
        for b in self.blocks:
            x = b(x)
        return x


def test_dropout_masks_are_the_same_under_recompute():
    torch.manual_seed(0)
    net = _DropNet()
    x = torch.randn(8, 16)

    def grads(policy):
        m = copy.deepcopy(net).train()
        apply_activation_checkpointing(m, policy)
        torch.manual_seed(123)
        m(x).square().sum().backward()
        return [p.grad for p in m.parameters()]

    ref = grads("none")
    for policy in POLICIES:
        for a, b in zip(grads(policy), ref):
            assert (a - b).abs().max() <= 1e-6, policy


def test_full_policy_keeps_far_fewer_tensors_for_backward():
    """Tensors saved outside the checkpointed regions (what the graph holds): full << none."""
    model = _lm("lm-tiny").train()

    def saved_bytes(policy):
        m = copy.deepcopy(model)
        apply_activation_checkpointing(m, policy)
        total = [0]

        def pack(t):
            total[0] += t.numel() * t.element_size()
            return t

        ids, pos, cu, mx = _batch()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            m(ids, pos, cu, mx).sum()
        return total[0]

    none, full = saved_bytes("none"), saved_bytes("full")
    assert full < 0.25 * none


@pytest.mark.parametrize("preset", ["lm-tiny", "deepseek-tiny"])
def test_selective_keeps_projections_and_rebuilds_norms_activations_rope_router(preset, monkeypatch):
    """What selective stores for backward: no RMSNorm output, no SwiGLU activation, no RoPE'd or
    assembled q/k/v, no router affinities (they come back as recipes), and far less than `none`;
    every recipe is rebuilt exactly once per use in backward."""
    model = _lm(preset, ("model.n_layer=2",) if preset == "deepseek-tiny" else ())
    ids, pos, cu, mx = _batch()

    def stored(policy):
        m = copy.deepcopy(model).train()
        apply_activation_checkpointing(m, policy)
        norm_outs, kept, recipes = [], {}, []  # norm outputs held, so no address is reused meanwhile
        for mod in m.modules():
            if type(mod).__name__ == "RMSNorm":
                mod.register_forward_hook(lambda _m, _i, o: norm_outs.append(o))
        plain_pack = recompute._pack
        weights = {p.untyped_storage().data_ptr() for p in m.parameters()}

        def pack(t):
            r = plain_pack(t)
            if isinstance(r, recompute._Recipe):
                recipes.append(r)
            elif r.untyped_storage().data_ptr() not in weights:
                kept[r.untyped_storage().data_ptr()] = r.untyped_storage().nbytes()
            return r

        monkeypatch.setattr(recompute, "_pack", pack)
        hooks = torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t) if policy == "none" else None
        if hooks:
            hooks.__enter__()
        h = m(ids, pos, cu, mx)
        if hooks:
            hooks.__exit__(None, None, None)
        monkeypatch.setattr(recompute, "_pack", plain_pack)
        return h, {o.untyped_storage().data_ptr() for o in norm_outs}, kept, recipes

    _, _, kept_none, _ = stored("none")
    h, norm_outs, kept, recipes = stored("selective")
    assert recipes and not (norm_outs & kept.keys())  # no norm output stored as a tensor
    names = {getattr(r.entry.fn, "__name__", str(r.entry.fn)) for r in recipes}
    want = {"apply"} | ({"rope_qkv"} if preset == "lm-tiny" else {"_queries", "_keys_values", "_affinities"})
    assert want <= names, names
    inner_total = sum(kept.values())
    assert inner_total < 0.75 * sum(kept_none.values()), (inner_total, sum(kept_none.values()))
    h.sum().backward()
    left = [
        (r.entry.fn, r.entry.pending, r.entry.cache is None)
        for r in recipes
        if r.entry.pending or r.entry.cache is not None
    ]
    assert not left, left  # all used, nothing held


def test_selective_refuses_an_input_changed_in_place():
    from genlab.ops.recompute import SelectiveScope, cheap

    w = torch.randn(4, 4, requires_grad=True)
    x = torch.randn(3, 4)
    with SelectiveScope():
        y = cheap(torch.tanh, x)  # tanh's output is saved by tanh's own backward and by the matmul
        z = (y @ w).sum()
    x.add_(1.0)  # the recipe's input changed after the forward
    with pytest.raises(RuntimeError, match="modified in place"):
        z.backward()
    x2 = torch.randn(3, 4, requires_grad=True)
    with SelectiveScope():
        y2 = cheap(torch.tanh, x2)
        (y2 @ w).sum().backward()
    ref = torch.autograd.grad((torch.tanh(x2) @ w).sum(), x2)[0]
    torch.testing.assert_close(x2.grad, ref, rtol=0, atol=0)


def test_policy_parsing_and_errors():
    assert parse_policy("every:4") == ("every", 4)
    assert parse_policy("full") == ("full", 1)
    for bad in ["every:0", "every:", "every:x", "sometimes", ""]:
        with pytest.raises(GenlabError, match="none, full, every:K"):
            parse_policy(bad)
    with pytest.raises(GenlabError, match="activation checkpointing policy"):
        apply_overrides(RunConfig(), ["train.activation_checkpointing=half"]).validate()
    rnn = _lm("lstm-tiny")
    with pytest.raises(GenlabError, match="model.blocks"):
        apply_activation_checkpointing(rnn, "full")
    assert apply_activation_checkpointing(rnn, "none") == []
    m = _lm("lm-tiny")
    assert apply_activation_checkpointing(m, "every:2") == [0, 2]
    with pytest.raises(GenlabError, match="already"):
        apply_activation_checkpointing(m, "full")


def test_eval_and_state_dict_unchanged():
    m = _lm("lm-tiny")
    keys = list(m.state_dict())
    ids, pos, cu, mx = _batch()
    with torch.no_grad():
        before = m.eval()(ids, pos, cu, mx)
    apply_activation_checkpointing(m, "full")
    assert list(m.state_dict()) == keys
    with torch.no_grad():
        torch.testing.assert_close(m(ids, pos, cu, mx), before)


def test_trainer_applies_policy_precision_and_flash_backend(tiny_corpus, tiny_overrides, tmp_path):
    """Through the trainer: fp8 + selective checkpointing + the flash backend are applied and train."""
    from genlab.config import resolve
    from genlab.ops.fp8 import FP8Linear
    from genlab.train.trainer import prepare_training

    cfg = resolve(
        None,
        None,
        tiny_overrides(
            tiny_corpus,
            steps=2,
            extra=["train.activation_checkpointing=selective", "train.precision=fp8", "model.attn_backend=flash"],
        ),
    )
    run, trainer = prepare_training(cfg, tmp_path / "run", progress=False, log=lambda *a: None)
    m = trainer.model
    assert all(hasattr(b, "_genlab_plain_forward") for b in m.blocks)
    assert isinstance(m.blocks[0].attn.qkv, FP8Linear) and type(m.head) is torch.nn.Linear
    assert m.blocks[0].attn.backend == "flash"
    last = trainer.fit()
    assert math.isfinite(last["loss"]) and m.blocks[0]._genlab_policy == "selective"


def test_selective_rebuilds_under_the_forward_autocast_state():
    """Backward runs outside the forward's autocast (as in the trainer); a cheap result computed under
    autocast must be rebuilt with the same dtype and values. (Autocast to bf16 on CPU: tiny shapes.)"""
    from genlab.ops.recompute import SelectiveScope, cheap

    g = torch.Generator().manual_seed(0)
    w1, w2 = (torch.randn(8, 8, generator=g).requires_grad_() for _ in range(2))
    x = torch.randn(4, 8, generator=g)

    def run(scope):
        w1.grad = w2.grad = None
        with torch.autocast("cpu", dtype=torch.bfloat16), scope:
            h = cheap(torch.nn.functional.linear, x, w1)  # bf16 under autocast
            y = torch.nn.functional.linear(h, w2)  # saves h: a recipe under the scope
        y.float().square().sum().backward()
        return w1.grad.clone(), w2.grad.clone()

    import contextlib

    ref = run(contextlib.nullcontext())
    got = run(SelectiveScope())
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_selective_keeps_no_norm_output_alive_after_the_forward():
    """Under selective, with the graph still alive for backward, no RMSNorm output inside a block is
    held by anything (recipes hold their packed inputs only; the registry lets go at block end).
    The first recipe version kept the latent norms' outputs alive through the registry's raw args."""
    import gc
    import weakref

    m = _lm("deepseek-tiny", ("model.n_layer=2",)).train()
    apply_activation_checkpointing(m, "selective")
    refs = []
    for blk in m.checkpoint_blocks():
        for mod in blk.modules():
            if type(mod).__name__ == "RMSNorm":
                mod.register_forward_hook(lambda _m, _i, o: refs.append(weakref.ref(o)))
    ids, pos, cu, mx = _batch()
    h = m(ids, pos, cu, mx)
    loss = torch.nn.functional.cross_entropy(m.head(h), ids.roll(-1))
    gc.collect()
    assert refs and not [r for r in refs if r() is not None]
    loss.backward()  # and the graph still works
