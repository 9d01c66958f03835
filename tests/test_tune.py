"""transferkit tune and lr-find: trials prune and fail as recorded, the test split is never seen, the
best YAML trains, and the range test suggests a rate that learns."""

from __future__ import annotations

import json
import math

import pytest
import yaml

from helpers import check_refused, tiny_overrides, toy_rows, write_csv
from transferkit import cli, load_config, train, tune as tune_module
from transferkit.tasks.classify import Classification
from transferkit.training.lr_find import suggest


@pytest.fixture()
def spy_inputs(monkeypatch):
    """Every text a task encodes or tests, whichever split it comes from."""
    seen: list[str] = []
    encode, test = Classification.encode, Classification.test

    def spying_encode(self, model, examples, *args, **kwargs):
        seen.extend(str(t) for t in examples.inputs)
        return encode(self, model, examples, *args, **kwargs)

    def spying_test(self, model, examples, *args, **kwargs):
        seen.extend(str(t) for t in examples.inputs)
        return test(self, model, examples, *args, **kwargs)

    monkeypatch.setattr(Classification, "encode", spying_encode)
    monkeypatch.setattr(Classification, "test", spying_test)
    return seen


def base(tiny_bert, toy_csv, tmp_path, regime="full", **extra):
    return load_config(None, tiny_overrides(tiny_bert, toy_csv, tmp_path / "unused", regime, **extra))


def test_search_never_sees_the_test_split_and_its_best_yaml_trains(tiny_bert, tmp_path, spy_inputs, monkeypatch):
    train_csv = write_csv(tmp_path / "train.csv", toy_rows(80, seed=3))
    test_rows = [dict(r, text=r["text"] + " marker") for r in toy_rows(20, seed=4)]
    for word in ("marker",):  # the tiny BERT's vocabulary knows only the toy words: the marker is [UNK], harmless
        assert all(word in r["text"] for r in test_rows)
    test_csv = write_csv(tmp_path / "test.csv", test_rows)
    plan = [{"train.lr": 1e-3, "train.epochs": 3}, {"train.lr": 1e-6, "train.epochs": 3}, {"train.lr": 3e-3, "train.epochs": 3}]
    monkeypatch.setitem(tune_module.SPACES, "full", lambda trial, defaults, centre: plan[trial.number])
    cfg = base(tiny_bert, train_csv, tmp_path, **{"data.test": str(test_csv)})
    rows = []
    search = tune_module.tune(cfg, trials=3, output=tmp_path / "search", on_trial=rows.append)
    assert not any("marker" in text for text in spy_inputs)  # the search encoded and scored no test text
    # The rate that learns nothing is behind the first trial at its first validation: pruned there.
    assert [r["state"] for r in rows] == ["complete", "pruned", "complete"] and len(search.trials) == 3
    assert search.best["overrides"]["train.lr"] in (1e-3, 3e-3)  # not the rate that learns nothing
    saved = json.loads((tmp_path / "search" / "tune.json").read_text())
    assert saved["best"]["number"] == search.best["number"] and len(saved["trials"]) == 3
    assert (tmp_path / "search" / "report.html").read_text().count("class='plot'") == 2
    assert not any((tmp_path / "search" / "trials" / f"{n:03d}" / "model").exists() for n in range(3))

    best_yaml = tmp_path / "search" / "best.yaml"
    assert yaml.safe_load(best_yaml.read_text())["train"]["lr"] == search.best["overrides"]["train.lr"]
    run = train(load_config(best_yaml, [f"output={tmp_path / 'best-run'}"]))
    assert run.test_accuracy is not None and "marker" in " ".join(spy_inputs)  # train itself does test
    # The validation split a trial was ranked on is the one the final run validates on: the same score.
    assert math.isclose(run.metrics["validation"]["accuracy"], search.best["value"], abs_tol=1e-9)


def test_bad_trials_are_pruned_and_failed_trials_recorded(tiny_bert, toy_csv, tmp_path, monkeypatch):
    good = {"train.lr": 2e-3, "train.epochs": 4, "train.eval_every_steps": 3}
    useless = {"train.lr": 1e-9, "train.epochs": 4, "train.eval_every_steps": 3}
    plan = [good, good, good, good, useless, {"lora.r": 0}]
    monkeypatch.setitem(tune_module.SPACES, "full", lambda trial, defaults, centre: plan[trial.number])
    # The tiny BERT separates the toy task from the start: the loss, not the accuracy, tells the rates apart.
    search = tune_module.tune(base(tiny_bert, toy_csv, tmp_path, **{"train.metric": "loss"}), trials=6, output=tmp_path / "search")
    states = [t["state"] for t in search.trials]
    assert states[:4] == ["complete"] * 4
    assert states[4] == "pruned" and search.trials[4]["pruned_at"] == 1  # not among the best quarter at its first validation
    assert not (tmp_path / "search" / "trials" / "004").exists()  # a pruned trial leaves nothing half-written
    assert states[5] == "failed" and "lora.r" in search.trials[5]["error"]
    assert "pruned" in (tmp_path / "search" / "tune.md").read_text()


