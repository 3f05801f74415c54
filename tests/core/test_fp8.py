"""FP8 (DeepSeek-V3 recipe, emulated on CPU): quantizers, FP8Linear GEMMs, conversion, training."""

import pytest
import torch
import torch.nn as nn

from genlab.ops.fp8 import (
    E4M3,
    E4M3_MAX,
    FP8Linear,
    convert_to_fp8,
    dequantize,
    fp8_gemm,
    gemm_mode,
    quantize_blocks,
    quantize_tiles,
)


def _bound(x, scale_full):
    """E4M3 round-to-nearest: relative error <= 2^-4 for normals, absolute <= 2^-10 * scale (subnormals)."""
    return torch.maximum(x.abs() / 16, scale_full * 2.0**-10) * (1 + 1e-6) + 1e-30


def test_tile_quantizer_shapes_scales_and_error_bound():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(7, 300, generator=g) * torch.logspace(-3, 3, 300)  # wide range across tiles
    q, s = quantize_tiles(x)
    assert q.dtype == E4M3 and q.shape == (7, 300) and s.dtype == torch.float32 and s.shape == (7, 3)
    # scale = amax / 448 per 1 x 128 tile (the last tile has 44 real columns)
    for t, (a, b) in enumerate([(0, 128), (128, 256), (256, 300)]):
        torch.testing.assert_close(s[:, t], x[:, a:b].abs().amax(1) / E4M3_MAX)
        assert (q[:, a:b].float().abs().amax(1) == E4M3_MAX).all()  # each tile's largest maps to 448
    deq = dequantize(q, s)
    full = s.repeat_interleave(128, 1)[:, :300]
    assert ((deq - x).abs() <= _bound(x, full)).all()
    assert (deq - x).abs().max() > 0  # it is a real quantization, not a copy


def test_block_quantizer_shapes_scales_and_error_bound():
    g = torch.Generator().manual_seed(1)
    w = torch.randn(200, 260, generator=g)
    w[150, 10] = 1e5  # an outlier only affects its own 128 x 128 block
    q, s = quantize_blocks(w)
    assert q.shape == (200, 260) and s.shape == (2, 3)
    torch.testing.assert_close(s[1, 0], torch.tensor(1e5 / E4M3_MAX))
    torch.testing.assert_close(s[0, 0], w[:128, :128].abs().max() / E4M3_MAX)
    torch.testing.assert_close(s[1, 2], w[128:, 256:].abs().max() / E4M3_MAX)
    full = s.repeat_interleave(128, 0)[:200].repeat_interleave(128, 1)[:, :260]
    deq = dequantize(q, s)
    assert ((deq - w).abs() <= _bound(w, full)).all()
    others = torch.ones_like(w, dtype=torch.bool)
    others[150, 10] = False  # the outlier's neighbours in its block
    err = (deq - w).abs()
    rel_out = (err[128:, :128][others[128:, :128]].norm() / w[128:, :128][others[128:, :128]].norm()).item()
    rel_in = ((deq - w)[:128, 128:256].norm() / w[:128, 128:256].norm()).item()
    assert rel_out > rel_in  # the outlier block lost more precision than its neighbours


def test_zero_tiles_stay_zero():
    x = torch.zeros(3, 256)
    x[0, 200] = 1.0
    q, s = quantize_tiles(x)
    assert torch.isfinite(s).all() and (dequantize(q, s) == x).all()


def test_fp8_gemm_equals_dequantized_fp32_matmul():
    a, b = torch.randn(9, 256), torch.randn(130, 256)
    aq, a_s = quantize_tiles(a)
    bq, b_s = quantize_blocks(b)
    out = fp8_gemm(aq, a_s, bq, b_s)
    torch.testing.assert_close(out, dequantize(aq, a_s) @ dequantize(bq, b_s).t())
    assert gemm_mode() == "emulated"
    assert (out - a @ b.t()).norm() / (a @ b.t()).norm() < 0.06


