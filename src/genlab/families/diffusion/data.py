"""Captioned image datasets for the diffusion task.

Sources (data.path):
  ""                      scikit-learn's digits (1797 8x8 images, embedded in the package), upsampled
                          bilinearly to data.image_size; captions are built from the labels with
                          varied templates ("a handwritten digit seven", "a handwritten 7", ...)
  DIR/<caption>/*.png     a folder of sub-folders: each sub-folder's name is the caption of its
                          images ("_" reads as a space); the sub-folders are also the eval classes
  DIR/*.png + DIR/captions.jsonl   one {"file": "x.png", "caption": "..."} per line, every image captioned

Images become (N, C, S, S) float32 in [-1, 1]. Anything unusable (unreadable image, empty folder,
image without caption) is a GenlabError naming the file and what is allowed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from genlab.errors import GenlabError

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
CAPTIONS_FILE = "captions.jsonl"
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
DIGIT_TEMPLATES = (
    "a handwritten digit {w}",
    "a handwritten {n}",
    "a handwritten {w}",
    "the digit {n}",
    "the number {w}",
    "a picture of the digit {w}",
    "digit {n}",
    "{w}",
)


def digit_prompt(label: int, template: int = 0) -> str:
    return DIGIT_TEMPLATES[template].format(w=NUMBER_WORDS[label], n=label)


@dataclass
class ImageSet:
    images: torch.Tensor  # (N, C, S, S) float32 in [-1, 1]
    labels: torch.Tensor | None  # (N,) int64 class index, or None when captions are free text
    class_prompts: list[str]  # one canonical prompt per class (eval), empty without labels
    captions: list[str] | None  # fixed caption per image; None = built from the labels (digits)
    source: str

    def __len__(self) -> int:
        return self.images.shape[0]

    def caption(self, i: int, rng: np.random.Generator) -> str:
        if self.captions is not None:
            return self.captions[i]
        return digit_prompt(int(self.labels[i]), int(rng.integers(len(DIGIT_TEMPLATES))))

    def subset(self, idx: np.ndarray) -> ImageSet:
        t = torch.from_numpy(idx)
        return ImageSet(
            self.images[t],
            None if self.labels is None else self.labels[t],
            self.class_prompts,
            None if self.captions is None else [self.captions[i] for i in idx],
            self.source,
        )


def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits: (1797, 8, 8) values 0..16 and (1797,) labels. Read straight from the
    CSV the package ships (what `sklearn.datasets.load_digits` reads), which spares importing
    scikit-learn (seconds); load_digits is the fallback."""
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    if spec is None:
        raise GenlabError(
            "the embedded digits need scikit-learn (pip install scikit-learn), or give data.path = a folder of images"
        )
    for loc in spec.submodule_search_locations or []:
        f = Path(loc) / "datasets" / "data" / "digits.csv.gz"
        if f.is_file():
            a = np.loadtxt(f, delimiter=",", dtype=np.float32)  # (1797, 65): 64 pixels, then the label
            return a[:, :-1].reshape(-1, 8, 8), a[:, -1].astype(np.int64)
    from sklearn.datasets import load_digits

    d = load_digits()
    return d.images.astype(np.float32), d.target.astype(np.int64)


def load_digits_set(size: int, channels: int) -> ImageSet:
    images, target = _digits_arrays()
    x = torch.from_numpy(images / 16.0)[:, None]  # (1797, 1, 8, 8) in [0, 1]
    if size != 8:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    x = (x.clamp(0, 1) * 2 - 1).repeat(1, channels, 1, 1)
    return ImageSet(x.contiguous(), torch.from_numpy(target), [digit_prompt(k) for k in range(10)], None, "digits")


