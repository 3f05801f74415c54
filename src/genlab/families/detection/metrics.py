"""Frame-level average precision (THUMOS'14 mAP) and calibrated AP (TVSeries mcAP).

The OadTR / TVSeries protocol (De Geest et al. 2016), per action class c (background skipped):
rank every scored frame by its score for c, highest first; P = frames labelled c, N = the rest,
w = N / P; at rank r, TP_r = positives among the top r and FP_r = r - TP_r.

    AP_c  = (1/P) * sum over ranks r holding a positive of  TP_r / r
    cAP_c = (1/P) * sum over the same ranks of  w*TP_r / (w*TP_r + FP_r)

Calibration rescales the positives as if there were as many of them as negatives, so cAP does not
depend on how rare a class is. mAP / mcAP = mean over the action classes that have at least one
positive frame (a class without positives has no defined AP; it is listed, not averaged).

Ties: frames with equal scores keep their frame order (a stable sort), as a streaming detector
would emit them. With no ties AP_c equals scikit-learn's average_precision_score.
Frames labelled ambiguous (-1) are dropped before scoring, as the reference drops them.
"""

from __future__ import annotations

import numpy as np

from genlab.errors import GenlabError


def ap_and_cap(scores: np.ndarray, positive: np.ndarray) -> tuple[float, float]:
    """scores (N,), positive (N,) bool -> (AP, cAP); NaN when there is no positive frame."""
    scores = np.asarray(scores, dtype=np.float64)
    positive = np.asarray(positive, dtype=bool)
    P = int(positive.sum())
    if P == 0:
        return float("nan"), float("nan")
    order = np.argsort(-scores, kind="stable")
    hit = positive[order]  # (N,) is the frame at rank r a positive
    tp = np.cumsum(hit)  # TP_r
    rank = np.arange(1, len(hit) + 1)
    fp = rank - tp
    w = (len(hit) - P) / P
    ap = float((tp[hit] / rank[hit]).sum() / P)
    cap = float((w * tp[hit] / (w * tp[hit] + fp[hit])).sum() / P)
    return ap, cap


def frame_map(probs: np.ndarray, labels: np.ndarray, classes: list[str] | None = None, background: int = 0) -> dict:
    """probs (N, C) per-frame class scores, labels (N,) ids in 0..C-1 or -1 (ambiguous).

    Returns {"mAP", "mcAP", "frames", "per_class": {name: {"AP", "cAP", "frames"}}, "no_positives": [...]}."""
    probs = np.asarray(probs)
    labels = np.asarray(labels)
    if probs.ndim != 2 or labels.shape != (probs.shape[0],):
        raise GenlabError(f"frame_map needs probs (N, C) and labels (N,); got {probs.shape} and {labels.shape}")
    C = probs.shape[1]
    if labels.size and (labels.min() < -1 or labels.max() >= C):
        raise GenlabError(f"labels must be -1 (ambiguous) or 0..{C - 1}; found {labels.min()}..{labels.max()}")
    if not np.isfinite(probs).all():
        raise GenlabError("frame_map: scores contain NaN or inf")
    names = classes or [str(c) for c in range(C)]
    keep = labels != -1
    probs, labels = probs[keep], labels[keep]
    per_class, none = {}, []
    for c in range(C):
        if c == background:
            continue
        pos = labels == c
        if not pos.any():
            none.append(names[c])
            continue
        ap, cap = ap_and_cap(probs[:, c], pos)
        per_class[names[c]] = {"AP": ap, "cAP": cap, "frames": int(pos.sum())}
    if not per_class:
        raise GenlabError("no frame is labelled with an action class; AP is undefined on this data")
    return {
        "mAP": float(np.mean([v["AP"] for v in per_class.values()])),
        "mcAP": float(np.mean([v["cAP"] for v in per_class.values()])),
        "frames": int(len(labels)),
        "per_class": per_class,
        "no_positives": none,
    }
