"""Causal language models on a tiny in-test Llama: regimes, in-context learning with a cached
prefix, forgetting, replay, artefacts, and the bad-input contract."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import TOY_LABELS, check_step, llama_overrides, model_and_task, tiny_overrides, toy_chats, toy_rows, write_csv, write_jsonl
from helpers import check_refused
from transferkit import cli, load_config, train
from transferkit.data.examples import Examples
from transferkit.eval.scoring import label_scores
from transferkit.methods import REGIMES

V, H, I, L = 48, 32, 64, 2  # tiny Llama: vocabulary, hidden, intermediate, layers (4 heads, 2 KV heads of 8)
KV = 16
LAYER = H * H + H * KV + H * KV + H * H + 3 * H * I + 2 * H  # q, k, v, o, gate / up / down, two RMSNorms
LORA = 16 * ((H + H) + (H + KV) + (H + KV) + (H + H) + 3 * (H + I))  # r = 16 on every linear layer


def expected_trainable(regime: str) -> int:
    """Computed from the architecture, not from the code under test (the LM head is tied to the embeddings)."""
    return {"full": V * H + L * LAYER + H, "lora": L * LORA, "prompt": 20 * H, "scratch": V * H + L * LAYER + H}[regime]


@pytest.fixture(scope="module")
def toy_chat_file(tmp_path_factory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("chat") / "chat.jsonl", toy_chats(120, seed=2))


@pytest.fixture(scope="module")
def general_text(tmp_path_factory) -> Path:
    """General prose for forgetting and replay: toy sentences, a paragraph each."""
    rows = toy_rows(400, seed=7)
    path = tmp_path_factory.mktemp("general") / "general.txt"
    path.write_text("\n\n".join(r["text"] + " ." for r in rows))
    return path


def toy_loader_batch(model, task, texts_labels):
    from transferkit.data.batching import collate

    items = task.encode(model, Examples([t for t, _ in texts_labels], [y for _, y in texts_labels]))
    return collate(model.pad_id)(items)


@pytest.mark.parametrize("regime", ["full", "lora", "prompt", "scratch"])
def test_causal_regime_invariants(regime, tiny_llama, tmp_path):
    cfg = load_config(None, llama_overrides(tiny_llama, tmp_path / "x.csv", tmp_path, regime))
    model, task = model_and_task(cfg, TOY_LABELS)
    (stage,) = REGIMES[regime].stages(cfg)
    stage.apply(model)
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert sum(p.numel() for p in trainable.values()) == expected_trainable(regime)
    frozen_before = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    batch = toy_loader_batch(model, task, [("the big apple pear", "fruit"), ("a red bus car", "vehicle")])
    from transferkit.tasks import LanguageModeling

    logits = model(batch["input_ids"], batch["attention_mask"])
    assert logits.shape[:2] == batch["input_ids"].shape
    LanguageModeling().loss_sum(logits, batch).backward()
    check_step(model, trainable, frozen_before)


def test_lora_at_init_equals_the_base_model(tiny_llama, tmp_path):
    cfg = load_config(None, llama_overrides(tiny_llama, tmp_path / "x.csv", tmp_path, "lora"))
    model = model_and_task(cfg, TOY_LABELS)[0].eval()
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        before = model(ids, torch.ones_like(ids))
        REGIMES["lora"].stages(cfg)[0].apply(model)
        assert torch.allclose(model.eval()(ids, torch.ones_like(ids)), before, atol=1e-6)


@pytest.mark.parametrize("regime", ["full", "lora"])
def test_causal_classifier_learns_the_verbalisers(regime, tiny_llama, toy_csv, tmp_path):
    extra = {"train.epochs": 4, "train.lr": 1e-2 if regime == "lora" else 3e-3}
    run = train(None, llama_overrides(tiny_llama, toy_csv, tmp_path / "run", regime, **extra))
    assert run.test_accuracy >= 0.9, run.metrics["test"]
    assert run.metrics["prompt"]["shots"] == 0


def test_generation_sft_beats_the_zero_shot_prompt(tiny_llama, toy_chat_file, tmp_path, capsys):
    common = {"task": "generate", "model.max_length": 64, "train.epochs": 3, "train.lr": 3e-3}
    zero = train(None, llama_overrides(tiny_llama, toy_chat_file, tmp_path / "zero", "icl", **common, **{"icl.shots": 0}))
    tuned = train(None, llama_overrides(tiny_llama, toy_chat_file, tmp_path / "full", "full", **common))
    assert zero.metrics["parameters"]["trainable"] == 0
    assert tuned.metrics["test"]["loss"] < zero.metrics["test"]["loss"]
    assert tuned.metrics["test"]["exact_match"] > zero.metrics["test"]["exact_match"]
    log = [json.loads(line) for line in (tuned.dir / "metrics.jsonl").read_text().splitlines()]
    assert tuned.metrics["validation"]["loss"] < log[0]["loss"]
    assert tuned.metrics["samples"] and "generated" in tuned.metrics["samples"][0]
    capsys.readouterr()
    assert cli.main(["evaluate", str(tuned.dir)]) == 0  # a generation run's metrics as a table
    assert "perplexity" in capsys.readouterr().out


def test_response_tokens_alone_are_learned(tiny_llama, tmp_path):
    cfg = load_config(None, llama_overrides(tiny_llama, tmp_path / "x.jsonl", tmp_path, "full", task="generate"))
    model, task = model_and_task(cfg)
    chat = [{"role": "user", "content": "which kind ? apple"}, {"role": "assistant", "content": "fruit"}]
    item = task.encode(model, Examples([{"messages": chat}], None))[0]
    learned = [t for t, y in zip(item["input_ids"], item["labels"]) if y != -100]
    assert model.tokenizer.decode(learned) == "fruit <|im_end|>"
    prompt = model.prompt_tokens(model.chat_prompt(chat[:1]))
    assert item["input_ids"][: len(prompt)] == prompt  # the same prompt tokens as at inference
    plain = task.encode(model, Examples([{"text": "the red apple"}], None))[0]
    assert plain["labels"] == plain["input_ids"]


# Answers of one token each and of several (of unequal lengths, scored after the query's own
# cache); one shared prefix, and a prefix per query (select=similar); through the chat template
# and plain.
@pytest.mark.parametrize("shots, extra", [
    ("0", {}), ("4", {}), ("max", {}),
    ("4", {"lm.verbalisers": "fruit=sweet ripe fruit,vehicle=car"}),
    ("4", {"lm.verbalisers": "fruit=apple,vehicle=a very fast red car", "icl.select": "similar", "lm.chat": "off"}),
])  # fmt: skip
def test_cached_prefix_scores_equal_full_prompt_scores(shots, extra, tiny_llama, toy_csv, tmp_path):
    from transferkit.data.splits import load_splits
    from transferkit.methods import icl

    cfg = load_config(None, llama_overrides(tiny_llama, toy_csv, tmp_path, "icl", **{"icl.shots": shots, **extra}))
    splits = load_splits(cfg.data, 0)
    model, task = model_and_task(cfg, splits.label_names)
    model.eval()
    icl.prepare(model, task, splits, cfg)
    if "lm.verbalisers" in extra:
        assert sorted(len(a) for a in model.prompt.answer_ids(model.tokenizer))[-1] >= 3  # several tokens, unequal
    queries = [model.prompt.query_ids(model.tokenizer, t, model.max_length) for t in splits.test.inputs]
    prefixes = None
    if extra.get("icl.select") == "similar":
        prefixes = task.prefixes(model, splits.test.inputs)
        assert len(set(map(tuple, prefixes))) > 1
    cached, naive = label_scores(model, queries, cached=True, prefixes=prefixes), label_scores(model, queries, cached=False, prefixes=prefixes)
    assert torch.allclose(cached, naive, atol=1e-4)
    assert torch.equal(cached.argmax(-1), naive.argmax(-1))
    one_by_one = torch.cat([label_scores(model, [q], cached=False, prefixes=prefixes and prefixes[i : i + 1]) for i, q in enumerate(queries[:5])])
    assert torch.allclose(one_by_one, naive[:5], atol=1e-4)  # padding in a batch changes nothing
    if shots == "max":
        assert len(model.prefix_ids()) + max(map(len, queries)) + 1 <= model.context_length
        assert len(model.demos) > 4


def test_icl_demonstrations_are_balanced_and_seeded():
    from transferkit.methods.icl import choose_demonstrations

    labels = ["a"] * 50 + ["b"] * 10 + ["c"] * 5
    chosen = choose_demonstrations(labels, 9, seed=3, fits=lambda c: True)
    assert sorted(labels[i] for i in chosen) == ["a"] * 3 + ["b"] * 3 + ["c"] * 3
    assert chosen == choose_demonstrations(labels, 9, seed=3, fits=lambda c: True)
    assert chosen != choose_demonstrations(labels, 9, seed=4, fits=lambda c: True)
    assert len(choose_demonstrations(labels, None, seed=0, fits=lambda c: len(c) <= 12)) == 12


def test_icl_run_calibrates_and_reloads(tiny_llama, toy_csv, tmp_path):
    run = train(None, llama_overrides(tiny_llama, toy_csv, tmp_path / "icl", "icl", **{"icl.calibrate": True}))
    assert run.metrics["parameters"]["trainable"] == 0 and run.metrics["stages"] == []
    assert "test_uncalibrated" in run.metrics and run.metrics["prompt"]["calibrated"]
    spec = json.loads((run.model_dir / "lm.json").read_text())
    assert len(spec["demonstrations"]) == 4 and spec["weights"] == "base_model"
    from transferkit.inference import evaluate_file

    again = evaluate_file(run.dir, str(toy_csv))  # the demonstrations and the calibration come back with the run
    assert 0 <= again["accuracy"] <= 1


def test_forgetting_zero_lr_reports_none_and_huge_lr_a_lot(tiny_llama, toy_chat_file, general_text, tmp_path):
    common = {"task": "generate", "model.max_length": 64, "train.epochs": 2, "forgetting.corpus": str(general_text),
              "forgetting.tokens": 512, "lm.generate_examples": 0}  # fmt: skip
    still = train(None, llama_overrides(tiny_llama, toy_chat_file, tmp_path / "still", "full", **common, **{"train.lr": 1e-30}))
    wild = train(None, llama_overrides(tiny_llama, toy_chat_file, tmp_path / "wild", "full", **common, **{"train.lr": 0.5}))
    assert still.metrics["forgetting"]["general_perplexity_change"] == 0.0
    assert wild.metrics["forgetting"]["general_perplexity_change"] > 0.5
    assert "Forgetting" in (wild.dir / "report.html").read_text()
    f = wild.metrics["forgetting"]  # and the model card says it
    assert f"perplexity {f['general_perplexity_before']:.2f} -> {f['general_perplexity_after']:.2f}" in (wild.model_dir / "README.md").read_text()


def test_encoder_forgetting_cka_and_probe(tiny_bert, toy_csv, general_text, tmp_path):
    common = {"forgetting.corpus": str(general_text), "forgetting.probe_size": 60}
    frozen = train(None, tiny_overrides(tiny_bert, toy_csv, tmp_path / "freeze", "freeze", **common))
    tuned = train(None, tiny_overrides(tiny_bert, toy_csv, tmp_path / "full", "full", **common, **{"train.epochs": 8, "train.lr": 3e-3}))
    f = frozen.metrics["forgetting"]
    assert f["representation_cka"] == pytest.approx(1.0, abs=1e-9)
    if "probe_accuracy_change" in f:
        assert f["probe_accuracy_change"] == 0
    # Full fine-tuning that learned the task moved the representations of general text.
    assert tuned.test_accuracy >= 0.9 and tuned.metrics["forgetting"]["representation_cka"] < 0.999
    assert f"{tuned.metrics['forgetting']['representation_cka']:.4f} (1 = unchanged)" in (tuned.model_dir / "README.md").read_text()


def test_replay_mixes_general_text_at_the_ratio(tiny_llama, toy_chat_file, general_text, tmp_path):
    from transferkit.eval.forgetting import replay_items

    cfg = load_config(None, llama_overrides(tiny_llama, toy_chat_file, tmp_path, "full", task="generate",
                                            **{"forgetting.corpus": str(general_text), "replay.ratio": 0.2}))  # fmt: skip
    model, _ = model_and_task(cfg)
    items = replay_items(cfg, model, 80)
    assert len(items) == 20  # 20 / (80 + 20) = 0.2
    assert all(item["labels"] == item["input_ids"] for item in items)


def test_l2sp_keeps_weights_near_the_pretrained_ones(tiny_llama, toy_chat_file, tmp_path):
    def distance(l2sp: float) -> float:
        run = train(None, llama_overrides(tiny_llama, toy_chat_file, tmp_path / f"l2sp{l2sp}", "full", task="generate",
                                          **{"model.max_length": 64, "train.epochs": 2, "train.lr": 1e-2, "train.l2sp": l2sp,
                                             "lm.generate_examples": 0}))  # fmt: skip
        from transformers import AutoModelForCausalLM

        before, after = AutoModelForCausalLM.from_pretrained(tiny_llama), AutoModelForCausalLM.from_pretrained(run.model_dir)
        return sum((a - b).pow(2).sum().item() for a, b in zip(after.parameters(), before.parameters()))

    assert distance(100.0) < 0.5 * distance(0.0)


def test_batched_greedy_answers_equal_transformers_generate_one_prompt_at_a_time(tiny_llama, tmp_path, monkeypatch):
    """The shared prompt head's cache, batches of unequal lengths and rows leaving at their end token
    change nothing: every answer is what transformers' generate gives for that prompt alone."""
    from transferkit.eval import generation
    from transferkit.eval.generation import generate

    cfg = load_config(None, llama_overrides(tiny_llama, tmp_path / "x.jsonl", tmp_path, "full", task="generate"))
    model, _ = model_and_task(cfg)
    model.eval()
    texts = [c["prompt"] + " and more" * (3 * (i % 4)) for i, c in enumerate(toy_chats(12, seed=5))]  # calls of unequal widths, joined
    prompts = [model.prompt_tokens(model.chat_prompt([{"role": "user", "content": t}])) for t in texts]
    assert len(set(map(len, prompts))) > 1

    def alone(eos):
        answers = []
        for p in prompts:
            out = model.hf.generate(input_ids=torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long),
                                    max_new_tokens=10, do_sample=False, pad_token_id=model.pad_id, eos_token_id=eos)  # fmt: skip
            answers.append(model.tokenizer.decode(out[0, len(p) :], skip_special_tokens=True).strip())
        return answers

    real_join, joined = generation._joined, []
    monkeypatch.setattr(generation, "_joined", lambda runs, *rest: joined.append(len(runs)) or real_join(runs, *rest))
    assert generate(model, prompts, 10) == alone(model.tokenizer.eos_token_id)
    assert joined and joined[0] > 1  # prompts of unequal lengths were prefilled in calls of their own, then joined
    # A token that some answers say early stands in for the end token: rows leave the batch at different steps.
    said = [model.hf.generate(input_ids=torch.tensor([p]), max_new_tokens=10, do_sample=False)[0, len(p) :].tolist() for p in prompts]
    early = next(t for t in said[0][1:6] if sum(t in s for s in said) < len(said))
    model.tokenizer.eos_token = model.tokenizer.convert_ids_to_tokens(early)
    ours = generate(model, prompts, 10)
    assert ours == alone(early) and len(set(map(len, ours))) > 1
    model.hf.generation_config.repetition_penalty = 1.3  # not a plain argmax: transformers decodes it
    penalised = generate(model, prompts, 10)
    assert penalised == alone(early) and penalised != ours


