"""Per-frame feature streams for online action detection: the THUMOS14-style folder layout.

For users who have extracted features (e.g. TSN RGB + flow at chunk rate, concatenated):

    DIR/classes.txt          one class name per line, in id order. Line 1 (id 0) is the
                             background. A line reading "Ambiguous" (any case) marks the
                             ambiguous id (THUMOS: 22 lines, id 21): frames with it are neither
                             trained on nor scored, and it gets no output. Labels may also use -1
                             for ambiguous.
    DIR/features/VIDEO.npy   (frames, feat_dim) float array, the same feat_dim for every video
    DIR/labels/VIDEO.npy     (frames,) integer class ids, or (frames, n_classes) one-hot
                             (the OadTR annotation layout); the same frame count as the features
    DIR/split.json           optional {"train": [VIDEO, ...], "test": [VIDEO, ...]}; without it a
                             hash of each video name holds out data.val_fraction of the videos

Inside genlab, labels are int64 with -1 = ambiguous and 0 .. C-1 = background and actions
(the ambiguous line removed from the class list). `genlab detect --features FILE` reads one
features .npy of the same layout.
"""

from __future__ import annotations

import hashlib
import json
import tokenize
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from genlab.errors import GenlabError

AMBIGUOUS = -1


@dataclass
class FrameData:
    """Every video's frames back to back; video v is frames starts[v] : starts[v + 1]."""

    feats: np.ndarray  # (N, feat_dim) float32
    labels: np.ndarray  # (N,) int64: 0 background, 1.. actions, -1 ambiguous
    starts: np.ndarray  # (V + 1,) int64
    names: list[str]
    classes: list[str]  # class names by id, background first; no ambiguous entry

    @property
    def feat_dim(self) -> int:
        return int(self.feats.shape[1])

    def __len__(self) -> int:
        return int(self.feats.shape[0])

    def video(self, v: int) -> tuple[np.ndarray, np.ndarray]:
        a, b = self.starts[v], self.starts[v + 1]
        return self.feats[a:b], self.labels[a:b]

    def window_index(self, frames: np.ndarray, history: int) -> np.ndarray:
        """(B,) frame ids -> (B, history) rows of feats, oldest first; frames before the video's
        start are -1 (the caller supplies a zero frame there)."""
        first = self.starts[np.searchsorted(self.starts, frames, side="right") - 1]  # (B,) video starts
        idx = frames[:, None] - history + 1 + np.arange(history)[None, :]  # (B, history)
        return np.where(idx >= first[:, None], idx, -1)

    def future_labels(self, frames: np.ndarray, steps: int) -> np.ndarray:
        """(B,) frame ids -> (B, steps) labels of the next frames; -1 past the video's end."""
        end = self.starts[np.searchsorted(self.starts, frames, side="right")]  # (B,) video ends
        idx = frames[:, None] + 1 + np.arange(steps)[None, :]
        ok = idx < end[:, None]
        return np.where(ok, self.labels[np.minimum(idx, len(self) - 1)], AMBIGUOUS)


def concat(videos: list[tuple[str, np.ndarray, np.ndarray]], classes: list[str]) -> FrameData:
    if not videos:
        raise GenlabError("no videos to build a feature dataset from")
    lengths = [len(f) for _, f, _ in videos]
    return FrameData(
        np.concatenate([f for _, f, _ in videos]).astype(np.float32, copy=False),
        np.concatenate([lab for _, _, lab in videos]).astype(np.int64, copy=False),
        np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
        [n for n, _, _ in videos],
        list(classes),
    )


# ------------------------------------------------------------------------------ reading files
def _load_npy(path: Path, what: str) -> np.ndarray:
    try:
        with open(path, "rb") as f:
            if f.read(6) != b"\x93NUMPY":
                raise GenlabError(
                    f"{what} {path} cannot be read: not a .npy file (no NumPy header); save arrays with numpy.save"
                )
        return np.load(path, allow_pickle=False)
    except (ValueError, SyntaxError, tokenize.TokenError) as e:  # malformed headers raise the last two
        raise GenlabError(f"{what} {path} is not a plain numeric .npy array ({str(e).splitlines()[0]})") from None
    except (OSError, EOFError) as e:
        raise GenlabError(f"{what} {path} cannot be read as .npy ({str(e).splitlines()[0]})") from None


