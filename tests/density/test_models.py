"""Density models against exhaustive references: probabilities sum to one over all 2^n vectors, the
autoregressive property (zero gradients), NADE's O(nD) pass equals the per-conditional formula,
and sample frequencies match the model's probabilities (chi-square)."""

import itertools

import pytest
import torch
from scipy.stats import chi2

from genlab.families.density.args import DensityArgs
from genlab.families.density.model import (
    FVSBN,
    MADE,
    NADE,
    AutoregressiveModel,
    BinaryTransformer,
    IndependentBernoulli,
    MixtureOfBernoullis,
    build_density,
)
from genlab.ops import cpu_ext

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: tiny shapes, 1 thread


def all_vectors(n, dtype=torch.float64):
    return torch.tensor(list(itertools.product([0, 1], repeat=n)), dtype=dtype)  # (2^n, n)


def randomized(model, seed=0):
    """Every parameter drawn afresh (std 1), so no model is near-uniform by accident; float64."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    return model.double().eval()


def tiny_transformer(n, order=None):
    cfg = DensityArgs(arch="transformer", d_model=16, n_layer=2, n_head=2)
    return BinaryTransformer(cfg, n, order=order)


def make(name, n):
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(n)).tolist()
    return {
        "bernoulli": lambda: IndependentBernoulli(n),
        "mixture": lambda: MixtureOfBernoullis(n, 3),
        "fvsbn": lambda: FVSBN(n),
        "fvsbn-order": lambda: FVSBN(n, order=perm),
        "nade": lambda: NADE(n, 5),
        "nade-order": lambda: NADE(n, 5, order=perm),
        "made-1hl": lambda: MADE(n, [12], seed=1),
        "made-2hl-masks": lambda: MADE(n, [12, 9], n_masks=4, resample="full", seed=2),
        "made-direct-ordering": lambda: MADE(n, [12], n_masks=3, resample="ordering", direct=True, seed=3),
        "made-connectivity": lambda: MADE(n, [7, 7], n_masks=3, resample="connectivity", seed=4),
        "made-tanh-direct": lambda: MADE(n, [12], direct=True, seed=5, activation="tanh"),
        "transformer": lambda: tiny_transformer(n),
        "transformer-order": lambda: tiny_transformer(n, order=perm),
    }[name]()


ALL = [
    "bernoulli",
    "mixture",
    "fvsbn",
    "fvsbn-order",
    "nade",
    "nade-order",
    "made-1hl",
    "made-2hl-masks",
    "made-direct-ordering",
    "made-connectivity",
    "made-tanh-direct",
    "transformer",
    "transformer-order",
]
AUTOREGRESSIVE = [m for m in ALL if m not in ("bernoulli", "mixture")]


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("n", [1, 5])
def test_probabilities_sum_to_one(name, n):
    model = randomized(make(name, n))
    x = all_vectors(n)
    with torch.no_grad():
        assert float(model.log_prob(x).exp().sum()) == pytest.approx(1.0, abs=1e-9)
        for s in range(getattr(model, "n_masks", 1) if isinstance(model, AutoregressiveModel) else 0):
            assert float(model.log_prob_mask(x, s).exp().sum()) == pytest.approx(1.0, abs=1e-9), s


@pytest.mark.parametrize("name", ["nade-order", "made-2hl-masks", "transformer-order", "mixture"])
def test_probabilities_sum_to_one_n12(name):
    model = randomized(make(name, 12))
    with torch.no_grad():
        assert float(model.log_prob(all_vectors(12)).exp().sum()) == pytest.approx(1.0, abs=1e-8)


def test_normalisation_check_catches_a_leaky_mask():
    """The check above can fail: MADE with a non-strict output mask (output d sees input d) does not sum to 1."""
    model = randomized(MADE(5, [12], seed=1))
    hidden, out, direct = model.masks(0)
    deg = model.degrees(0)
    leaky = (deg[0][:, None] >= deg[-1][None, :]).double()
    model.masks = lambda mask_id=0: (hidden, leaky, direct)
    with torch.no_grad():
        assert abs(float(model.log_prob(all_vectors(5)).exp().sum()) - 1) > 1e-3


def test_made_masks_follow_the_degree_rules():
    model = MADE(10, [20, 15], n_masks=5, resample="full", seed=0)
    for s in range(5):
        deg = model.degrees(s)
        assert sorted(deg[0].tolist()) == list(range(10))  # input degrees: a permutation
        for l in (1, 2):
            assert deg[l].min() >= deg[l - 1].min() and deg[l].max() <= 8  # {min previous, ..., D-2}
        assert (model.order_of(s) == torch.argsort(deg[0])).all()
    assert len({tuple(model.order_of(s).tolist()) for s in range(5)}) == 5  # "full" resamples orderings
    conn = MADE(10, [20], n_masks=3, resample="connectivity", seed=0)
    assert all(torch.equal(conn.order_of(s), conn.order_of(0)) for s in range(3))
    assert not torch.equal(conn.hidden_degrees_0[0], conn.hidden_degrees_0[1])


def test_made_mask0_ordering_is_random_unless_natural():
    """As the reference code: mask 0 draws its ordering (no mask is the natural order by construction);
    made_order = natural restores the identity for mask 0 only."""
    natural = torch.arange(10)
    drawn = [MADE(10, [20], seed=s).order_of(0) for s in range(5)]
    assert not any(torch.equal(o, natural) for o in drawn)
    assert len({tuple(o.tolist()) for o in drawn}) == 5  # a function of the seed
    nat = MADE(10, [20], n_masks=3, seed=0, natural_order=True)
    assert torch.equal(nat.order_of(0), natural) and not torch.equal(nat.order_of(1), natural)
    conn = MADE(10, [20], n_masks=3, resample="connectivity", seed=0, natural_order=True)
    assert all(torch.equal(conn.order_of(s), natural) for s in range(3))
    cfg = DensityArgs(arch="made", d_model=8, n_layer=1, made_order="natural")
    assert torch.equal(build_density(cfg, 6).order_of(0), torch.arange(6))
    assert not torch.equal(
        build_density(DensityArgs(arch="made", d_model=8, n_layer=1), 6).order_of(0), torch.arange(6)
    )


def _steps(model, s):
    order = model.order_of(s)
    step = torch.empty_like(order)
    step[order] = torch.arange(len(order))
    return step  # step[d] = position of dimension d in the order


@pytest.mark.parametrize("name", [m for m in AUTOREGRESSIVE if not m.startswith("transformer")])
def test_autoregressive_property_by_gradients(name):
    n = 7
    model = randomized(make(name, n))
    x = (torch.rand(3, n, generator=torch.Generator().manual_seed(1)) < 0.5).double()
    for s in range(getattr(model, "n_masks", 1)):
        jac = torch.autograd.functional.jacobian(lambda v, s=s: model.logits(v, s).sum(0), x)  # (n, 3, n)
        jac = jac.abs().sum(1)  # (n outputs, n inputs)
        step = _steps(model, s)
        forbidden = step[None, :] >= step[:, None]  # input j not strictly before output i
        assert float(jac[forbidden].abs().max()) == 0.0
        assert float(jac[~forbidden].abs().sum()) > 0  # the check sees real dependencies


@pytest.mark.parametrize("name", ["transformer", "transformer-order"])
def test_autoregressive_property_transformer(name):
    """Gradients w.r.t. the token embeddings: the output at step k reads positions 0..k only (position
    p holds the value generated at step p - 1)."""
    n = 6
    model = randomized(make(name, n))
    x = (torch.rand(2, n, generator=torch.Generator().manual_seed(2)) < 0.5).double()
    captured = []

    def leaf(module, inputs, out):
        e = out.detach().requires_grad_()
        captured.append(e)
        return e

    handle = model.net.embed.register_forward_hook(leaf)
    try:
        logits = model.logits(x)  # (2, n) by dimension
    finally:
        handle.remove()
    emb = captured[0]  # (2 * n, d_model), positions in step order per example
    step = _steps(model, 0)
    for d in range(n):
        (g,) = torch.autograd.grad(logits[:, d].sum(), emb, retain_graph=True)
        per_pos = g.view(2, n, -1).abs().sum((0, 2))  # (n,) by position
        k = int(step[d])
        assert float(per_pos[k + 1 :].sum()) == 0.0 and float(per_pos[: k + 1].sum()) > 0
    # and by flipping bits: outputs at or before a dimension's step ignore that dimension's value
    with torch.no_grad():
        base = model.logits(x)
        for j in range(n):
            flipped = x.clone()
            flipped[:, j] = 1 - flipped[:, j]
            changed = (model.logits(flipped) - base).abs().amax(0) > 1e-12  # (n,)
            assert not changed[step <= step[j]].any()


def naive_nade_logits(model: NADE, x):
    """One conditional at a time, straight from the definition: h_k = sigmoid(c + W[:, <k] x_<k)."""
    xo = x[:, model.order]
    out = torch.empty_like(xo)
    for k in range(model.n_dims):
        h = torch.sigmoid(model.c + xo[:, :k] @ model.W[:, :k].T)  # (B, H)
        out[:, k] = h @ model.V[k] + model.b[k]
    res = torch.empty_like(out)
    res[:, model.order] = out
    return res


@pytest.mark.parametrize("order", [None, [3, 0, 7, 1, 6, 2, 5, 4, 9, 8]])
def test_nade_linear_pass_equals_naive_conditionals(order):
    model = randomized(NADE(10, 6, order=order), seed=3)
    x = (torch.rand(5, 10, generator=torch.Generator().manual_seed(3)) < 0.5).double()
    torch.testing.assert_close(model.logits(x), naive_nade_logits(model, x), rtol=1e-12, atol=1e-12)
    broken = randomized(NADE(10, 6, order=order), seed=4)  # the comparison can fail
    assert not torch.allclose(model.logits(x), naive_nade_logits(broken, x))
    # the O(nD) sampler (running pre-activation) draws exactly what the generic sampler draws
    a = model.sample_mask(50, torch.Generator().manual_seed(7))
    b = AutoregressiveModel.sample_mask(model, 50, torch.Generator().manual_seed(7))
    assert torch.equal(a, b)


def _chi_square(model, probs, n_samples, seed):
    x = model.sample(n_samples, seed=seed)
    assert set(x.unique().tolist()) <= {0.0, 1.0}
    n = x.shape[1]
    idx = (x.long() * (2 ** torch.arange(n - 1, -1, -1))).sum(1)  # the row of all_vectors(n)
    counts = torch.bincount(idx, minlength=2**n).double()
    expected = probs * n_samples
    return float(((counts - expected) ** 2 / expected).sum())


@pytest.mark.parametrize(
    "name",
    [
        "bernoulli",
        "mixture",
        "fvsbn-order",
        "nade-order",
        "made-2hl-masks",
        "made-direct-ordering",
        "transformer-order",
    ],
)
def test_sample_frequencies_match_probabilities(name):
    n, n_samples = 3, 6000
    model = randomized(make(name, n), seed=5)
    with torch.no_grad():
        probs = model.log_prob(all_vectors(n)).exp()
        other = randomized(make(name, n), seed=6).log_prob(all_vectors(n)).exp()
    critical = chi2.ppf(1 - 1e-4, df=2**n - 1)
    assert _chi_square(model, probs, n_samples, seed=11) < critical
    assert _chi_square(model, other, n_samples, seed=11) > critical  # a different model's probabilities fail


def test_sampling_is_seeded_and_float32_works():
    model = MADE(8, [16], n_masks=3, seed=0)
    a, b, c = model.sample(20, seed=1), model.sample(20, seed=1), model.sample(20, seed=2)
    assert torch.equal(a, b) and not torch.equal(a, c) and a.dtype == torch.float32
    assert model.log_prob(a).shape == (20,)


def _graph_nodes(fn, seen=None) -> str:
    """The class names of every node of an autograd graph, joined."""
    seen = set() if seen is None else seen
    if fn is None or fn in seen:
        return ""
    seen.add(fn)
    return type(fn).__name__ + " " + "".join(_graph_nodes(f, seen) for f, _ in fn.next_functions)


@pytest.mark.parametrize("kernel", ["FusedNADE", "SegmentNADE"])
@pytest.mark.parametrize("order", [None, [3, 0, 7, 1, 6, 2, 5, 4, 9, 8]])
def test_nade_fast_passes_gradients_equal_the_naive_conditionals(order, kernel):
    """Training runs the fused C++ kernel on the CPU (genlab.ops.nade_cpu) or the segment form (no
    (B, H, D) tensor, its own backward): their logits and the gradients of every parameter equal autograd
    through the one-conditional-at-a-time definition, on rows with no ones, all ones and random ones, in
    float64 and float32. The fused kernel must build here (CI installs g++ and ninja)."""
    model = randomized(NADE(10, 6, order=order), seed=3)
    model.use_fused_kernel = kernel == "FusedNADE"
    g = torch.Generator().manual_seed(5)
    x = (torch.rand(7, 10, generator=g) < 0.3).double()
    x[0], x[1] = 0.0, 1.0
    w = torch.randn(7, 10, generator=g, dtype=torch.float64)
    fast = model.logits(x)
    assert kernel in _graph_nodes(fast.grad_fn), (cpu_ext.error(), _graph_nodes(fast.grad_fn))
    ref = naive_nade_logits(model, x)
    torch.testing.assert_close(fast, ref, rtol=1e-12, atol=1e-12)
    params = [model.W, model.c, model.V, model.b]
    got = torch.autograd.grad((fast * w).sum(), params)
    want = torch.autograd.grad((ref * w).sum(), params)
    for name, a, b in zip("W c V b".split(), got, want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=name)
    # the comparison can fail: one bit flipped at the first step changes every later conditional
    bad = x.clone()
    first = model.order[0]
    bad[2, first] = 1 - bad[2, first]
    assert not torch.allclose(torch.autograd.grad((model.logits(bad) * w).sum(), model.W)[0], got[0])
    # float32 (what training runs): the same within float32 rounding (accumulations of 6-10 terms)
    m32 = randomized(NADE(10, 6, order=order), seed=3).float()
    m32.use_fused_kernel = model.use_fused_kernel
    f32 = m32.logits(x.float())
    assert kernel in _graph_nodes(f32.grad_fn)
    torch.testing.assert_close(f32.double(), ref, rtol=1e-5, atol=1e-5)
    got32 = torch.autograd.grad((f32 * w.float()).sum(), [m32.W, m32.c, m32.V, m32.b])
    for name, a, b in zip("W c V b".split(), got32, want):
        torch.testing.assert_close(a.double(), b, rtol=1e-5, atol=1e-5, msg=name)


def test_nade_dense_path_for_inputs_that_need_it():
    """x that requires a gradient or holds values other than 0/1 takes the dense cumulative-sum form."""
    model = randomized(NADE(6, 4), seed=1)
    x = torch.tensor([[0.0, 1.0, 0.5, 1.0, 0.0, 0.25]], dtype=torch.float64)
    torch.testing.assert_close(model.logits(x), naive_nade_logits(model, x), rtol=1e-12, atol=1e-12)
    xb = (x > 0.3).double().requires_grad_()
    out = model.logits(xb)
    torch.testing.assert_close(out, naive_nade_logits(model, xb.detach()), rtol=1e-12, atol=1e-12)
    assert "SegmentNADE" not in _graph_nodes(out.grad_fn) and "FusedNADE" not in _graph_nodes(out.grad_fn)
    assert "FusedNADE" in _graph_nodes(model.logits(xb.detach()).grad_fn)


def test_nade_falls_back_to_the_segment_form_when_the_fused_kernel_is_unavailable(monkeypatch, capsys):
    """No compiler / GENLAB_CPU_KERNELS=off: one warning line, then the segment form (same logits)."""
    model = randomized(NADE(8, 5), seed=2)
    x = (torch.rand(4, 8, generator=torch.Generator().manual_seed(0)) < 0.5).double()
    fused = model.logits(x)
    assert "FusedNADE" in _graph_nodes(fused.grad_fn)
    monkeypatch.setattr(cpu_ext, "_state", {})  # as in a fresh process
    monkeypatch.setenv("GENLAB_CPU_KERNELS", "off")
    out = model.logits(x)
    assert "SegmentNADE" in _graph_nodes(out.grad_fn)
    torch.testing.assert_close(out, fused, rtol=1e-12, atol=1e-12)
    model.logits(x)  # warned once, not per call
    err = capsys.readouterr().err.strip().splitlines()
    why = "GENLAB_CPU_KERNELS=off"
    assert err == [f"warning: genlab's CPU kernels are unavailable ({why}); running the PyTorch forms"]


def test_nade_fused_kernel_passes_nan_through():
    """The kernel is built with -ffast-math (vectorised exp): a NaN weight still makes NaN logits and
    gradients, so a blown-up step reaches the loss-spike guard as non-finite."""
    model = randomized(NADE(6, 4), seed=1)
    x = torch.tensor([[1.0, 0.0, 1.0, 1.0, 0.0, 0.0]], dtype=torch.float64)
    with torch.no_grad():
        model.W[2, model.order[0]] = float("nan")
    out = model.logits(x)
    assert "FusedNADE" in _graph_nodes(out.grad_fn)
    assert torch.isnan(out[0, model.order[1:]]).all() and torch.isfinite(out[0, model.order[0]])
    out.sum().backward()
    assert torch.isnan(model.V.grad).any() and torch.isnan(model.c.grad).any()


def test_nade_fused_kernel_saturated_units_in_float32():
    """A hidden unit far in saturation (pre-activation -100 / +100, where exp(-a) overflows float32) is
    exactly 0 / 1, as in the dense form; no NaN (under -ffast-math 1 / (1 + inf) would be one)."""
    model = randomized(NADE(10, 8), seed=4).float()
    with torch.no_grad():
        model.c[3], model.c[5] = -100.0, 100.0
    x = (torch.rand(6, 10, generator=torch.Generator().manual_seed(1)) < 0.4).float()
    fused = model.logits(x)
    assert "FusedNADE" in _graph_nodes(fused.grad_fn) and torch.isfinite(fused).all()
    torch.testing.assert_close(fused, model.dense_logits(x), rtol=1e-5, atol=1e-5)
    fused.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_nade_fused_kernel_threads_give_the_same_gradients():
    """Examples run in parallel with per-thread dV / dW / dc sums: 1 and 2 threads, same result."""
    model = randomized(NADE(12, 7), seed=6)
    x = (torch.rand(9, 12, generator=torch.Generator().manual_seed(2)) < 0.3).double()
    w = torch.randn(9, 12, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    before = torch.get_num_threads()
    got = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            out = model.logits(x)
            assert "FusedNADE" in _graph_nodes(out.grad_fn)
            got.append(torch.autograd.grad((out * w).sum(), [model.W, model.c, model.V, model.b]))
    finally:
        torch.set_num_threads(before)
    ref = torch.autograd.grad((naive_nade_logits(model, x) * w).sum(), [model.W, model.c, model.V, model.b])
    for a, b, r in zip(*got, ref):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(a, r, rtol=1e-10, atol=1e-12)
