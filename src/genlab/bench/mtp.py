"""`genlab bench mtp`: multi-token prediction on vs off at equal steps on the embedded corpus
(main-head validation loss), then self-speculative greedy decoding with the trained MTP module:
acceptance rate and speed-up over plain cached greedy decoding (same output, checked)."""

from __future__ import annotations

import tempfile
import time

from genlab.bench.common import machine_info, print_table


def _train(depth: int, steps: int, d: str):
    from genlab.config import resolve
    from genlab.train.trainer import prepare_training

    sets = [
        "data.tokenizer=byte",
        "data.packing_length=128",
        "model.arch=deepseek",
        "model.d_model=96",
        "model.n_layer=2",
        "model.n_head=4",
        "model.ffn_hidden=192",
        "model.q_lora_rank=0",
        "model.kv_lora_rank=32",
        "model.qk_nope_head_dim=16",
        "model.qk_rope_head_dim=8",
        "model.v_head_dim=16",
        "model.n_routed_experts=8",
        "model.num_experts_per_tok=2",
        "model.moe_intermediate_size=48",
        f"model.mtp_depth={depth}",
        "model.mtp_lambda=0.3",
        f"train.steps={steps}",
        "train.batch_rows=4",
        "train.lr=3e-3",
        "train.warmup_steps=10",
        "train.log_every=10",
        f"train.eval_every={steps}",
        "train.eval_batches=8",
        f"train.ckpt_every={steps}",
        "train.schedule=cosine",
        "model.balance_gamma=0.01",
    ]
    run, trainer = prepare_training(resolve(None, None, sets), f"{d}/mtp{depth}", progress=False, log=lambda *a: None)
    last = trainer.fit()
    return trainer, last


def _greedy(model, prompt: list[int], n: int) -> tuple[list[int], dict]:
    """Plain cached greedy decoding (the reference), with its tokens/s."""
    from genlab.generate import SamplingSettings, generate

    t0 = time.perf_counter()
    out = list(generate(model, prompt, SamplingSettings(n, temperature=0)))
    return out, {"tokens_per_s": len(out) / max(time.perf_counter() - t0, 1e-9)}


def run(steps=None, quick=False) -> dict:
    import torch

    # one thread: on this shared 2-core machine (load ~15) two OpenMP threads spend most of each small
    # kernel waiting at a barrier for a descheduled partner; both sides of every comparison use the same
    torch.set_num_threads(1)
    from genlab.generate import speculative_greedy

    steps = steps or (10 if quick else 300)
    res = {"machine": machine_info(), "note": "CPU shared with other jobs", "steps": steps}
    with tempfile.TemporaryDirectory() as d:
        off, last_off = _train(0, steps, d)
        on, last_on = _train(1, steps, d)
    res["val_loss_mtp_off"], res["val_loss_mtp_on"] = last_off["val_loss"], last_on["val_loss"]
    model, task = on.model.cpu().eval(), on.task
    spec_rows = []
    for prompt in ("The ", "def ", "import "):
        ids = task.prompt_ids(prompt)
        n = 16 if quick else 96
        ref, g = _greedy(model, ids, n)
        out, s = speculative_greedy(model, ids, n)
        spec_rows.append(
            {
                "prompt": prompt,
                "identical": out == ref,
                "acceptance": s["acceptance"],
                "greedy_tokens_per_s": g["tokens_per_s"],
                "spec_tokens_per_s": s["tokens_per_s"],
                "speedup": s["tokens_per_s"] / g["tokens_per_s"],
            }
        )
    res["speculative"] = spec_rows
    print_table(
        f"MTP on vs off, {steps} steps (byte tokens, 2 layers x 96)",
        ["run", "main-head val loss"],
        [["MTP off", f"{res['val_loss_mtp_off']:.4f}"], ["MTP on (D=1, lambda 0.3)", f"{res['val_loss_mtp_on']:.4f}"]],
    )
    print_table(
        "self-speculative greedy decoding with MTP module 1",
        ["prompt", "same as greedy", "acceptance", "greedy tok/s", "speculative tok/s", "speed-up"],
        [
            [
                repr(r["prompt"]),
                r["identical"],
                f"{r['acceptance']:.2f}",
                f"{r['greedy_tokens_per_s']:.1f}",
                f"{r['spec_tokens_per_s']:.1f}",
                f"{r['speedup']:.2f}",
            ]
            for r in spec_rows
        ],
    )
    return res
