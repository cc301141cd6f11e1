"""Summaries of results: a table per category, and for a thinking-budget sweep a Markdown report and a
plot of accuracy against mean reasoning tokens (the curve the Step-Audio-R1 paper argues for but never
draws; training_realtime_eval.md §2)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

OVERALL = "overall"


@dataclass
class Row:
    budget: str | int
    category: str
    n: int                 # scored items (errors excluded)
    correct: int
    errors: int
    mean_reasoning_tokens: float
    mean_latency_s: float

    @property
    def accuracy(self) -> float:
        return self.correct / self.n if self.n else 0.0


def _budget_order(budget: str | int) -> float:
    return float("inf") if budget == "inf" else float(budget)


def summarize(records: Sequence[dict[str, Any]]) -> list[Row]:
    """One row per (budget, category) and one per budget over all categories, budgets in increasing order."""
    groups: dict[tuple[str | int, str], list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        groups[(r["budget"], r["category"])].append(r)
        groups[(r["budget"], OVERALL)].append(r)
    rows = []
    for (budget, category), group in groups.items():
        scored = [r for r in group if not r.get("error")]
        n = len(scored)
        rows.append(Row(budget, category, n, sum(bool(r["correct"]) for r in scored), len(group) - n,
                        sum(r["reasoning_tokens"] for r in scored) / n if n else 0.0,
                        sum(r["latency_s"] for r in scored) / n if n else 0.0))
    rows.sort(key=lambda r: (_budget_order(r.budget), r.category == OVERALL, r.category))
    return rows


def table(rows: Sequence[Row]) -> str:
    """A Markdown table (also readable in a terminal)."""
    lines = ["| budget | category | n | accuracy | mean reasoning tokens | mean latency (s) | errors |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r.budget} | {r.category} | {r.n} | {100 * r.accuracy:.1f} % | "
                     f"{r.mean_reasoning_tokens:.1f} | {r.mean_latency_s:.2f} | {r.errors} |")
    return "\n".join(lines)


def sweep_markdown(rows: Sequence[Row], title: str, plot_name: str | None = None) -> str:
    """The sweep report: one row per budget, overall accuracy and tokens, then accuracy per category."""
    categories = sorted({r.category for r in rows if r.category != OVERALL})
    by_key = {(r.budget, r.category): r for r in rows}
    budgets = sorted({r.budget for r in rows}, key=_budget_order)
    head = ["budget", "accuracy", "mean reasoning tokens", "mean latency (s)", "n", *categories]
    lines = [f"# {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" + "---:|" * (len(head) - 1)]
    for budget in budgets:
        o = by_key[(budget, OVERALL)]
        cells = [str(budget), f"{100 * o.accuracy:.1f} %", f"{o.mean_reasoning_tokens:.1f}",
                 f"{o.mean_latency_s:.2f}", str(o.n)]
        cells += [f"{100 * by_key[(budget, c)].accuracy:.1f} % ({by_key[(budget, c)].mean_reasoning_tokens:.0f} tok)"
                  if (budget, c) in by_key else "—" for c in categories]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Budget: the cap on reasoning tokens (`max_thinking_tokens`; at the cap the think block is closed "
              "and the model answers); 0 is no thinking; inf is no cap. Accuracy is on the answer after `</think>`."]
    if plot_name:
        lines += ["", f"![accuracy against reasoning tokens]({plot_name})"]
    return "\n".join(lines) + "\n"


def plot_sweep(rows: Sequence[Row], path: Path, title: str) -> Path:
    """Accuracy against mean reasoning tokens, one line per category, each point labelled with its budget."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    categories = sorted({r.category for r in rows if r.category != OVERALL}) + [OVERALL]
    for category in categories:
        points = sorted((r for r in rows if r.category == category), key=lambda r: _budget_order(r.budget))
        xs, ys = [r.mean_reasoning_tokens for r in points], [100 * r.accuracy for r in points]
        style = {"color": "black", "linewidth": 2.5} if category == OVERALL else {"alpha": 0.8}
        ax.plot(xs, ys, marker="o", label=category, **style)
        if category == OVERALL:
            for r, x, y in zip(points, xs, ys):
                ax.annotate(str(r.budget), (x, y), textcoords="offset points", xytext=(4, 6), fontsize=8)
    ax.set_xscale("symlog", linthresh=16)
    ax.set_xlabel("mean reasoning tokens")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(-2, 102)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
