"""Self-supervised objectives for sequence models (issue 5, deliverable 4): masked-token and any-order
training over packed streams, the losses counted only where defined, and infilling."""

import itertools
import math
import subprocess
import sys

import pytest
import torch

from genlab.config import resolve
from genlab.data.packing import IGNORE, Batch
from genlab.errors import GenlabError
from genlab.families.lm.args import LMArgs
from genlab.families.lm.objectives import apply_objective
from genlab.families.lm.task import LMTask
from genlab.families.lm.transformer import Transformer
from genlab.generate import SamplingSettings, infill, parse_infill
from genlab.ops.loss import head_cross_entropy, weighted_cross_entropy
from genlab.train.trainer import train

BOS = 0


def _batch(lengths, vocab=50, seed=0, bos=True):
    """A packed batch of sequences of the given lengths, each starting with BOS (id 0)."""
    g = torch.Generator().manual_seed(seed)
    ids, pos = [], []
    for n in lengths:
        x = torch.randint(1, vocab, (n,), generator=g)
        if bos:
            x[0] = BOS
        ids.append(x)
        pos.append(torch.arange(n))
    cu = torch.tensor([0, *itertools.accumulate(lengths)], dtype=torch.int32)
    ids = torch.cat(ids)
    return Batch(ids, torch.full_like(ids, IGNORE), torch.cat(pos), cu, max(lengths), len(ids), len(ids), 1)


def _seq_slices(lengths):
    start = 0
    for n in lengths:
        yield slice(start, start + n)
        start += n


# ----------------------------------------------------------------------------- masked (BERT)
def test_masked_chooses_15_percent_per_sequence_never_bos_and_targets_only_there():
    lengths = [40, 1, 7, 100, 2]
    b = _batch(lengths)
    m = apply_objective(b, "masked", mask_id=50, vocab_size=50, g=torch.Generator().manual_seed(3), bos_id=BOS)
    chosen = m.targets != IGNORE
    for sl, n in zip(_seq_slices(lengths), lengths):
        pred = n - 1  # all but BOS
        want = max(1, round(0.15 * pred)) if pred else 0
        assert int(chosen[sl].sum()) == want
        assert not chosen[sl][0]  # BOS is always seen
    assert torch.equal(m.targets[chosen], b.input_ids[chosen])  # the target is the original token
    assert torch.equal(m.input_ids[~chosen], b.input_ids[~chosen])  # nothing else is touched
    assert m.n_targets == int(chosen.sum()) and m.weights is None


def test_masked_replacement_is_80_10_10():
    b = _batch([2001] * 20, vocab=1000, bos=False)  # 40020 tokens, 6003 chosen
    m = apply_objective(b, "masked", mask_id=1000, vocab_size=1000, g=torch.Generator().manual_seed(0))
    chosen = m.targets != IGNORE
    n = int(chosen.sum())
    inp, orig = m.input_ids[chosen], b.input_ids[chosen]
    frac_mask = float((inp == 1000).float().mean())
    frac_same = float((inp == orig).float().mean())  # 10% kept + 1/1000 of the random 10%
    frac_rand = 1 - frac_mask - frac_same
    sd = math.sqrt(0.1 * 0.9 / n)
    assert abs(frac_mask - 0.8) < 5 * math.sqrt(0.8 * 0.2 / n)
    assert abs(frac_same - 0.1) < 5 * sd + 0.001
    assert abs(frac_rand - 0.1) < 5 * sd + 0.001
    assert abs(n - 0.15 * 40020) <= 20


