"""Self-contained HTML reports (plots embedded as PNG data, so a report opens offline anywhere).

A script at the end of each page counts the plots that decoded and writes the count into
`<body data-plots-rendered="n/total">`, which the browser test reads.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display: draw into memory
import matplotlib.pyplot as plt  # noqa: E402

from .columns import columns, headline_metric  # noqa: E402

STYLE = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}img{max-width:100%;margin:0.5em 0}
.plots{display:grid;grid-template-columns:1fr 1fr;gap:1em}pre{background:#f7f7f7;padding:1em;overflow:auto}"""

CHECK = """<script>
window.addEventListener('load', () => {
  const images = [...document.querySelectorAll('img.plot')];
  const ok = images.filter(i => i.complete && i.naturalWidth > 0).length;
  document.body.dataset.plotsRendered = ok + '/' + images.length;
});
</script>"""


def page(title: str, sections: list[str]) -> str:
    body = "\n".join(sections)
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>\n{body}\n{CHECK}</body></html>"
    )


def figure_tag(fig, alt: str) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    data = base64.b64encode(buffer.getvalue()).decode()
    return f"<img class='plot' alt='{html.escape(alt)}' src='data:image/png;base64,{data}'>"


def table(header: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def learning_curves(records: list[dict], title: str):
    """Training loss per step and validation accuracy where it was measured, stage by stage."""
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 3.2))
    offset = 0
    for stage in dict.fromkeys(r["stage"] for r in records):
        rows = [r for r in records if r["stage"] == stage]
        loss_ax.plot([offset + r["step"] for r in rows], [r["loss"] for r in rows], lw=0.8, label=stage)
        key = "val_accuracy" if any("val_accuracy" in r for r in rows) else "val_loss"
        val = [r for r in rows if key in r]
        acc_ax.plot([offset + r["step"] for r in val], [r[key] for r in val], marker="o", ms=3, label=stage)
        offset += rows[-1]["step"]
    loss_ax.set(title=f"{title}: training loss", xlabel="optimizer step", yscale="log")
    acc_ax.set(title="validation " + ("accuracy" if any("val_accuracy" in r for r in records) else "loss"), xlabel="optimizer step")
    for ax in (loss_ax, acc_ax):
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    return fig


def confusion_figure(matrix: list[list[int]], labels: list[str], title: str):
    fig, ax = plt.subplots(figsize=(1.2 + 0.6 * len(labels), 1 + 0.5 * len(labels)))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    top = max(max(row) for row in matrix) or 1
    for i, row in enumerate(matrix):
        for j, value in enumerate(row):
            ax.text(j, i, value, ha="center", va="center", color="white" if value > top / 2 else "black", fontsize=8)
    return fig


# A confusion matrix drawn for more classes than this is unreadable, and its figure's memory grows
# with the square of the class count (1,000 classes took 24 GB); the per-class table stays.
MAX_MATRIX_CLASSES = 30


def too_many_classes(n: int) -> str:
    return (f"<p>{n} classes: the confusion matrix is not drawn above {MAX_MATRIX_CLASSES} classes; the per-class "
            "table above and metrics.json (test.confusion_matrix) hold every count.</p>")  # fmt: skip