def test_tune_refuses_bad_input_cleanly(tiny_bert, toy_csv, tmp_path, capsys):
    common = ["--model", str(tiny_bert), "--data", str(toy_csv), "--output", str(tmp_path / "s")]
    check_refused(capsys, ["tune", *common, "--trials", "0"], tmp_path / "s", "budget")
    check_refused(capsys, ["tune", *common, "--regime", "nope"], tmp_path / "s", "regime")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    check_refused(capsys, ["tune", "--model", str(tiny_bert), "--data", str(toy_csv), "--output", str(tmp_path / "mine")], tmp_path / "mine", "did not write")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "mine"


def test_suggestion_is_the_steepest_descent_of_the_centred_loss_before_its_minimum():
    import random

    rng = random.Random(0)
    lrs = [1e-6 * 10 ** (i / 10) for i in range(50)]  # 1e-6 .. ~8e-2
    # A loss flat, then falling fastest around 1e-4, lowest near 1e-3, then rising; with step-to-step noise.
    clean = [2.0 - math.tanh((math.log10(lr) + 4) * 1.5) + (max(0.0, math.log10(lr) + 3) ** 2) * 3 for lr in lrs]
    noisy = [loss + rng.uniform(-0.1, 0.1) for loss in clean]
    assert 5e-5 <= suggest(lrs, clean) <= 2e-4
    assert 5e-5 <= suggest(lrs, noisy) <= 2e-4
    # A running mean of the same losses (as the stopping rule keeps) trails them: its steepest point is later.
    running, trailing = 0.0, []
    for i, loss in enumerate(noisy):
        running = 0.95 * running + 0.05 * loss
        trailing.append(running / (1 - 0.95 ** (i + 1)))
    slopes = [trailing[i] - trailing[i - 1] for i in range(1, 35)]
    assert lrs[1 + slopes.index(min(slopes))] > 2e-4
    assert suggest(lrs[:3], clean[:3]) is None  # too short a curve to say
    assert suggest(lrs, [1.0 + i / 50 for i in range(50)]) is None  # a loss that never falls


def test_lr_find_writes_its_plot_and_train_uses_the_suggestion(tiny_bert, toy_csv, tmp_path, capsys):
    overrides = tiny_overrides(tiny_bert, toy_csv, tmp_path / "run", "full")
    assert cli.main(["lr-find", *overrides, "--output", str(tmp_path / "lr")]) == 0
    out = capsys.readouterr().out
    found = json.loads((tmp_path / "lr" / "lr_find.json").read_text())
    assert f"{found['suggested']:.3g}" in out and 1e-6 < found["suggested"] < 1.0
    assert found["smoothed"][-1] > min(found["smoothed"])  # it ran until the loss turned up
    assert (tmp_path / "lr" / "report.html").read_text().count("class='plot'") == 1

    run = train(load_config(None, overrides + ["train.lr=suggested", "train.epochs=3"]))
    assert isinstance(run.config.train.lr, float) and run.config.train.lr == pytest.approx(found["suggested"])
    assert yaml.safe_load((run.dir / "config.yaml").read_text())["train"]["lr"] == run.config.train.lr
    assert run.test_accuracy >= 0.9  # the suggested rate learns the toy task
    assert "range test" in (run.dir / "report.html").read_text()


def test_lr_suggested_is_refused_where_there_is_no_rate(tiny_bert, toy_csv, tmp_path, capsys):
    overrides = tiny_overrides(tiny_bert, toy_csv, tmp_path / "run", "freeze")
    check_refused(capsys, ["train", *overrides, "train.lr=suggested"], tmp_path / "run", "L-BFGS", "freeze.solver=adam")
    check_refused(capsys, ["train", *overrides, "train.lr=fast"], tmp_path / "run", "train.lr")


def test_compare_tune_compares_each_regime_at_its_tuned_settings(tiny_bert, toy_csv, tmp_path, capsys, monkeypatch):
    # full's own space trains up to 8 epochs a trial: one epoch here, the rate still sampled. freeze's is its own.
    monkeypatch.setitem(tune_module.SPACES, "full", lambda trial, defaults, centre: {"train.lr": trial.suggest_float("train.lr", 1e-4, 1e-2, log=True)})
    overrides = tiny_overrides(tiny_bert, toy_csv, tmp_path / "unused", "full", **{"train.epochs": 1})
    assert cli.main(["compare", *overrides, "--regimes", "full,freeze", "--tune", "2", "--output", str(tmp_path / "c")]) == 0
    out = capsys.readouterr().out
    saved = json.loads((tmp_path / "c" / "compare.json").read_text())
    for regime in ("full", "freeze"):
        search = json.loads((tmp_path / "c" / f"tune-{regime}" / "tune.json").read_text())
        assert len(search["trials"]) == 2 and saved["tuned"][regime] == search["best"]["overrides"]
        row = next(r for r in saved["rows"] if r["regime"] == regime)
        used = yaml.safe_load((tmp_path / "c" / f"{regime}-nall-seed0" / "config.yaml").read_text())
        for key, value in search["best"]["overrides"].items():  # the run used the tuned values
            section, name = key.split(".")
            assert used[section][name] == value, key
        assert row["tuned"] == search["best"]["overrides"]
        assert f"tuned {regime}:" in out
    assert "Settings found by transferkit tune" in (tmp_path / "c" / "compare.md").read_text()
    assert "Tuned settings" in (tmp_path / "c" / "report.html").read_text()


