"""Binary data loaders: the embedded digits, MADE-format .npz, .npy rows, Larochelle's .amat files,
and a clear one-line error for every kind of bad file."""

import numpy as np
import pytest

from genlab.cli import main
from genlab.errors import GenlabError
from genlab.families.density.data import image_shape, load_binary, load_digits_binary, load_eval_rows


@pytest.fixture(autouse=True)
def keep_threads():
    """The density presets set train.threads = 1, which the trainer applies process-wide."""
    import torch

    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def rows(n, d, seed=0):
    return (np.random.RandomState(seed).rand(n, d) < 0.4).astype(np.float32)


def test_digits_fixed_binarized_split():
    a, b = load_digits_binary(), load_digits_binary()
    assert (a.train.shape, a.valid.shape, a.test.shape) == ((1297, 64), (200, 64), (300, 64))
    assert np.array_equal(a.test, b.test) and set(np.unique(a.train)) == {0.0, 1.0}
    assert image_shape(64) == (8, 8) and image_shape(784) == (28, 28) and image_shape(180) is None


def test_made_npz_and_plain_npz(tmp_path):
    p = tmp_path / "dna.npz"
    np.savez(
        p,
        inputsize=12,
        train_data=rows(30, 12),
        valid_data=rows(5, 12, 1),
        test_data=rows(7, 12, 2),
        train_length=30,
        valid_length=5,
        test_length=7,
    )
    d = load_binary(str(p))
    assert (d.train.shape, d.valid.shape, d.test.shape) == ((30, 12), (5, 12), (7, 12))
    assert np.array_equal(d.test, rows(7, 12, 2))
    assert np.array_equal(load_eval_rows(str(p)), rows(7, 12, 2))  # eval --data: the test split
    q = tmp_path / "plain.npz"
    np.savez(q, train=rows(10, 4), valid=rows(3, 4), test=rows(3, 4).astype(np.int64))
    assert load_binary(str(q)).n_dims == 4


def test_single_array_split_is_fixed(tmp_path):
    p = tmp_path / "x.npy"
    x = rows(100, 9)
    np.save(p, x.astype(bool))
    a, b = load_binary(str(p), 0.1, 0.2), load_binary(str(p), 0.1, 0.2)
    assert (len(a.train), len(a.valid), len(a.test)) == (70, 10, 20)
    assert np.array_equal(a.train, b.train)
    together = np.concatenate([a.train, a.valid, a.test])
    assert sorted(map(bytes, together.astype(np.uint8))) == sorted(map(bytes, x.astype(np.uint8)))
    assert np.array_equal(load_eval_rows(str(p)), x)  # eval --data on a single array: every row
    one = tmp_path / "one.npz"
    np.savez(one, data=x)
    assert load_binary(str(one), 0.1, 0.2).n_dims == 9


def test_amat_triplet(tmp_path):
    for split, n in (("train", 6), ("valid", 2), ("test", 3)):
        np.savetxt(tmp_path / f"binarized_mnist_{split}.amat", rows(n, 16), fmt="%d")
    by_dir, by_file = load_binary(str(tmp_path)), load_binary(str(tmp_path / "binarized_mnist_train.amat"))
    assert by_dir.train.shape == (6, 16) and by_dir.test.shape == (3, 16)
    assert np.array_equal(by_dir.valid, by_file.valid)


def _npz(tmp_path, **arrays):
    p = tmp_path / "bad.npz"
    np.savez(p, **arrays)
    return str(p)


@pytest.mark.parametrize(
    "arrays,words",
    [
        (dict(train_data=np.full((4, 3), 0.5), valid_data=rows(2, 3), test_data=rows(2, 3)), ["non-binary", "0.5"]),
        (dict(train_data=np.where(rows(4, 3) > 0, np.nan, 0), valid_data=rows(2, 3), test_data=rows(2, 3)), ["NaN"]),
        (dict(train_data=np.ones(5), valid_data=rows(2, 3), test_data=rows(2, 3)), ["2-D", "(5,)"]),
        (dict(train_data=rows(4, 3), valid_data=np.zeros((0, 3)), test_data=rows(2, 3)), ["valid split", "empty"]),
        (dict(train_data=rows(4, 3), valid_data=rows(2, 4), test_data=rows(2, 3)), ["different dimensions"]),
        (dict(train_data=rows(4, 3), valid_data=rows(2, 3)), ["test_data"]),
        (dict(train_data=rows(4, 3), valid_data=rows(2, 3), test_data=rows(2, 3), inputsize=5), ["inputsize 5"]),
        (dict(a=rows(4, 3), b=rows(4, 3)), ["do not form a dataset"]),
        (dict(train_data=np.array(["0", "1"]), valid_data=rows(2, 3), test_data=rows(2, 3)), ["not numeric"]),
    ],
)
def test_bad_npz(tmp_path, arrays, words):
    with pytest.raises(GenlabError) as e:
        load_binary(_npz(tmp_path, **arrays))
    msg = str(e.value)
    assert "\n" not in msg and all(w in msg for w in words), msg