def read_log(run_dir: Path) -> list[dict]:
    """A run's metrics.jsonl records (the callers read files; the report functions take data)."""
    path = run_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def run_report(metrics: dict, records: list[dict], config_text: str) -> str:
    """One run: its test metrics, learning curves, confusion matrix (or generated samples, or a scatter
    of predicted against true values), forgetting before and after, and the config."""
    test = metrics["test"]
    quality = [c for c in metrics.get("columns", []) if c[0] in test]
    summary = table(
        ["regime", *[f"test {title}" for _, title, _ in quality], "parameters trained", "train time s", "peak memory MB", "model MB"],
        [[metrics["regime"], *[fmt.format(test[key]) for key, _, fmt in quality], f"{metrics['parameters']['trainable']:,}",
          f"{metrics['train_seconds']:.1f}", f"{metrics['peak_rss_mb']:.0f}", f"{metrics['model_size_mb']:.1f}"]],
    )  # fmt: skip
    sections = ["<h2>Result</h2>", summary]
    per_label = test.get("per_class") or test.get("per_label")
    if per_label:
        sections.append(table(["class" if "per_class" in test else "label", "precision", "recall", "F1", "support"],
                              [[n, f"{m['precision']:.3f}", f"{m['recall']:.3f}", f"{m['f1']:.3f}", m["support"]] for n, m in per_label.items()]))
    if "per_target" in test:
        keys = list(next(iter(test["per_target"].values())))
        sections.append(table(["target", *keys], [[n, *[f"{m[k]:.4f}" for k in keys]] for n, m in test["per_target"].items()]))
    if metrics.get("windows"):
        sections += ["<h2>Windows</h2>", windows_table(metrics["windows"], metrics.get("windowing", {}))]
    if metrics.get("prompt"):
        p = metrics["prompt"]
        sections.append(f"<p>Prompt: {p['shots']} demonstrations, {p['prefix_tokens']} prefix tokens, calibrated: {p['calibrated']}.</p>")
    plots = [figure_tag(learning_curves(records, metrics["regime"]), "learning curves")] if records else []
    if "confusion_matrix" in test and len(metrics["labels"]) <= MAX_MATRIX_CLASSES:
        plots.append(figure_tag(confusion_figure(test["confusion_matrix"], metrics["labels"], "test confusion matrix"), "confusion matrix"))
    elif "confusion_matrix" in test:
        sections.append(too_many_classes(len(metrics["labels"])))
    if metrics.get("scatter"):
        plots.append(figure_tag(scatter_figure(metrics["scatter"]), "predicted against true values"))
    if metrics.get("lr_range_test"):
        plots.append(figure_tag(range_test_figure(metrics["lr_range_test"]), "learning-rate range test"))
    if metrics.get("forgetting"):
        sections += ["<h2>Forgetting</h2>", forgetting_table(metrics["forgetting"])]
        plots.append(figure_tag(forgetting_figure(metrics["forgetting"]), "forgetting before and after"))
    if metrics.get("samples"):
        sections += ["<h2>Sample generations (test)</h2>",
                     table(["prompt", "reference", "generated"], [[s["prompt"][:300], s["reference"], s["generated"]] for s in metrics["samples"]])]
    return page(f"transferkit run: {metrics['regime']} on {metrics['data']['name']}", [
        *sections, "<h2>Training</h2>", *plots,
        "<h2>Configuration</h2>", f"<pre>{html.escape(config_text)}</pre>",
    ])


def windows_table(windows: dict, windowing: dict) -> str:
    """Extractive QA: the windows each split's questions made, and the answers no window holds whole
    (trained as no answer, and unanswerable at test): a high share says max_length/stride cut answers."""
    setting = f"<p>qa.max_length {windowing['max_length']}, qa.stride {windowing['stride']}.</p>" if windowing else ""
    rows = [[split, f"{w['questions']:,}", f"{w['windows']:,}", f"{w['windows'] / max(w['questions'], 1):.2f}",
             f"{w['answers_outside']:,}", f"{w['outside_share']:.1%}"] for split, w in windows.items()]  # fmt: skip
    return setting + table(["split", "questions", "windows", "windows per question", "answers outside every window", "share"], rows)


def scatter_figure(scatter: dict):
    """Regression: predicted against true values on the test split, one panel per target (in the data's units)."""
    names = list(scatter)
    fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3.6), squeeze=False)
    for ax, name in zip(axes[0], names):
        true, predicted = scatter[name]["true"], scatter[name]["predicted"]
        ax.scatter(true, predicted, s=6, alpha=0.5)
        low, high = min(true + predicted), max(true + predicted)
        ax.plot([low, high], [low, high], color="#c44e52", lw=1)  # where a perfect prediction lies
        ax.set(title=name, xlabel="true", ylabel="predicted")
        ax.grid(alpha=0.3)
    return fig


def forgetting_table(f: dict) -> str:
    rows = [[key.replace("_", " "), f"{value:.4f}" if isinstance(value, float) else value] for key, value in f.items()]
    return table(["measure", "value"], rows)


