"""Online action detection: metrics against hand-computed cases and scikit-learn, the THUMOS-style
loader and its errors, the synthetic benchmark, the loss, streaming == offline, and the CLI."""

import json

import numpy as np
import pytest
import torch

from genlab.cli import main
from genlab.config import resolve
from genlab.errors import GenlabError
from genlab.families.detection.args import DetectionArgs
from genlab.families.detection.features import AMBIGUOUS, concat, load_feature_dir, load_feature_file
from genlab.families.detection.metrics import ap_and_cap, frame_map
from genlab.families.detection.oadtr import build_detector
from genlab.families.detection.stream import StreamingDetector, detect_offline, stream_detect
from genlab.families.detection.synth import SynthSpec, generate
from genlab.families.detection.task import IGNORE, DetectionTask, make_batch
from tests import tiny

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: tiny shapes, 1 thread


# ------------------------------------------------------------------------------ metrics
def test_ap_and_cap_hand_computed():
    # ranks 1..4, positives at ranks 1 and 3; P = 2, N = 2, w = 1
    ap, cap = ap_and_cap([0.9, 0.8, 0.7, 0.6], [1, 0, 1, 0])
    assert ap == pytest.approx((1 / 1 + 2 / 3) / 2) and cap == pytest.approx((1 + 2 / 3) / 2)
    # positives at ranks 2 and 5 of 6: P = 2, N = 4, w = 2
    ap, cap = ap_and_cap([6, 5, 4, 3, 2, 1], [0, 1, 0, 0, 1, 0])
    assert ap == pytest.approx((1 / 2 + 2 / 5) / 2)
    assert cap == pytest.approx((2 * 1 / (2 * 1 + 1) + 2 * 2 / (2 * 2 + 3)) / 2)  # = 13/21
    assert ap_and_cap([0.1, 0.9, 0.2], [0, 1, 0]) == (1.0, 1.0)  # perfect ranking
    assert np.isnan(ap_and_cap([0.3, 0.2], [0, 0])[0])


def test_ap_matches_sklearn_without_ties():
    from sklearn.metrics import average_precision_score

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, size=300)
    probs = rng.random((300, 4)) + 0.5 * np.eye(4)[labels]  # informative, tie-free
    m = frame_map(probs, labels)
    for c in (1, 2, 3):
        assert m["per_class"][str(c)]["AP"] == pytest.approx(
            average_precision_score(labels == c, probs[:, c]), rel=1e-12
        )
    assert m["mAP"] == pytest.approx(np.mean([average_precision_score(labels == c, probs[:, c]) for c in (1, 2, 3)]))


