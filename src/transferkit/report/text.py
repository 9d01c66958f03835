"""Text for the terminal: metric tables and progress bars (library code never prints)."""

from __future__ import annotations

import sys


def format_metrics(metrics: dict) -> str:
    """Accuracy, macro-F1, a per-class table and the confusion matrix as text (or, for a language
    model, loss, perplexity and exact match)."""
    if "accuracy" not in metrics:
        lines = [f"{key:<20}{value:.4f}" if isinstance(value, float) else f"{key:<20}{value}"
                 for key, value in metrics.items() if not isinstance(value, dict)]  # fmt: skip
        for key in ("per_target", "per_label", "per_type"):  # regression targets, multi-label labels, entity types
            rows = metrics.get(key) or {}
            if rows:
                columns = list(next(iter(rows.values())))
                width = max(len(n) for n in [*rows, key])
                lines += ["", f"{key.removeprefix('per_'):<{width}}  " + "  ".join(f"{c:>9}" for c in columns)]
                lines += [f"{n:<{width}}  " + "  ".join(f"{v:9.4f}" if isinstance(v, float) else f"{v:>9}" for v in m.values())
                          for n, m in rows.items()]  # fmt: skip
        return "\n".join(lines)
    lines = [f"accuracy  {metrics['accuracy']:.4f}", f"macro-F1  {metrics['macro_f1']:.4f}", f"examples  {metrics['examples']}", ""]
    names = list(metrics["per_class"])
    width = max(len(n) for n in names + ["class"])
    lines.append(f"{'class':<{width}}  precision  recall     f1  support")
    for name, m in metrics["per_class"].items():
        lines.append(f"{name:<{width}}  {m['precision']:9.4f}  {m['recall']:6.4f}  {m['f1']:.4f}  {m['support']:7d}")
    if len(names) > 30:
        return "\n".join(lines + ["", f"confusion matrix: {len(names)} classes, too many to print (in metrics.json)"])
    lines += ["", "confusion matrix (rows: true, columns: predicted)"]
    cell = max(5, max(len(str(v)) for row in metrics["confusion_matrix"] for v in row) + 1)
    lines.append(" " * width + "".join(f"{n[:cell - 1]:>{cell}}" for n in names))
    for name, row in zip(names, metrics["confusion_matrix"]):
        lines.append(f"{name:<{width}}" + "".join(f"{v:>{cell}}" for v in row))
    return "\n".join(lines)


def format_forgetting(f: dict) -> str:
    """One line: what training cost in general ability (eval/forgetting.py measured it)."""
    if "general_perplexity_before" in f:
        return (f"forgetting: perplexity on {f['corpus']} {f['general_perplexity_before']:.2f} -> "
                f"{f['general_perplexity_after']:.2f} ({100 * f['general_perplexity_change']:+.1f}%)")  # fmt: skip
    probe = (f", {f['probe_task']} probe accuracy {f['probe_accuracy_before']:.4f} -> {f['probe_accuracy_after']:.4f}"
             if f.get("probe_task") else "")  # fmt: skip
    return f"forgetting: representation CKA on {f['corpus']} {f['representation_cka']:.4f} (1 = unchanged){probe}"


def show_data_warnings() -> None:
    """Warnings about the user's data print as one line, 'warning: ...', without the source line."""
    import warnings

    from ..data.tables import DataWarning

    default = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, DataWarning):
            print(f"warning: {message}", file=file or sys.stderr, flush=True)
        else:
            default(message, category, filename, lineno, file, line)

    warnings.showwarning = show


class BarProgress:
    """A tqdm bar per training stage, with the loss and the last validation accuracy."""

    def __init__(self, prefix: str = ""):
        self.prefix = prefix  # a comparison's "[2/6] lora": which run the bar belongs to

    def start(self, name: str, total_steps: int) -> None:
        from tqdm.auto import tqdm

        # "[1/6] full" for a one-stage run; "[5/6] staged head", then "[5/6] staged all".
        desc = self.prefix if self.prefix.endswith(f" {name}") else f"{self.prefix} {name}".strip()
        self.bar = tqdm(total=total_steps, desc=desc, unit="step", dynamic_ncols=True, file=sys.stderr)
        self.values = {}

    def step(self, n: int = 1, **values) -> None:
        self.values.update({k: f"{v:.4f}" for k, v in values.items()})
        self.bar.set_postfix(self.values, refresh=False)
        self.bar.update(n)

    def close(self) -> None:
        self.bar.close()

    def note(self, message: str) -> None:
        print(message, file=sys.stderr, flush=True)