def forgetting_figure(f: dict):
    """Before / after bars: general-text perplexity (causal LM), or probe accuracy and CKA (encoder)."""
    if "general_perplexity_before" in f:
        pairs = [("general perplexity", f["general_perplexity_before"], f["general_perplexity_after"])]
    else:
        pairs = [("representation CKA", 1.0, f["representation_cka"])]
        if f.get("probe_accuracy_before") is not None:
            pairs.append((f"probe accuracy ({f['probe_task']})", f["probe_accuracy_before"], f["probe_accuracy_after"]))
    fig, axes = plt.subplots(1, len(pairs), figsize=(4 * len(pairs), 3), squeeze=False)
    for ax, (name, before, after) in zip(axes[0], pairs):
        ax.bar(["before", "after"], [before, after], color=["#8c8c8c", "#c44e52"])
        ax.set_title(name)
    fig.suptitle(f"forgetting on {f['corpus']}")
    return fig


def comparison_report(comparison, title: str, base_yaml: str, quality: list, headlines: list[str], logs: dict, best_metrics: dict | None) -> str:
    """Regimes side by side: the table, cost against quality, quality against labels, learning curves.

    `logs`: each run's metrics.jsonl records (by run folder); `best_metrics`: the best run's metrics.json.
    """
    summary, cols = comparison.summary, columns(comparison.summary, quality)
    metric = headline_metric(summary, headlines)
    rows = [[fmt.format(row[key]) for key, _, fmt in cols] for row in summary]
    sizes = sorted({r["train_size"] for r in summary}, key=lambda s: float("inf") if s == "all" else s)
    largest = [r for r in summary if r["train_size"] == sizes[-1]]
    plots = [figure_tag(cost_quality_figure(largest, metric), "cost against quality")]
    if len(sizes) > 1:
        plots.append(figure_tag(quality_by_size_figure(summary, metric), f"{_title(metric)} against number of labels"))
    for row in comparison.rows:
        if "error" not in row and row["train_size"] == sizes[-1] and row["seed"] == comparison.rows[0]["seed"] and logs.get(row["run"]):
            plots.append(figure_tag(learning_curves(logs[row["run"]], row["regime"]), f"learning curves {row['regime']}"))
    if best_metrics and "confusion_matrix" in best_metrics["test"] and len(best_metrics["labels"]) <= MAX_MATRIX_CLASSES:
        plots.append(figure_tag(confusion_figure(best_metrics["test"]["confusion_matrix"], best_metrics["labels"],
                                                 f"test confusion matrix: {best_metrics['regime']}"), "confusion matrix"))  # fmt: skip
    return page(title, [
        "<h2>Regimes side by side</h2>", table([title for _, title, _ in cols], rows),
        f"<p>Medians over seeds; ± is the standard deviation of {_title(metric)} over seeds. Peak memory is the peak "
        "resident memory of the run's own process (on a GPU: peak allocated). Forgetting, where measured: the change "
        "in perplexity of general text (causal LMs), or the linear CKA of general-text embeddings before and after "
        "and the change in a second task's linear-probe accuracy (encoders).</p>",
        *(["<h2>Tuned settings</h2>", "<p>Each regime ran with the best settings its own search found on the validation "
            "split (transferkit tune; the trials and their plots are in tune-&lt;regime&gt;/report.html).</p>",
            table(["regime", "settings"], [[r, ", ".join(f"{k}={v}" for k, v in values.items())] for r, values in comparison.tuned.items()])]
          if getattr(comparison, "tuned", None) else []),
        "<h2>Plots</h2>", "<div class='plots'>", *plots, "</div>",
        "<h2>Base configuration</h2>", f"<pre>{html.escape(base_yaml)}</pre>",
    ])


def _title(metric: str) -> str:
    return metric.replace("_", " ")


def cost_quality_figure(rows: list[dict], metric: str = "accuracy"):
    regimes = [r["regime"] for r in rows]
    fig, axes = plt.subplots(1, 4, figsize=(14, 3.2))
    panels = [(metric, f"test {_title(metric)}", False), ("seconds", "train time (s)", False),
              ("peak_memory_mb", "peak memory (MB)", False), ("parameters_trained", "parameters trained", True)]
    for ax, (key, title, log) in zip(axes, panels):
        ax.bar(regimes, [max(r[key], 1) if log else r[key] for r in rows], color="#4c72b0")  # icl trains nothing: log(0)
        ax.set_title(title)
        ax.tick_params(axis="x", rotation=45)
        if log:
            ax.set_yscale("log")
    return fig


