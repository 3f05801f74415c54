"""DeepSeekMoE: routing invariants against a brute-force router, grouped dispatch against the
per-expert loop, balance bias and losses, load counting."""

import pytest
import torch
from torch.utils.checkpoint import checkpoint

from genlab.families.deepseek.moe import MoE, balance_loss, route


def brute_route(scores, bias, k, n_group, topk_group, scaling):
    """Per token, in plain Python: groups by the sum of their top-2 biased scores, best experts of the
    kept groups by biased score, gates from the unbiased scores."""
    T, E = scores.shape
    gs = E // n_group
    idx, gates = [], []
    for t in range(T):
        sel = [float(scores[t, e] + bias[e]) for e in range(E)]
        gscore = [sum(sorted(sel[g * gs : (g + 1) * gs], reverse=True)[: min(2, gs)]) for g in range(n_group)]
        kept = sorted(range(n_group), key=lambda g: -gscore[g])[:topk_group]
        cand = [e for e in range(E) if e // gs in kept]
        chosen = sorted(cand, key=lambda e: -sel[e])[:k]
        s = [float(scores[t, e]) for e in chosen]
        idx.append(chosen)
        gates.append([v / sum(s) * scaling for v in s])
    return idx, gates


@pytest.mark.parametrize("n_group,topk_group,k", [(1, 1, 2), (4, 2, 3), (4, 1, 2), (8, 3, 4)])
def test_route_matches_brute_force_with_negative_bias(n_group, topk_group, k):
    torch.manual_seed(0)
    T, E, d = 16, 16, 8
    x, w = torch.randn(T, d), torch.randn(E, d)
    bias = -3.0 - torch.rand(E)  # every s + b < 0: a 0.0 fill of dropped groups would win top-k
    scores, idx, gates = route(x, w, bias, k, n_group, topk_group, 2.5)
    ref_idx, ref_gates = brute_route(scores, bias, k, n_group, topk_group, 2.5)
    for t in range(T):
        order = idx[t].argsort()
        assert sorted(idx[t].tolist()) == sorted(ref_idx[t])
        got = dict(zip(idx[t].tolist(), gates[t].tolist()))
        for e, g in zip(ref_idx[t], ref_gates[t]):
            assert abs(got[e] - g) < 1e-5
        assert len(set(idx[t].tolist())) == k  # exactly k distinct experts
        del order
    gs = E // n_group  # every chosen expert lies in one of at most topk_group groups
    assert all(len({e // gs for e in row.tolist()}) <= topk_group for row in idx)


def test_bias_changes_selection_not_gate_values():
    torch.manual_seed(1)
    T, E, d, k = 32, 8, 8, 2
    x, w = torch.randn(T, d), torch.randn(E, d)
    scores, idx0, _ = route(x, w, torch.zeros(E), k, 1, 1, 1.0)
    bias = torch.zeros(E)
    bias[5] = 10.0  # expert 5 now always chosen
    _, idx1, gates1 = route(x, w, bias, k, 1, 1, 1.0)
    assert (idx1 == 5).any(-1).all() and not (idx0 == 5).any(-1).all()
    s = scores.gather(1, idx1)
    assert torch.allclose(gates1, s / s.sum(-1, keepdim=True), atol=1e-6)  # unbiased, renormalised
    assert torch.allclose(gates1.sum(-1), torch.ones(T))


def _moe(seed=0, **kw):
    torch.manual_seed(seed)
    m = MoE(16, n_experts=6, k=2, width=12, n_shared=1, **kw)
    for p in m.parameters():
        torch.nn.init.normal_(p, std=0.3)
    return m


def test_grouped_dispatch_equals_loop_reference_forward_and_grads():
    m = _moe()
    x = torch.randn(40, 16)
    grads = []
    outs = []
    for ref in (False, True):
        m.zero_grad()
        m.use_reference = ref
        xi = x.clone().requires_grad_()
        y = m(xi)
        (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
        outs.append(y.detach())
        grads.append([xi.grad] + [p.grad.clone() for p in m.parameters()])
    assert torch.allclose(outs[0], outs[1], atol=1e-5)
    for a, b in zip(*grads):
        assert torch.allclose(a, b, atol=1e-5), (a - b).abs().max()


def test_fused_gather_and_combine_equal_the_separate_path_and_keep_no_pair_sized_tensor():
    """CPU dispatch gathers and combines inside one function; the separate path (CUDA / FP8) gathers,
    runs the sorted experts and scatters back. Same outputs and gradients; and what the fused path
    keeps for backward has no (N, d) = (k T, d) tensor (no gathered input, no per-pair output)."""
    from genlab.families.deepseek.moe import _ScatterRows, dispatch_experts, grouped_experts

    g = torch.Generator().manual_seed(1)
    T, d, E, Fw, k = 24, 16, 4, 6, 3
    x = torch.randn(T, d, generator=g)
    w13 = torch.randn(E, 2 * Fw, d, generator=g) * 0.3
    w2 = torch.randn(E, d, Fw, generator=g) * 0.3
    idx = torch.stack([torch.randperm(E, generator=g)[:k] for _ in range(T)])
    flat = idx.reshape(-1)
    order = flat.argsort(stable=True)
    token_of, counts = order // k, torch.bincount(flat, minlength=E)
    gates = torch.rand(T * k, generator=g)[order]
    gy = torch.randn(T, d, generator=g)
    res = []
    for fused in (True, False):
        leaves = [t.clone().requires_grad_() for t in (x, w13, w2, gates)]
        xi, a, b, gi = leaves
        saved = []

        def pack(t, saved=saved):
            saved.append(tuple(t.shape))
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            if fused:
                y = dispatch_experts(xi, token_of, a, b, counts, gi)
            else:
                y = _ScatterRows.apply(grouped_experts(xi.index_select(0, token_of), a, b, counts, gi), token_of, T)
        y.backward(gy)
        res.append([y.detach()] + [t.grad for t in leaves])
        if fused:
            assert (T * k, d) not in saved, saved
    for u, v in zip(*res):
        torch.testing.assert_close(u, v, atol=1e-6, rtol=1e-6)


def test_grouped_matmuls_equal_a_per_expert_loop_with_an_idle_expert():
    """The experts' products run as torch._grouped_mm in float32 (aligned shapes) and as a loop of
    torch.mm otherwise; both equal per-expert matmuls in float64, idle experts give zero gradients."""
    from genlab.families.deepseek.moe import _Groups

    g = torch.Generator().manual_seed(3)
    counts = [5, 0, 7, 4]
    N, K, M = sum(counts), 8, 12
    a, c = torch.randn(N, K, generator=g), torch.randn(N, M, generator=g)
    b = torch.randn(len(counts), K, M, generator=g)
    groups = _Groups(counts, torch.device("cpu"))
    assert groups._fused(a, b) == hasattr(torch, "_grouped_mm")
    assert not groups._fused(torch.randn(N, 7), b[:, :7])  # rows of 7 floats are not 16-byte aligned: the loop
    want_rows, want_w, start = [], torch.zeros(len(counts), K, M, dtype=torch.float64), 0
    for e, n in enumerate(counts):
        want_rows.append(a[start : start + n].double() @ b[e].double())
        want_w[e] = a[start : start + n].double().t() @ c[start : start + n].double()
        start += n
    for dt in (torch.float32, torch.float64):
        rows = groups.rows(a.to(dt), b.to(dt))
        w = groups.weights(a.to(dt), c.to(dt), b.to(dt))
        torch.testing.assert_close(rows.double(), torch.cat(want_rows), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(w.double(), want_w, atol=1e-5, rtol=1e-5)
        assert w[1].abs().max() == 0


@pytest.mark.parametrize("d,width,T", [(16, 10, 1), (6, 8, 1), (6, 10, 0), (16, 8, 0), (16, 8, 5)])
def test_moe_grouped_path_takes_odd_widths_and_tiny_batches(d, width, T):
    """Widths that are not a multiple of 4 floats with one routed pair (a size-1 dimension whose stride
    torch._grouped_mm still checks) or no tokens at all: the grouped path runs (falling back to the loop
    where it must) and equals the loop, forward and gradients."""
    from genlab.families.deepseek.moe import MoE, _Groups

    torch.manual_seed(0)
    m = MoE(d, 4, 1, width, 1).train()
    for p in m.parameters():
        torch.nn.init.normal_(p, std=0.2)
    x = torch.randn(T, d)
    res = []
    for enabled in (True, False):
        _Groups.enabled = enabled
        try:
            xi = x.clone().requires_grad_()
            y = m(xi)
            grads = torch.autograd.grad(y.square().sum(), [xi, m.w13, m.w2], allow_unused=True)
        finally:
            _Groups.enabled = hasattr(torch, "_grouped_mm")
        res.append([y.detach()] + [g if g is not None else torch.zeros(0) for g in grads])
    for a, b in zip(*res):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)


def test_load_counted_once_per_forward_with_checkpointing_and_not_in_eval():
    m = _moe()
    x = torch.randn(30, 16, requires_grad=True)
    y = checkpoint(m, x, use_reentrant=False)
    y.sum().backward()
    assert float(m.load.sum()) == 30 * 2  # the recompute in backward does not count again
    y = checkpoint(m, x, use_reentrant=True)
    y.sum().backward()
    assert float(m.load.sum()) == 2 * 30 * 2
    m.eval()
    m(x)
    assert float(m.load.sum()) == 2 * 30 * 2


def test_bias_update_once_per_step_sign_and_gamma_zero_freezes():
    m = _moe()
    m.load.copy_(torch.tensor([10.0, 0.0, 5.0, 5.0, 3.0, 7.0]))  # mean 5
    res = m.update_bias(0.01)
    assert torch.allclose(m.bias, torch.tensor([-0.01, 0.01, 0.0, 0.0, 0.01, -0.01]))
    assert abs(res["maxvio"] - 1.0) < 1e-6 and float(m.load.sum()) == 0  # counts reset
    m.load.fill_(1.0)
    m.load[0] = 9.0
    m.update_bias(0.0)
    assert torch.allclose(m.bias, torch.tensor([-0.01, 0.01, 0.0, 0.0, 0.01, -0.01]))


def test_balancing_drives_maxvio_down_on_skewed_router():
    torch.manual_seed(3)
    E, d = 16, 16
    m = MoE(d, n_experts=E, k=2, width=4, n_shared=0)
    with torch.no_grad():
        m.gate.normal_(std=0.5)
        m.gate[:3] += 0.75  # three experts favoured by most tokens
    x = torch.randn(1024, d)
    vios = []
    for _ in range(300):  # the router alone (what MoE.forward counts), then the once-per-step update
        _, idx, _ = route(x, m.gate, m.bias, m.k, 1, 1, 1.0)
        m.load += torch.bincount(idx.reshape(-1), minlength=E).float()
        vios.append(m.update_bias(0.003)["maxvio"])
    assert vios[0] > 1.0
    assert sum(vios[-20:]) / 20 < 0.25 < vios[0] / 4
    frozen = MoE(d, n_experts=E, k=2, width=4, n_shared=0, balance="none")
    frozen.load_state_dict(m.state_dict() | {"bias": torch.zeros(E)})
    frozen(x)
    assert frozen.update_bias(0.01)["maxvio"] > 1.0  # balance none: the bias never moves
    assert float(frozen.bias.abs().sum()) == 0


def test_sequence_balance_loss_matches_per_sequence_formula_and_has_gradient():
    torch.manual_seed(4)
    T, E, k = 12, 6, 2
    logits = torch.randn(T, E, requires_grad=True)
    scores = logits.sigmoid()
    sd = scores.detach()
    idx = scores.detach().topk(k, -1).indices
    seg = torch.tensor([0] * 5 + [1] * 7)
    got = balance_loss(scores, idx, seg, 2)
    ref = 0.0
    for s in (range(0, 5), range(5, 12)):
        s = list(s)
        Ts = len(s)
        for i in range(E):
            f = E / (k * Ts) * sum(int(i in idx[t].tolist()) for t in s)
            p = sum(float(sd[t, i] / sd[t].sum()) for t in s) / Ts
            ref += f * p
    assert abs(float(got.detach()) - ref / 2) < 1e-5
    got.backward()
    assert logits.grad.abs().sum() > 0


def test_aux_modes_set_losses_only_in_training():
    m = _moe(balance="seq_aux", alpha=1e-2)
    x = torch.randn(20, 16)
    cu = torch.tensor([0, 8, 20], dtype=torch.int32)
    m(x, cu)
    assert m.aux_loss is not None and float(m.aux_loss.detach()) > 0
    m.eval()
    m(x, cu)
    assert m.aux_loss is None


def test_sequence_balance_loss_is_per_packed_row():
    """seq_aux: T of Eqs. 17-20 is one training sequence = one packed row, not one document chunk."""
    m = _moe(balance="seq_aux", alpha=1e-2)
    x = torch.randn(20, 16)
    cu = torch.tensor([0, 3, 8, 12, 20], dtype=torch.int32)  # four documents ...
    rows = torch.tensor([0, 8, 20])  # ... in two packed rows
    m(x, cu)
    per_doc = m.aux_loss
    got = m.row_balance_loss(rows)
    scores, idx = m._routing
    want = 0.0  # written out per row
    E, k = scores.shape[1], idx.shape[1]
    for lo, hi in ((0, 8), (8, 20)):
        for i in range(E):
            f = E / (k * (hi - lo)) * sum(int(i in idx[t].tolist()) for t in range(lo, hi))
            p = sum(float(scores[t, i] / scores[t].sum()) for t in range(lo, hi)) / (hi - lo)
            want += f * p
    assert abs(float(got.detach()) - 1e-2 * want / 2) < 1e-6
    assert abs(float(got.detach()) - float(per_doc.detach())) > 1e-6  # the rows are not the documents