PLAIN_PEFT = """
import json, sys
from pathlib import Path
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

folder = Path(sys.argv[1])
base = AutoModelForCausalLM.from_pretrained(json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"])
model = PeftModel.from_pretrained(base, folder).eval()
tokenizer = AutoTokenizer.from_pretrained(folder)
prompt = tokenizer.apply_chat_template([{"role": "user", "content": sys.argv[2]}], add_generation_prompt=True, tokenize=False)
ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")
out = model.generate(**ids, max_new_tokens=8, do_sample=False)
print(tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True).strip())
"""


def test_saved_lora_adapter_generates_the_same_in_plain_peft(tiny_llama, toy_chat_file, tmp_path, capsys):
    run = train(None, llama_overrides(tiny_llama, toy_chat_file, tmp_path / "lora", "lora", task="generate",
                                      **{"model.max_length": 64, "train.epochs": 3, "train.lr": 1e-2}))  # fmt: skip
    prompt = toy_chats(1, seed=2)[0]["prompt"]  # seen in training: the adapter has learned an answer to it
    assert cli.main(["predict", str(run.dir), "--prompt", prompt, "--max-new-tokens", "8"]) == 0
    ours = capsys.readouterr().out.strip()
    plain = subprocess.run([sys.executable, "-c", PLAIN_PEFT, str(run.model_dir), prompt], capture_output=True, text=True,
                           env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}, check=True)  # fmt: skip
    assert ours and plain.stdout.strip() == ours


