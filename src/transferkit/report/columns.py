"""The columns of a comparison, in one place: what every regime costs, what its task measured (the
task's own `columns`, carried in each run's metrics.json), and forgetting where it was measured."""

from __future__ import annotations

COST = [
    ("regime", "regime", "{}"),
    ("train_size", "train size", "{}"),
    ("parameters_trained", "params trained", "{:,.0f}"),
    ("parameters_trained_percent", "% trained", "{:.2f}"),
    ("peak_memory_mb", "peak MB", "{:,.0f}"),
    ("seconds", "time s", "{:.1f}"),
    ("examples_per_second", "examples/s", "{:.1f}"),
]
FORGETTING = [
    ("forgetting_perplexity_change", "general ppl change", "{:+.1%}"),
    ("forgetting_cka", "CKA after", "{:.3f}"),
    ("forgetting_probe_change", "probe change", "{:+.4f}"),
]
ARTEFACT = [("artefact_mb", "artefact MB", "{:.1f}")]


def headline_metric(rows: list[dict], headlines: list[str]) -> str:
    """The first of the task's headline metrics that every row has: it leads, its spread is shown, plots draw it."""
    return next(key for key in headlines if all(key in r for r in rows))


def columns(rows: list[dict], quality: list) -> list[tuple[str, str, str]]:
    """(key, title, format) of a table: cost, the task's metrics (where every row has them), forgetting, size."""
    kept = [tuple(c) for c in quality if all(c[0] in r for r in rows)]
    kept.insert(1, ("spread", "± (seeds)", "{:.4f}"))
    forgetting = [c for c in FORGETTING if all(c[0] in r for r in rows)]
    return COST + kept + forgetting + ARTEFACT


def markdown_table(summary: list[dict], quality: list, failed: list[dict] = ()) -> str:
    cols = columns(summary, quality)
    lines = ["| " + " | ".join(title for _, title, _ in cols) + " |", "|" + "---|" * len(cols)]
    for row in summary:
        lines.append("| " + " | ".join(fmt.format(row[key]) for key, _, fmt in cols) + " |")
    lines += [f"\nfailed: {row['regime']} (train size {row['train_size']}, seed {row['seed']}): {row['error']}" for row in failed]
    return "\n".join(lines) + "\n"


def text_table(summary: list[dict], quality: list) -> str:
    cols = columns(summary, quality)
    cells = [[title for _, title, _ in cols]] + [[fmt.format(row[key]) for key, _, fmt in cols] for row in summary]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cols))]
    return "\n".join("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))) for row in cells)
