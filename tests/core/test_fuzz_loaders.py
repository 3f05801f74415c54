"""Fuzzing the data loaders of the density (.amat, .npz, .npy), detection (feature .npy) and diffusion
(image folders) tasks with hypothesis: random bytes and mutations (truncation, flipped bytes) of valid
files. Whatever arrives: a GenlabError with a one-line message, or a correct load; never another
exception. Also: a pickle that would run code is refused by every loading path that sees one."""

import io
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from genlab.errors import GenlabError
from genlab.families.density.data import load_binary
from genlab.families.detection.features import load_feature_file
from genlab.families.diffusion.data import load_image_folder

FUZZ = settings(
    max_examples=int(os.environ.get("GENLAB_FUZZ_EXAMPLES", "120")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


def _npy(a) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


def _npz(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _png() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray((np.arange(64, dtype=np.uint8) * 4).reshape(8, 8)).save(buf, format="PNG")
    return buf.getvalue()


VALID = {
    ".npy": _npy((np.arange(60) % 2).reshape(12, 5).astype(np.float32)),
    ".npz": _npz(train=(np.arange(60) % 2).reshape(12, 5).astype(np.float32)),
    ".amat": b"".join(b"0 1 1 0 1\n" for _ in range(12)),
    "features": _npy(np.random.default_rng(0).normal(size=(6, 4)).astype(np.float32)),
    ".png": _png(),
}


def mutated(kind):
    """Random bytes, or a valid file of that kind truncated and with some bytes overwritten."""
    base = VALID[kind]
    edits = st.lists(st.tuples(st.integers(0, len(base) - 1), st.integers(0, 255)), max_size=8)
    cut = st.integers(0, len(base))

    def apply(args):
        n, ed = args
        b = bytearray(base[:n] if n else base)
        for i, v in ed:
            if i < len(b):
                b[i] = v
        return bytes(b)

    return st.one_of(st.binary(max_size=400), st.tuples(cut, edits).map(apply))


def _one_line(e: GenlabError):
    assert str(e) and "\n" not in str(e).strip()


@FUZZ
@given(st.sampled_from([".npy", ".npz", ".amat"]), st.data())
def test_density_files_never_crash(tmp_path_factory, suffix, data):
    p = tmp_path_factory.mktemp("bin") / f"d{suffix}"
    p.write_bytes(data.draw(mutated(suffix)))
    try:
        d = load_binary(str(p))
        assert d.train.ndim == 2 and np.isin(d.train, (0, 1)).all()
    except GenlabError as e:
        _one_line(e)


@FUZZ
@given(mutated("features"))
def test_feature_files_never_crash(tmp_path_factory, blob):
    p = tmp_path_factory.mktemp("feat") / "video.npy"
    p.write_bytes(blob)
    try:
        x = load_feature_file(p)
        assert x.ndim == 2 and np.isfinite(x).all()
    except GenlabError as e:
        _one_line(e)


@settings(
    max_examples=int(os.environ.get("GENLAB_FUZZ_EXAMPLES", "120")) // 3,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(mutated(".png"))
def test_image_folders_never_crash(tmp_path_factory, blob):
    d = tmp_path_factory.mktemp("img")
    (d / "a.png").write_bytes(blob)
    (d / "b.png").write_bytes(VALID[".png"])
    try:
        ds = load_image_folder(str(d), size=8, channels=1)
        assert len(ds.images) == 2
    except GenlabError as e:
        _one_line(e)


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch " + os.environ.get("GENLAB_TEST_MARKER", "/nonexistent/x"),))


def test_pickled_arrays_and_hf_bin_are_refused(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    monkeypatch.setenv("GENLAB_TEST_MARKER", str(marker))
    obj = np.array([_Evil(), _Evil()], dtype=object)
    for name, blob in (("d.npy", _npy(obj)), ("d.npz", _npz(train=obj))):
        (tmp_path / name).write_bytes(blob)
        with pytest.raises(GenlabError):
            load_binary(str(tmp_path / name))
    (tmp_path / "f.npy").write_bytes(_npy(obj))
    with pytest.raises(GenlabError, match="not a plain numeric"):
        load_feature_file(tmp_path / "f.npy")
    import torch

    from genlab.interop.hf import _read_hf

    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text(
        '{"model_type": "llama", "hidden_size": 32, "num_hidden_layers": 1, '
        '"num_attention_heads": 4, "vocab_size": 256, "intermediate_size": 64}'
    )
    torch.save({"w": _Evil()}, hf / "pytorch_model.bin")
    with pytest.raises(GenlabError, match="not read"):
        _read_hf(hf)
    assert not marker.exists()
