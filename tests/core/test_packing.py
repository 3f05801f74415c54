import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from genlab.data.packing import IGNORE, TokenDataset, best_fit_decreasing, chunk_spans, make_batch, pack_rows
from genlab.families.lm.args import LMArgs
from genlab.families.lm.task import LMTask
from genlab.families.lm.transformer import Transformer


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(1, 50), min_size=1, max_size=200), st.integers(50, 80))
def test_best_fit_decreasing_valid(lengths, cap):
    bins = best_fit_decreasing(lengths, cap)
    items = sorted(i for b in bins for i in b)
    assert items == list(range(len(lengths)))  # every item exactly once
    assert all(sum(lengths[i] for i in b) <= cap for b in bins)
    # any-fit property: a bin was opened only when its first item fitted nowhere, so no two bins
    # could be merged (hence fewer than 2 * ceil(total / cap) bins)
    loads = sorted(sum(lengths[i] for i in b) for b in bins)
    if len(loads) >= 2:
        assert loads[0] + loads[1] > cap


def _docs(seed=0, n=60, maxlen=300):
    g = np.random.default_rng(seed)
    return [g.integers(0, 100, size=int(g.integers(1, maxlen))).tolist() for _ in range(n)]


@pytest.mark.parametrize("mode", ["packed", "padded"])
def test_every_token_kept_exactly_once(mode):
    """Tokens are numbered globally (token value = its index in the corpus), so reassembly is exact."""
    g = np.random.default_rng(0)
    lengths = g.integers(1, 300, size=60)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    docs = [list(range(offsets[i], offsets[i + 1])) for i in range(len(lengths))]
    doc_of = np.repeat(np.arange(len(lengths)), lengths)
    L = 64
    ds = TokenDataset(docs, L, batch_rows=5, mode=mode, seed=3)
    kept = []
    for batch in ds.iter_epoch(0):
        assert batch.n_rows <= 5 and batch.capacity == batch.n_rows * L
        cu = batch.cu_seqlens.tolist()
        for s, e in zip(cu[:-1], cu[1:]):
            assert e - s <= L
            pos = batch.position_ids[s:e]
            ids = batch.input_ids[s:e]
            tgt = batch.targets[s:e]
            n = int((tgt != IGNORE).sum()) + 1  # real tokens of this sequence
            real = ids[:n].numpy()
            assert pos[:n].tolist() == list(range(n))  # positions restart at every sequence
            assert np.all(np.diff(real) == 1) and len(set(doc_of[real])) == 1  # one piece of one document
            assert torch.equal(tgt[: n - 1], ids[1:n])  # next token, same piece
            assert torch.all(tgt[n - 1 :] == IGNORE)  # nothing predicted across the boundary or on padding
            kept.append(real)
        if mode == "packed":
            assert batch.input_ids.numel() == batch.n_real  # no padding in the stream
        else:
            assert batch.input_ids.numel() == batch.capacity
    kept = np.sort(np.concatenate(kept))
    assert np.array_equal(kept, np.arange(offsets[-1]))  # every token exactly once


def test_long_document_split_not_dropped():
    spans = chunk_spans(np.array([0, 10, 250]), [1, 0], 64)
    assert spans == [(10, 74), (74, 138), (138, 202), (202, 250), (0, 10)]


def test_packed_fraction_high_on_skewed_lengths():
    g = np.random.default_rng(1)
    lengths = np.minimum(g.lognormal(4, 1, size=3000).astype(int) + 1, 2000)
    docs = [[1] * int(n) for n in lengths]
    ds = TokenDataset(docs, 512, batch_rows=8, buffer=1000)
    rows = ds.epoch_rows(0)
    fill = sum(e - s for r in rows for _, s, e in r) / (len(rows) * 512)
    assert fill > 0.99


def _model(vocab=50):
    torch.manual_seed(0)
    cfg = LMArgs(d_model=32, n_layer=2, n_head=4, n_kv_head=2, attn_backend="sdpa")
    return Transformer(cfg, vocab, 64).eval()


def test_document_isolation_in_packed_row():
    """Changing document A changes no logit of document B in the same row."""
    model = _model()
    a, b, c = [5, 6, 7, 8, 9], [10, 11, 12, 13], [1, 2, 3]
    tokens = np.array(a + b + c, dtype=np.int32)
    row = [[(0, 5), (5, 9), (9, 12)]]
    batch = make_batch(tokens, row, 16)
    tokens2 = tokens.copy()
    tokens2[:5] = [40, 41, 42, 43, 44]
    batch2 = make_batch(tokens2, row, 16)
    with torch.no_grad():
        out1 = model.head(model(batch.input_ids, batch.position_ids, batch.cu_seqlens, batch.max_seqlen))
        out2 = model.head(model(batch2.input_ids, batch2.position_ids, batch2.cu_seqlens, batch2.max_seqlen))
    assert not torch.allclose(out1[:5], out2[:5])
    assert torch.equal(out1[5:], out2[5:])


@pytest.mark.parametrize("backend", ["naive", "sdpa"])
def test_packed_loss_equals_per_document_loss(backend):
    torch.manual_seed(0)
    cfg = LMArgs(d_model=32, n_layer=2, n_head=4, n_kv_head=2, attn_backend=backend)
    model = Transformer(cfg, 100, 64)
    docs = _docs(seed=5, n=12, maxlen=40)
    ds = TokenDataset(docs, 64, batch_rows=100, shuffle=False)
    (batch,) = list(ds.iter_epoch(0))
    assert batch.n_rows < len(docs)  # several documents share rows
    loss_sum, n = LMTask.loss(model, batch)
    ref_sum, ref_n = torch.zeros(()), 0
    for d in docs:
        x = torch.tensor(d)
        h = model(x, torch.arange(len(d)), torch.tensor([0, len(d)], dtype=torch.int32), len(d))
        if len(d) > 1:
            ref_sum = ref_sum + torch.nn.functional.cross_entropy(model.head(h)[:-1], x[1:], reduction="sum")
            ref_n += len(d) - 1
    assert n == ref_n
    torch.testing.assert_close(loss_sum, ref_sum, rtol=1e-5, atol=1e-4)


def test_pack_rows_capacity():
    spans = [(0, 30), (30, 90), (90, 100), (100, 164)]
    rows = pack_rows(spans, 64, buffer=10)
    assert sorted(s for r in rows for s in r) == spans
    assert all(sum(e - s for s, e in r) <= 64 for r in rows)


def test_batch_row_boundaries():
    from genlab.data.packing import make_batch

    tokens = np.arange(20)
    rows = [[(0, 3), (3, 8)], [(8, 12)], [(12, 20)]]
    b = make_batch(tokens, rows, 8)
    assert b.row_cu.tolist() == [0, 8, 12, 20] and b.cu_seqlens.tolist() == [0, 3, 8, 12, 20]
    assert make_batch(tokens, rows, 8, padded=True).row_cu.tolist() == [0, 8, 16, 24]