def test_real_fp8_gemm_selection_and_fallback_run_on_this_cpu(monkeypatch):
    """The GPU path of fp8_gemm, exercised with this torch's CPU torch._scaled_mm: block scales are
    refused on CPU (as on a GPU without block-scaled FP8), so the first call falls back to row-wise
    scales, which is checked against the emulation and used from then on; an FP8Linear trains
    through it (forward, input and weight gradients close to the emulated recipe)."""
    import genlab.ops.fp8 as fp8

    monkeypatch.setattr(fp8, "REAL_GEMM_DEVICES", {"cpu"})
    monkeypatch.setattr(fp8, "_SITE_MODES", {})
    monkeypatch.setattr(fp8, "_VERIFIED", set())
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(40, 300, generator=g), torch.randn(70, 300, generator=g)
    aq, a_s = quantize_tiles(a)
    bq, b_s = quantize_blocks(b)
    ref = dequantize(aq, a_s) @ dequantize(bq, b_s).t()
    out = fp8_gemm(aq, a_s, bq, b_s)
    assert gemm_mode() == "rowwise" and set(fp8.gemm_modes().values()) == {"rowwise"}
    rel = float((out - ref).norm() / ref.norm())
    assert 1e-5 < rel < 0.1  # a real (row-scaled) FP8 GEMM ran, close to the tile/block recipe

    lin = nn.Linear(300, 70, bias=False)
    lin.__class__ = FP8Linear  # what convert_to_fp8 does
    ref_lin = nn.Linear(300, 70, bias=False)
    ref_lin.load_state_dict(lin.state_dict())
    ref_lin.__class__ = FP8Linear
    x = torch.randn(16, 300, generator=g, requires_grad=True)
    ref_x = x.detach().clone().requires_grad_()
    got = lin(x)
    got.square().sum().backward()
    # per site: fprop and dgrad (inner dims 300 and 70) fall back to row-wise; wgrad's inner dimension is
    # the 16 tokens, one 1x128 tile per row, so its tile scales are row scales and block mode runs
    modes = {k.site: v for k, v in fp8.gemm_modes().items()}
    assert modes == {"gemm": "rowwise", "fprop": "rowwise", "dgrad": "rowwise", "wgrad": "blockwise"}
    monkeypatch.setattr(fp8, "REAL_GEMM_DEVICES", set())  # the emulated recipe as the reference
    want = ref_lin(ref_x)
    want.square().sum().backward()
    assert gemm_mode() == "emulated"
    for u, v in ((got, want), (x.grad, ref_x.grad), (lin.weight.grad, ref_lin.weight.grad)):
        assert float((u - v).norm() / v.norm()) < 0.1


def test_fp8_fallback_is_per_call_site_and_shape_and_logged(monkeypatch, caplog):
    """One site whose real GEMM fails falls back alone: the other sites (and the same site at another
    shape) keep the faster mode, and the log says which mode each site runs. The failure is simulated
    (row-wise refuses one shape, as a kernel refuses unaligned or unsupported shapes)."""
    import logging

    import genlab.ops.fp8 as fp8

    monkeypatch.setattr(fp8, "REAL_GEMM_DEVICES", {"cpu"})
    monkeypatch.setattr(fp8, "_SITE_MODES", {})
    monkeypatch.setattr(fp8, "_VERIFIED", set())
    rowwise = fp8._CUDA_FNS["rowwise"]

    def picky(aq, a_s, bq, b_s):
        if bq.shape[0] == 70:
            raise RuntimeError("unsupported shape (simulated)")
        return rowwise(aq, a_s, bq, b_s)

    monkeypatch.setitem(fp8._CUDA_FNS, "rowwise", picky)
    g = torch.Generator().manual_seed(1)

    def run(m, n, k, site):
        aq, a_s = quantize_tiles(torch.randn(m, k, generator=g))
        bq, b_s = quantize_blocks(torch.randn(n, k, generator=g))
        out = fp8_gemm(aq, a_s, bq, b_s, site=site)
        ref = dequantize(aq, a_s) @ dequantize(bq, b_s).t()
        return out, ref, gemm_mode()

    with caplog.at_level(logging.INFO, logger="genlab.fp8"):
        out, ref, mode = run(32, 70, 256, "fprop")  # the failing shape: blockwise refused, rowwise refused
        assert mode == "emulated" and torch.equal(out, ref)  # the emulation is exact dequantized fp32
        out, ref, mode = run(32, 64, 256, "fprop")  # same site, another shape: still real FP8
        assert mode == "rowwise" and 1e-5 < float((out - ref).norm() / ref.norm()) < 0.1
        assert run(48, 64, 256, "dgrad")[2] == "rowwise"  # another site: untouched by the failure
        assert run(32, 70, 256, "fprop")[2] == "emulated"  # the failing site stays emulated (no retry)
    modes = {(k.site, k.shape): v for k, v in fp8.gemm_modes().items()}
    assert modes == {("fprop", (70, 256)): "emulated", ("fprop", (64, 256)): "rowwise", ("dgrad", (64, 256)): "rowwise"}
    text = caplog.text
    assert "fprop on cpu, 70 x 256: rowwise failed (unsupported shape (simulated)); using emulated" in text
    assert "fprop on cpu, 64 x 256: rowwise" in text and "dgrad on cpu, 64 x 256: rowwise" in text
    # the old behaviour (one module-level list) would have left every later call emulated
    assert sum("blockwise failed" in r.getMessage() for r in caplog.records) == 3