def check_features(x: np.ndarray, path, feat_dim: int | None = None) -> np.ndarray:
    """A (frames, feat_dim) finite float array, as float32; else a GenlabError naming the file."""
    if x.ndim != 2:
        raise GenlabError(f"features {path} have shape {x.shape}; expected 2 dimensions (frames, feat_dim)")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise GenlabError(f"features {path} are empty (shape {x.shape}); need at least one frame and one feature")
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise GenlabError(f"features {path} have dtype {x.dtype}; expected a float array")
    x = x.astype(np.float32, copy=False)
    if not np.isfinite(x).all():
        bad = int(np.argwhere(~np.isfinite(x))[0, 0])
        raise GenlabError(f"features {path} contain NaN or inf (first at frame {bad}); all values must be finite")
    if feat_dim is not None and x.shape[1] != feat_dim:
        raise GenlabError(f"features {path} have {x.shape[1]} features per frame; this model expects {feat_dim}")
    return x


def load_feature_file(path: str | Path, feat_dim: int | None = None) -> np.ndarray:
    p = Path(path)
    if not p.is_file():
        raise GenlabError(f"features file {str(p)!r} does not exist")
    return check_features(_load_npy(p, "features"), p, feat_dim)


def read_classes(path: Path) -> tuple[list[str], int | None]:
    """(class names without the ambiguous one, the file's ambiguous id or None)."""
    if not path.is_file():
        raise GenlabError(f"{path} does not exist; it must list one class name per line, background first")
    try:
        names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except UnicodeDecodeError:
        raise GenlabError(f"{path} is not UTF-8 text") from None
    amb = [i for i, n in enumerate(names) if n.lower() == "ambiguous"]
    if len(amb) > 1:
        raise GenlabError(f"{path} names the ambiguous class {len(amb)} times; allowed: at most once")
    if amb and amb[0] == 0:
        raise GenlabError(f"{path}: line 1 must be the background class, not Ambiguous")
    classes = [n for n in names if n.lower() != "ambiguous"]
    if len(classes) < 2:
        raise GenlabError(f"{path} lists {len(classes)} classes; need the background and at least one action")
    if len(set(classes)) != len(classes):
        raise GenlabError(f"{path} lists a class name twice; names must be unique")
    return classes, (amb[0] if amb else None)


def _convert_labels(y: np.ndarray, path: Path, n_frames: int, n_file: int, amb_id: int | None) -> np.ndarray:
    """File ids (0 .. n_file-1, or -1) or one-hot rows -> genlab ids (ambiguous -1, later ids shifted)."""
    if y.ndim == 2:
        if y.shape[1] != n_file:
            raise GenlabError(f"labels {path} are one-hot with {y.shape[1]} columns; classes.txt lists {n_file}")
        if not np.isin(y, (0, 1)).all() or not (y.sum(axis=1) == 1).all():
            raise GenlabError(f"labels {path}: a one-hot row must hold exactly one 1 and zeros elsewhere")
        y = y.argmax(axis=1)
    elif y.ndim != 1:
        raise GenlabError(f"labels {path} have shape {y.shape}; expected (frames,) ids or (frames, classes) one-hot")
    if not np.issubdtype(y.dtype, np.integer):
        if not (np.issubdtype(y.dtype, np.floating) and np.isfinite(y).all() and (y == np.round(y)).all()):
            raise GenlabError(f"labels {path} have dtype {y.dtype} with non-integer values; expected class ids")
    y = y.astype(np.int64)
    if len(y) != n_frames:
        raise GenlabError(
            f"labels {path} have {len(y)} frames but the features have {n_frames}; they must match frame for frame"
        )
    if ((y < -1) | (y >= n_file)).any():
        bad = int(y[(y < -1) | (y >= n_file)][0])
        raise GenlabError(f"labels {path} hold class id {bad}; allowed: 0 to {n_file - 1} (classes.txt) or -1")
    if amb_id is not None:
        y = np.where(y == amb_id, AMBIGUOUS, np.where(y > amb_id, y - 1, y))
    return y


