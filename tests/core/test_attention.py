import pytest
import torch

from genlab.ops.attention import BACKENDS, allowed_mask, naive_attention, sdpa_attention


def _inputs(lens, H=4, Hkv=2, D=16, Dv=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    T = sum(lens)
    q = torch.randn(T, H, D, generator=g, dtype=torch.float64 if False else torch.float32, requires_grad=True)
    k = torch.randn(T, Hkv, D, generator=g, requires_grad=True)
    v = torch.randn(T, Hkv, Dv or D, generator=g, requires_grad=True)
    cu = torch.tensor([0] + torch.tensor(lens).cumsum(0).tolist(), dtype=torch.int32)
    return q, k, v, cu, max(lens)


def _per_document_reference(q, k, v, cu, causal, window):
    """Loop over documents, plain softmax attention on each: the simplest possible reference."""
    outs = []
    H, Hkv = q.shape[1], k.shape[1]
    cu = cu.tolist()
    for s, e in zip(cu[:-1], cu[1:]):
        qs, ks, vs = q[s:e], k[s:e].repeat_interleave(H // Hkv, 1), v[s:e].repeat_interleave(H // Hkv, 1)
        sc = torch.einsum("ihd,jhd->hij", qs, ks) / q.shape[-1] ** 0.5
        i = torch.arange(e - s)
        m = torch.ones(e - s, e - s, dtype=torch.bool)
        if causal:
            m &= i[None, :] <= i[:, None]
        if window:
            m &= (i[:, None] - i[None, :]).abs() < window
        sc = sc.masked_fill(~m, float("-inf"))
        outs.append(torch.einsum("hij,jhd->ihd", sc.softmax(-1), vs))
    return torch.cat(outs)


@pytest.mark.parametrize("backend", list(BACKENDS))
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("window", [None, 1, 2, 5])
@pytest.mark.parametrize("lens", [[7, 13, 1, 20], [16, 16, 16], [33]])
def test_backends_match_reference_forward_and_grad(backend, causal, window, lens):
    q, k, v, cu, ms = _inputs(lens)
    out = BACKENDS[backend](q, k, v, cu, ms, causal=causal, window=window)
    g = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), g)
    ref = _per_document_reference(q, k, v, cu, causal, window)
    ref_grads = torch.autograd.grad(ref, (q, k, v), g)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_value_dim_differs_from_query_dim():
    q, k, v, cu, ms = _inputs([9, 4], D=24, Dv=16)
    a = naive_attention(q, k, v, cu, ms)
    b = sdpa_attention(q, k, v, cu, ms)
    assert a.shape == b.shape == (13, 4, 16)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    # gradients through the zero-padded values (sdpa pads v to the query dim on CPU)
    g = torch.randn_like(a)
    ga = torch.autograd.grad(a, (q, k, v), g)
    gb = torch.autograd.grad(b, (q, k, v), g)
    for x, y in zip(ga, gb):
        assert x.shape == y.shape
        torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-5)


def test_window_convention_counts_self():
    """window = W: a query sees W keys including itself (0 <= i - j < W)."""
    cu = torch.tensor([0, 6], dtype=torch.int32)
    m = allowed_mask(cu, 6, causal=True, window=2)
    assert m[3].nonzero().flatten().tolist() == [2, 3]
    assert allowed_mask(cu, 6, causal=True, window=1).sum() == 6


def test_row_with_no_key_outputs_zero():
    q, k, v, _, _ = _inputs([4])
    # a zero-length sequence between two real ones and a mask that leaves nothing: output 0, no NaN
    cu = torch.tensor([0, 2, 2, 4], dtype=torch.int32)
    out = naive_attention(q, k, v, cu, 2, causal=True)
    assert torch.isfinite(out).all()
    out_s = sdpa_attention(q, k, v, cu, 2, causal=True)
    torch.testing.assert_close(out, out_s, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mode", ["runs", "rows"])
@pytest.mark.parametrize("causal,window", [(True, None), (False, None), (True, 3)])
@pytest.mark.parametrize("lens", [[5, 0, 9, 9, 30, 2, 1, 64, 64], [64, 64], [70, 3]])
def test_cpu_varlen_layouts_match_per_document_reference(monkeypatch, mode, causal, window, lens):
    """Both CPU varlen layouts (one flash call per run of equal lengths; all sequences in rows with a
    block-diagonal mask, padded or dense) against naive attention per document, forward and gradients."""
    import genlab.ops.attention as A

    monkeypatch.setattr(A, "CPU_VARLEN", mode)
    q, k, v, cu, ms = _inputs(lens)
    out = sdpa_attention(q, k, v, cu, ms, causal=causal, window=window)
    g = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), g)
    ref = _per_document_reference(q, k, v, cu, causal, window)
    ref_grads = torch.autograd.grad(ref, (q, k, v), g)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "lens,layout",
    [
        ([64, 64], "_VarlenSDPA"),
        ([40, 30, 50, 25], "_VarlenSDPA"),
        ([3, 5, 2, 7, 4, 6, 1, 8], "_RowGroupSDPA"),
        ([15, 17, 14, 18], "_VarlenSDPA"),  # 64 tokens in 4 runs: exactly RUN_TOKENS each on average
        ([15, 17, 14, 17], "_RowGroupSDPA"),  # 63 tokens: just below
        ([15, 0, 17, 14, 0, 18], "_VarlenSDPA"),  # zero-length sequences are not runs
    ],
)
def test_cpu_varlen_auto_runs_documents_unless_they_are_tiny(lens, layout):
    """`auto`: one call per run of equal lengths while the runs average >= RUN_TOKENS tokens (measured faster
    on a quiet machine), the one-call row layout for many tiny documents (per-call cost wins there)."""
    import genlab.ops.attention as A

    assert A.CPU_VARLEN == "auto"
    q, k, v, cu, ms = _inputs(lens)
    out = sdpa_attention(q, k, v, cu, ms, causal=True)
    assert type(out.grad_fn).__name__.startswith(layout), type(out.grad_fn).__name__


def test_row_layout_is_dense_when_rows_are_full():
    from genlab.ops.attention import _RowLayout

    lay = _RowLayout([0, 40, 64, 128, 150], 64)
    assert (lay.G, lay.dense) == (3, False)  # rows 40+24, 64, 22 (+ 42 padding)
    assert _RowLayout([0, 40, 64, 128], 64).dense
    assert lay.dest.tolist()[:3] == [0, 1, 2] and lay.dest[-1].item() == 2 * 64 + 21