# --- bad input ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def llama_run(tiny_llama, toy_csv, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "done"
    assert cli.main(["train", *llama_overrides(tiny_llama, toy_csv, out, "icl")]) == 0
    return out


def llama_args(tiny_llama, data, run_dir, regime="icl", **extra) -> list[str]:
    return ["train", *llama_overrides(tiny_llama, data, run_dir, regime, **{"train.epochs": 1, **extra}), "overwrite=true"]


def test_jsonl_line_without_the_fields(capsys, tiny_llama, llama_run, tmp_path):
    data = write_jsonl(tmp_path / "bad.jsonl", [*toy_chats(10, 1), {"question": "no fields here"}])
    check_refused(capsys, llama_args(tiny_llama, data, llama_run, "full", task="generate"), llama_run, "bad.jsonl:11", "prompt + response")


def test_prompt_longer_than_the_context(capsys, tiny_llama, llama_run, tmp_path):
    long_prompt = " ".join(["apple"] * 600)
    data = write_jsonl(tmp_path / "long.jsonl", [*toy_chats(10, 1), {"prompt": long_prompt, "response": "fruit"}])
    check_refused(capsys, llama_args(tiny_llama, data, llama_run, "full", task="generate"), llama_run, "longer than the model's context")


def test_response_that_does_not_fit(capsys, tiny_llama, llama_run, tmp_path):
    data = write_jsonl(tmp_path / "wordy.jsonl", [*toy_chats(10, 1), {"prompt": "which kind ?", "response": " ".join(["apple"] * 60)}])
    check_refused(capsys, llama_args(tiny_llama, data, llama_run, "full", task="generate"), llama_run, "needs 69 tokens", "model.max_length")


