"""Compare regimes side by side: the same data and split, one run per regime (and train size,
and seed), each measured for what it costs and what it gives.

Each run happens in a fresh child process, so its peak memory is its own and no run warms
another's caches.
"""

from __future__ import annotations

import json
import multiprocessing
import resource
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from . import folders, tasks
from .config import RunConfig, load_config
from .errors import UserError
from .methods import REGIMES
from .models import kind_of, load_model
from .report.columns import headline_metric, markdown_table


@dataclass
class Comparison:
    """The measured table of a comparison and where its files are."""

    dir: Path
    rows: list[dict] = field(default_factory=list)
    """One row per run: regime, train_size, seed, cost and quality figures."""
    summary: list[dict] = field(default_factory=list)
    """One row per (regime, train size): medians over seeds, with the spread of the metric."""
    quality: list = field(default_factory=list)
    """The task's metric columns (key, title, format)."""
    headlines: list[str] = field(default_factory=list)
    tuned: dict = field(default_factory=dict)
    """With --tune: each regime's settings found by the search, as config overrides."""


def compare(
    base: RunConfig,
    regimes: list[str],
    train_sizes: list[int | None] = (None,),
    seeds: list[int] = (0,),
    output: str | Path | None = None,
    on_run: Callable[[int, int, dict], None] = lambda i, n, row: None,
    bars: bool = False,
    tune_trials: int | None = None,
    on_trial: Callable[[str, dict], None] = lambda regime, row: None,
) -> Comparison:
    """Run every regime x train size x seed on `base`'s model and data; write the table and report.

    `on_run(i, n, row)` is called before each run (row without results) and after it (with them);
    `bars` draws each run's progress bars (stderr), labelled with the run's place in the comparison.
    `tune_trials`: first search each regime's hyperparameters with this many trials (transferkit tune,
    on the validation split, in tune-<regime>/), and compare the regimes at their best settings, not
    at their defaults; `on_trial(regime, row)` is called as each trial ends.
    """
    unknown = [r for r in regimes if r not in REGIMES]
    if unknown:
        raise UserError(f"unknown regime '{unknown[0]}'; choose from: {', '.join(REGIMES)}")
    out = Path(output or Path("runs") / f"compare-{Path(base.data.name).stem}")
    folders.check_output(out, base.overwrite, kind="comparison")
    if tune_trials is not None and tune_trials < 1:
        raise UserError(f"--tune must be a number of trials, 1 or more (got {tune_trials})")
    plans = [(r, n, s) for n in train_sizes for r in regimes for s in seeds]
    configs = [_run_config(base, out, regime, size, seed) for regime, size, seed in plans]  # checks every config first
    task = _check_inputs(base)  # bad data or a bad model stops here, before any folder is made
    # Run again after an interruption, a comparison keeps the runs it had finished (the same
    # configuration and data), and the one it was in goes on from its checkpoint (train.resume);
    # --overwrite of a finished comparison runs everything again.
    reuse = not folders.is_finished_comparison(out)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        lock = folders.Lock(out, out)
    except UserError:
        if created:
            out.rmdir()
        raise
    try:
        folders.write_text(out / "compare.yaml", f"{folders.COMPARISON_HEADER}\n# the base configuration every run of this comparison shares\n"
                           + yaml.safe_dump(base.to_dict(), sort_keys=False, allow_unicode=True))  # fmt: skip
        result = Comparison(out)
        tuned = _tune_each(base, regimes, out, tune_trials, on_trial) if tune_trials else {}
        result.tuned = {regime: search.best["overrides"] for regime, search in tuned.items()}
        if tuned:
            configs = [load_config(cfg, result.tuned[regime]) for (regime, _, _), cfg in zip(plans, configs)]
        for i, ((regime, size, seed), cfg) in enumerate(zip(plans, configs), start=1):
            row = {"regime": regime, "train_size": size or "all", "seed": seed, "run": str(cfg.run_dir)}
            if regime in result.tuned:
                row["tuned"] = result.tuned[regime]
            on_run(i, len(plans), row)
            try:
                row.update(_measure(cfg, f"[{i}/{len(plans)}] {regime}" if bars else None, reuse))
            except UserError as e:  # one regime failing (a NaN loss, say) should not lose the others
                row["error"] = str(e)
            result.rows.append(row)
            on_run(i, len(plans), row)
        if all("error" in row for row in result.rows):
            raise UserError(f"every run failed; the first said: {result.rows[0]['error']}")
        result.summary = summarise([row for row in result.rows if "error" not in row], task.headlines)
        result.quality, result.headlines = task.columns, list(task.headlines)
        folders.write_text(out / "compare.md", markdown_table(result.summary, task.columns, [r for r in result.rows if "error" in r])
                           + _tuned_markdown(result.tuned))  # fmt: skip
        from .card import comparison_card

        folders.write_text(out / "README.md", comparison_card(result, base))
        folders.write_text(out / "report.html", _report(result, base))
        folders.write_text(out / "compare.json", json.dumps({"rows": result.rows, "summary": result.summary, "tuned": result.tuned}, indent=2))
    finally:
        lock.release()
    return result