def test_frame_map_skips_background_and_ambiguous():
    probs = np.array([[0.1, 0.9, 0.0], [0.8, 0.2, 0.0], [0.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    labels = np.array([1, 0, AMBIGUOUS, 0])  # the ambiguous frame would be a top-scoring false positive for 2
    m = frame_map(probs, labels, ["bg", "a", "b"])
    assert set(m["per_class"]) == {"a"} and m["no_positives"] == ["b"] and m["frames"] == 3
    assert m["per_class"]["a"]["AP"] == pytest.approx((1 / 2) / 1)  # frame 3 (bg) scores 1.0 above frame 0
    with pytest.raises(GenlabError, match="labels must be"):
        frame_map(probs, np.array([1, 0, 5, 0]))


# ------------------------------------------------------------------------------ data
def _write_dir(root, videos, classes=("Background", "jump", "run", "Ambiguous"), onehot=False):
    (root / "features").mkdir(parents=True)
    (root / "labels").mkdir()
    (root / "classes.txt").write_text("\n".join(classes) + "\n")
    for name, (x, y) in videos.items():
        np.save(root / "features" / f"{name}.npy", x)
        np.save(root / "labels" / f"{name}.npy", np.eye(len(classes), dtype=np.int64)[y] if onehot else y)
    return root


def _video(rng, n, feat=6):
    return rng.standard_normal((n, feat)).astype(np.float32), rng.integers(0, 4, size=n)


def test_feature_dir_layout_and_ambiguous_mapping(tmp_path):
    rng = np.random.default_rng(0)
    vids = {f"v{i}": _video(rng, 20 + i) for i in range(5)}
    for onehot in (False, True):
        root = _write_dir(tmp_path / f"d{onehot}", vids, onehot=onehot)
        d = load_feature_dir(root, split="all")
        assert (
            d.classes == ["Background", "jump", "run"] and d.feat_dim == 6 and len(d) == sum(20 + i for i in range(5))
        )
        y = np.concatenate([vids[n][1] for n in d.names])
        assert np.array_equal(d.labels, np.where(y == 3, AMBIGUOUS, y))  # id 3 = "Ambiguous" -> -1
    (root / "split.json").write_text(json.dumps({"train": ["v0", "v1", "v2"], "test": ["v4"]}))
    assert load_feature_dir(root, split="train").names == ["v0", "v1", "v2"]
    assert load_feature_dir(root, split="test").names == ["v4"]


@pytest.mark.parametrize(
    "break_it,words",
    [
        (lambda r: np.save(r / "labels" / "v0.npy", np.zeros(3, np.int64)), ["3 frames", "must match"]),
        (lambda r: np.save(r / "features" / "v0.npy", np.full((20, 6), np.nan, np.float32)), ["NaN"]),
        (lambda r: np.save(r / "features" / "v0.npy", np.zeros((20, 6, 1), np.float32)), ["2 dimensions"]),
        (lambda r: np.save(r / "features" / "v0.npy", np.zeros((0, 6), np.float32)), ["empty"]),
        (lambda r: np.save(r / "features" / "v1.npy", np.zeros((21, 5), np.float32)), ["5 features", "expects 6"]),
        (lambda r: (r / "labels" / "v1.npy").unlink(), ["no labels", "v1"]),
        (lambda r: np.save(r / "labels" / "v0.npy", np.full(20, 7)), ["class id 7", "allowed"]),
        (lambda r: (r / "features" / "v0.npy").write_bytes(b"not an array"), ["cannot be read"]),
        (lambda r: (r / "classes.txt").write_text("Background\n"), ["need the background and at least one action"]),
        (lambda r: (r / "split.json").write_text('{"train": ["nope"]}'), ["nope"]),
    ],
)
def test_feature_dir_errors(tmp_path, break_it, words):
    rng = np.random.default_rng(0)
    root = _write_dir(tmp_path / "d", {f"v{i}": _video(rng, 20 + i) for i in range(3)})
    break_it(root)
    with pytest.raises(GenlabError) as e:
        load_feature_dir(root, split="all" if "nope" not in words else "train")
    assert all(w in str(e.value) for w in words), str(e.value)
    with pytest.raises(GenlabError, match="does not exist"):
        load_feature_dir(tmp_path / "missing")
    with pytest.raises(GenlabError, match="does not exist"):
        load_feature_file(tmp_path / "missing.npy")


def test_synthetic_benchmark_structure():
    spec = SynthSpec(train_videos=3, test_videos=2)
    a, b = generate(spec, "train"), generate(spec, "train")
    assert np.array_equal(a.feats, b.feats) and np.array_equal(a.labels, b.labels)  # deterministic
    assert a.feats.dtype == np.float32 and a.feat_dim == spec.feat_dim and len(a.classes) == spec.n_actions + 1
    assert (a.labels == 0).mean() > 0.3 and (a.labels == AMBIGUOUS).any()  # background and ambiguous frames
    assert set(np.unique(a.labels)) <= set(range(-1, spec.n_actions + 1))
    # actions come as segments whose lengths stay inside the configured range
    y = a.video(0)[1]
    runs = np.split(y, np.flatnonzero(np.diff(y)) + 1)
    lengths = [len(r) for r in runs if r[0] > 0]
    assert lengths and max(lengths) <= spec.action_range[1]
    assert not np.array_equal(generate(spec, "test").feats[:50], a.feats[:50])


def test_windows_and_future_labels_respect_video_boundaries():
    x = np.arange(10, dtype=np.float32)[:, None]
    d = concat([("a", x[:4], np.array([0, 1, 1, 0])), ("b", x[4:], np.array([2, 2, -1, 0, 0, 1]))], ["bg", "p", "q"])
    idx = d.window_index(np.array([0, 3, 4, 9]), 3)
    assert idx.tolist() == [[-1, -1, 0], [1, 2, 3], [-1, -1, 4], [7, 8, 9]]
    fut = d.future_labels(np.array([2, 3, 4]), 2)
    assert fut.tolist() == [[0, -1], [-1, -1], [2, -1]]
    b = make_batch(d, np.array([4, 5]), 3, 2)
    assert b.x[0, :, 0].tolist() == [0, 0, 4] and b.future.tolist() == [[2, IGNORE], [IGNORE, 0]]


def test_loss_ignores_ambiguous_targets_and_weights_the_future():
    cfg = resolve(
        None,
        None,
        [
            "task=detection",
            "model.arch=oadtr",
            "model.d_model=16",
            "model.n_head=2",
            "model.dec_heads=2",
            "model.future_steps=3",
            "data.history=5",
            "train.future_weight=0.5",
        ],
    )
    task = DetectionTask(cfg)
    torch.manual_seed(0)
    model = build_detector(cfg.model, 4, 3, 5).eval()
    x = torch.randn(6, 5, 4)
    from genlab.families.detection.task import DetectionBatch

    cur = torch.tensor([0, 1, 2, 1, 0, 2])
    fut = torch.tensor([[1, IGNORE, 2]] * 6)
    loss_sum, n = task.loss(model, DetectionBatch(x, cur, fut))
    with torch.no_grad():
        c, f = model(x)
    f_ce = torch.nn.functional.cross_entropy(f.reshape(-1, 3), fut.reshape(-1), ignore_index=IGNORE)  # mean of valid
    expect = torch.nn.functional.cross_entropy(c, cur) + 0.5 * f_ce
    assert n == 6 and float(loss_sum.detach() / n) == pytest.approx(float(expect), rel=1e-5)
    # making the ignored future target a real one changes the loss: IGNORE was skipped, not scored
    fut2 = fut.clone()
    fut2[:, 1] = 0
    assert float(task.loss(model, DetectionBatch(x, cur, fut2))[0].detach()) != pytest.approx(float(loss_sum.detach()))


# ------------------------------------------------------------------------------ streaming
@pytest.mark.parametrize("arch", ["oadtr", "gru", "lstm"])
def test_streaming_equals_offline(arch):
    torch.manual_seed(0)
    T = 7
    model = build_detector(
        DetectionArgs(arch=arch, d_model=16, n_layer=2, n_head=2, dec_layers=2, dec_heads=2, future_steps=3), 5, 4, T
    ).eval()
    x = np.random.default_rng(1).standard_normal((40, 5)).astype(np.float32)
    # reference: each frame's window built by hand (zeros before the start) through model.forward
    padded = np.concatenate([np.zeros((T - 1, 5), np.float32), x])
    with torch.no_grad():
        ref = torch.softmax(model(torch.from_numpy(np.stack([padded[i : i + T] for i in range(40)])))[0], -1).numpy()
    off = detect_offline(model, x, batch=9)
    det = StreamingDetector(model)
    stream = np.stack([det.push(f) for f in x])
    assert det.buf.shape == (2 * T, 16)  # O(T) memory whatever the stream length
    np.testing.assert_allclose(off, ref, atol=2e-6, rtol=0)
    np.testing.assert_allclose(stream, off, atol=2e-6, rtol=0)
    assert (stream.argmax(1) == off.argmax(1)).all()
    sm_off = detect_offline(model, x, smooth=4)
    sm_stream = np.stack(list(stream_detect(model, x, smooth=4)))
    np.testing.assert_allclose(sm_stream, sm_off, atol=2e-6, rtol=0)
    assert (sm_off[3:] >= off[3:] - 1e-7).all() and np.allclose(sm_off[5], off[2:6].max(0), atol=2e-6)
    with pytest.raises(GenlabError, match="expects"):
        det.push(np.zeros(4, np.float32))


# ------------------------------------------------------------------------------ CLI end to end
def _one_line_error(capsys, argv, *words):
    code = main(argv)
    err = capsys.readouterr().err
    lines = [l for l in err.splitlines() if l.strip()]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert all(w in lines[0] for w in words), lines[0]


@pytest.fixture(scope="module")
def detection_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("det")
    rng = np.random.default_rng(0)
    root = _write_dir(base / "data", {f"v{i}": _video(rng, 60) for i in range(6)})
    (root / "split.json").write_text(json.dumps({"train": ["v0", "v1", "v2", "v3"], "test": ["v4", "v5"]}))
    out = base / "run"
    sets = [
        f"data.path={root}",
        *tiny.OADTR,
        "train.steps=4",
        "train.eval_every=2",
        "train.eval_batches=1",
        "train.ckpt_every=2",
        "train.warmup_steps=1",
        "train.threads=1",
    ]
    argv = ["train", "--no-progress", "--preset", "oadtr-synth", "--out", str(out)] + [f"--set={s}" for s in sets]
    assert main(argv) == 0
    return out, root


def test_detection_run_eval_detect_info(capsys, detection_run):
    out, root = detection_run
    capsys.readouterr()
    assert main(["eval", str(out), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert 0 <= res["mAP"] <= 1 and 0 <= res["mcAP"] <= 1 and res["videos"] == 2
    assert set(res["per_class"]) <= {"jump", "run"}
    assert main(["eval", str(out), "--data", str(root), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["videos"] == 6
    feats = root / "features" / "v4.npy"
    npy = out / "scores.npy"
    assert main(["detect", str(out), "--features", str(feats), "--json", "--out", str(npy), "--smooth", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 60 and json.loads(lines[0])["frame"] == 0
    from genlab.train.rundir import load_run

    _, _, _, model = load_run(str(out))
    np.testing.assert_allclose(np.load(npy), detect_offline(model, np.load(feats), smooth=3), atol=2e-6, rtol=0)
    assert main(["info", str(out)]) == 0 and "FLOPs/frame" in capsys.readouterr().out
    assert main(["info", "gru-synth"]) == 0 and "parameters" in capsys.readouterr().out


def test_detect_bad_input(capsys, detection_run, tmp_path):
    out, root = detection_run
    bad = tmp_path / "bad.npy"
    np.save(bad, np.zeros((5, 3), np.float32))
    _one_line_error(capsys, ["detect", str(out), "--features", str(bad)], "3 features", "expects 6")
    np.save(bad, np.array([[np.nan] * 6], np.float32))
    _one_line_error(capsys, ["detect", str(out), "--features", str(bad)], "NaN")
    _one_line_error(capsys, ["detect", str(out), "--features", str(tmp_path / "none.npy")], "does not exist")
    _one_line_error(
        capsys, ["detect", str(out), "--features", str(bad), "--out", str(tmp_path / "x.txt")], ".npy or .csv"
    )
    _one_line_error(capsys, ["sample", str(out)], "genlab detect")
    _one_line_error(
        capsys,
        ["train", "--preset", "oadtr-synth", "--set", "model.arch=transformer", "--out", str(tmp_path / "r")],
        "oadtr, gru, lstm",
    )
    assert not (tmp_path / "r").exists()
    _one_line_error(
        capsys,
        ["train", "--preset", "oadtr-synth", "--set", f"data.path={tmp_path}", "--out", str(tmp_path / "r")],
        "classes.txt",
    )
    assert not (tmp_path / "r").exists()


def test_detection_resume_is_bitwise_exact(detection_run, tmp_path):
    import shutil

    from genlab.train import checkpoint
    from genlab.train.trainer import train

    _, root = detection_run
    sets = [
        f"data.path={root}",
        *tiny.OADTR,
        "train.steps=6",
        "train.eval_every=100",
        "train.ckpt_every=3",
        "train.log_every=1",
        "train.threads=1",
    ]
    full, _ = train(resolve("oadtr-synth", None, sets), tmp_path / "full", progress=False, log=lambda *a: None)
    part = tmp_path / "part"
    shutil.copytree(full.path, part)
    shutil.rmtree(checkpoint.list_checkpoints(part)[-1])  # back to step 3
    train(None, part, resume=True, progress=False, log=lambda *a: None)
    losses = [
        [(r["step"], r["loss"]) for r in map(json.loads, (d / "metrics.jsonl").read_text().splitlines())]
        for d in (full.path, part)
    ]
    assert losses[0] == losses[1] and len(losses[0]) == 6