# ----------------------------------------------------------------------------- any-order
def test_any_order_masks_k_uniform_tokens_with_weights_n_over_k():
    lengths = [9, 5, 1, 30]
    b = _batch(lengths)
    counts = torch.zeros(9, dtype=torch.long)  # k of the first sequence (8 predictable) over many draws
    for s in range(2000):
        m = apply_objective(b, "any-order", mask_id=50, vocab_size=50, g=torch.Generator().manual_seed(s), bos_id=BOS)
        chosen = m.targets != IGNORE
        assert torch.equal(m.input_ids[chosen], torch.full((int(chosen.sum()),), 50))
        assert torch.equal(m.input_ids[~chosen], b.input_ids[~chosen])
        assert m.n_targets == sum(n - 1 for n in lengths)  # normalised per sequence token, not per masked one
        for sl, n in zip(_seq_slices(lengths), lengths):
            k = int(chosen[sl].sum())
            assert not chosen[sl][0]
            if n == 1:
                assert k == 0
                continue
            assert 1 <= k <= n - 1
            assert torch.allclose(m.weights[sl][chosen[sl]], torch.tensor((n - 1) / k))
            assert (m.weights[sl][~chosen[sl]] == 0).all()
        counts[int(chosen[:9].sum())] += 1
    # k uniform on 1..8: chi-square with 7 degrees of freedom, p = 0.001 critical value 24.3
    expected = 2000 / 8
    chi2 = float(((counts[1:].double() - expected) ** 2 / expected).sum())
    assert counts[0] == 0 and chi2 < 24.3


def _tiny_bidirectional(vocab=7, seed=0):
    torch.manual_seed(seed)
    cfg = LMArgs(d_model=16, n_layer=2, n_head=2, ffn_hidden=32, attn_backend="naive")
    return Transformer(cfg, vocab, 16, causal=False).eval()


def _masked_ce(model, x, hide, mask_id):
    """CE at each position in `hide` with those positions replaced by the mask token."""
    inp = x.clone()
    inp[list(hide)] = mask_id
    n = len(x)
    h = model(inp, torch.arange(n), torch.tensor([0, n], dtype=torch.int32), n)
    logp = torch.log_softmax(model.head(h).double(), -1)
    return {i: -float(logp[i, x[i]]) for i in hide}


@torch.no_grad()
def test_any_order_estimator_is_exactly_the_nll_averaged_over_orderings():
    """E over (k, subset) of n/k * sum of masked CE == mean over all n! orderings of -log p_sigma(x),
    both computed exhaustively for n = 4 with a real bidirectional Transformer."""
    model, mask_id = _tiny_bidirectional(), 6
    x = torch.tensor([3, 1, 4, 1])
    n = len(x)
    by_order = []
    for sigma in itertools.permutations(range(n)):
        nll = sum(_masked_ce(model, x, sigma[t:], mask_id)[sigma[t]] for t in range(n))
        by_order.append(nll)
    exact = sum(by_order) / len(by_order)
    est = 0.0
    for k in range(1, n + 1):
        subsets = list(itertools.combinations(range(n), k))
        for S in subsets:
            est += (1 / n) * (1 / len(subsets)) * (n / k) * sum(_masked_ce(model, x, S, mask_id).values())
    assert est == pytest.approx(exact, rel=1e-9)
    # and the stochastic version through apply_objective converges to it
    b = Batch(
        x.clone(), torch.full_like(x, IGNORE), torch.arange(n), torch.tensor([0, n], dtype=torch.int32), n, n, n, 1
    )
    vals = []
    for s in range(1000):
        m = apply_objective(b, "any-order", mask_id, 6, torch.Generator().manual_seed(s))
        h = model(m.input_ids, m.position_ids, m.cu_seqlens, n)
        vals.append(float(weighted_cross_entropy(model.head(h), m.targets, m.weights)))
    mean, se = sum(vals) / len(vals), torch.tensor(vals).std().item() / math.sqrt(len(vals))
    assert abs(mean - exact) < 4 * se


