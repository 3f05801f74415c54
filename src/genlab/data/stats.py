"""What a prepared DATA_DIR holds (`genlab data stats`): documents, tokens, bytes per token, the splits,
each source's share, and the distribution of document lengths (with a log-x histogram PNG).

Counts come from the manifest; lengths from the .idx files, one shard at a time (8 bytes per document
read, the token files are never read), so this is cheap at any corpus size. Shard sizes are checked
against the manifest on the way; their SHA-256s with verify="full" (`genlab data stats --verify`).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from genlab.data.shards import SPLITS, counts_of, open_shard, read_manifest
from genlab.errors import GenlabError

BINS_PER_OCTAVE = 8  # histogram resolution: quantiles are exact to within a factor 2^(1/8) (9%)
MAX_OCTAVE = 48  # documents up to 2^48 tokens
HIST_PNG = "length_hist.png"


def _edges() -> np.ndarray:
    return 2.0 ** (np.arange(BINS_PER_OCTAVE * MAX_OCTAVE + 1) / BINS_PER_OCTAVE)


def data_stats(data_dir: str | Path, verify: str = "size") -> dict:
    """Counts, per split and per source, and document-length statistics of a finished DATA_DIR.
    verify="full" also checks every shard's SHA-256 (reading the whole corpus)."""
    data_dir = Path(data_dir)
    m = read_manifest(data_dir)
    counts = counts_of(m)
    edges = _edges()
    hist = {s: np.zeros(len(edges) - 1, dtype=np.int64) for s in SPLITS}
    lo, hi, n_docs = math.inf, 0, 0
    per_source: dict[int, dict] = {}
    seen = dict.fromkeys(SPLITS, 0)  # documents of the split before this shard
    excluded = {s: set(m.get("excluded", {}).get(s, [])) for s in SPLITS}
    for sh in m["shards"]:
        split = sh["name"].split("-")[0]
        _, idx = open_shard(data_dir, sh, m["dtype"], verify=verify)
        lengths = np.diff(idx)
        drop = [i - seen[split] for i in excluded[split] if seen[split] <= i < seen[split] + len(lengths)]
        seen[split] += len(lengths)
        lengths = np.delete(lengths, drop)
        if len(lengths):
            # bin k holds lengths in [2^(k/B), 2^((k+1)/B)); a zero-length document cannot occur (BOS or text)
            k = np.floor(np.log2(np.maximum(lengths, 1)) * BINS_PER_OCTAVE + 1e-9).astype(np.int64)
            hist[split] += np.bincount(np.clip(k, 0, len(edges) - 2), minlength=len(edges) - 1)
            lo, hi, n_docs = min(lo, int(lengths.min())), max(hi, int(lengths.max())), n_docs + len(lengths)
        for key, c in sh.get("sources", {}).items():
            s = per_source.setdefault(int(key), {"documents": 0, "tokens": 0, "bytes": 0})
            for f in s:
                s[f] += c[f]
    _fix_moved(m, per_source)
    total = hist["train"] + hist["val"]
    used = np.nonzero(total)[0]
    first, last = (int(used[0]), int(used[-1]) + 1) if len(used) else (0, 0)
    sources = []
    for i, src in enumerate(m["sources"]):
        c = per_source.get(i, {"documents": 0, "tokens": 0, "bytes": 0})
        sources.append(
            {
                "path": src["path"],
                "bytes_on_disk": src["bytes"],
                **c,
                "document_share": c["documents"] / max(1, counts["documents"]),
                "token_share": c["tokens"] / max(1, counts["tokens"]),
            }
        )
    return {
        "data_dir": str(data_dir),
        "documents": counts["documents"],
        "tokens": counts["tokens"],
        "bytes": counts["bytes"],
        "bytes_per_token": counts["bytes"] / max(1, counts["tokens"]),
        "dtype": m["dtype"],
        "tokenizer": {k: m["tokenizer"][k] for k in ("kind", "vocab_size", "bos_id")},
        "shards": len(m["shards"]),
        "splits": {s: {k: counts[f"{s}_{k}"] for k in ("documents", "tokens", "bytes")} for s in SPLITS},
        "sources": sources,
        "lengths": {
            "min": lo if n_docs else 0,
            "max": hi,
            "mean": counts["tokens"] / max(1, counts["documents"]),
            **{f"p{q}": _quantile(total, edges, q / 100, lo, hi) for q in (50, 90, 99)},
        },
        "histogram": {
            "bins_per_octave": BINS_PER_OCTAVE,
            "edges": edges[first : last + 1].tolist(),
            **{s: hist[s][first:last].tolist() for s in SPLITS},
        },
    }


def _fix_moved(m: dict, per_source: dict[int, dict]) -> None:
    """A document moved to the other split (see shards._fix_empty_split) is in two shards: its excluded
    original and its copy. Per-source counts take it once."""
    for sh in m["shards"]:
        if "moved_from" in sh:
            for key, c in sh.get("sources", {}).items():
                for f in ("documents", "tokens", "bytes"):
                    per_source[int(key)][f] -= c[f]


