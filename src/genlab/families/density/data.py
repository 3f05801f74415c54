"""Binary vectors x in {0,1}^D for density estimation: the embedded digits set and user files.

Sources (`data.path`):

    ""                         scikit-learn's digits (1797 8x8 images, ints 0..16) binarized at >= 8, split
                               1297 / 200 / 300 by a fixed permutation (independent of train.seed)
    "synthetic:dna"            a generated stand-in for the UCI DNA set: 2000 / 500 / 500 rows of 180 bits
                               (synthetic_dna(); "synthetic:dna:SEED" picks another draw, default 0)
    DIR or *train*.amat        Larochelle's binarized MNIST text files: *train*.amat, *valid*.amat and
                               *test*.amat side by side (one row of space-separated 0/1 per line)
    FILE.npz                   train_data / valid_data / test_data (MADE's UCI and MNIST files; also
                               train / valid / test), or a single array of rows
    FILE.npy, FILE.amat        one array of rows, split by data.val_fraction and data.test_fraction
                               with a fixed permutation

Every split is checked: 2-D, numeric, no NaN or inf, only 0 and 1, not empty, the same D everywhere.
Rows are returned as float32 (N, D).
"""

from __future__ import annotations

import math
import tokenize
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from genlab.errors import GenlabError

# a malformed .npy header makes numpy's header parser raise these too (found by tests/test_fuzz_loaders.py)
HEADER_ERRORS = (SyntaxError, tokenize.TokenError)

SPLITS = ("train", "valid", "test")
NPZ_LAYOUTS = (("train_data", "valid_data", "test_data"), ("train", "valid", "test"))
DIGITS_THRESHOLD = 8  # pixel values 0..16; >= 8 -> 1
DIGITS_SPLIT = (1297, 200, 300)
SPLIT_SEED = 1234  # the fixed permutation used to split single-array files and the digits


@dataclass
class BinaryData:
    train: np.ndarray  # (N_train, D) float32 of 0/1
    valid: np.ndarray  # (N_valid, D)
    test: np.ndarray  # (N_test, D)
    source: str

    @property
    def n_dims(self) -> int:
        return int(self.train.shape[1])


def image_shape(n_dims: int) -> tuple[int, int] | None:
    """(H, W) when D is a perfect square (8x8 digits, 28x28 MNIST), else None."""
    side = math.isqrt(n_dims)
    return (side, side) if side * side == n_dims and side > 1 else None


def check_rows(a, what: str) -> np.ndarray:
    """A (N, D) float32 array of 0/1, or a GenlabError naming `what` and the problem."""
    a = np.asarray(a)
    if a.dtype == object or not (np.issubdtype(a.dtype, np.number) or a.dtype == bool):
        raise GenlabError(f"{what}: dtype {a.dtype} is not numeric; expected rows of 0/1 numbers")
    if a.ndim != 2:
        raise GenlabError(f"{what}: expected a 2-D array of rows (N, D), got shape {tuple(a.shape)}")
    if a.shape[0] == 0:
        raise GenlabError(f"{what}: the split is empty (0 rows); every split needs at least one row")
    if a.shape[1] == 0:
        raise GenlabError(f"{what}: rows have 0 dimensions; expected D >= 1")
    a = a.astype(np.float32, copy=False)
    if not np.isfinite(a).all():
        r, c = np.argwhere(~np.isfinite(a))[0]
        raise GenlabError(f"{what}: NaN or infinite value at row {r}, column {c}; only 0 and 1 are allowed")
    bad = (a != 0) & (a != 1)
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise GenlabError(
            f"{what}: non-binary value {a[r, c]:g} at row {r}, column {c}; only 0 and 1 are "
            "allowed (binarize the data first)"
        )
    return np.ascontiguousarray(a)


def _split(rows: np.ndarray, val_fraction: float, test_fraction: float, what: str) -> tuple:
    """Fixed-permutation split of one array; valid and test get at least one row each."""
    n = rows.shape[0]
    n_val, n_test = max(1, round(n * val_fraction)), max(1, round(n * test_fraction))
    if n - n_val - n_test < 1:
        raise GenlabError(
            f"{what}: {n} rows are too few to split into train / valid / test "
            f"({n_val} valid and {n_test} test rows); give at least 3 rows"
        )
    perm = np.random.RandomState(SPLIT_SEED).permutation(n)
    val, test, train = perm[:n_val], perm[n_val : n_val + n_test], perm[n_val + n_test :]
    return rows[np.sort(train)], rows[np.sort(val)], rows[np.sort(test)]


def _finish(train, valid, test, source: str) -> BinaryData:
    splits = [check_rows(a, f"{source} ({name} split)") for a, name in zip((train, valid, test), SPLITS)]
    dims = {name: a.shape[1] for a, name in zip(splits, SPLITS)}
    if len(set(dims.values())) > 1:
        raise GenlabError(
            f"{source}: the splits have different dimensions "
            f"({', '.join(f'{k} {v}' for k, v in dims.items())}); all must be equal"
        )
    return BinaryData(*splits, source=source)