# ----------------------------------------------------------------------------- losses where defined
@pytest.mark.parametrize("objective", ["masked", "any-order"])
def test_loss_is_counted_only_where_defined(objective):
    lengths = [12, 20, 5]
    b = apply_objective(_batch(lengths, vocab=30), objective, 30, 30, torch.Generator().manual_seed(1), bos_id=BOS)
    model = _tiny_bidirectional(vocab=31).train()
    h = model(b.input_ids, b.position_ids, b.cu_seqlens, b.max_seqlen)
    logits = model.head(h).detach().requires_grad_(True)
    loss = weighted_cross_entropy(logits, b.targets, b.weights)
    loss.backward()
    defined = b.targets != IGNORE
    assert (logits.grad[~defined] == 0).all() and (logits.grad[defined].abs().sum(-1) > 0).all()
    # the reference: a per-token loop
    ref = 0.0
    for i in range(len(b.targets)):
        if defined[i]:
            w = 1.0 if b.weights is None else float(b.weights[i])
            ref += w * -float(torch.log_softmax(logits[i].detach(), -1)[b.targets[i]])
    assert float(loss.detach()) == pytest.approx(ref, rel=1e-5)
    # the chunked head + CE used for training agrees in value and gradients
    h2 = h.detach().requires_grad_(True)
    w2 = model.head.weight.detach().clone().requires_grad_(True)
    chunked = head_cross_entropy(h2, w2, b.targets, chunk=7, tok_weights=b.weights)
    chunked.backward()
    h3 = h.detach().requires_grad_(True)
    w3 = model.head.weight.detach().clone().requires_grad_(True)
    plain = weighted_cross_entropy(h3 @ w3.t(), b.targets, b.weights)
    plain.backward()
    assert float(chunked.detach()) == pytest.approx(float(plain.detach()), rel=1e-5)
    assert torch.allclose(h2.grad, h3.grad, atol=1e-6) and torch.allclose(w2.grad, w3.grad, atol=1e-6)


def test_bidirectional_attention_sees_the_whole_sequence_and_nothing_across_documents():
    model = _tiny_bidirectional(vocab=20)
    lengths = [6, 5]
    b = _batch(lengths, vocab=20)
    emb = model.embed(b.input_ids).detach().requires_grad_(True)
    x = emb
    cos, sin = model.rope_cos[b.position_ids], model.rope_sin[b.position_ids]
    for block in model.blocks:
        x = block(x, cos, sin, b.cu_seqlens, b.max_seqlen)
    x[1].sum().backward()  # output at position 1 of the first document
    g = emb.grad.abs().sum(-1)
    assert (g[:6] > 0).all()  # every token of its document, later ones included
    assert (g[6:] == 0).all()  # none of the other document


# ----------------------------------------------------------------------------- infilling
class _Tok:
    bos_id = None

    def encode(self, s):
        return [ord(c) - 96 for c in s]  # "a" -> 1

    def decode(self, ids):
        return "".join(chr(i + 96) for i in ids)


def test_parse_infill_spans_and_errors():
    ids, n = parse_infill("ab<mask>c<mask:2>", _Tok(), 99, span=3)
    assert ids == [1, 2, 99, 99, 99, 3, 99, 99] and n == 2
    with pytest.raises(GenlabError, match="no <mask> span"):
        parse_infill("abc", _Tok(), 99, 3)
    with pytest.raises(GenlabError, match="1 to 4096"):
        parse_infill("a<mask:0>", _Tok(), 99, 3)


@pytest.mark.parametrize("order", ["left-to-right", "random", "confident"])
def test_infill_fills_every_hole_and_keeps_the_rest(order):
    model, mask_id = _tiny_bidirectional(vocab=7), 6
    ids = [1, 6, 6, 2, 6, 3]
    out = infill(model, ids, mask_id, SamplingSettings(temperature=1.0, seed=4), order=order)
    assert len(out) == len(ids) and mask_id not in out
    assert [o for o, i in zip(out, ids) if i != mask_id] == [1, 2, 3]


@torch.no_grad()
def test_infill_greedy_left_to_right_matches_a_step_by_step_reference():
    model, mask_id = _tiny_bidirectional(vocab=7, seed=2), 6
    ids = [1, 6, 6, 2, 6]
    out = infill(model, ids, mask_id, SamplingSettings(temperature=0))
    x = torch.tensor(ids)
    for i in (1, 2, 4):
        logits = model.head(model(x, torch.arange(5), torch.tensor([0, 5], dtype=torch.int32), 5))[i]
        logits[mask_id] = float("-inf")
        x[i] = int(logits.argmax())
    assert out == x.tolist()


