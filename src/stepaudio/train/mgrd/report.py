"""The run's before/after figure: held-out accuracy against mean reasoning tokens, one line per task and
stage (before MGRD dashed, after solid), from the two evaluation stages' stats.json."""

from __future__ import annotations

from pathlib import Path


def _points(stats: dict, task: str) -> list[tuple[float, float, str]]:
    cells = [(key.split("@")[1], v) for key, v in stats.items() if isinstance(v, dict) and key.startswith(f"{task}@")]
    order = sorted(cells, key=lambda kv: float("inf") if kv[0] == "inf" else float(kv[0]))
    return [(v["mean_reasoning_tokens"], 100 * v["accuracy"], b) for b, v in order]


def plot_before_after(before: dict, after: dict, tasks: list[str], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for i, task in enumerate([*tasks, "overall"]):
        color = "black" if task == "overall" else f"C{i}"
        for stats, style, label in ((before, "--", "before"), (after, "-", "after")):
            pts = _points(stats, task)
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], style, marker="o", color=color,
                        label=f"{task}, {label}", linewidth=2.5 if task == "overall" else 1.2)
                if task == "overall":
                    for x, y, b in pts:
                        ax.annotate(b, (x, y), textcoords="offset points", xytext=(4, 6), fontsize=8)
    ax.axhline(50, color="grey", linewidth=0.8, linestyle=":")
    ax.set_xscale("symlog", linthresh=16)
    ax.set_xlabel("mean reasoning tokens (labels: thinking budget)")
    ax.set_ylabel("held-out accuracy (%)")
    ax.set_ylim(-2, 102)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
