"""In-context learning on the tiny in-test Llama: each calibration mode against a hand computation,
the chat-template prompt against the tokenizer's own template, the choice made on validation, a
saved run that predicts the same after reloading, and bad values refused in one line."""

from __future__ import annotations

import json

import pytest
import torch

from helpers import check_refused, llama_overrides
from transferkit import load_config, train
from transferkit.data.examples import Examples
from transferkit.eval import calibration


def loglikelihood(model, ids: list[int], answer: list[int]) -> float:
    """log p(answer | ids) from one plain forward pass over the whole sequence: the reference."""
    sequence = torch.tensor([ids + answer])
    with torch.no_grad():
        logp = model.hf(input_ids=sequence).logits[0].float().log_softmax(-1)
    return sum(logp[len(ids) - 1 + j, token].item() for j, token in enumerate(answer))


def hand_scores(model, texts: list[str]) -> torch.Tensor:
    """(N, L) each label's log-likelihood after the full prompt, one text and one label at a time."""
    prompt, tokenizer = model.prompt, model.tokenizer
    prefix = model.prefix_ids()
    return torch.tensor([[loglikelihood(model, prefix + prompt.query_ids(tokenizer, t, model.max_length), a)
                          for a in prompt.answer_ids(tokenizer)] for t in texts])  # fmt: skip