@torch.no_grad()
def test_infill_samples_the_model_conditionals_chi_square():
    """Two holes filled left to right: the pair frequencies follow p(a | ctx) p(b | ctx, a)."""
    model, mask_id = _tiny_bidirectional(vocab=4, seed=5), 3
    ids = [0, 3, 3, 1]
    cu = torch.tensor([0, 4], dtype=torch.int32)
    p = torch.zeros(3, 3, dtype=torch.float64)
    pa = torch.softmax(model.head(model(torch.tensor(ids), torch.arange(4), cu, 4))[1, :3].double(), -1)
    for a in range(3):
        x = torch.tensor([0, a, 3, 1])
        pb = torch.softmax(model.head(model(x, torch.arange(4), cu, 4))[2, :3].double(), -1)
        p[a] = pa[a] * pb
    N = 1200
    counts = torch.zeros(3, 3, dtype=torch.float64)
    for s in range(N):
        out = infill(model, ids, mask_id, SamplingSettings(temperature=1.0, seed=s))
        counts[out[1], out[2]] += 1
    expected = N * p
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 26.1  # 8 degrees of freedom, p = 0.001


# ----------------------------------------------------------------------------- trainer and CLI
def test_any_order_run_trains_and_its_val_loss_is_a_per_token_nll(tiny_overrides, tiny_corpus, tmp_path):
    cfg = resolve(None, None, tiny_overrides(tiny_corpus, steps=6, extra=["train.objective=any-order"]))
    run, last = train(cfg, tmp_path / "ao", progress=False, log=lambda *a: None)
    # an untrained model over 256 bytes + <mask> starts near log(257) per token
    assert 0 < last["val_loss"] < math.log(257) + 0.5
    task = LMTask(cfg)
    task.prepare(run.path, fresh=False)
    assert task.build_model().vocab_size == 257 and task.mask_id == 256


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "genlab", *map(str, args)], capture_output=True, text=True)


@pytest.mark.slow
def test_cli_infill_and_its_errors(tiny_overrides, tiny_corpus, tmp_path):
    sets = [x for o in tiny_overrides(tiny_corpus, steps=3) for x in ("--set", o)]
    r = _cli("train", "--no-progress", "--out", tmp_path / "m", *sets, "--set", "train.objective=masked")
    assert r.returncode == 0, r.stderr
    r = _cli("sample", tmp_path / "m", "--infill", "the quick <mask:5> fox", "--seed", "1")
    assert r.returncode == 0, r.stderr
    text = r.stdout.rstrip("\n")
    assert text.startswith("the quick ") and text.endswith(" fox")
    assert "filled 5 tokens in 1 span(s)" in r.stderr
    r = _cli("sample", tmp_path / "m", "--infill", "no holes here")
    assert r.returncode != 0 and "no <mask> span" in r.stderr and "Traceback" not in r.stderr
    r = _cli("train", "--no-progress", "--out", tmp_path / "c", *sets)
    assert r.returncode == 0, r.stderr
    r = _cli("sample", tmp_path / "c", "--infill", "a <mask> b")
    assert r.returncode != 0 and "train.objective = masked or any-order" in r.stderr
    assert "Traceback" not in r.stderr
    r = _cli(
        "train",
        "--no-progress",
        "--out",
        tmp_path / "bad",
        *sets,
        "--set",
        "train.objective=any-order",
        "--set",
        "model.arch=lstm",
    )
    assert r.returncode != 0 and "needs model.arch = 'transformer'" in r.stderr
    assert not (tmp_path / "bad").exists()
    r = _cli("train", "--no-progress", "--out", tmp_path / "bad", *sets, "--set", "train.objective=left-to-right")
    assert r.returncode != 0 and "causal, masked, any-order" in r.stderr