def quality_by_size_figure(rows: list[dict], metric: str = "accuracy"):
    """The learning curve that shows what pre-training is worth: the task metric against labelled examples."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for regime in dict.fromkeys(r["regime"] for r in rows):
        points = sorted((r["trained_examples"], r[metric]) for r in rows if r["regime"] == regime)
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=regime)
    ax.set(xscale="log", xlabel="labelled training examples", ylabel=f"test {_title(metric)}",
           title=f"{_title(metric)} against number of labels")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def search_report(search, header: list[str], rows: list[list[str]]) -> str:
    """`transferkit tune`: every trial, the metric against trial number and against each hyperparameter."""
    done = [t for t in search.trials if t["state"] == "complete"]
    plots = [figure_tag(trials_figure(search.trials, search.metric, search.direction), "metric against trial number")]
    names = list(dict.fromkeys(k for t in search.trials for k in t["params"]))
    if done and names:
        plots.append(figure_tag(parameters_figure(done, names, search.metric), "metric against each hyperparameter"))
    best = search.best
    title = f"transferkit tune: best validation {_title(search.metric)}"
    title += f" {best['value']:.4f}" if best else ""
    return page(title, [
        f"<p>{len(done)} trials finished, {sum(t['state'] == 'pruned' for t in search.trials)} pruned, "
        f"{sum(t['state'] == 'failed' for t in search.trials)} failed. Every value is on the validation split; "
        "the test split is never looked at during a search. best.yaml holds the best trial's settings (marked *).</p>",
        "<h2>Trials</h2>", table(header, rows),
        "<h2>Plots</h2>", "<div class='plots'>", *plots, "</div>",
    ])


def trials_figure(trials: list[dict], metric: str, direction: str):
    fig, ax = plt.subplots(figsize=(6, 3.5))
    done = [t for t in trials if t["state"] == "complete"]
    ax.scatter([t["number"] for t in done], [t["value"] for t in done], color="#4c72b0", label="finished")
    best, running = [], None
    for t in done:
        running = t["value"] if running is None else (min if direction == "minimize" else max)(running, t["value"])
        best.append(running)
    ax.step([t["number"] for t in done], best, where="post", color="#dd8452", label="best so far")
    pruned = [t["number"] for t in trials if t["state"] == "pruned"]
    if pruned:
        low = min((t["value"] for t in done), default=0)
        ax.scatter(pruned, [low] * len(pruned), marker="x", color="#999", label="pruned")
    ax.set(xlabel="trial", ylabel=f"validation {_title(metric)}", title=f"validation {_title(metric)} by trial")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def parameters_figure(done: list[dict], names: list[str], metric: str):
    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 3), squeeze=False)
    for ax, name in zip(axes[0], names):
        points = [(t["params"][name], t["value"]) for t in done if name in t["params"]]
        xs = [p[0] for p in points]
        numeric = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in xs)
        ax.scatter(xs if numeric else [str(x) for x in xs], [p[1] for p in points], color="#4c72b0")
        if numeric and name.endswith(("lr", "l2")) and min(xs) > 0:
            ax.set_xscale("log")
        ax.set(xlabel=name, ylabel=f"validation {_title(metric)}")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def range_test_figure(test: dict):
    """The LR range test: loss (raw and smoothed) against a log learning rate, the suggestion marked."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(test["lrs"], test["losses"], lw=0.6, color="#aaa", label="loss")
    ax.plot(test["lrs"], test["smoothed"], lw=1.5, color="#4c72b0", label="centred average")
    if test.get("suggested"):
        ax.axvline(test["suggested"], color="#dd8452", ls="--", label=f"suggested {test['suggested']:.2g}")
    ax.set(xscale="log", xlabel="learning rate", ylabel="training loss", title="learning-rate range test")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def range_test_report(test: dict, config_text: str) -> str:
    return page("transferkit lr-find", [
        f"<p>Suggested learning rate: <b>{test['suggested']:.3g}</b> (where the centred average of the loss falls fastest, "
        f"before its minimum). {len(test['lrs'])} steps, stopped: {test['stopped']}.</p>",
        "<div class='plots'>", figure_tag(range_test_figure(test), "learning-rate range test"), "</div>",
        "<h2>Configuration</h2>", f"<pre>{html.escape(config_text)}</pre>",
    ])
