"""The one training loop. It knows a task only through the Task protocol (train/task.py): prepare,
build_model, initial_state, next_batch, batch_units, loss (summed loss, count), on_optimizer_step,
after_step, evaluate, eval_images and model_flops_per_token; RunDir.create calls save_artifacts.
Logging goes through train/loggers.py (train.log: metrics.jsonl, TensorBoard, W&B)."""

from __future__ import annotations

import random
import signal
import threading
import time
from pathlib import Path

import torch

from genlab.config import RunConfig, apply_overrides, parse_log, to_dict
from genlab.errors import GenlabError
from genlab.ops.fp8 import convert_to_fp8
from genlab.progress import TrainProgress
from genlab.train import checkpoint, distributed, loggers, lora, parallel, sharded_checkpoint
from genlab.train.activation_checkpoint import apply_activation_checkpointing
from genlab.train.compile import compile_model
from genlab.train.device import autocast, resolve_precision
from genlab.train.flops import measured_peak_flops
from genlab.train.guards import SpikeGuard
from genlab.train.optim import build_optimizer, lr_factor, set_lr
from genlab.train.rundir import BEST_DIR, QuietRunDir, RunDir


class StopOnSignal:
    """Turn the first Ctrl-C (SIGINT) or SIGTERM into a request to stop after the current step; a
    second one at least REPEAT_S seconds later interrupts at once. (Closer repeats are the same
    request: under torchrun a terminal Ctrl-C reaches each worker twice, once from the terminal and
    once forwarded by the torchrun agent.) Outside the main thread, signals are left alone."""

    REPEAT_S = 2.0

    def __init__(self):
        self.requested = False
        self._first = 0.0
        self._old = {}

    def _handler(self, signum, frame):
        now = time.monotonic()
        if self.requested and now - self._first >= self.REPEAT_S:
            raise KeyboardInterrupt
        if not self.requested:
            self.requested, self._first = True, now

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise GenlabError("train.device = 'cuda' but no CUDA device is available; use auto or cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


class Trainer:
    def __init__(self, cfg: RunConfig, run: RunDir, resume: bool = False, progress: bool = True, log=print):
        self.cfg, self.run, self.resume, self.show_progress, self.log = cfg, run, resume, progress, log
        t = cfg.train
        if t.threads:
            torch.set_num_threads(t.threads)
        self.device = pick_device(t.device)
        distributed.setup(t.device)  # under torchrun (WORLD_SIZE > 1): join the group; train/distributed.py
        if not distributed.is_main():  # rank 0 alone writes the run dir and talks
            self.run, self.show_progress, self.log = QuietRunDir(run), False, (lambda *a, **k: None)
        self.log_names = parse_log(t.log)  # train.log: jsonl + tensorboard / wandb (train/loggers.py)
        loggers.check(self.log_names, run.path)  # installed, directories writable: before anything is written
        self.loggers = loggers.Loggers(self.log_names, [])  # opened by fit()
        seed_everything(t.seed)
        self.task = cfg.family.make_task(cfg)
        self.task.prepare(run.path, fresh=not resume)
        self.model = self.task.build_model().to(self.device)
        if lora.has_lora(self.model):  # train.lora_rank: trainable share, adapter checkpoint size
            self.log(lora.summary(self.model))
        if t.precision == "fp8":  # block-scaled E4M3 Linears, fp32 masters (genlab.ops.fp8)
            convert_to_fp8(self.model)
        apply_activation_checkpointing(self.model, t.activation_checkpointing)  # "none": no change
        if t.compile:  # per block, dynamic shapes; eager with a warning where it cannot (train/compile.py)
            compile_model(self.model, self.device, t.activation_checkpointing, log=self.log)
        self.fwd_model = parallel.wrap(self.model, t.parallel, self.device)  # DDP / FSDP2 / itself
        self.opt = build_optimizer(self.model, t)
        self.step = 0
        self.data_state = self.task.initial_state()
        self.tokens_seen = 0
        self.guard = SpikeGuard(
            t.spike_window,
            t.spike_factor,  # loss-spike and NaN/inf guard, train/guards.py
            nan_patience=t.nan_patience,
        )
        self.best = {"val_loss": float("inf"), "step": 0, "evals_since": 0}  # early stopping
        self.stopped_early = False
        self.model_metrics: dict = {}
        if resume:
            self._restore()
        # train.precision: fp32 = no autocast; bf16 (and fp8 on CUDA) = bf16 autocast; auto = bf16 on CUDA,
        # fp32 on CPU (train/device.py)
        self.precision = resolve_precision(t.precision, self.device)
        self.amp = autocast(self.precision, self.device)
        # MFU = M (DeepSeek's model FLOPs per token) * tokens/s / peak FLOP/s; see train/flops.py
        self.flops_M = self.task.model_flops_per_token()
        self.peak_flops = (t.peak_flops or measured_peak_flops(self.device.type)) if self.flops_M else 0.0

    # ------------------------------------------------------------------ state
    def _state(self) -> dict:
        st = {
            "step": self.step,
            "data_state": list(self.data_state),
            "tokens_seen": self.tokens_seen,
            "optimizer": self.opt.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "python_rng": list(random.getstate()[1]),
            "best": dict(self.best),
            "micro_batches": self.micro_batches(),  # per step, all ranks (resume tells a change)
        }
        st["spike_guard"] = self.guard.state_dict()
        if torch.cuda.is_available():
            st["cuda_rng"] = torch.cuda.get_rng_state_all()
        return st

    def _restore(self) -> None:
        ckpt = checkpoint.latest_valid(self.run.path)
        if ckpt is None:
            raise GenlabError(f"{self.run.path}: no complete checkpoint to resume from")
        if (ckpt / sharded_checkpoint.DCP_DIR).is_dir():  # sharded (FSDP2) checkpoint: any number of processes
            st = sharded_checkpoint.load_sharded(ckpt, self.model, self.opt)
        elif parallel.is_sharded(self.model):  # whole-model checkpoint into FSDP2 shards
            st = sharded_checkpoint.load_whole_into_sharded(ckpt, self.model, self.opt)
        else:
            st = checkpoint.load(ckpt, self.model)
            self.opt.load_state_dict(st["optimizer"])
        self.step = int(st["step"])
        self.data_state = tuple(st["data_state"])
        self.tokens_seen = int(st["tokens_seen"])
        if "spike_guard" in st:
            self.guard.load_state_dict(st["spike_guard"])
        self.best = dict(st.get("best", self.best))
        was, now = st.get("micro_batches"), self.micro_batches()
        if was is not None and was != now:
            self.log(
                f"the global batch changes from {was} to {now} micro-batches per step (train.grad_accum "
                f"{self.cfg.train.grad_accum} x {distributed.world_size()} processes); set train.grad_accum to "
                "keep it"
            )
        patience = self.cfg.train.early_stop_patience
        self.stopped_early = bool(patience) and self.best["evals_since"] >= patience
        torch.set_rng_state(st["torch_rng"])
        random.setstate((3, tuple(st["python_rng"]), None))
        if "cuda_rng" in st and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(st["cuda_rng"])
        self.run.truncate_metrics(self.step)
        self.log(f"resumed from {ckpt.name} (step {self.step})")

    def save_checkpoint(self) -> Path | None:
        self.loggers.flush()
        if parallel.is_sharded(self.model):  # FSDP2: every rank writes its shards
            st = self._state()
            del st["optimizer"]  # in dcp/, sharded
            return sharded_checkpoint.save_sharded(
                self.run.path, self.step, self.model, self.opt, st, self.cfg.train.keep_ckpts
            )
        if not distributed.is_main():
            return None
        return checkpoint.save(self.run.path, self.step, self.model, self._state(), self.cfg.train.keep_ckpts)

    # ------------------------------------------------------------------ loop
    def micro_batches(self) -> int:
        """Micro-batches of one optimizer step, all ranks: grad_accum per process x processes."""
        return self.cfg.train.grad_accum * distributed.world_size()

    def train_step(self) -> dict:
        t = self.cfg.train
        batches, n_own, n_real, capacity = [], 0, 0, 0
        # the step's micro-batches from the one global stream; this rank keeps (and reads) its own only
        for i in range(self.micro_batches()):
            batch, self.data_state = self.task.next_batch(self.data_state)
            real, slots = self.task.batch_units(batch)  # from the layout: no tokens read
            n_real, capacity = n_real + real, capacity + slots
            if distributed.mine(i):
                batches.append(batch.to(self.device))
                n_own += batch.n_targets
        n_total = round(distributed.all_reduce_sum(n_own))  # the step's targets over all ranks (exact)
        factor = lr_factor(self.step, t)  # this step's lr / the peak lr
        lr = t.lr * factor
        set_lr(self.opt, lr)
        loss_total = 0.0
        scale = distributed.world_size() / max(1, n_total)  # global normalisation; DDP averages over ranks
        for j, batch in enumerate(batches):
            with parallel.no_sync(self.fwd_model, last=j == len(batches) - 1):
                with self.amp:
                    loss_sum, _ = self.task.loss(self.fwd_model, batch)
                (loss_sum * scale).backward()
            loss_total += float(loss_sum.detach())
        loss_total = distributed.all_reduce_sum(loss_total)
        gnorm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), t.grad_clip or float("inf")))
        spike = self.guard.check(loss_total / max(1, n_total), gnorm)  # None, or why this update is skipped
        if spike is None:
            self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        # once per step, after every micro-batch: metrics such as MoE loads and MaxVio -> metrics.jsonl
        # (skipped=True: the update was discarded, so e.g. the MoE balance bias stays as it is too)
        self.model_metrics = self.task.on_optimizer_step(self.model, factor, skipped=spike is not None)
        self.step += 1
        self.task.after_step(self.model, self.step)  # e.g. an EMA of the weights (diffusion)
        self.tokens_seen += n_real
        return {
            "loss": loss_total / max(1, n_total),
            "lr": lr,
            "grad_norm": gnorm,
            "n_real": n_real,
            "capacity": capacity,  # token slots of the step, all ranks: the global batch in tokens
            "skipped": spike,
        }

    def evaluate(self) -> dict:
        return self.task.evaluate(self.model, max_batches=self.cfg.train.eval_batches, device=self.device)

    def fit(self) -> dict:
        """Train to the end. However it ends, RUN/.lock is released; an error or a Ctrl-C leaves
        run.json saying "failed" or "interrupted" (the newest complete checkpoint resumes it)."""
        try:
            return self._fit()
        except BaseException as e:
            try:
                self.run.set_status("interrupted" if isinstance(e, KeyboardInterrupt) else "failed", self.step)
            except OSError:
                pass  # e.g. the disk is full: the error being raised says more
            raise
        finally:
            self.loggers.close()
            self.run.release()

    def _fit(self) -> dict:
        t = self.cfg.train
        self.run.set_status("running", self.step)
        wandb_cfg = to_dict(self.cfg) if "wandb" in self.log_names else None
        self.loggers = loggers.Loggers.open(self.log_names, self.run, self.step if self.resume else None, wandb_cfg)
        last: dict = {}
        # real tokens, token slots and start time of the current logging interval
        self._interval = [0, 0, time.perf_counter()]
        with TrainProgress(t.steps, self.step, enabled=self.show_progress) as progress, StopOnSignal() as stop:
            while self.step < t.steps and not self.stopped_early:
                # checked between whole steps, so the saved state is consistent; with several processes
                # any rank's request stops them all at the same step (one tiny all-reduce per step)
                if distributed.any_rank(stop.requested):
                    self.save_checkpoint()
                    self.run.set_status("interrupted", self.step)
                    raise KeyboardInterrupt
                m = self.train_step()  # a non-finite loss/gradient is skipped by self.guard (or stops the run)
                last = self._log(m, progress) or last
                if self.step % t.ckpt_every == 0 or self.step == t.steps or self.stopped_early:
                    self.save_checkpoint()
        if self.stopped_early:
            self.log(
                f"early stop at step {self.step}: no lower val_loss in {t.early_stop_patience} evaluations; "
                f"best {self.best['val_loss']:.4f} at step {self.best['step']} (kept in {BEST_DIR}/)"
            )
        distributed.barrier()  # every rank ends together: none tears down while rank 0 still writes
        self.run.set_status("finished", self.step)
        return last

    def _track_best(self, val_loss: float) -> None:
        """Early stopping (train.early_stop_patience > 0): save each new best to RUN/best/; stop after
        `patience` evaluations in a row without a lower val_loss."""
        patience = self.cfg.train.early_stop_patience
        if not patience:
            return
        if val_loss < self.best["val_loss"]:
            self.best = {"val_loss": val_loss, "step": self.step, "evals_since": 0}
            state = {"step": self.step, "val_loss": val_loss}
            if parallel.is_sharded(self.model):  # FSDP2: every rank gathers, rank 0 writes
                sharded_checkpoint.save_whole_from_shards(
                    self.run.path / BEST_DIR, self.step, self.model, state, keep=1
                )
            elif distributed.is_main():
                checkpoint.save(self.run.path / BEST_DIR, self.step, self.model, state, keep=1)
        else:
            self.best["evals_since"] += 1
            self.stopped_early = self.best["evals_since"] >= patience

    def _log(self, m: dict, progress: TrainProgress) -> dict | None:
        """Progress bar every step; a metrics.jsonl record on log and eval steps."""
        t = self.cfg.train
        self._interval[0] += m["n_real"]
        self._interval[1] += m["capacity"]
        now = time.perf_counter()
        tps = self._interval[0] / max(1e-9, now - self._interval[2])
        progress.update(self.step, m["loss"], tps)
        is_last = self.step == t.steps
        record = None
        if self.step % t.log_every == 0 or is_last:
            record = {
                "step": self.step,
                "loss": m["loss"],
                "lr": m["lr"],
                "tokens": self.tokens_seen,
                "tokens_per_s": tps,
                "global_batch_tokens": m["capacity"],
                "real_fraction": self._interval[0] / max(1, self._interval[1]),
                "grad_norm": m["grad_norm"],
            }  # real_fraction: over every batch since the last record
            record.update(self.model_metrics)
            if self.flops_M:
                record["mfu"] = self.flops_M * tps / self.peak_flops
            self._interval = [0, 0, now]
        if m.get("skipped"):  # a loss spike: always recorded, and told
            record = record or {
                "step": self.step,
                "loss": m["loss"],
                "lr": m["lr"],
                "tokens": self.tokens_seen,
                "grad_norm": m["grad_norm"],
            }
            record.update(skipped=True, skip_reason=m["skipped"])
            (progress.note if progress.enabled else self.log)(f"step {self.step}: update skipped, {m['skipped']}")
        images, evaluated = None, self.step % t.eval_every == 0 or is_last
        if evaluated:
            ev = self.evaluate()
            if ev:
                record = record or {"step": self.step, "loss": m["loss"], "lr": m["lr"], "tokens": self.tokens_seen}
                record.update(ev)
                self._track_best(distributed.from_rank0(ev["val_loss"]))  # one decision on every rank
                progress.note(f"step {self.step}: val_loss {ev['val_loss']:.4f}")
            if self.loggers.wants_images:  # tensorboard / wandb: a few samples (diffusion, density)
                images = self.task.eval_images(self.model, self.device)
            self._interval[2] = time.perf_counter()  # evaluation time is not training throughput
        if record:
            self.loggers.log(self.step, record)  # metrics.jsonl, and tensorboard / wandb when named
        if evaluated:
            self.loggers.log_images(self.step, images or {})
            self.loggers.flush()
        return record


