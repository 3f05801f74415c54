"""Tasks: each one knows how to build its data, model, loss, evaluation and sampler.

The trainer uses only this protocol (see tasks/lm.py for the reference implementation):

    prepare(run_dir, fresh)            read data; build (fresh) or load (resume) artifacts like a tokenizer
    save_artifacts(run_dir)            write them into a new run dir
    load_for_inference(run_dir)        load them for sample / eval
    build_model() -> nn.Module
    initial_state() -> tuple           position in the training stream (resumable, JSON-able ints)
    next_batch(state) -> (batch, state)   batch has .to(device), .n_targets, .n_real, .capacity
    loss(model, batch) -> (summed loss tensor, count)
    evaluate(model, data=None, max_batches=None, device=...) -> dict with "val_loss"
    eval_report(run, model, data_path) -> dict          for `genlab eval`
    sample_cli(run, model, args) -> None                for `genlab sample`

New tasks register in TASKS (name -> "module:Class"); config.TASK_NAMES lists the same names.
"""

from __future__ import annotations

import importlib

from genlab.errors import GenlabError

TASKS = {
    "lm": "genlab.tasks.lm:LMTask",
    "diffusion": "genlab.tasks.diffusion:DiffusionTask",
    "detection": "genlab.tasks.detection:DetectionTask",
    "density": "genlab.tasks.density:DensityTask",
}


def make_task(cfg):
    if cfg.task not in TASKS:
        raise GenlabError(f"unknown task {cfg.task!r}; available: {', '.join(TASKS)}")
    module, cls = TASKS[cfg.task].split(":")
    return getattr(importlib.import_module(module), cls)(cfg)