def hand_calibrated(p: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
    """Zhao et al. 2021 eq. 2 with W = diag(prior)^-1 and b = 0: q = W p, renormalised."""
    q = p / prior
    return q / q.sum(-1, keepdim=True)


@pytest.fixture(scope="module")
def prepared(tiny_llama, toy_csv, tmp_path_factory):
    """An icl model with 4 demonstrations and its task, the splits read as a run reads them."""
    from transferkit import tasks
    from transferkit.methods import icl
    from transferkit.models import load_model

    cfg = load_config(None, llama_overrides(tiny_llama, toy_csv, tmp_path_factory.mktemp("unused"), "icl", **{"icl.calibrate": "auto"}))
    task = tasks.make("causal", cfg)
    splits = task.read(cfg.data, cfg.train.seed)
    model = load_model(cfg, task).eval()
    icl.prepare(model, task, splits, cfg)
    return model, task, splits


def test_the_calibration_functions_by_hand():
    scores = torch.tensor([[0.0, -1.0, -2.0], [-3.0, -0.5, -0.5], [-1.0, -1.0, -4.0]])  # (N=3, L=3) log-likelihoods
    p = torch.tensor([[1, torch.e**-1, torch.e**-2], [torch.e**-3, torch.e**-0.5, torch.e**-0.5], [1, 1, torch.e**-3]])
    p = p / p.sum(-1, keepdim=True)
    free = torch.tensor([[-0.2, -3.0, -1.0], [-2.0, -0.1, -2.0]])  # two content-free inputs
    pf = free.exp() / free.exp().sum(-1, keepdim=True)
    cases = {
        "none": p,
        "contextual": hand_calibrated(p, pf[0]),
        "domain": hand_calibrated(p, (pf[0] + pf[1]) / 2),
        "batch": hand_calibrated(p, (p[0] + p[1] + p[2]) / 3),
    }
    priors = {"none": None, "contextual": calibration.contextual_prior(free[0]), "domain": calibration.domain_prior(free),
              "batch": calibration.batch_prior(scores)}  # fmt: skip
    for mode, expected in cases.items():
        assert torch.allclose(calibration.calibrated(scores, priors[mode]).softmax(-1), expected, atol=1e-6), mode
    # Batch calibration equalises the labels: after it, their mean probabilities are far closer.
    after = cases["batch"].mean(0)
    assert (after.max() - after.min()) < (p.mean(0).max() - p.mean(0).min())
    per_query = calibration.domain_prior(torch.stack([free, free.flip(0)]))  # (N=2, M=2, L): one prior per query
    assert torch.allclose(per_query, calibration.domain_prior(free).expand(2, 3), atol=1e-6)
    assert calibration.best_mode({"none": 0.5, "contextual": 0.7, "domain": 0.7, "batch": 0.6}) == "contextual"  # a tie: listed first


def test_domain_inputs_are_random_words_of_the_training_texts():
    texts = ["good film", "a bad long film today", "great"]  # 8 words, 3 texts: 3 words each on average
    free = calibration.domain_texts(texts, seed=1)
    words = {w for t in texts for w in t.split()}
    assert len(free) == calibration.DOMAIN_SAMPLES and all(len(f.split()) == 3 and set(f.split()) <= words for f in free)
    assert free == calibration.domain_texts(texts, seed=1) and free != calibration.domain_texts(texts, seed=2)
    assert len(set(free)) > 1


@pytest.fixture(scope="module")
def by_hand(prepared) -> dict[str, torch.Tensor]:
    """The test texts' label probabilities (N, L), and the prior each mode divides them by, by hand."""
    model, task, splits = prepared
    p = hand_scores(model, list(splits.test.inputs)).softmax(-1)
    return {"p": p, "none": torch.ones(p.shape[1]), "batch": p.mean(0),
            "contextual": hand_scores(model, [task.calibration["content_free"]]).softmax(-1)[0],
            "domain": hand_scores(model, task.calibration["domain_texts"]).softmax(-1).mean(0)}  # fmt: skip


@pytest.mark.parametrize("mode", calibration.MODES)
def test_each_mode_predicts_what_a_hand_computation_gives(mode, prepared, by_hand):
    model, task, splits = prepared
    texts, p = list(splits.test.inputs), by_hand["p"]
    assert len(texts) >= calibration.MIN_BATCH and len(task.calibration["domain_texts"]) == calibration.DOMAIN_SAMPLES
    task.calibration["mode"] = mode
    task.calibration["batch_prior"] = p.mean(0).log().tolist()  # what a run stores from its test inputs
    got = task.probabilities(model, Examples(texts, None))
    assert torch.allclose(got, hand_calibrated(p, by_hand[mode]), atol=1e-4), mode
    if mode == "batch":  # a single text: the stored statistics of the test inputs stand in for a batch
        one = task.probabilities(model, Examples(texts[:1], None))
        assert torch.allclose(one, hand_calibrated(p[:1], p.mean(0)), atol=1e-4)
        few = task.probabilities(model, Examples(texts[:calibration.MIN_BATCH], None))  # enough for a batch of its own
        assert torch.allclose(few, hand_calibrated(p[:calibration.MIN_BATCH], p[:calibration.MIN_BATCH].mean(0)), atol=1e-4)


@pytest.mark.parametrize("layout", ["turns", "one-turn"])
def test_chat_prompt_is_the_tokenizers_own_template(layout, tiny_llama):
    from transferkit.models.causal import label_prompt, load_causal_lm

    model = load_causal_lm(str(tiny_llama), "classify", label_prompt(["fruit", "vehicle"], None, None, layout), 48)
    model.demos = [("the red apple", 0), ("a big bus", 1)]
    instruction = model.prompt.instruction + "\n\n"
    if layout == "turns":
        messages = [{"role": "user", "content": instruction + "Text: the red apple"}, {"role": "assistant", "content": "fruit"},
                    {"role": "user", "content": "Text: a big bus"}, {"role": "assistant", "content": "vehicle"},
                    {"role": "user", "content": "Text: my old car"}]  # fmt: skip
    else:
        demos = "Text: the red apple\nAnswer: fruit\n\nText: a big bus\nAnswer: vehicle\n\n"
        messages = [{"role": "user", "content": instruction + demos + "Text: my old car"}]
    text = model.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False) + "vehicle"
    ours = model.prefix_ids() + model.prompt.query_ids(model.tokenizer, "my old car", 48) + model.prompt.answer_ids(model.tokenizer)[1]
    assert ours == model.tokenizer(text, add_special_tokens=False)["input_ids"]


