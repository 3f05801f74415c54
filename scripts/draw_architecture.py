"""Draw docs/images/architecture/{layers,dataflow}.png: genlab's import layers and its data flow.

    .venv/bin/python scripts/draw_architecture.py

Boxes and arrows only (matplotlib); the text in docs/architecture.md says the same in words.
The layer order is the one pyproject.toml's [tool.importlinter] contract checks.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "docs" / "images" / "architecture"

# colours by role
CLI, BENCH, TOOLS, FAM, GEN, CORE, CONF, LOW, ERR = (
    "#f4cccc",
    "#fce5cd",
    "#fff2cc",
    "#d9ead3",
    "#d0e0e3",
    "#cfe2f3",
    "#d9d2e9",
    "#eeeeee",
    "#ffffff",
)


def box(ax, x, y, w, h, title, body="", color="#ffffff", title_size=11, body_size=8.5, dashed=False):
    """A rounded box with its lower-left corner at (x, y); title on top, body lines under it."""
    ax.add_patch(
        FancyBboxPatch(
            (x, y),
            w,
            h,
            boxstyle="round,pad=0.02,rounding_size=0.08",
            linewidth=1.2,
            edgecolor="#444444",
            facecolor=color,
            linestyle="--" if dashed else "-",
        )
    )
    if body:
        ax.text(x + w / 2, y + h - 0.13, title, ha="center", va="top", fontsize=title_size, weight="bold")
        ax.text(x + w / 2, y + h - 0.42, body, ha="center", va="top", fontsize=body_size, linespacing=1.3)
    else:
        ax.text(x + w / 2, y + h / 2, title, ha="center", va="center", fontsize=title_size, weight="bold")


def arrow(ax, start, end, color="#333333", style="-|>", lw=1.4, ls="-", rad=0.0, text=None, text_xy=None, size=8):
    ax.add_patch(
        FancyArrowPatch(
            start,
            end,
            arrowstyle=style,
            mutation_scale=14,
            linewidth=lw,
            color=color,
            linestyle=ls,
            connectionstyle=f"arc3,rad={rad}",
            shrinkA=2,
            shrinkB=2,
        )
    )
    if text:
        ax.text(*text_xy, text, fontsize=size, color=color, ha="center", va="center", style="italic")


# ---------------------------------------------------------------------------------------------- layers
LAYERS = [  # (packages, what lives there, colour); top = may import everything below it
    ("genlab.cli", "argument parsing and printing; `genlab train | sample | eval | info | export | bench ...`", CLI),
    ("genlab.bench", "the code behind `genlab bench ...` (kept out of the library below it)", BENCH),
    ("genlab.serve", "`genlab serve`: OpenAI-compatible API, continuous batching, web page", BENCH),
    (
        "genlab.scaling  |  genlab.interop",
        "plan / sweep / fit (scaling laws)   |   Hugging Face import, export, from_pretrained",
        TOOLS,
    ),
    ("genlab.families", None, FAM),  # drawn with its five sub-boxes
    ("genlab.generate", "KV-cache decoding, speculative greedy, streaming text, infilling", GEN),
    (
        "genlab.train  |  genlab.plot",
        "trainer, Task ABC, checkpoints, run dir + lock, distributed, FLOPs/MFU   |   loss and lr curves",
        CORE,
    ),
    ("genlab.config", "typed sections (opt, Literal), RunConfig, registry of families, preset -> TOML -> --set", CONF),
    (
        "genlab.data  |  genlab.ops",
        "text corpora, tokenizers, packing   |   attention backends, RoPE, loss, FP8, recompute, window max",
        LOW,
    ),
    ("genlab.errors", "GenlabError: one line on stderr, exit status 2", ERR),
]

FAMILIES = [
    ("lm", "dense Transformer\nLSTM / GRU\nLMTask"),
    ("deepseek", "MLA, MoE, MTP\n(uses lm's task)"),
    ("density", "FVSBN, NADE,\nMADE, Transformer"),
    ("diffusion", "VAE, UNet,\nschedulers, EMA"),
    ("detection", "OadTR, GRU/LSTM,\nstreaming"),
]


def draw_layers(path: Path) -> None:
    W = 14.0
    row_h, fam_h, gap = 0.78, 2.25, 0.42
    heights = [fam_h if name == "genlab.families" else row_h for name, _, _ in LAYERS]
    total = sum(heights) + gap * (len(LAYERS) - 1)
    fig, ax = plt.subplots(figsize=(W, total + 1.3))
    ax.set_xlim(-0.3, W + 0.1)
    ax.set_ylim(-0.35, total + 0.95)
    ax.axis("off")
    ax.text(
        W / 2 - 0.1,
        total + 0.62,
        "genlab's layers: a module imports only from layers below it (import-linter, pyproject.toml)",
        ha="center",
        fontsize=13,
        weight="bold",
    )
    x0, w = 0.2, 10.3
    y = total
    centres = []
    for (name, body, color), h in zip(LAYERS, heights, strict=True):
        y -= h
        if name == "genlab.families":
            box(ax, x0, y, w, h, "", color=color)
            ax.text(x0 + 0.15, y + h - 0.13, name, ha="left", va="top", fontsize=11, weight="bold")
            ax.text(
                x0 + w - 0.15,
                y + h - 0.13,
                "one folder per family: args, model, task, presets",
                ha="right",
                va="top",
                fontsize=8.5,
                style="italic",
            )
            n = len(FAMILIES)
            sub_gap = 0.18
            sw = (w - 0.3 - sub_gap * (n - 1)) / n
            sub_y, sub_h = y + 0.12, h - 1.0
            sub_x = {}
            for i, (fname, fbody) in enumerate(FAMILIES):
                sx = x0 + 0.15 + i * (sw + sub_gap)
                sub_x[fname] = sx
                box(ax, sx, sub_y, sw, sub_h, fname, fbody, color="#b6d7a8", title_size=10, body_size=8)
            # deepseek and density build on lm (second import-linter contract)
            for fname in ("deepseek", "density"):
                xs = sub_x[fname] + sw * 0.5
                arrow(
                    ax,
                    (xs, sub_y + sub_h + 0.02),
                    (sub_x["lm"] + sw * 0.5, sub_y + sub_h + 0.02),
                    color="#38761d",
                    rad=0.45 if fname == "deepseek" else 0.22,
                    lw=1.1,
                )
            ax.text(
                sub_x["density"] + sw * 0.58,
                sub_y + sub_h + 0.17,
                "<- deepseek and density build on lm",
                ha="left",
                va="center",
                fontsize=8,
                color="#38761d",
                style="italic",
            )
        else:
            box(ax, x0, y, w, h, name, body, color=color)
        centres.append((x0 + w / 2, y, y + h))
        y -= gap
    # arrows down between consecutive layers
    for (cx, bottom, _), (_, _, top_next) in zip(centres, centres[1:], strict=False):
        arrow(ax, (cx, bottom - 0.01), (cx, top_next + 0.01))
    # the registry: config finds the families at run time, by (task, model.arch), never by name
    conf = centres[LAYERS.index(next(lr for lr in LAYERS if lr[0] == "genlab.config"))]
    fam = centres[3]
    arrow(
        ax,
        (x0 + w + 0.03, (conf[1] + conf[2]) / 2),
        (x0 + w + 0.03, (fam[1] + fam[2]) / 2),
        color="#674ea7",
        ls="--",
        rad=0.25,
        lw=1.3,
    )
    ax.text(
        x0 + w + 1.85,
        (conf[2] + fam[1]) / 2,
        "registry.families():\nimportlib loads\ngenlab.families once;\n"
        "each family calls\nregister(Family(...)).\nThe core looks a family\nup by (task, model.arch)\n"
        "and never names one.\n(not an import edge)",
        fontsize=8.5,
        color="#674ea7",
        ha="center",
        va="center",
        linespacing=1.3,
    )
    ax.text(
        x0 - 0.2,
        total / 2,
        "imports point down",
        rotation=90,
        ha="center",
        va="center",
        fontsize=9,
        color="#555555",
    )
    fig.savefig(path, dpi=110, bbox_inches="tight", facecolor="white")
    plt.close(fig)


# -------------------------------------------------------------------------------------------- data flow
def draw_dataflow(path: Path) -> None:
    fig, ax = plt.subplots(figsize=(15, 8.6))
    ax.set_xlim(0, 15)
    ax.set_ylim(0, 8.6)
    ax.axis("off")
    ax.text(
        7.5,
        8.35,
        "One flow for every family (language models shown; the other families swap the first boxes)",
        ha="center",
        fontsize=13,
        weight="bold",
    )
    bw, bh, top = 2.55, 1.55, 6.2
    xs = [0.2, 3.15, 6.1, 9.05, 12.0]
    row1 = [
        ("source data", "data/text.py\ncorpus files, embedded\ncorpus; split by hash", LOW),
        ("tokenizer", "data/tokenizer.py\nbyte-level BPE or bytes\n-> token ids", LOW),
        ("packer", "data/packing.py\nchunks -> rows (BFD)\n-> flat Batch + cu_seqlens", LOW),
        ("model", "families/lm/transformer.py\n(rnn.py, deepseek/model.py)\nflat (T,) stream, no padding", FAM),
        ("loss", "families/lm/task.py\nsummed CE and its count\n(ops/loss.py: chunked)", FAM),
    ]
    for x, (t, b, c) in zip(xs, row1, strict=True):
        box(ax, x, top, bw, bh, t, b, color=c)
    for a, b in zip(xs, xs[1:], strict=False):
        arrow(ax, (a + bw + 0.03, top + bh / 2), (b - 0.03, top + bh / 2))
    ax.text(
        (xs[3] + xs[4] + bw) / 2,
        top - 0.28,
        "Task.next_batch(state) -> (batch, state)  |  Task.loss(model, batch) -> (sum, n)",
        ha="center",
        fontsize=8.5,
        style="italic",
        color="#444444",
    )

    mid = 3.35
    trainer = (7.3, mid, 4.2, 1.75)
    box(
        ax,
        *trainer,
        "trainer",
        "train/trainer.py: accumulation, clipping,\noptim.py schedule, guards.py spike/NaN guard,\n"
        "flops.py MFU, parallel.py DDP / FSDP2",
        color=CORE,
        body_size=8.3,
    )
    # loss -> trainer (down and left)
    arrow(ax, (xs[4] + bw / 2, top - 0.05), (trainer[0] + trainer[2] - 0.3, mid + trainer[3] + 0.03), rad=-0.2)
    run = (1.3, mid, 4.4, 1.75)
    box(
        ax,
        *run,
        "run directory",
        "train/rundir.py: config.toml, tokenizer.json,\nmetrics.jsonl, run.json, *.png, .lock\n"
        "checkpoints/step_N/ (checkpoint.staging)",
        color=CORE,
        body_size=8.3,
    )
    arrow(ax, (trainer[0] - 0.03, mid + 0.85), (run[0] + run[2] + 0.03, mid + 0.85))
    ax.text(
        (run[0] + run[2] + trainer[0]) / 2,
        mid + 1.1,
        "checkpoints,\nmetrics, status",
        ha="center",
        va="bottom",
        fontsize=8,
        style="italic",
    )
    # config feeds everything
    box(
        ax,
        12.2,
        mid + 0.1,
        2.6,
        1.55,
        "RunConfig",
        "config/: preset -> TOML\n-> --set; the family's\nown typed sections",
        color=CONF,
        body_size=8.3,
    )
    arrow(ax, (12.17, mid + 0.85), (trainer[0] + trainer[2] + 0.03, mid + 0.85), ls="--", color="#674ea7")

    # consumers of a run dir: one bus from the run dir, a short arrow down to each
    consumers = [
        ("genlab sample", "generate.py (LM)\nor task.sample"),
        ("genlab eval", "task.eval_report"),
        ("genlab info", "task.info_lines"),
        ("genlab export", "interop/hf.py +\ndeepseek/hf.py"),
        ("from_pretrained", "interop/hf.py"),
        ("genlab detect", "families/detection/\nstream.py"),
        ("genlab plot", "plot.py"),
        ("genlab bench", "bench/ (trains,\nthen load_run)"),
    ]
    cw, ch, cy, cgap = 1.62, 1.25, 0.35, 0.2
    cx0 = (15 - (len(consumers) * cw + (len(consumers) - 1) * cgap)) / 2
    centres = [cx0 + i * (cw + cgap) + cw / 2 for i in range(len(consumers))]
    bus_y, run_cx = cy + ch + 0.55, run[0] + run[2] / 2
    line = dict(color="#555555", linewidth=1.2)
    ax.plot([run_cx, run_cx], [mid - 0.02, bus_y], **line)
    ax.plot([centres[0], centres[-1]], [bus_y, bus_y], **line)
    ax.text(
        run_cx + 0.2,
        (mid + bus_y) / 2,
        "RunDir.open(RUN), or rundir.load_run(RUN) -> (run, config, task, model):\n"
        "the best checkpoint (RUN/best/) or else the newest intact one",
        ha="left",
        va="center",
        fontsize=8.5,
        style="italic",
        color="#444444",
    )
    for (t, b), x in zip(consumers, centres, strict=True):
        box(
            ax,
            x - cw / 2,
            cy,
            cw,
            ch,
            t,
            b,
            color=TOOLS if t == "from_pretrained" else CLI,
            title_size=9.5,
            body_size=8,
        )
        arrow(ax, (x, bus_y), (x, cy + ch + 0.03), lw=1.0, color="#555555")
    fig.savefig(path, dpi=110, bbox_inches="tight", facecolor="white")
    plt.close(fig)


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    draw_layers(OUT / "layers.png")
    draw_dataflow(OUT / "dataflow.png")
    print(f"wrote {OUT / 'layers.png'} and {OUT / 'dataflow.png'}")


if __name__ == "__main__":
    main()