def test_bad_files(tmp_path):
    cases = []
    (tmp_path / "x.csv").write_text("0,1\n")
    cases.append((tmp_path / "x.csv", "unsupported type"))
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    cases.append((tmp_path / "junk.npz", "not a readable .npz"))
    (tmp_path / "junk.npy").write_bytes(b"nope")
    cases.append((tmp_path / "junk.npy", "not a readable .npy"))
    (tmp_path / "ragged.amat").write_text("0 1 1\n1 0\n")
    cases.append((tmp_path / "ragged.amat", ".amat"))
    (tmp_path / "solo_train.amat").write_text("0 1\n")
    cases.append((tmp_path / "solo_train.amat", "does not exist"))
    np.save(tmp_path / "two.npy", rows(2, 3))
    cases.append((tmp_path / "two.npy", "too few"))
    cases.append((tmp_path / "missing.npz", "does not exist"))
    for path, word in cases:
        with pytest.raises(GenlabError) as e:
            load_binary(str(path))
        assert word in str(e.value) and "\n" not in str(e.value), (path, str(e.value))


def test_cli_bad_density_data_one_line_no_run_dir(tmp_path, capsys):
    p = _npz(tmp_path, train_data=np.full((4, 3), 2.0), valid_data=rows(2, 3), test_data=rows(2, 3))
    out = tmp_path / "run"
    code = main(["train", "--no-progress", "--preset", "made-digits", "--set", f"data.path={p}", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("genlab: error:") and "non-binary" in err
    assert not out.exists()
    code = main(["train", "--preset", "made-digits", "--set", "model.arch=lstm", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "is not allowed for task 'density'" in err and not out.exists()


def test_synthetic_dna_shape_sparsity_and_determinism():
    """The generated UCI-DNA stand-in: 180 bits = 60 nucleotides x 3 indicator bits (T = 000, so at
    most one 1 per triple), about a quarter ones, a pure function of the seed, split 2000 / 500 / 500."""
    from genlab.families.density.data import synthetic_dna

    x = synthetic_dna(3000, seed=0)
    assert x.shape == (3000, 180) and x.dtype == np.float32 and set(np.unique(x)) == {0.0, 1.0}
    triples = x.reshape(3000, 60, 3).sum(-1)
    assert triples.max() == 1  # one-hot or all-zero per nucleotide
    assert 0.2 < x.mean() < 0.3
    assert np.array_equal(x, synthetic_dna(3000, seed=0)) and not np.array_equal(x, synthetic_dna(3000, seed=1))
    assert np.array_equal(synthetic_dna(10, seed=0), synthetic_dna(10, seed=0))
    # structure, not noise: neighbouring nucleotides are dependent (a Markov chain per class)
    nuc = np.where(triples == 0, 3, x.reshape(3000, 60, 3).argmax(-1))
    joint = np.zeros((4, 4))
    np.add.at(joint, (nuc[:, :-1].ravel(), nuc[:, 1:].ravel()), 1)
    joint /= joint.sum()
    indep = joint.sum(1, keepdims=True) * joint.sum(0, keepdims=True)
    assert np.abs(joint - indep).sum() > 0.05
    d = load_binary("synthetic:dna")
    assert (d.train.shape, d.valid.shape, d.test.shape) == ((2000, 180), (500, 180), (500, 180))
    assert np.array_equal(np.concatenate([d.train, d.valid, d.test]), x)
    assert not np.array_equal(load_binary("synthetic:dna:3").train, d.train)
    assert np.array_equal(load_eval_rows("synthetic:dna"), d.test)


@pytest.mark.parametrize("spec", ["synthetic:mnist", "synthetic:dna:x", "synthetic:dna:1:2", "synthetic:"])
def test_synthetic_bad_spec_is_one_line(spec):
    with pytest.raises(GenlabError, match="synthetic:dna and synthetic:dna:SEED") as e:
        load_binary(spec)
    assert "\n" not in str(e.value)