def test_more_shots_than_training_examples(capsys, tiny_llama, llama_run, tmp_path):
    data = write_csv(tmp_path / "small.csv", toy_rows(20, 3))
    check_refused(capsys, llama_args(tiny_llama, data, llama_run, **{"icl.shots": 500}), llama_run, "icl.shots=500", "training examples")


def test_empty_verbaliser(capsys, tiny_llama, toy_csv, llama_run):
    check_refused(capsys, llama_args(tiny_llama, toy_csv, llama_run, **{"lm.verbalisers": "fruit=,vehicle=car"}), llama_run,
                  "verbaliser of label 'fruit' is empty")  # fmt: skip


def test_two_labels_with_one_verbaliser(capsys, tiny_llama, toy_csv, llama_run):
    check_refused(capsys, llama_args(tiny_llama, toy_csv, llama_run, **{"lm.verbalisers": "fruit=thing,vehicle=thing"}), llama_run,
                  "share the verbaliser 'thing'")  # fmt: skip


def test_icl_needs_a_causal_lm(capsys, tiny_bert, toy_csv, llama_run):
    check_refused(capsys, ["train", *tiny_overrides(tiny_bert, toy_csv, llama_run, "icl"), "overwrite=true"], llama_run, "causal language model")


def test_freeze_refuses_a_causal_lm(capsys, tiny_llama, toy_csv, llama_run):
    check_refused(capsys, llama_args(tiny_llama, toy_csv, llama_run, "freeze"), llama_run, "use full, lora, prompt or icl")