# ------------------------------------------------------------------------------------- sources
def load_digits_binary() -> BinaryData:
    try:
        from sklearn.datasets import load_digits
    except ImportError:  # pragma: no cover - a declared dependency
        raise GenlabError("the embedded digits set needs scikit-learn; pip install scikit-learn") from None
    x = (load_digits().data >= DIGITS_THRESHOLD).astype(np.float32)  # (1797, 64)
    perm = np.random.RandomState(SPLIT_SEED).permutation(len(x))
    a, b, _ = DIGITS_SPLIT
    parts = [np.sort(perm[:a]), np.sort(perm[a : a + b]), np.sort(perm[a + b :])]
    return _finish(x[parts[0]], x[parts[1]], x[parts[2]], "digits (scikit-learn, binarized >= 8)")


SYNTHETIC_PREFIX = "synthetic:"
DNA_SPLIT = (2000, 500, 500)
_NUCLEOTIDE_BITS = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [0, 0, 0]], dtype=np.float32)  # A C G T


def synthetic_dna(n_rows: int = sum(DNA_SPLIT), seed: int = 0, length: int = 60) -> np.ndarray:
    """(n_rows, 3 * length) float32 0/1 rows shaped like the UCI DNA set (StatLog splice junctions):
    `length` nucleotides, each three indicator bits (A 100, C 010, G 001, T 000), so about a quarter of
    the bits are 1. Each row has a hidden class (priors 1/4, 1/4, 1/2, as EI / IE / neither); a class
    draws its nucleotides from its own position-dependent first-order Markov chain, with a sharply
    peaked "junction" motif over the middle ten positions for the first two classes. The chains and the
    rows are a pure function of `seed`."""
    rng = np.random.default_rng([seed, 180])
    n_class = 3
    start = rng.dirichlet(np.full(4, 2.0), size=n_class)  # (K, 4)
    trans = rng.dirichlet(np.full(4, 0.8), size=(n_class, length, 4))  # (K, L, from, to)
    mid = length // 2
    for k in range(2):  # the junction motif: nearly deterministic nucleotides whatever came before
        for pos in range(mid - 5, mid + 5):
            trans[k, pos] = rng.dirichlet(np.full(4, 0.1))[None, :] * 0.9 + trans[k, pos] * 0.1
    cls = rng.choice(n_class, size=n_rows, p=[0.25, 0.25, 0.5])
    u = rng.random((n_rows, length))
    seq = np.empty((n_rows, length), dtype=np.int64)
    seq[:, 0] = (u[:, :1] > start[cls].cumsum(1)).sum(1).clip(max=3)
    for pos in range(1, length):
        p = trans[cls, pos, seq[:, pos - 1]]  # (N, 4)
        seq[:, pos] = (u[:, pos : pos + 1] > p.cumsum(1)).sum(1).clip(max=3)
    return _NUCLEOTIDE_BITS[seq].reshape(n_rows, 3 * length)


def load_synthetic(spec: str) -> BinaryData:
    """ "synthetic:dna" or "synthetic:dna:SEED": synthetic_dna split 2000 / 500 / 500 (in row order)."""
    parts = spec[len(SYNTHETIC_PREFIX) :].split(":")
    if parts[0] != "dna" or len(parts) > 2 or (len(parts) == 2 and not parts[1].isdigit()):
        raise GenlabError(f"data.path {spec!r}: the generated sets are synthetic:dna and synthetic:dna:SEED")
    seed = int(parts[1]) if len(parts) == 2 else 0
    rows = synthetic_dna(sum(DNA_SPLIT), seed)
    a, b, _ = DNA_SPLIT
    return _finish(rows[:a], rows[a : a + b], rows[a + b :], f"synthetic DNA-like 180-bit rows (seed {seed})")


def _read_amat(path: Path) -> np.ndarray:
    try:
        a = np.loadtxt(path, dtype=np.float32, ndmin=2)
    except ValueError as e:
        raise GenlabError(f"{path}: not a .amat table of numbers ({str(e).splitlines()[0]})") from None
    except UnicodeDecodeError:
        raise GenlabError(f"{path}: not a text .amat file") from None
    if a.size == 0:
        raise GenlabError(f"{path}: the file has no rows")
    return a


def _amat_triplet(path: Path) -> dict[str, Path] | None:
    """The train/valid/test .amat files named like `path` (a directory or a *train*.amat file)."""
    if path.is_dir():
        found = {s: sorted(path.glob(f"*{s}*.amat")) for s in SPLITS}
        if not any(found.values()):
            raise GenlabError(
                f"{path}: a directory for data.path must hold *train*.amat, *valid*.amat and "
                "*test*.amat (binarized MNIST); none found"
            )
        for s, files in found.items():
            if len(files) != 1:
                raise GenlabError(f"{path}: expected exactly one *{s}*.amat file, found {len(files)}")
        return {s: files[0] for s, files in found.items()}
    if "train" in path.name:
        sib = {s: path.with_name(path.name.replace("train", s)) for s in SPLITS}
        missing = [str(p) for p in sib.values() if not p.is_file()]
        if missing:
            raise GenlabError(
                f"{path}: the matching split file {missing[0]} does not exist; .amat data needs "
                "train, valid and test files side by side"
            )
        return sib
    return None