def prepare_training(
    cfg: RunConfig | None,
    out: str | Path | None,
    resume: bool = False,
    progress: bool = True,
    overrides: list[str] | None = None,
    log=print,
):
    """Check everything, then create (or reopen, with resume) the run dir. Returns (run, trainer).

    On resume the run's own config.toml is used, with `overrides` applied (e.g. more steps)."""
    if resume:
        run = RunDir.open_for_resume(out)  # takes RUN/.lock (rank 0); fit() releases it
        try:
            cfg = apply_overrides(run.config(), overrides or []).validate()
            trainer = Trainer(cfg, run, resume=True, progress=progress, log=log)
            if overrides and distributed.is_main():
                run.write_config(cfg)
        except BaseException:
            run.release()
            raise
    else:
        run = RunDir.plan(cfg, out)
        trainer = Trainer(cfg, run, resume=False, progress=progress, log=log)  # all input checks
        trainer.run.create(cfg, trainer.task)  # rank 0 only under torchrun; takes RUN/.lock
    return run, trainer


def train(
    cfg: RunConfig | None,
    out: str | Path | None,
    resume: bool = False,
    progress: bool = True,
    overrides: list[str] | None = None,
    log=print,
):
    """Train to the end. Returns (run dir, last metrics record)."""
    run, trainer = prepare_training(cfg, out, resume, progress, overrides, log)
    return run, trainer.fit()
