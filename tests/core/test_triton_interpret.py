"""genlab's Triton FlashAttention kernels, run on CPU tensors in Triton's interpreter (TRITON_INTERPRET=1),
against the naive reference: forward and gradients; causal, window, varlen, GQA, Dv != D."""

import os

import pytest
import torch

_old = os.environ.get("TRITON_INTERPRET")
os.environ["TRITON_INTERPRET"] = "1"  # read by triton's import, the kernels' decoration and each launch
try:
    pytest.importorskip("triton")
    import genlab.ops._triton_kernels  # noqa: F401
finally:
    if _old is None:
        del os.environ["TRITON_INTERPRET"]
    else:
        os.environ["TRITON_INTERPRET"] = _old


@pytest.fixture(autouse=True)
def interpret(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # only while each test runs


from genlab.errors import GenlabError  # noqa: E402
from genlab.ops.attention import BACKENDS, naive_attention, pick_backend  # noqa: E402
from genlab.ops.triton_flash import available, triton_flash_attention  # noqa: E402


def _cu(lens):
    return torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32)


@pytest.mark.parametrize(
    "lens,H,Hkv,D,Dv,causal,window",
    [
        ([5, 7, 7, 3], 4, 2, 8, 6, True, None),  # varlen, GQA, Dv != D
        ([10, 0, 21], 2, 1, 8, 8, True, 3),  # an empty sequence, window across tile edges
        ([9, 9], 2, 2, 4, 4, False, 2),  # bidirectional window
        ([37], 3, 1, 12, 8, False, None),  # non-power-of-two head dim, MQA
        ([20, 1, 17], 2, 2, 8, 8, True, 1),  # window 1: only itself
    ],
)
def test_triton_kernel_matches_naive(lens, H, Hkv, D, Dv, causal, window):
    g = torch.Generator().manual_seed(0)
    T = sum(lens)
    q = torch.randn(T, H, D, generator=g, requires_grad=True)
    k = torch.randn(T, Hkv, D, generator=g, requires_grad=True)
    v = torch.randn(T, Hkv, Dv, generator=g, requires_grad=True)
    cu = _cu(lens)
    out = triton_flash_attention(q, k, v, cu, max(lens), causal=causal, window=window, block=16)
    ref = naive_attention(q, k, v, cu, max(lens), causal=causal, window=window)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    go = torch.randn(out.shape, generator=g)
    for a, b in zip(torch.autograd.grad(out, (q, k, v), go), torch.autograd.grad(ref, (q, k, v), go)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_padding_rows_are_zero():
    q, k, v = (torch.randn(12, 2, 8) for _ in range(3))
    out = triton_flash_attention(q, k, v, torch.tensor([0, 5, 9], dtype=torch.int32), 5, block=16)
    assert torch.isfinite(out).all() and (out[9:] == 0).all()


def test_backend_selection_falls_back_without_cuda(monkeypatch):
    """On this CPU-only machine: auto -> sdpa per call; an explicit 'triton' is refused in one line."""
    assert pick_backend("auto") == "auto"
    assert "flash" in BACKENDS and "auto" in BACKENDS
    monkeypatch.delenv("TRITON_INTERPRET")
    if not torch.cuda.is_available():
        assert not available("cpu") and not available()
        with pytest.raises(GenlabError, match="needs a CUDA GPU"):
            pick_backend("triton")
        q, k, v = (torch.randn(6, 2, 4) for _ in range(3))
        cu = _cu([6])
        torch.testing.assert_close(BACKENDS["auto"](q, k, v, cu, 6), BACKENDS["sdpa"](q, k, v, cu, 6))