def hash_split(names: list[str], val_fraction: float) -> tuple[list[str], list[str]]:
    """Deterministic split by a hash of each video name; validation gets >= 1 video when possible."""
    if val_fraction <= 0 or len(names) < 2:
        return list(names), []
    score = {n: int.from_bytes(hashlib.sha256(n.encode()).digest()[:8], "big") / 2**64 for n in names}
    val = [n for n in names if score[n] < val_fraction] or [min(names, key=score.__getitem__)]
    if len(val) == len(names):
        val.remove(max(names, key=score.__getitem__))
    return [n for n in names if n not in val], val


def load_feature_dir(
    path: str | Path,
    val_fraction: float = 0.05,
    feat_dim: int | None = None,
    classes: list[str] | None = None,
    split: str = "train",
) -> FrameData:
    """One split of a THUMOS14-style folder: "train", "test" (split.json or the hash split) or "all"."""
    root = Path(path)
    if not root.is_dir():
        raise GenlabError(
            f"feature directory {str(root)!r} does not exist (expected DIR/features, DIR/labels, DIR/classes.txt)"
        )
    names_file, amb_id = read_classes(root / "classes.txt")
    n_file = len(names_file) + (amb_id is not None)
    if classes is not None and names_file != classes:
        raise GenlabError(f"{root}/classes.txt lists {names_file[:4]}...; the run was trained on {classes[:4]}...")
    fdir, ldir = root / "features", root / "labels"
    for d in (fdir, ldir):
        if not d.is_dir():
            raise GenlabError(f"{d} does not exist; expected one VIDEO.npy per video in it")
    videos = sorted(p.stem for p in fdir.glob("*.npy"))
    if not videos:
        raise GenlabError(f"{fdir} holds no .npy feature files")
    missing = [v for v in videos if not (ldir / f"{v}.npy").is_file()]
    if missing:
        raise GenlabError(
            f"{ldir} has no labels for video {missing[0]!r} ({len(missing)} missing); "
            "every features/VIDEO.npy needs labels/VIDEO.npy"
        )
    chosen = _choose_split(root, videos, val_fraction, split)
    out = []
    for v in chosen:
        x = check_features(_load_npy(fdir / f"{v}.npy", "features"), fdir / f"{v}.npy", feat_dim)
        feat_dim = x.shape[1] if feat_dim is None else feat_dim
        y = _convert_labels(_load_npy(ldir / f"{v}.npy", "labels"), ldir / f"{v}.npy", len(x), n_file, amb_id)
        out.append((v, x, y))
    return concat(out, names_file)


def _choose_split(root: Path, videos: list[str], val_fraction: float, split: str) -> list[str]:
    if split == "all":
        return videos
    sp = root / "split.json"
    if sp.is_file():
        try:
            spec = json.loads(sp.read_text(encoding="utf-8"))
            chosen = spec[split]
            assert isinstance(chosen, list) and all(isinstance(v, str) for v in chosen)
        except (ValueError, KeyError, TypeError, AssertionError):
            raise GenlabError(f'{sp} must be JSON like {{"train": [VIDEO, ...], "test": [VIDEO, ...]}}') from None
        unknown = sorted(set(chosen) - set(videos))
        if unknown:
            raise GenlabError(f"{sp} names video {unknown[0]!r}, which has no features/{unknown[0]}.npy")
        if not chosen and split == "train":
            raise GenlabError(f"{sp}: the train list is empty")
        return chosen
    train, val = hash_split(videos, val_fraction)
    return train if split == "train" else val