def _quantile(hist: np.ndarray, edges: np.ndarray, q: float, lo: float, hi: float) -> float:
    """The q-quantile of the lengths binned in `hist`: the geometric middle of its bin, within [lo, hi]."""
    n = int(hist.sum())
    if n == 0:
        return 0.0
    k = int(np.searchsorted(np.cumsum(hist), q * n, side="left"))
    return float(min(hi, max(lo, math.sqrt(edges[k] * edges[k + 1]))))


def plot_lengths(stats: dict, out: str | Path) -> Path:
    """The document-length histogram (log-x), validation stacked on training, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    if out.suffix.lower() != ".png":
        raise GenlabError(f"--out {out}: the histogram is written as a .png file")
    if not out.parent.is_dir():
        raise GenlabError(f"--out {out}: directory {out.parent} does not exist")
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    edges, train, val = _coarser(stats)
    fig, ax = plt.subplots(figsize=(7.5, 4.2), dpi=110)
    if len(edges) > 1:
        ax.stairs(train + val, edges, fill=True, color="#4c72b0", label=f"train ({train.sum():,} documents)")
        ax.stairs(val, edges, fill=True, color="#dd8452", label=f"validation ({val.sum():,} documents)")
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:,.0f}"))
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        lengths = stats["lengths"]
        for key, style in (("p50", "--"), ("p90", ":")):
            ax.axvline(lengths[key], color="0.2", ls=style, lw=1.2, label=f"{key} ≈ {lengths[key]:,.0f} tokens")
        ax.set_ylim(0, (train + val).max() * 1.3)  # headroom for the legend
        ax.legend(frameon=False, ncol=2, loc="upper left", fontsize=9)
    ax.set_xlabel("document length (tokens, log scale)")
    ax.set_ylabel("documents")
    name = Path(stats["data_dir"]).name or stats["data_dir"]
    ax.set_title(
        f"{name}: {stats['documents']:,} documents, {stats['tokens']:,} tokens, "
        f"{stats['bytes_per_token']:.2f} bytes/token",
        fontsize=10,
    )
    ax.grid(alpha=0.3, which="major")
    fig.tight_layout()
    tmp = out.with_name(out.name + ".tmp")
    fig.savefig(tmp, format="png")
    plt.close(fig)
    tmp.replace(out)
    return out


def _coarser(stats: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The histogram with bins merged (8, 4, 2 or 1 per octave) to about 2 sqrt(documents) bars, at
    least 10 and at most 64, so a small corpus is not a comb."""
    h = stats["histogram"]
    edges, train, val = np.asarray(h["edges"]), np.asarray(h["train"]), np.asarray(h["val"])
    if len(edges) < 2:
        return edges, train, val
    target = min(64, max(10, 2 * math.sqrt(train.sum() + val.sum())))
    m = 1
    while m < h["bins_per_octave"] and len(train) / m > target:
        m *= 2
    first = round(math.log2(edges[0]) * h["bins_per_octave"])  # global bin index of the first bin
    lead = first % m  # pad so merged bins line up with whole fractions of an octave
    pad = (-(lead + len(train))) % m
    train, val = (np.concatenate([np.zeros(lead, np.int64), x, np.zeros(pad, np.int64)]) for x in (train, val))
    k = np.arange(first - lead, first - lead + len(train) + 1, m)
    edges = 2.0 ** (k / h["bins_per_octave"])
    return edges, train.reshape(-1, m).sum(1), val.reshape(-1, m).sum(1)


def format_stats(s: dict) -> str:
    """The human-readable report of `genlab data stats`."""
    tok = s["tokenizer"]
    lines = [
        f"{s['data_dir']}: {s['documents']:,} documents, {s['tokens']:,} tokens, {s['bytes'] / 1e6:,.1f} MB of text, "
        f"{s['bytes_per_token']:.3f} bytes per token ({tok['kind']} tokenizer, vocabulary {tok['vocab_size']:,}, "
        f"{s['dtype']}, {s['shards']} shards)",
    ]
    for split, c in s["splits"].items():
        share = c["tokens"] / max(1, s["tokens"])
        lines.append(f"  {split:<6} {c['documents']:>12,} documents {c['tokens']:>16,} tokens  ({share:.1%})")
    L = s["lengths"]
    lines.append(
        f"document length (tokens): min {L['min']:,}, median ≈ {L['p50']:,.0f}, p90 ≈ {L['p90']:,.0f}, "
        f"p99 ≈ {L['p99']:,.0f}, max {L['max']:,}, mean {L['mean']:,.1f}"
    )
    lines.append("sources (share of tokens, of documents):")
    for src in s["sources"]:
        lines.append(
            f"  {src['token_share']:>6.1%} {src['document_share']:>6.1%}  {src['path']}  "
            f"({src['documents']:,} documents, {src['tokens']:,} tokens)"
        )
    return "\n".join(lines)
