"""The flash backend (genlab.ops.flash) against the naive reference: forward and gradients."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from genlab.ops.attention import naive_attention
from genlab.ops.flash import _tiles, flash_attention

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: tiny shapes, 1 thread


def _cu(lens):
    return torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32)


def _qkv(T, H, Hkv, D, Dv, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    mk = lambda *s: torch.randn(*s, generator=g, dtype=dtype).requires_grad_()  # noqa: E731
    return mk(T, H, D), mk(T, Hkv, D), mk(T, Hkv, Dv)


def _compare(lens, H, Hkv, D, Dv, causal, window, block, tol=1e-5, seed=0):
    T = sum(lens)
    cu = _cu(lens)
    q, k, v = _qkv(T, H, Hkv, D, Dv, seed=seed)
    out = flash_attention(q, k, v, cu, max(lens), causal=causal, window=window, block=block)
    ref = naive_attention(q, k, v, cu, max(lens), causal=causal, window=window)
    assert out.shape == (T, H, Dv)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, ref, atol=tol, rtol=tol)
    g = torch.randn_like(out)
    got = torch.autograd.grad(out, (q, k, v), g)
    want = torch.autograd.grad(ref, (q, k, v), g)
    for a, b, name in zip(got, want, "qkv"):
        torch.testing.assert_close(a, b, atol=tol, rtol=tol, msg=lambda m, name=name: f"d{name}: {m}")


@settings(max_examples=15, deadline=None)
@given(
    lens=st.lists(st.integers(0, 24), min_size=1, max_size=4).filter(lambda l: sum(l) > 0),
    hkv=st.sampled_from([1, 2]),
    rep=st.sampled_from([1, 2]),
    dims=st.sampled_from([(8, 8), (12, 8), (8, 4)]),
    causal=st.booleans(),
    window=st.sampled_from([None, 1, 2, 5]),
    block=st.sampled_from([4, 7, 16]),
)
def test_flash_matches_naive_random(lens, hkv, rep, dims, causal, window, block):
    _compare(lens, hkv * rep, hkv, dims[0], dims[1], causal, window, block)


def test_flash_mla_dims_and_gqa():
    """MLA head dims: q/k 192, v 128; 4 query heads on 2 key/value heads."""
    _compare([9, 14], 4, 2, 192, 128, True, None, 8)


@pytest.mark.parametrize("window", [1, 2])
def test_window_off_by_one_edge(window):
    """window = W: exactly W keys including the query itself (W = 1: only itself, output = v)."""
    T = 6
    q, k, v = _qkv(T, 1, 1, 4, 4)
    out = flash_attention(q, k, v, _cu([T]), T, causal=True, window=window, block=2)
    if window == 1:
        torch.testing.assert_close(out, v.detach())
    # query 5 with W = 2 sees keys 4 and 5 only: moving key 3 must not change it
    v2 = v.detach().clone()
    v2[5 - window] += 100.0
    out2 = flash_attention(q, k, v2, _cu([T]), T, causal=True, window=window, block=2)
    torch.testing.assert_close(out2[5], out[5])
    v3 = v.detach().clone()
    v3[5 - window + 1] += 100.0
    out3 = flash_attention(q, k, v3, _cu([T]), T, causal=True, window=window, block=2)
    assert (out3[5] - out[5]).abs().max() > 1.0


def test_rows_with_no_key_are_zero_and_grads_finite():
    """Tokens past cu_seqlens[-1] (padding) and empty sequences: output 0, no NaN anywhere."""
    q, k, v = _qkv(10, 2, 1, 8, 8)
    cu = torch.tensor([0, 3, 3, 7], dtype=torch.int32)  # an empty sequence, then 3 padding tokens
    out = flash_attention(q, k, v, cu, 4, causal=True, window=2, block=2)
    assert torch.isfinite(out).all()
    assert (out[7:] == 0).all()
    ref = naive_attention(q[:7], k[:7], v[:7], cu, 4, causal=True, window=2)
    torch.testing.assert_close(out[:7], ref, atol=1e-5, rtol=1e-5)
    out.square().sum().backward()
    for t in (q, k, v):
        assert torch.isfinite(t.grad).all()
        assert (t.grad[7:] == 0).all()


def test_fully_masked_tile_rows_guard():
    """With a window, a row's first visited key tile can be fully masked for that row: the guard must
    keep exp(-inf - (-inf)) out (block 4, window 2: row 4 sees keys 3..4, tile 0..3 is partly outside)."""
    tiles = _tiles(8, 4, True, 2)
    assert tiles[1][2][0][:2] == (0, 4)  # query tile 4..7 visits key tile 0..3
    _compare([8], 2, 2, 4, 4, True, 2, 4, tol=1e-6)


def test_tile_skipping_visits_only_needed_tiles():
    """Causal + window 4 over 64 tokens with block 8: each query tile visits at most 2 key tiles."""
    tiles = _tiles(64, 8, True, 4)
    assert max(len(ks) for _, _, ks in tiles) == 2
    assert all(j0 <= i0 for i0, _, ks in tiles for j0, _, _ in ks)
    full = _tiles(64, 8, False, None)
    assert all(len(ks) == 8 and not any(m for *_, m in ks) for _, _, ks in full)


def test_equal_length_sequences_batched_and_float64():
    _compare([16, 16, 16, 5], 2, 1, 8, 8, True, None, 8, tol=1e-5)
    lens = [11, 11]
    q, k, v = _qkv(22, 2, 2, 4, 4, dtype=torch.float64)
    out = flash_attention(q, k, v, _cu(lens), 11, causal=True, block=4)
    ref = naive_attention(q, k, v, _cu(lens), 11, causal=True)
    assert out.dtype == torch.float64
    assert (out - ref).abs().max() < 1e-12


def test_memory_is_linear_in_n():
    """Saved for backward: q, k, v, out and the (T, H) logsumexp; never a (T, T) matrix."""
    T, H, D = 256, 2, 16
    q, k, v = _qkv(T, H, H, D, D)
    sizes = []

    def pack(t):
        sizes.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        flash_attention(q, k, v, _cu([T]), T, block=32)
    assert max(sizes) <= T * H * D
    assert sum(sizes) <= 4 * T * H * D + T * H + 16
    assert T * T > 4 * T * H * D  # the naive scores would not have fit this bound


def test_bad_head_counts():
    q, k, v = _qkv(4, 3, 2, 4, 4)
    with pytest.raises(ValueError, match="multiple"):
        flash_attention(q, k, v, _cu([4]), 4)


def test_default_scale():
    q, k, v = _qkv(5, 1, 1, 16, 4)
    a = flash_attention(q, k, v, _cu([5]), 5)
    b = flash_attention(q, k, v, _cu([5]), 5, scale=1 / math.sqrt(16))
    torch.testing.assert_close(a, b)