def _tune_each(base: RunConfig, regimes: list[str], out: Path, trials: int, on_trial) -> dict:
    """Each regime's best settings from `trials` trials of transferkit tune, on the full training split."""
    from .tune import tune

    searches = {}
    for regime in regimes:
        cfg = load_config(base, {"regime": regime, "output": str(out / f"tune-{regime}"), "overwrite": True})
        searches[regime] = tune(cfg, trials, output=cfg.run_dir, on_trial=lambda row, regime=regime: on_trial(regime, row))
    return searches


def _tuned_markdown(tuned: dict) -> str:
    if not tuned:
        return ""
    lines = ["", "Settings found by transferkit tune (on the validation split) for each regime:", ""]
    lines += [f"- {regime}: " + (", ".join(f"{k}={v}" for k, v in values.items()) or "its defaults") for regime, values in tuned.items()]
    return "\n".join(lines) + "\n"


def _check_inputs(base: RunConfig):
    """Read the data and load the model once, as every run will, so that bad input fails before any run.
    Returns the task (its metric columns make the table)."""
    task = tasks.make(kind_of(base.model), base)
    task.read(base.data, 0)
    load_model(base.with_dataset_defaults(), task)
    return task


def _report(result: Comparison, base: RunConfig) -> str:
    """The comparison's HTML report, from the rows and what the runs wrote."""
    from .report.html import comparison_report, read_log

    finished = [r for r in result.rows if "error" not in r]
    logs = {r["run"]: read_log(Path(r["run"])) for r in finished}
    metric = headline_metric(result.summary, result.headlines)
    largest = max({r["train_size"] for r in finished}, key=lambda s: float("inf") if s == "all" else s)
    best = max((r for r in finished if r["train_size"] == largest), key=lambda r: r[metric])
    best_metrics = json.loads((Path(best["run"]) / "metrics.json").read_text())
    title = f"transferkit comparison: {base.model.name} on {base.data.name}"
    base_yaml = yaml.safe_dump(base.to_dict(), sort_keys=False, allow_unicode=True)
    return comparison_report(result, title, base_yaml, result.quality, result.headlines, logs, best_metrics)


def _run_config(base: RunConfig, out: Path, regime: str, size: int | None, seed: int) -> RunConfig:
    name = f"{regime}-n{size or 'all'}-seed{seed}"
    overrides = {"regime": regime, "data.train_size": size, "train.seed": seed, "output": str(out / name), "overwrite": True}
    return load_config(base, overrides)


def _measure(cfg: RunConfig, bar_prefix: str | None = None, reuse: bool = False) -> dict:
    pool = multiprocessing.get_context("spawn").Pool(1)
    try:
        metrics = pool.apply(_train_in_child, (cfg, bar_prefix, reuse))
    except BaseException:  # interrupted, or the run failed: stop the child now
        pool.terminate()
        raise
    # Done: the child ends by itself (a terminated one leaves a semaphore behind, and a warning at exit).
    pool.close()
    pool.join()
    examples = sum(s["examples"] for s in metrics["stages"])  # as trained (early stopping included); icl: 0
    row = {key: metrics["test"][key] for key, _, _ in metrics["columns"] if key in metrics["test"]}
    row |= _forgetting(metrics.get("forgetting"))
    return row | {
        "headlines": metrics["headlines"],
        "trained_examples": metrics["data"]["train"],
        "parameters_trained": metrics["parameters"]["trainable"],
        "parameters_trained_percent": metrics["parameters"]["trainable_percent"],
        # On a GPU the process's resident memory says little about what the run needed there.
        "peak_memory_mb": metrics.get("peak_gpu_mb") or metrics["peak_rss_mb"],
        "seconds": metrics["train_seconds"],
        "examples_per_second": examples / max(metrics["train_seconds"], 1e-9),
        "artefact_mb": metrics["model_size_mb"],
    }


def _forgetting(f: dict | None) -> dict:
    """The forgetting figures a table row keeps (see eval/forgetting.py for the measurements)."""
    if not f:
        return {}
    keys = {"general_perplexity_change": "forgetting_perplexity_change", "representation_cka": "forgetting_cka",
            "probe_accuracy_change": "forgetting_probe_change"}  # fmt: skip
    return {row_key: f[key] for key, row_key in keys.items() if f.get(key) is not None}


def _train_in_child(cfg: RunConfig, bar_prefix: str | None, reuse: bool = False) -> dict:
    import warnings

    from .report.text import BarProgress
    from .runs import train

    warnings.filterwarnings("ignore", category=FutureWarning)  # as the CLI does: library deprecations are noise here

    run = train(cfg, progress=BarProgress(bar_prefix) if bar_prefix is not None else None, reuse=reuse)
    metrics = run.metrics
    if not run.reused:
        # Read again after train() returns: the run's own figure was taken before saving the model and
        # drawing its report, which are part of what the run cost too.
        metrics["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return metrics


def summarise(rows: list[dict], headlines) -> list[dict]:
    """Medians over seeds per (regime, train size); the headline metric's standard deviation as its spread."""
    headline = headline_metric(rows, list(headlines))
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["regime"], row["train_size"]), []).append(row)
    summary = []
    for (regime, size), runs in groups.items():
        numeric = [k for k, v in runs[0].items() if isinstance(v, (int, float)) and k not in ("seed", "train_size")]
        entry = {"regime": regime, "train_size": size, "seeds": len(runs)}
        entry.update({k: statistics.median(r[k] for r in runs) for k in numeric})
        entry["spread"] = statistics.stdev(r[headline] for r in runs) if len(runs) > 1 else 0.0
        summary.append(entry)
    return summary
