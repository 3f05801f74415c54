import os

# Triton reads TRITON_INTERPRET when it is first imported, and torch.compile's inductor imports it too
# (tests/lm/test_compile.py, the compile rows of the bench smoke tests): set before anything imports
# triton, so tests/core/test_triton_interpret.py runs its kernels in the interpreter whatever ran first.
os.environ.setdefault("TRITON_INTERPRET", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session", autouse=True)
def genlab_cache(tmp_path_factory):
    """Raw text is prepared into GENLAB_CACHE (genlab.data.corpus): a per-session directory, never ~/.cache
    (subprocesses started with os.environ inherit it)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("GENLAB_CACHE", str(tmp_path_factory.mktemp("genlab-cache")))
    yield
    mp.undo()


@pytest.fixture(scope="session", autouse=True)
def cpu_kernels():
    """genlab's C++ CPU kernels (genlab.ops.cpu_ext: NADE's fused pass) are built before any test runs
    (about a minute on a machine that has never built them), so no test's output carries the build
    message and the subprocesses tests start find them cached. A machine that cannot build them warns
    once here, and the tests that need them fail, naming the reason."""
    from genlab.ops import cpu_ext

    cpu_ext.load(log=None)


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

    texts = [
        f"document {i}: "
        + ("the quick brown fox jumps over the lazy dog. " * (1 + i % 5))
        + ("日本語のテキスト 🎉 " if i % 3 == 0 else "")
        for i in range(40)
    ]
    p = tmp_path / "corpus.jsonl"
    p.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts), encoding="utf-8")
    return p


@pytest.fixture
def npz16(tmp_path):
    """A MADE-format .npz of 16-dim rows (4 x 4 images) with structure: two prototypes plus noise."""
    rng = np.random.RandomState(0)
    protos = rng.rand(2, 16) < 0.5

    def make(n):
        x = protos[rng.randint(2, size=n)] ^ (rng.rand(n, 16) < 0.05)
        return x.astype(np.float32)

    p = tmp_path / "toy.npz"
    np.savez(p, inputsize=16, train_data=make(200), valid_data=make(40), test_data=make(60))
    return p


def _tiny_overrides(path, steps=6, extra=()):
    gqa = [] if "model.arch=deepseek" in extra else ["model.n_kv_head=2"]  # a dense-Transformer key
    return [
        f"data.path={path}",
        "data.tokenizer=byte",
        "data.packing_length=64",
        "model.d_model=32",
        "model.n_layer=2",
        "model.n_head=4",
        *gqa,
        f"train.steps={steps}",
        "train.batch_rows=4",
        "train.log_every=1",
        "train.eval_every=3",
        "train.eval_batches=2",
        "train.ckpt_every=3",
        "train.warmup_steps=2",
        "train.lr=3e-3",
        *extra,
    ]


@pytest.fixture(scope="session")
def tiny_overrides():
    """`tiny_overrides(corpus, steps=6, extra=())`: --set overrides of a tiny byte-level LM run on `corpus`
    (2 x 32, packing length 64, eval and checkpoint every 3 steps). Session-scoped, so module-scoped
    fixtures can use it too."""
    return _tiny_overrides


def _watch_updates(trainer) -> dict:
    """Wrap trainer.train_step; the returned dict fills with {step: did this step change any weight}."""
    changed, step_fn = {}, trainer.train_step

    def watched():
        before = [p.detach().clone() for p in trainer.model.parameters()]
        m = step_fn()
        changed[trainer.step] = any(not torch.equal(b, p) for b, p in zip(before, trainer.model.parameters()))
        return m

    trainer.train_step = watched
    return changed


@pytest.fixture
def watch_updates():
    """`changed = watch_updates(trainer)`: wraps trainer.train_step; `changed` fills with
    {step: did this step change any weight}."""
    return _watch_updates
