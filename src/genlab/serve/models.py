"""The runs a server holds, one object per run and family: text (language models, through the
continuous-batching engine), image (latent diffusion), samples (density models), detection.

Every request-level problem raises `ApiError` (an HTTP status, an OpenAI error type, the parameter);
genlab.serve.app turns it into the OpenAI error object.
"""

from __future__ import annotations

import asyncio
import base64
import io
import math
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from genlab.data.chat import TEMPLATE_FILE, load_chat_template
from genlab.errors import GenlabError
from genlab.families.lm.transformer import DecoderLM
from genlab.serve.engine import Engine
from genlab.train.rundir import load_run


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, type_: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.type = status, message, param, type_


def png_bytes(pixels: np.ndarray) -> bytes:
    """(H, W) or (H, W, 3) uint8 -> PNG file bytes."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def grid(images: np.ndarray, scale: int = 1) -> np.ndarray:
    """(N, H, W[, C]) uint8 -> one near-square grid with 1-pixel gray gutters, each pixel scale x scale."""
    n, h, w = images.shape[:3]
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    out = np.full((rows * (h + 1) + 1, cols * (w + 1) + 1, *images.shape[3:]), 128, dtype=np.uint8)
    for i, img in enumerate(images):
        r, c = divmod(i, cols)
        out[1 + r * (h + 1) : 1 + r * (h + 1) + h, 1 + c * (w + 1) : 1 + c * (w + 1) + w] = img
    return np.kron(out, np.ones((scale, scale) + (1,) * (out.ndim - 2), dtype=np.uint8)) if scale > 1 else out


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


class Served:
    """One served run. `kind` tells the web page and /v1/models which endpoints it answers."""

    kind = ""

    def __init__(self, name: str, path: Path, cfg, task, model):
        self.name, self.path, self.cfg, self.task, self.model = name, path, cfg, task, model
        self.lock = threading.Lock()  # families without an engine: one request at a time on the model

    def describe(self) -> dict:
        return {"kind": self.kind, "task": self.cfg.task, "arch": self.cfg.model.arch, "path": str(self.path)}

    def close(self) -> None:
        pass

    async def run_locked(self, fn, *args):
        """fn(*args) in a worker thread, holding this model's lock (the event loop keeps serving)."""

        def call():
            with self.lock, torch.inference_mode():
                return fn(*args)

        return await asyncio.to_thread(call)


class TextModel(Served):
    kind = "text"

    def __init__(self, *a, opts: ServeOptions, metrics):
        super().__init__(*a)
        self.tokenizer = self.task.tokenizer
        self.context = int(self.cfg.data.packing_length)
        if self.task.objective != "causal":
            raise GenlabError(
                f"{self.path}: a {self.task.objective}-objective run fills masks, it does not continue text; "
                "serve a causal run"
            )
        bos = self.tokenizer.bos_id
        self.eos_ids = frozenset() if bos is None else frozenset([bos])
        from genlab.data.tokenizer import EOT

        self.template = load_chat_template(self.path, bos_token=EOT if bos is not None else "")
        self.chat_stop_ids = self.eos_ids | frozenset(self.template.stop_ids(self.tokenizer))
        self.metrics = metrics.for_model(self.name)
        self.speculative = speculative = opts.speculative
        if speculative and not len(getattr(self.model, "mtp", ())):
            raise GenlabError(f"{self.path}: --speculative needs a deepseek run with model.mtp_depth >= 1")
        self.engine = Engine(
            self.model,
            self.tokenizer,
            max_batch=opts.max_batch,
            max_queue=opts.max_queue,
            metrics=self.metrics,
            batched=isinstance(self.model, DecoderLM),
            speculative=speculative,
            max_len=self.context,
        ).start()

    def describe(self) -> dict:
        own = (Path(self.path) / TEMPLATE_FILE).is_file()
        return {**super().describe(), "context": self.context, "chat_template": "run" if own else "plain"}

    def close(self) -> None:
        self.engine.stop()


class ImageModel(Served):
    kind = "image"

    def __init__(self, *a):
        super().__init__(*a)
        self.size = int(self.cfg.data.image_size)
        self.max_steps = int(self.cfg.model.diffusion_steps)
        if float(self.model.scale_factor) == 0.0:
            raise GenlabError(f"{self.path}: the checkpoint is still in the autoencoder phase; nothing to serve")

    def describe(self) -> dict:
        return {**super().describe(), "size": f"{self.size}x{self.size}", "max_steps": self.max_steps}

    def generate(self, prompt: str, n: int, steps: int, guidance: float, sampler: str, seed: int) -> list[bytes]:
        """n PNG images of `prompt`."""
        images = self.model.sample([prompt] * n, self.task.scheduler(sampler), steps, guidance, seed=seed)
        px = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()  # (N, H, W, C)
        return [png_bytes(p[:, :, 0] if p.shape[2] == 1 else p) for p in px]


class SampleModel(Served):
    kind = "samples"

    def __init__(self, *a):
        super().__init__(*a)
        from genlab.families.density.data import image_shape

        self.n_dims = int(self.task.n_dims)
        self.shape = image_shape(self.n_dims)

    def describe(self) -> dict:
        return {**super().describe(), "dims": self.n_dims, "shape": list(self.shape) if self.shape else None}

    def sample(self, n: int, seed: int) -> np.ndarray:
        return self.model.sample(n, seed).cpu().numpy().astype(np.uint8)  # (n, D) of 0/1

    def grid_png(self, x: np.ndarray) -> bytes | None:
        if self.shape is None:
            return None
        cell = max(1, math.ceil(32 / max(self.shape)))
        return png_bytes(grid(x.reshape(len(x), *self.shape) * 255, scale=cell))


class DetectModel(Served):
    kind = "detection"

    def __init__(self, *a):
        super().__init__(*a)
        self.classes = list(self.task.classes)
        self.feat_dim = int(self.task.feat_dim)

    def describe(self) -> dict:
        return {**super().describe(), "classes": self.classes, "feat_dim": self.feat_dim}

    def detect(self, feats: np.ndarray, smooth: int) -> np.ndarray:
        from genlab.families.detection.stream import detect_offline

        return detect_offline(self.model, feats, smooth=smooth, device=next(self.model.parameters()).device)


@dataclass
class ServeOptions:
    max_batch: int = 16
    max_queue: int = 64
    speculative: bool = False


def load_models(paths: list[str], device: str, opts: ServeOptions, metrics) -> dict[str, Served]:
    """{model id: served run}; the id is the run directory's name (made unique with -2, -3, ...)."""
    out: dict[str, Served] = {}
    try:
        for p in paths:
            run, cfg, task, model = load_run(p, device)
            name = base = Path(run.path).resolve().name or "run"
            k = 2
            while name in out:
                name, k = f"{base}-{k}", k + 1
            args = (name, Path(run.path), cfg, task, model)
            if cfg.task == "lm":
                out[name] = TextModel(*args, opts=opts, metrics=metrics)
            elif cfg.task == "diffusion":
                out[name] = ImageModel(*args)
            elif cfg.task == "density":
                out[name] = SampleModel(*args)
            elif cfg.task == "detection":
                out[name] = DetectModel(*args)
            else:
                raise GenlabError(f"{run.path}: genlab serve does not know task {cfg.task!r}")
    except BaseException:
        for m in out.values():
            m.close()
        raise
    return out