def test_auto_chooses_on_validation_and_the_saved_run_predicts_the_same(tiny_llama, toy_csv, tmp_path):
    from transferkit.inference import load_run, predict_proba

    run = train(None, llama_overrides(tiny_llama, toy_csv, tmp_path / "icl", "icl", **{"icl.calibrate": True}))  # an old config's true
    chosen = run.metrics["chosen_on_validation"]
    assert set(chosen["calibration_validation_accuracy"]) == set(calibration.MODES)
    assert chosen["calibration"] == calibration.best_mode(chosen["calibration_validation_accuracy"])
    assert run.metrics["prompt"]["calibrated"] == chosen["calibration"] and run.metrics["prompt"]["chat"] == "turns"
    assert "accuracy" in run.metrics["test_uncalibrated"]  # the raw result beside the calibrated one
    model, cfg = load_run(run.dir)
    # The validation accuracy of every mode, by hand from the reloaded prompt and content-free inputs.
    validation = train_splits(cfg).validation
    p = hand_scores(model, list(validation.inputs)).softmax(-1)
    free = {"contextual": hand_scores(model, ["N/A"]).softmax(-1)[0], "domain": hand_scores(model, model.task.calibration["domain_texts"]).softmax(-1).mean(0),
            "batch": p.mean(0), "none": torch.ones(2)}  # fmt: skip
    truth = torch.tensor([model.task.label_names.index(y) for y in validation.labels])
    for mode, prior in free.items():
        accuracy = (hand_calibrated(p, prior).argmax(-1) == truth).float().mean().item()
        assert accuracy == pytest.approx(chosen["calibration_validation_accuracy"][mode]), mode
    # Reloaded, the run gives the test probabilities it measured with, and single texts agree with them.
    test_texts = list(train_splits(cfg).test.inputs)
    again = predict_proba(model, test_texts)
    labels = [model.task.label_names.index(y) for y in train_splits(cfg).test.labels]
    assert (again.argmax(-1) == torch.tensor(labels)).float().mean().item() == pytest.approx(run.metrics["test"]["accuracy"])
    if chosen["calibration"] == "batch":
        assert torch.allclose(predict_proba(model, test_texts[:1]), again[:1], atol=1e-5)
    second, _ = load_run(run.dir)
    assert torch.equal(predict_proba(second, test_texts), again)


def train_splits(cfg):
    from transferkit.data.splits import load_splits

    return load_splits(cfg.data, cfg.train.seed)


def test_batch_mode_and_similar_demonstrations_reload(tiny_llama, toy_csv, tmp_path):
    """A run with per-query demonstrations (icl.select=similar) and batch calibration: its pool and
    its stored test statistics come back, and the reloaded run predicts what the run measured."""
    from transferkit.inference import load_run, predict_proba

    from transferkit import cli

    run_dir = tmp_path / "sim"
    assert cli.main(["train", *llama_overrides(tiny_llama, toy_csv, run_dir, "icl", **{"icl.select": "similar"}), "--calibrate-mode", "batch"]) == 0
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["prompt"]["select"] == "similar" and metrics["prompt"]["calibrated"] == "batch" and "test_uncalibrated" in metrics
    spec = json.loads((run_dir / "model" / "lm.json").read_text())
    assert spec["demonstration_pool"]["shots"] == 4 and len(spec["demonstration_pool"]["examples"]) == 84
    model, cfg = load_run(run_dir)
    test = train_splits(cfg).test
    probabilities = predict_proba(model, list(test.inputs))
    truth = torch.tensor([model.task.label_names.index(y) for y in test.labels])
    assert (probabilities.argmax(-1) == truth).float().mean().item() == pytest.approx(metrics["test"]["accuracy"])
    assert torch.allclose(predict_proba(model, list(test.inputs)[:1]), probabilities[:1], atol=1e-5)  # the stored test mean


def test_an_old_run_without_modes_restores_as_contextual():
    from transferkit.tasks.verbalise import VerbaliserClassification

    task = VerbaliserClassification()
    task.restore({"labels": ["a", "b"], "content_free": "N/A"})
    assert task.calibration["mode"] == "contextual"
    task.restore({"labels": ["a", "b"], "content_free": None})
    assert task.calibration["mode"] == "none"


@pytest.mark.parametrize(
    "override, words",
    [
        ({"icl.calibrate": "sideways"}, ["icl.calibrate", "contextual, domain, batch", "sideways"]),
        ({"icl.select": "nearest"}, ["icl.select", "random, similar or auto"]),
        ({"icl.select": "similar", "icl.shots": "max"}, ["icl.select=similar", "icl.shots a number"]),
        ({"lm.chat": "maybe"}, ["lm.chat", "one-turn, turns or off"]),
    ],
)  # fmt: skip
def test_bad_values_are_refused_in_one_line(override, words, capsys, tiny_llama, toy_csv, tmp_path):
    run_dir = tmp_path / "kept"
    run_dir.mkdir()
    check_refused(capsys, ["train", *llama_overrides(tiny_llama, toy_csv, run_dir, "icl", **override)], run_dir, *words)


def test_bad_calibrate_flag_is_refused_in_one_line(capsys, tiny_llama, toy_csv, tmp_path):
    run_dir = tmp_path / "kept"
    run_dir.mkdir()
    check_refused(capsys, ["train", *llama_overrides(tiny_llama, toy_csv, run_dir, "icl"), "--calibrate-mode", "loud"], run_dir,
                  "--calibrate-mode", "loud")  # fmt: skip