def test_compare_of_generation_runs_shows_their_metrics_and_forgetting(tiny_llama, toy_chat_file, general_text, tmp_path, capsys):
    """A comparison of generate-task runs: its own metrics in the table, icl beside training, forgetting
    as a column, a report without a confusion matrix (there are no classes)."""
    from transferkit.compare import compare

    extra = {"task": "generate", "model.max_length": 64, "train.epochs": 3, "train.lr": 3e-3, "icl.shots": 0,
             "forgetting.corpus": str(general_text), "forgetting.tokens": 512}  # fmt: skip
    base = load_config(None, llama_overrides(tiny_llama, toy_chat_file, tmp_path / "unused", "full", **extra))
    result = compare(base, ["icl", "full"], output=tmp_path / "cmp")
    icl, full = result.rows
    assert icl["parameters_trained"] == 0 and icl["forgetting_perplexity_change"] == 0.0
    assert full["exact_match"] > icl["exact_match"] and full["perplexity"] < icl["perplexity"]
    assert full["forgetting_perplexity_change"] != 0.0
    header = (result.dir / "compare.md").read_text().splitlines()[0]
    assert "exact match" in header and "general ppl change" in header and "| accuracy |" not in header
    page = (result.dir / "report.html").read_text()
    plots = re.findall(r"class='plot' alt='([^']*)'", page)
    assert plots == ["cost against quality", "learning curves full"]  # icl trains nothing; no classes, no confusion
    assert "standard deviation of exact match" in page
