"""--device on sample / eval / detect, train.precision (fp32 | bf16 | fp8 | auto) and the attention backend
`auto` picks (genlab/train/device.py, ops/attention.py). Run on a CPU-only machine: CUDA is simulated by
monkeypatching torch.cuda.is_available where only the resolution is tested."""

import json

import pytest
import torch

from genlab.cli import main
from genlab.config import RunConfig, apply_overrides, resolve
from genlab.errors import GenlabError
from genlab.ops import attention as A
from genlab.train.device import autocast, autocast_dtype, resolve_device, resolve_precision
from genlab.train.trainer import prepare_training, train

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def run_dir(tiny_overrides, tmp_path_factory):
    root = tmp_path_factory.mktemp("device")
    corpus = root / "corpus.jsonl"
    corpus.write_text(
        "".join(json.dumps({"text": f"document {i}: the quick brown fox. " * (1 + i % 4)}) + "\n" for i in range(40))
    )
    run, _ = train(resolve(None, None, tiny_overrides(corpus, steps=3)), root / "run", progress=False, log=lambda *a: 0)
    return run.path


def _one_line(capsys, argv, *words):
    code = main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("genlab: error:"), err
    for w in words:
        assert w in lines[0], (w, lines[0])


# ---------------------------------------------------------------------------- --device
@pytest.mark.parametrize(
    "argv",
    [
        ["sample", "RUN", "--max-new-tokens", "3"],
        ["eval", "RUN"],
        ["eval", "RUN", "--tasks", "x"],
        ["detect", "RUN", "--features", "f.npy"],
    ],
)
def test_device_cuda_without_gpu_is_one_line(run_dir, argv, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    if argv[-1] == "x":
        pytest.importorskip("lm_eval")
    argv = [str(run_dir) if a == "RUN" else a for a in argv]
    _one_line(capsys, argv + ["--device", "cuda"], "--device cuda", "no CUDA GPU")


def test_device_bad_names_are_one_line(run_dir, capsys):
    _one_line(capsys, ["sample", str(run_dir), "--device", "nonsense"], "--device nonsense", "not a device")
    _one_line(capsys, ["eval", str(run_dir), "--device", "meta"], "--device meta", "cpu or cuda")


def test_resolve_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu") == resolve_device(None) == resolve_device("cpu")
    with pytest.raises(GenlabError, match="no CUDA GPU"):
        resolve_device("cuda:0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cuda:0") == torch.device("cuda:0")
    with pytest.raises(GenlabError, match="1 CUDA device"):
        resolve_device("cuda:3")


def test_sample_and_eval_on_explicit_cpu_equal_the_default(run_dir, capsys):
    """auto on this machine is cpu: the same text and the same loss as --device cpu."""
    outs = []
    for dev in ([], ["--device", "cpu"], ["--device", "auto"]):
        assert main(["sample", str(run_dir), "--prompt", "the ", "--max-new-tokens", "8", "--seed", "1", *dev]) == 0
        assert main(["eval", str(run_dir), "--json", *dev]) == 0
        outs.append(capsys.readouterr().out)
    assert outs[0] == outs[1] == outs[2]
    assert "val_loss" in json.loads(outs[0].splitlines()[-1])


def test_eval_report_runs_where_the_model_is(run_dir, monkeypatch):
    """Each family's eval_report evaluates on the model's device (the one --device put it on)."""
    from genlab.train.rundir import load_run

    run, _, task, model = load_run(run_dir, torch.device("cpu"))
    seen = []
    real = type(task).evaluate

    def spy(self, model, data=None, max_batches=None, device="cpu"):
        seen.append(torch.device(device))
        return real(self, model, data, max_batches, device)

    monkeypatch.setattr(type(task), "evaluate", spy)
    task.eval_report(run, model, None)
    assert seen == [torch.device("cpu")]


# ---------------------------------------------------------------------------- train.precision
def test_precision_resolution(monkeypatch):
    assert resolve_precision("auto", "cuda") == "bf16"
    assert resolve_precision("auto", "cpu") == "fp32"
    for p in ("fp32", "bf16", "fp8"):
        assert resolve_precision(p, "cpu") == resolve_precision(p, "cuda") == p
    assert autocast_dtype("fp32", "cuda") is None and autocast_dtype("fp32", "cpu") is None
    assert autocast_dtype("bf16", "cpu") == torch.bfloat16 == autocast_dtype("bf16", "cuda")
    assert autocast_dtype("fp8", "cuda") == torch.bfloat16 and autocast_dtype("fp8", "cpu") is None
    with pytest.raises(GenlabError, match="train.precision"):
        resolve_precision("fp16", "cpu")
    # auto with and without a GPU, as the trainer resolves it (device first, then precision)
    for has_gpu, want in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(torch.cuda, "is_available", lambda has_gpu=has_gpu: has_gpu)
        assert resolve_precision("auto", resolve_device("auto")) == want
    assert RunConfig().train.precision == "auto"  # the default
    with pytest.raises(GenlabError, match="train.precision"):
        apply_overrides(RunConfig(), ["train.precision=fp16"]).validate()


def _linear_dtype_in_loss(tmp_path, corpus, tiny_overrides, precision: str | None) -> tuple[torch.dtype, object]:
    extra = [f"train.precision={precision}"] if precision else []
    cfg = resolve(None, None, tiny_overrides(corpus, steps=2, extra=extra))
    _, trainer = prepare_training(cfg, tmp_path / f"run-{precision}", progress=False, log=lambda *a: 0)
    seen = []
    linear = next(m for m in trainer.model.modules() if isinstance(m, torch.nn.Linear))
    hook = linear.register_forward_hook(lambda mod, inp, out: seen.append(out.dtype))
    trainer.train_step()
    hook.remove()
    return seen[0], trainer


@pytest.fixture
def corpus(tmp_path):
    p = tmp_path / "corpus.txt"
    p.write_text("\n\n".join(f"paragraph {i}: the quick brown fox jumps." for i in range(30)), encoding="utf-8")
    return p


def test_fp32_builds_no_autocast_and_bf16_autocasts_on_cpu(tmp_path, corpus, tiny_overrides):
    dt32, t32 = _linear_dtype_in_loss(tmp_path, corpus, tiny_overrides, "fp32")
    dt16, t16 = _linear_dtype_in_loss(tmp_path, corpus, tiny_overrides, "bf16")
    dtauto, tauto = _linear_dtype_in_loss(tmp_path, corpus, tiny_overrides, None)
    assert dt32 == torch.float32 and dtauto == torch.float32 and dt16 == torch.bfloat16
    assert not isinstance(t32.amp, torch.autocast) and not isinstance(tauto.amp, torch.autocast)
    assert isinstance(t16.amp, torch.autocast) and t16.precision == "bf16" and tauto.precision == "fp32"
    assert all(p.dtype == torch.float32 for p in t16.model.parameters())  # fp32 masters


def test_auto_on_cpu_is_bitwise_fp32(tmp_path, corpus, tiny_overrides):
    """The default (auto) on a CPU trains exactly as train.precision = fp32."""
    losses = []
    for extra in ([], ["train.precision=fp32"]):
        run, _ = train(
            resolve(None, None, tiny_overrides(corpus, steps=3, extra=extra)),
            tmp_path / f"r{len(extra)}",
            progress=False,
            log=lambda *a: 0,
        )
        losses.append([r["loss"] for r in run.metrics() if "loss" in r])
    assert losses[0] == losses[1] and len(losses[0]) == 3


def test_autocast_context_is_reusable():
    ctx = autocast("bf16", "cpu")
    lin = torch.nn.Linear(4, 4)
    for _ in range(2):
        with ctx:
            assert lin(torch.randn(2, 4)).dtype == torch.bfloat16
    with autocast("fp32", "cpu"):
        assert lin(torch.randn(2, 4)).dtype == torch.float32


# ---------------------------------------------------------------------------- attention backend
def test_auto_attention_never_picks_triton(monkeypatch):
    """auto = flash-attn's varlen kernel where it can run, else SDPA; genlab's Triton kernel is opt-in even
    where triton is available (unvalidated on a GPU: docs/gpu_bench_results.md)."""
    monkeypatch.setattr(A, "_triton_available", lambda *a: True)
    monkeypatch.setattr(A, "_triton_attention", lambda *a, **k: pytest.fail("auto picked triton"))
    torch.manual_seed(0)
    q, k, v = torch.randn(9, 4, 16), torch.randn(9, 2, 16), torch.randn(9, 2, 16)
    cu = torch.tensor([0, 4, 9], dtype=torch.int32)
    torch.testing.assert_close(A.BACKENDS["auto"](q, k, v, cu, 5), A.sdpa_attention(q, k, v, cu, 5))
    assert not A.flash_attn_usable(q, k, v)  # CPU tensors: never flash-attn
    monkeypatch.setattr(A, "_FLASH_ATTN", None)  # looked up: not installed
    assert not A.flash_attn_usable(q.bfloat16(), k.bfloat16(), v.bfloat16())