@pytest.mark.parametrize("regime", sorted(tune_module.SPACES))
def test_every_space_samples_configs_that_load_and_holds_the_defaults(regime):
    import optuna

    from transferkit.methods import resolve_defaults

    base_cfg = load_config(None, {"regime": regime})
    defaults = resolve_defaults(base_cfg, 200)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(10):
        values = tune_module.SPACES[regime](study.ask(), defaults, None)
        load_config(base_cfg, values)  # every sampled value is one the config accepts
    if defaults.train.lr and "train.lr" in values:
        low, high = study.trials[0].distributions["train.lr"].low, study.trials[0].distributions["train.lr"].high
        assert low <= defaults.train.lr <= high
    if "train.epochs" in values:
        dist = study.trials[0].distributions["train.epochs"]
        assert dist.low <= defaults.train.epochs <= dist.high


def test_epochs_found_on_a_subset_are_scaled_to_the_whole_data(tiny_bert, toy_csv, tmp_path):
    from transferkit.runs import prepare

    cfg = base(tiny_bert, toy_csv, tmp_path, "lora").with_dataset_defaults()
    subset = prepare(load_config(cfg, {"data.train_size": 24}), check_output=False).cfg
    whole = prepare(cfg, check_output=False).cfg
    assert subset.train.epochs > whole.train.epochs  # small data: the defaults raise the epochs
    got = tune_module._for_whole_data({"train.epochs": 2 * subset.train.epochs, "train.lr": 1e-3}, cfg, subset, 24)
    assert got == {"train.epochs": round(2 * whole.train.epochs), "train.lr": 1e-3}
    assert tune_module._for_whole_data({"train.epochs": 7}, cfg, subset, None) == {"train.epochs": 7}  # no subset: as found


def test_lr_find_and_search_reports_render_in_headless_chromium(tiny_bert, toy_csv, tmp_path, capsys, monkeypatch):
    import re
    import shutil
    import subprocess

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("Chromium is not installed (apt-get install chromium); .ci/run installs it")
    overrides = tiny_overrides(tiny_bert, toy_csv, tmp_path / "run", "full")
    assert cli.main(["lr-find", *overrides, "--output", str(tmp_path / "lr")]) == 0
    monkeypatch.setitem(tune_module.SPACES, "full", lambda trial, defaults, centre: {
        "train.lr": trial.suggest_float("train.lr", 1e-4, 1e-2, log=True), "train.epochs": 1})  # fmt: skip
    tune_module.tune(base(tiny_bert, toy_csv, tmp_path), trials=2, output=tmp_path / "search")
    for page, plots in ((tmp_path / "lr" / "report.html", 1), (tmp_path / "search" / "report.html", 2)):
        dom = subprocess.run(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run",
             "--disable-component-update", "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}",
             "--virtual-time-budget=10000", "--dump-dom", page.as_uri()],
            capture_output=True, text=True, timeout=120,
        ).stdout  # fmt: skip
        match = re.search(r'data-plots-rendered="(\d+)/(\d+)"', dom)
        assert match and match.groups() == (str(plots), str(plots)), (page, dom[:300])


@pytest.mark.parametrize("regime", ["full", "lora", "prompt", "staged", "scratch", "icl"])
def test_the_first_trial_of_a_search_is_the_defaults(regime):
    import optuna

    defaults = load_config(None, {"regime": regime, "train.lr": 2e-4, "train.epochs": 6, "train.batch_size": 16, "icl.shots": 4})
    overrides = tune_module.SPACES[regime](optuna.trial.FixedTrial(tune_module.defaults_point(regime, defaults, None)), defaults, None)
    assert overrides, regime
    for name, value in overrides.items():
        section, key = name.split(".")
        expected = getattr(getattr(defaults, section), key)
        assert value == expected or str(value) == str(expected), name  # icl.shots is passed on as text
    # A default outside the space (here a rate beyond the range around an LR finder's suggestion) is left to the sampler.
    assert "train.lr" not in tune_module.defaults_point("lora", defaults, 1e-1)
