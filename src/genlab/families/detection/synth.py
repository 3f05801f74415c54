"""Synthetic streaming benchmark for online action detection: deterministic, offline, seconds to make.

Each video is a stream of feature frames (feat_dim floats per frame) alternating background gaps
and action instances, with the structure that makes real online detection hard:

- durations and onsets: gaps ~ log-normal (median 28 frames), actions ~ log-normal (median 24),
  both clipped; the class of each action is uniform over the n_actions classes.
- class-dependent prototypes with phases: an action's frames are its onset prototype (first
  30%), then a body prototype, then its offset prototype (last 20%). Classes 2j+1 and 2j+2
  SHARE their body prototype (like two sports with the same running phase), so during the body
  only the context of the onset (or the later offset) tells them apart.
- background is not one thing: each gap draws one of 4 scene prototypes.
- anticipation cues: the 4 background frames before an onset carry a faint copy of the coming
  action's onset prototype (labelled background; the future labels name the action).
- nuisance: every video has its own additive offset and signal gain (camera, scene).
- noise: AR(1) (rho 0.8, temporally correlated like real features) plus white noise.
- ambiguous frames (label -1): with probability 0.5 the first frame of an action, and 8% of
  action instances whole, whose features mix two classes (THUMOS' "Ambiguous").

Classes: id 0 background, 1..n_actions actions; prototypes come from `seed` alone, so train and
test share them; each split's videos come from (seed, split, video index).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from genlab.families.detection.features import AMBIGUOUS, FrameData, concat


@dataclass(frozen=True)
class SynthSpec:
    n_actions: int = 8
    feat_dim: int = 64
    train_videos: int = 120
    test_videos: int = 12
    min_frames: int = 300
    max_frames: int = 700
    action_median: float = 24.0
    action_sigma: float = 0.5
    action_range: tuple = (8, 96)
    gap_median: float = 28.0
    gap_sigma: float = 0.8
    gap_range: tuple = (4, 200)
    scenes: int = 4
    lead: int = 4  # anticipation-cue frames before an onset
    lead_strength: float = 0.5
    signal: float = 0.35  # prototype amplitude per feature (noise sd is about 1)
    video_offset: float = 0.5
    gain_range: tuple = (0.7, 1.3)
    ar_rho: float = 0.8
    ar_sd: float = 0.8  # stationary sd of the AR(1) noise
    white_sd: float = 0.6
    ambiguous_instance: float = 0.08
    ambiguous_onset: float = 0.5
    seed: int = 1234

    def to_dict(self) -> dict:
        return asdict(self)


def class_names(spec: SynthSpec) -> list[str]:
    return ["background"] + [f"action_{c}" for c in range(1, spec.n_actions + 1)]


def _prototypes(spec: SynthSpec) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(spec.seed)
    F, A = spec.feat_dim, spec.n_actions
    onset = rng.standard_normal((A + 1, F))
    body_pairs = rng.standard_normal(((A + 1) // 2 + 1, F))
    body = np.stack([body_pairs[(c - 1) // 2] if c else np.zeros(F) for c in range(A + 1)])  # c=2j+1, 2j+2 share
    offset = rng.standard_normal((A + 1, F))
    scenes = rng.standard_normal((spec.scenes, F))
    return {"onset": onset, "body": body, "offset": offset, "scenes": scenes}


def _lognormal_int(rng, median: float, sigma: float, lo_hi: tuple) -> int:
    return int(np.clip(round(float(np.exp(rng.normal(np.log(median), sigma)))), *lo_hi))


def _action_signal(proto: dict, c: int, d: int) -> np.ndarray:
    """(d, F) prototype sequence of one instance of class c lasting d frames."""
    n_on = max(1, int(np.ceil(0.3 * d)))
    n_off = max(1, int(np.ceil(0.2 * d))) if d - n_on > 1 else 0
    n_body = d - n_on - n_off
    return np.concatenate(
        [
            np.repeat(proto["onset"][c][None], n_on, 0),
            np.repeat(proto["body"][c][None], n_body, 0),
            np.repeat(proto["offset"][c][None], n_off, 0),
        ]
    )


def make_video(spec: SynthSpec, proto: dict, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(frames, feat_dim) float32 features and (frames,) int64 labels of one video."""
    L = int(rng.integers(spec.min_frames, spec.max_frames + 1))
    F = spec.feat_dim
    sig = np.zeros((L, F))
    labels = np.zeros(L, dtype=np.int64)
    t = 0
    while t < L:
        gap = _lognormal_int(rng, spec.gap_median, spec.gap_sigma, spec.gap_range)
        sig[t : t + gap] = proto["scenes"][rng.integers(spec.scenes)]
        t += gap
        if t >= L:
            break
        c = int(rng.integers(1, spec.n_actions + 1))
        d = min(_lognormal_int(rng, spec.action_median, spec.action_sigma, spec.action_range), L - t)
        a = max(0, t - spec.lead)
        sig[a:t] += spec.lead_strength * proto["onset"][c]  # anticipation cue inside the background
        if rng.random() < spec.ambiguous_instance:
            other = int(rng.integers(1, spec.n_actions + 1))
            sig[t : t + d] = 0.5 * (_action_signal(proto, c, d) + _action_signal(proto, other, d))
            labels[t : t + d] = AMBIGUOUS
        else:
            sig[t : t + d] = _action_signal(proto, c, d)
            labels[t : t + d] = c
            if rng.random() < spec.ambiguous_onset:
                labels[t] = AMBIGUOUS
        t += d
    # AR(1) noise with stationary sd ar_sd: e_t = rho e_{t-1} + sqrt(1 - rho^2) ar_sd z_t
    z = rng.standard_normal((L, F)) * spec.ar_sd * np.sqrt(1 - spec.ar_rho**2)
    ar = np.empty_like(z)
    ar[0] = rng.standard_normal(F) * spec.ar_sd
    for i in range(1, L):
        ar[i] = spec.ar_rho * ar[i - 1] + z[i]
    gain = rng.uniform(*spec.gain_range)
    x = (
        rng.standard_normal(F) * spec.video_offset
        + gain * spec.signal * sig
        + ar
        + rng.standard_normal((L, F)) * spec.white_sd
    )
    return x.astype(np.float32), labels


def generate(spec: SynthSpec = SynthSpec(), split: str = "train") -> FrameData:
    """The train or test split of the benchmark (deterministic)."""
    proto = _prototypes(spec)
    split_id, n = {"train": (0, spec.train_videos), "test": (1, spec.test_videos)}[split]
    videos = []
    for v in range(n):
        x, y = make_video(spec, proto, np.random.default_rng([spec.seed, split_id, v]))
        videos.append((f"synth_{split}_{v:03d}", x, y))
    return concat(videos, class_names(spec))