def _load_npz(path: Path, val_fraction: float, test_fraction: float) -> BinaryData:
    try:
        z = np.load(path, allow_pickle=False)
        arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError, *HEADER_ERRORS) as e:
        raise GenlabError(f"{path}: not a readable .npz archive ({str(e).splitlines()[0]})") from None
    for layout in NPZ_LAYOUTS:
        if any(k in arrays for k in layout):
            missing = [k for k in layout if k not in arrays]
            if missing:
                raise GenlabError(
                    f"{path}: has {', '.join(k for k in layout if k in arrays)} but not "
                    f"{', '.join(missing)}; a split .npz needs all of {', '.join(layout)}"
                )
            data = _finish(*(arrays[k] for k in layout), source=str(path))
            if "inputsize" in arrays and int(np.asarray(arrays["inputsize"]).ravel()[0]) != data.n_dims:
                raise GenlabError(
                    f"{path}: inputsize {int(np.asarray(arrays['inputsize']).ravel()[0])} does "
                    f"not match the rows' {data.n_dims} dimensions"
                )
            return data
    if len(arrays) == 1:
        rows = check_rows(next(iter(arrays.values())), str(path))
        return _finish(*_split(rows, val_fraction, test_fraction, str(path)), source=str(path))
    raise GenlabError(
        f"{path}: arrays {', '.join(sorted(arrays)) or '(none)'} do not form a dataset; expected "
        "train_data/valid_data/test_data, train/valid/test, or a single array of rows"
    )


def load_binary(path: str, val_fraction: float = 0.1, test_fraction: float = 0.1) -> BinaryData:
    """The train / valid / test splits named by `data.path` ("" = the embedded digits)."""
    if not path:
        return load_digits_binary()
    if path.startswith(SYNTHETIC_PREFIX):
        return load_synthetic(path)
    p = Path(path)
    if not p.exists():
        raise GenlabError(f"data file {path!r} does not exist")
    if p.is_dir() or p.suffix == ".amat":
        triplet = _amat_triplet(p)
        if triplet is not None:
            return _finish(*(_read_amat(triplet[s]) for s in SPLITS), source=str(p))
        rows = check_rows(_read_amat(p), str(p))
        return _finish(*_split(rows, val_fraction, test_fraction, str(p)), source=str(p))
    if p.suffix == ".npz":
        return _load_npz(p, val_fraction, test_fraction)
    if p.suffix == ".npy":
        try:
            a = np.load(p, allow_pickle=False)
        except (OSError, ValueError, EOFError, *HEADER_ERRORS) as e:
            raise GenlabError(f"{p}: not a readable .npy array ({str(e).splitlines()[0]})") from None
        rows = check_rows(a, str(p))
        return _finish(*_split(rows, val_fraction, test_fraction, str(p)), source=str(p))
    raise GenlabError(
        f"data file {path!r} has an unsupported type; for density data use .npz, .npy, .amat "
        "or a directory of .amat files"
    )


def load_eval_rows(path: str, val_fraction: float = 0.1, test_fraction: float = 0.1) -> np.ndarray:
    """Rows to score for `genlab eval --data`: every row of a single-array file, else the test split."""
    if path.startswith(SYNTHETIC_PREFIX):
        return load_synthetic(path).test
    p = Path(path)
    if not p.exists():
        raise GenlabError(f"data file {path!r} does not exist")
    if p.is_file():
        single = _single_array(p)
        if single is not None:
            return check_rows(single, str(p))
    return load_binary(path, val_fraction, test_fraction).test


def _single_array(p: Path) -> np.ndarray | None:
    """The file's one array of rows, or None when it holds train/valid/test splits (or is not ours)."""
    if p.suffix == ".npy":
        try:
            return np.load(p, allow_pickle=False)
        except (OSError, ValueError, EOFError, *HEADER_ERRORS) as e:
            raise GenlabError(f"{p}: not a readable .npy array ({str(e).splitlines()[0]})") from None
    if p.suffix == ".amat" and "train" not in p.name:
        return _read_amat(p)
    if p.suffix == ".npz":
        try:
            with np.load(p, allow_pickle=False) as z:
                if len(z.files) == 1 and not any(k in z.files for lay in NPZ_LAYOUTS for k in lay):
                    return z[z.files[0]]
        except (OSError, ValueError, zipfile.BadZipFile, EOFError, *HEADER_ERRORS) as e:
            raise GenlabError(f"{p}: not a readable .npz archive ({str(e).splitlines()[0]})") from None
    return None
