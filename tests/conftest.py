import os

import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture
def one_thread():
    """Tiny shapes only pay for thread synchronisation (badly so on a loaded machine): 1 thread, restored
    after. Modules opt in with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def tiny_corpus(tmp_path):
    """A small .jsonl corpus with CJK and emoji, enough documents for a split."""
    import json

    texts = [f"document {i}: " + ("the quick brown fox jumps over the lazy dog. " * (1 + i % 5))
             + ("日本語のテキスト 🎉 " if i % 3 == 0 else "") for i in range(40)]
    p = tmp_path / "corpus.jsonl"
    p.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts), encoding="utf-8")
    return p


def tiny_overrides(path, steps=6, extra=()):
    gqa = [] if "model.arch=deepseek" in extra else ["model.n_kv_head=2"]  # a dense-Transformer key
    return [f"data.path={path}", "data.tokenizer=byte", "data.packing_length=64", "model.d_model=32",
            "model.n_layer=2", "model.n_head=4", *gqa, f"train.steps={steps}", "train.batch_rows=4",
            "train.log_every=1", "train.eval_every=3", "train.eval_batches=2", "train.ckpt_every=3",
            "train.warmup_steps=2", "train.lr=3e-3", *extra]


def watch_updates(trainer) -> dict:
    """Wrap trainer.train_step; the returned dict fills with {step: did this step change any weight}."""
    changed, step_fn = {}, trainer.train_step

    def watched():
        before = [p.detach().clone() for p in trainer.model.parameters()]
        m = step_fn()
        changed[trainer.step] = any(not torch.equal(b, p) for b, p in zip(before, trainer.model.parameters()))
        return m

    trainer.train_step = watched
    return changed
