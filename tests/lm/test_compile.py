"""train.compile: blocks compiled with dynamic shapes give the eager model's loss and gradients."""

import copy

import numpy as np
import pytest
import torch

from genlab.data.packing import TokenDataset
from genlab.families.lm.args import LMArgs
from genlab.families.lm.task import LMTask
from genlab.families.lm.transformer import Transformer
from genlab.train.compile import compile_model, why_not


def test_fallback_is_a_warning_not_an_error():
    model = Transformer(LMArgs(d_model=32, n_layer=1, n_head=2), 64, 16)
    logs = []
    assert why_not(model, torch.device("cpu"), "selective")
    assert compile_model(model, torch.device("cpu"), "selective", log=logs.append) == []
    assert logs and logs[0].startswith("warning: train.compile")
    assert not hasattr(model.blocks[0], "_compiled_call_impl") or model.blocks[0]._compiled_call_impl is None


def test_compile_key_is_documented():
    from genlab.config.run import TrainConfig

    assert TrainConfig().compile is False


@pytest.mark.slow
def test_compiled_blocks_match_eager_on_packed_batches_of_different_lengths():
    if why_not(None, torch.device("cpu")):
        pytest.skip("torch.compile cannot run here")
    torch.manual_seed(0)
    eager = Transformer(LMArgs(d_model=32, n_layer=2, n_head=4, n_kv_head=2, attn_backend="sdpa"), 64, 32)
    compiled = copy.deepcopy(eager)
    assert compile_model(compiled, torch.device("cpu"), log=lambda *a: None) == ["blocks.0", "blocks.1"]
    rng = np.random.default_rng(0)
    docs = [rng.integers(0, 64, n).tolist() for n in rng.integers(3, 50, 40)]
    ds = TokenDataset(docs, 32, 3, seed=0)
    state = (0, 0, 0)
    for _ in range(3):  # three batch layouts (token counts and boundaries differ): one dynamic graph
        batch, state = ds.batch_at(state)
        losses, grads = [], []
        for m in (eager, compiled):
            m.zero_grad()
            loss, n = LMTask.loss(m, batch)
            (loss / n).backward()
            losses.append(float(loss.detach()) / n)
            grads.append([p.grad.clone() for p in m.parameters()])
        assert losses[0] == pytest.approx(losses[1], rel=1e-5, abs=1e-5)
        for a, b in zip(*grads):
            torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4)