def read_image(path: Path, size: int, channels: int) -> torch.Tensor:
    """(C, S, S) float32 in [-1, 1]; a GenlabError if the file is not a readable image."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im = im.convert("L" if channels == 1 else "RGB").resize((size, size), Image.BICUBIC)
            a = np.asarray(im, dtype=np.float32) / 127.5 - 1.0
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise GenlabError(
            f"{path}: not a readable image ({type(e).__name__}); allowed: "
            f"{', '.join(IMAGE_EXTS)} files that Pillow can open"
        ) from None
    a = a[None] if a.ndim == 2 else a.transpose(2, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(a)).clamp(-1, 1)


def _image_files(d: Path) -> list[Path]:
    return sorted(p for p in d.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS)


def _load_captions_jsonl(root: Path) -> tuple[list[Path], list[str]]:
    files, captions, seen = [], [], set()
    cap_path = root / CAPTIONS_FILE
    for n, line in enumerate(cap_path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            raise GenlabError(
                f'{cap_path}:{n}: not valid JSON; each line must be {{"file": "NAME.png", "caption": "TEXT"}}'
            ) from None
        if not isinstance(rec, dict) or not isinstance(rec.get("file"), str) or not isinstance(rec.get("caption"), str):
            raise GenlabError(f'{cap_path}:{n}: needs string fields "file" and "caption"')
        f = root / rec["file"]
        if not f.is_file():
            raise GenlabError(f"{cap_path}:{n}: image {rec['file']!r} does not exist in {root}")
        files.append(f)
        captions.append(rec["caption"])
        seen.add(f.resolve())
    uncaptioned = [p.name for p in _image_files(root) if p.resolve() not in seen]
    if uncaptioned:
        raise GenlabError(
            f"{root}: image {uncaptioned[0]!r} has no caption in {CAPTIONS_FILE} "
            f"({len(uncaptioned)} uncaptioned); add a line for every image"
        )
    return files, captions


def load_image_folder(path: str, size: int, channels: int) -> ImageSet:
    root = Path(path)
    if not root.exists():
        raise GenlabError(f"data.path {path!r} does not exist")
    if not root.is_dir():
        raise GenlabError(
            f"data.path {path!r} is a file; for task diffusion give a folder of images "
            f'(sub-folders named by caption, or images + {CAPTIONS_FILE}), or "" for the digits'
        )
    labels = None
    if (root / CAPTIONS_FILE).is_file():
        files, captions = _load_captions_jsonl(root)
        class_prompts: list[str] = []
    else:
        loose = _image_files(root)
        if loose:
            raise GenlabError(
                f"{root}: image {loose[0].name!r} has no caption; put images in sub-folders "
                f"named by their caption, or add {CAPTIONS_FILE}"
            )
        subdirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        files, captions, label_list, class_prompts = [], [], [], []
        for sub in subdirs:
            imgs = _image_files(sub)
            if not imgs:
                continue
            class_prompts.append(sub.name.replace("_", " "))
            files += imgs
            captions += [class_prompts[-1]] * len(imgs)
            label_list += [len(class_prompts) - 1] * len(imgs)
        labels = torch.tensor(label_list, dtype=torch.int64)
    if not files:
        raise GenlabError(
            f"{root}: no images found; allowed: {', '.join(IMAGE_EXTS)} in sub-folders named "
            f"by caption, or next to a {CAPTIONS_FILE}"
        )
    if any(not c.strip() for c in captions):
        raise GenlabError(f"{root}: an image has an empty caption; captions must be non-empty text")
    images = torch.stack([read_image(f, size, channels) for f in files])
    return ImageSet(images, labels, class_prompts, captions, str(root))


def load_images(path: str, size: int, channels: int) -> ImageSet:
    return load_digits_set(size, channels) if path == "" else load_image_folder(path, size, channels)


def split(ds: ImageSet, val_fraction: float, seed: int = 0) -> tuple[ImageSet, ImageSet | None]:
    """A fixed random split (independent of the training seed, so eval always sees the same images)."""
    n = len(ds)
    perm = np.random.default_rng(seed).permutation(n)
    n_val = int(round(n * val_fraction))
    if n_val == 0:
        return ds, None
    if n - n_val < 1:
        raise GenlabError(f"{ds.source}: {n} images leave none for training with data.val_fraction {val_fraction}")
    return ds.subset(np.sort(perm[n_val:])), ds.subset(np.sort(perm[:n_val]))


@dataclass
class ImageBatch:
    images: torch.Tensor  # (B, C, S, S)
    ids: torch.Tensor  # (B, L) caption token ids, "" where the condition was dropped
    phase: str  # "vae" | "denoiser"
    n_targets: int  # loss elements (pixels or latent values): the trainer divides the summed loss by it

    def to(self, device) -> ImageBatch:
        return ImageBatch(self.images.to(device), self.ids.to(device), self.phase, self.n_targets)