def test_fp8_wgrad_key_ignores_the_token_count(monkeypatch):
    """Wgrad's inner dimension is the tokens: batches of other lengths reuse the site's verified mode."""
    import genlab.ops.fp8 as fp8

    monkeypatch.setattr(fp8, "REAL_GEMM_DEVICES", {"cpu"})
    monkeypatch.setattr(fp8, "_SITE_MODES", {})
    monkeypatch.setattr(fp8, "_VERIFIED", set())
    for tokens in (32, 48, 64):
        gq, gs = quantize_tiles(torch.randn(20, tokens))
        xq, xs = quantize_tiles(torch.randn(30, tokens))
        fp8_gemm(gq, gs, xq, xs, site="wgrad")
    assert list(fp8.gemm_modes()) == [fp8.GemmKey("wgrad", "cpu", (20, 30), True)]


def test_fp8_linear_three_gemms_against_reference():
    """Fprop, Dgrad and Wgrad each equal the fp32 GEMM of the quantized operands (the recipe), and are
    close to the exact fp32 Linear."""
    torch.manual_seed(0)
    lin = nn.Linear(160, 140)
    ref = nn.Linear(160, 140)
    ref.load_state_dict(lin.state_dict())
    assert convert_to_fp8(nn.Sequential(lin)) == ["0"] and isinstance(lin, FP8Linear)
    x = torch.randn(2, 70, 160, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_()
    y, y_ref = lin(x), ref(x_ref)
    assert y.shape == (2, 70, 140)
    g = torch.randn_like(y)
    y.backward(g)
    y_ref.backward(g)
    x2, g2 = x.detach().reshape(-1, 160), g.reshape(-1, 140)
    # the recipe written out with the quantizers
    xq = dequantize(*quantize_tiles(x2))
    wq = dequantize(*quantize_blocks(lin.weight.detach()))
    torch.testing.assert_close(y.detach().reshape(-1, 140), xq @ wq.t() + lin.bias.detach())
    torch.testing.assert_close(x.grad.reshape(-1, 160), dequantize(*quantize_tiles(g2)) @ wq)
    gt = dequantize(*quantize_tiles(g2.t()))
    xt = dequantize(*quantize_tiles(xq.t()))
    torch.testing.assert_close(lin.weight.grad, gt @ xt.t())
    for a, b in ((y, y_ref), (x.grad, x_ref.grad), (lin.weight.grad, ref.weight.grad), (lin.bias.grad, ref.bias.grad)):
        assert (a - b).norm() / b.norm() < 0.08


def test_conversion_keeps_head_embedding_router_in_high_precision():
    from genlab.config import apply_overrides, preset
    from genlab.families import build_lm

    cfg = apply_overrides(preset("deepseek-tiny"), ["model.n_layer=2"]).validate()
    model = build_lm(cfg.model, 300, 64)
    keys = list(model.state_dict())
    done = convert_to_fp8(model)
    assert done and all(not n.endswith("head") for n in done)
    assert type(model.head) is nn.Linear and isinstance(model.embed, nn.Embedding)
    assert isinstance(model.blocks[1].mlp.gate, nn.Parameter)  # the router gate: a plain fp32 parameter
    assert any(".attn." in n for n in done)  # attention projections are FP8 (the core is not a Linear)
    assert list(model.state_dict()) == keys  # checkpoints are unchanged


@pytest.mark.slow
def test_fp8_training_tracks_fp32():
    """The tiny MoE model (deepseek-tiny, shrunk: MLA + 8 experts top-2) for 200 steps from the same
    weights on the same data (a bigram source, ~1.98 nats entropy): final loss within 2% of fp32."""
    from genlab.bench.fp8 import bigram_source, tiny_moe, train_curve

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny GEMMs: a second thread only adds synchronisation (and a shared CPU stalls it)
    try:
        model = tiny_moe()
        fp32 = train_curve(model, "fp32", 200, n_docs=2)
        fp8 = train_curve(model, "fp8", 200, n_docs=2)
    finally:
        torch.set_num_threads(threads)
    tail32, tail8 = sum(fp32[-20:]) / 20, sum(fp8[-20:]) / 20
    assert tail32 < fp32[0] - 1.0  # it learned (from ln 64 = 4.16 towards the entropy)
    assert tail32 > bigram_source()[1] - 0.2  # and the loss has a floor, so 2% is a real margin
    assert abs(tail8 - tail32) / tail32 < 0.02, (tail32, tail8)
    assert fp8 != fp32  # the FP8 path really ran


def test_precision_choice_is_validated():
    from genlab.config import RunConfig, apply_overrides
    from genlab.errors import GenlabError

    with pytest.raises(GenlabError, match="train.precision"):
        apply_overrides(RunConfig(), ["train.precision=fp4"]).validate()


def test_routed_experts_run_fp8_gemms_against_an_emulated_reference():
    """convert_to_fp8 switches DeepSeekMoE's routed experts to FP8: forward and all gradients equal a
    per-expert reference built from quantize -> dequantize -> fp32 matmul, and differ from fp32."""
    from genlab.families.deepseek.moe import MoE, fp8_grouped_experts, grouped_experts

    g = torch.Generator().manual_seed(0)
    E, d, Fw = 4, 160, 48
    w13 = (torch.randn(E, 2 * Fw, d, generator=g) * 0.05).requires_grad_(True)
    w2 = (torch.randn(E, d, Fw, generator=g) * 0.05).requires_grad_(True)
    counts = torch.tensor([5, 0, 9, 3])
    xs = torch.randn(17, d, generator=g).requires_grad_(True)
    gy = torch.randn(17, d, generator=g)

    def qdq_tiles(x):  # 1 x 128 tiles along the inner dim
        return dequantize(*quantize_tiles(x))

    def qdq_blocks(w):
        return dequantize(*quantize_blocks(w))

    y = fp8_grouped_experts(xs, w13, w2, counts)
    y.backward(gy)
    ref_y, ref_dx, ref_dw13, ref_dw2 = [], [], torch.zeros_like(w13), torch.zeros_like(w2)
    start = 0
    for e, n in enumerate(counts.tolist()):
        if not n:
            continue
        x, go = xs[start : start + n].detach(), gy[start : start + n]
        h = qdq_tiles(x) @ qdq_blocks(w13[e].detach()).t()
        gate, up = h.chunk(2, -1)
        act = torch.nn.functional.silu(gate) * up
        ref_y.append(qdq_tiles(act) @ qdq_blocks(w2[e].detach()).t())
        # backward of the second GEMM: Dgrad with W's blocks, Wgrad with operands re-grouped along tokens
        dact = qdq_tiles(go) @ qdq_blocks(w2[e].detach())
        ref_dw2[e] = qdq_tiles(go.t()) @ qdq_tiles(qdq_tiles(act).t()).t()
        sg = torch.sigmoid(gate)
        dgate = dact * up * (sg * (1 + gate * (1 - sg)))
        dh = torch.cat([dgate, dact * torch.nn.functional.silu(gate)], -1)
        ref_dx.append(qdq_tiles(dh) @ qdq_blocks(w13[e].detach()))
        ref_dw13[e] = qdq_tiles(dh.t()) @ qdq_tiles(qdq_tiles(x).t()).t()
        start += n
    assert torch.allclose(y, torch.cat(ref_y), atol=1e-5)
    assert torch.allclose(xs.grad, torch.cat(ref_dx), atol=1e-5)
    assert torch.allclose(w13.grad, ref_dw13, atol=1e-5) and torch.allclose(w2.grad, ref_dw2, atol=1e-5)
    assert (w13.grad[1] == 0).all()  # the idle expert gets no gradient
    exact = grouped_experts(xs.detach(), w13.detach(), w2.detach(), counts)
    rel = float((y.detach() - exact).norm() / exact.norm())
    assert 1e-4 < rel < 0.08  # FP8 really ran, and stayed close

    moe = MoE(d, E, 2, Fw, 1)
    assert not moe.fp8_experts
    done = convert_to_fp8(nn.Sequential(moe))
    assert moe.fp8_experts and "0.experts" in done and "0.shared.gate_up" in done
