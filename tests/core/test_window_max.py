"""genlab.ops.window_max against brute force: van Herk/Gil-Werman (numpy and torch), the streaming
monotonic deque, the pure-Python deque; edge cases and the NaN policy."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from genlab.errors import GenlabError
from genlab.ops.window_max import SlidingMax, causal_window_max, window_max, window_max_brute, window_max_deque


@st.composite
def arrays_and_k(draw, nan=False):
    lead = draw(st.lists(st.integers(1, 3), min_size=0, max_size=2))
    n = draw(st.integers(1, 40))
    k = draw(st.integers(1, n))
    if draw(st.booleans()):  # few distinct values: many ties
        vals = draw(st.lists(st.integers(-3, 3), min_size=n * int(np.prod(lead)), max_size=n * int(np.prod(lead))))
        a = np.array(vals, dtype=np.float64)
    else:
        elems = (
            st.floats(-1e6, 1e6, allow_nan=False)
            if not nan
            else st.one_of(st.floats(-1e6, 1e6, allow_nan=False), st.just(float("nan")))
        )
        a = np.array(draw(st.lists(elems, min_size=n * int(np.prod(lead)), max_size=n * int(np.prod(lead)))))
    return a.reshape(*lead, n), k


@settings(max_examples=150, deadline=None)
@given(arrays_and_k())
def test_vhgw_numpy_and_torch_equal_brute_force(ak):
    a, k = ak
    ref = window_max_brute(a, k)
    assert ref.shape == a.shape[:-1] + (a.shape[-1] - k + 1,)
    assert np.array_equal(window_max(a, k), ref)
    assert np.array_equal(window_max(torch.from_numpy(a), k).numpy(), ref)
    assert np.array_equal(window_max(a.astype(np.int64), k), window_max_brute(a.astype(np.int64), k))


@settings(max_examples=150, deadline=None)
@given(arrays_and_k(nan=True))
def test_streaming_and_deque_equal_brute_force_with_nan(ak):
    a, k = ak
    row = a.reshape(-1, a.shape[-1])[0]
    ref = window_max_brute(row, k)
    assert np.array_equal(np.array(window_max_deque(row.tolist(), k)), ref, equal_nan=True)
    assert np.array_equal(window_max(row, k), ref, equal_nan=True)
    assert np.array_equal(window_max(torch.from_numpy(row), k).numpy(), ref, equal_nan=True)
    s = SlidingMax(k)
    stream = np.array([s.push(x) for x in row])
    # trailing windows: the first k-1 are shorter; from k-1 on they are exactly the LeetCode windows
    causal = np.array([np.max(row[max(0, t - k + 1) : t + 1]) for t in range(len(row))])
    assert np.array_equal(stream, causal, equal_nan=True)
    assert np.array_equal(stream[k - 1 :], ref, equal_nan=True)
    assert np.array_equal(causal_window_max(row, k), causal, equal_nan=True)
    assert np.array_equal(causal_window_max(torch.from_numpy(row), k).numpy(), causal, equal_nan=True)


def test_edge_cases():
    a = np.array([3.0, -1.0, 5.0, 2.0])
    assert np.array_equal(window_max(a, 1), a) and window_max(a, 1) is not a
    assert np.array_equal(window_max(a, 4), [5.0])  # k = n: one window
    for bad in (5, 0, -1, 2.5, True):
        with pytest.raises(GenlabError, match="window size"):
            window_max(a, bad)
    with pytest.raises(GenlabError, match="larger than the input length n = 4"):
        window_max(torch.tensor(a), 5)
    assert window_max(np.zeros((2, 0)), 3).shape == (2, 0)  # empty input: no windows
    assert window_max(torch.zeros(0), 1).shape == (0,)
    assert window_max_deque([], 2) == []
    with pytest.raises(GenlabError, match="scalar"):
        window_max(np.float64(1.0), 1)


def test_nan_policy_is_propagation():
    a = np.array([1.0, np.nan, 0.0, 2.0, -1.0])
    expect = np.array([np.nan, np.nan, 2.0, 2.0])
    for out in (window_max(a, 2), window_max(torch.tensor(a), 2).numpy(), np.array(window_max_deque(a.tolist(), 2))):
        assert np.array_equal(out, expect, equal_nan=True)
    s = SlidingMax(2)
    assert [s.push(x) for x in a][2:] == [pytest.approx(np.nan, nan_ok=True), 2.0, 2.0]


def test_axis_dtypes_and_large_k_branch():
    rng = np.random.default_rng(0)
    a = rng.integers(-100, 100, size=(5, 3, 7)).astype(np.int32)
    assert np.array_equal(window_max(a, 2, axis=0), np.moveaxis(window_max_brute(np.moveaxis(a, 0, -1), 2), -1, 0))
    assert window_max(a, 3).dtype == np.int32
    assert np.array_equal(window_max(np.array([True, False, False, True]), 2), [True, False, True])
    big = rng.standard_normal(1000)  # one row of 2 blocks of 600: the accumulate branch
    assert np.array_equal(window_max(big, 600), window_max_brute(big, 600))
    assert np.array_equal(window_max(torch.from_numpy(big), 600).numpy(), window_max_brute(big, 600))


def test_sliding_max_state_round_trip():
    rng = np.random.default_rng(1)
    xs = rng.integers(0, 5, size=60).astype(float)
    xs[17] = np.nan
    a, b = SlidingMax(7), SlidingMax(7)
    first = [a.push(x) for x in xs[:30]]
    for x in xs[:30]:
        b.push(x)
    c = SlidingMax(7)
    c.load_state_dict(b.state_dict())
    assert [a.push(x) for x in xs[30:]] == [c.push(x) for x in xs[30:]]
    assert len(first) == 30 and len(c) == 7 and c.full
    with pytest.raises(GenlabError, match="window size"):
        SlidingMax(3).load_state_dict(b.state_dict())
