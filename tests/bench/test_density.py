"""Smoke test of `genlab bench density` with quick=True (the UCI files stood in for by a small .npz)."""

import json

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: tiny shapes, 1 thread


def test_bench_density_quick(tmp_path, monkeypatch, npz16):
    from genlab.bench import density

    uci = tmp_path / "uci"
    uci.mkdir()
    (uci / "dna.npz").write_bytes(npz16.read_bytes())  # stands in for the real file: the paths are exercised
    (uci / "adult.npz").write_bytes(npz16.read_bytes())  # adult: MADE runs the authors' command (tanh, SGD)
    monkeypatch.setenv("GENLAB_UCI_DIR", str(uci))
    torch.set_num_threads(2)
    r = density.run(quick=True, out_dir=tmp_path / "bench")
    assert torch.get_num_threads() == 2  # the presets' one thread does not leak out
    json.dumps(r)
    assert [m["model"] for m in r["models"]] == [name for name, _, _ in density.DIGITS_MODELS]
    for m in r["models"]:
        assert m["steps"] <= 4 and m["examples_per_s"] > 0 and np.isfinite(m["test_nll"])
        assert m["test_bpd"] == pytest.approx(m["test_nll"] / (64 * np.log(2)))
    for m in r["models"]:  # 64 binary pixels: better than uniform (64 ln 2 nats) after 4 steps
        assert 0 < m["test_nll"] < 64 * np.log(2), m["model"]
    nll = {m["model"]: m["test_nll"] for m in r["models"]}
    assert r["margins"] == pytest.approx(
        {f"{w}_minus_mixture_nats": nll[density.MIXTURE] - nll[w] for w in ("nade", "made")}
    )
    assert [(u["dataset"], u["paper_nll"]) for u in r["uci"]] == [
        ("adult", 13.19),
        ("adult", 13.12),
        ("dna", 84.81),
        ("dna", 79.66),
    ]
    assert "model.hidden_activation=tanh" in r["uci"][1]["overrides"]  # MADE on adult
    assert not any("tanh" in o for o in r["uci"][3]["overrides"])  # MADE on dna: the preset as is
    for u in r["uci"]:  # the 16-dim stand-in: better than uniform (16 ln 2 nats), and `reached` says so
        assert 0 < u["test_nll"] < 16 * np.log(2), u["model"]
        assert u["reached"] == (u["test_nll"] <= u["paper_nll"] * (1 + density.PAPER_TOLERANCE))
