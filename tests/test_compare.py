"""Regimes side by side, and the reports people look at."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from helpers import tiny_overrides
from transferkit import cli, load_config, train
from transferkit.compare import compare

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def comparison(tiny_bert, toy_csv, tmp_path_factory):
    out = tmp_path_factory.mktemp("compare")
    base = load_config(None, tiny_overrides(tiny_bert, toy_csv, out / "unused", "full", **{"train.epochs": 4, "train.lr": 3e-3}))
    return compare(base, ["full", "freeze", "scratch"], [12, None], [0], out / "cmp")


def test_compare_measures_every_regime_and_size(comparison):
    assert [(r["regime"], r["train_size"]) for r in comparison.rows] == [
        ("full", 12), ("freeze", 12), ("scratch", 12), ("full", "all"), ("freeze", "all"), ("scratch", "all")]
    for row in comparison.rows:
        assert row["peak_memory_mb"] > 0 and row["seconds"] > 0 and row["artefact_mb"] > 0
        assert 0 <= row["accuracy"] <= 1
        stages = json.loads((Path(row["run"]) / "metrics.json").read_text())["stages"]
        trained = sum(s["examples"] for s in stages)  # what ran, early stopping included
        looped = [s for s in stages if s["solver"] == "adam"]  # an L-BFGS head counts full-batch passes instead
        assert 0 < trained and sum(s["examples"] for s in looped) <= sum(s["epochs"] for s in looped) * row["trained_examples"]
        assert row["examples_per_second"] * row["seconds"] == pytest.approx(trained)
    by = {(r["regime"], r["train_size"]): r for r in comparison.rows}
    assert by[("freeze", "all")]["parameters_trained"] < by[("full", "all")]["parameters_trained"]
    assert by[("full", 12)]["trained_examples"] == 12
    saved = json.loads((comparison.dir / "compare.json").read_text())
    assert len(saved["summary"]) == 6
    assert (comparison.dir / "compare.md").read_text().count("\n") == 8  # header, rule, six rows


def test_plan_reads_the_learning_curve_a_comparison_wrote(comparison):
    from transferkit.planning.advice import read_curve

    points = read_curve(comparison.dir / "compare.json")
    assert sorted((p.regime, p.train_size) for p in points) == sorted(
        (r["regime"], r["trained_examples"]) for r in comparison.rows)  # 'all' becomes the count it was
    assert {p.train_size for p in points} == {12, comparison.rows[-1]["trained_examples"]} and all(0 <= p.accuracy <= 1 for p in points)


def test_comparison_card_holds_the_table_and_hub_metadata(comparison):
    from huggingface_hub import ModelCard

    card = ModelCard.load(comparison.dir / "README.md")
    assert {"transferkit", "comparison", "full", "freeze", "scratch"} <= set(card.data.tags)
    assert card.data.datasets == ["toy.csv"]
    table = (comparison.dir / "compare.md").read_text()
    assert table in card.text  # the same table, row for row
    assert all(Path(row["run"]).name in card.text for row in comparison.rows)


def test_comparison_report_embeds_its_plots(comparison):
    page = (comparison.dir / "report.html").read_text()
    assert page.count("class='plot'") >= 4  # cost/quality, accuracy by size, learning curves, confusion
    assert "src='data:image/png;base64," in page and "http" not in page.split("<body")[1].replace("https://", "")


def test_finished_comparison_is_not_clobbered(comparison, capsys):
    before = (comparison.dir / "compare.json").read_text()
    code = cli.main(["compare", "--regimes", "full", "--output", str(comparison.dir)])
    assert code == 2 and "--overwrite" in capsys.readouterr().err
    assert (comparison.dir / "compare.json").read_text() == before


def test_compare_refuses_unknown_regime_before_running(capsys, tmp_path):
    assert cli.main(["compare", "--regimes", "full,magic", "--output", str(tmp_path / "c")]) == 2
    assert "magic" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()


def test_every_run_gets_a_report(tiny_bert, toy_csv, tmp_path):
    run = train(load_config(None, tiny_overrides(tiny_bert, toy_csv, tmp_path / "r", "staged", **{"train.epochs": 1})))
    page = (run.dir / "report.html").read_text()
    assert page.count("class='plot'") == 2  # learning curves, confusion matrix


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium); .ci/run installs it")
def test_report_renders_in_headless_chromium(comparison, tmp_path):
    dom = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run",
         "--disable-component-update", "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}",
         "--virtual-time-budget=10000", "--dump-dom", (comparison.dir / "report.html").as_uri()],
        capture_output=True, text=True, timeout=120,
    ).stdout
    match = re.search(r'data-plots-rendered="(\d+)/(\d+)"', dom)
    assert match, dom[:500]
    rendered, total = map(int, match.groups())
    assert total >= 4 and rendered == total


def test_a_comparison_run_again_keeps_the_runs_it_had_finished(tiny_bert, toy_csv, tmp_path):
    """As after an interruption (no compare.json yet): finished runs of the same configuration and data
    are kept as they are, not trained again; a changed configuration trains again."""
    base = load_config(None, tiny_overrides(tiny_bert, toy_csv, tmp_path / "unused", "full", **{"train.epochs": 2}))
    first = compare(base, ["freeze"], output=tmp_path / "cmp")
    (first.dir / "compare.json").unlink()
    written = (Path(first.rows[0]["run"]) / "metrics.json").stat().st_mtime_ns

    again = compare(base, ["freeze"], output=tmp_path / "cmp")
    assert again.rows[0]["accuracy"] == first.rows[0]["accuracy"]
    assert (Path(again.rows[0]["run"]) / "metrics.json").stat().st_mtime_ns == written

    changed = compare(load_config(base, {"freeze.l2": "1e-2", "overwrite": True}), ["freeze"], output=tmp_path / "cmp")
    assert (Path(changed.rows[0]["run"]) / "metrics.json").stat().st_mtime_ns != written
