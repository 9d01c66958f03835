"""Extractive question answering (`--task qa`): SQuAD JSON and flat tables, contexts longer than a
window (answers in later windows), splits by context, exact match / F1; full, lora and freeze learn a
toy task; the saved folder loads in plain AutoModelForQuestionAnswering and, windowed the same way,
answers the same; bad files stop in one line, exit 2, nothing written."""

from __future__ import annotations

import csv
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import FILLER, FRUIT, check_bad_file_refused, tiny_overrides
from transferkit import cli, train
from transferkit.eval.spans import best_over_golds, normalize_answer

QUESTIONS = ["which fruit", "the fruit is", "a fruit"]  # "which" and "fruit" are [UNK] to the tiny vocabulary


def squad_document(n: int, seed: int, words: int = 10) -> dict:
    """Contexts of filler words with one fruit word in them; every question asks for the fruit. Two
    questions per context (so that splits by context are seen to keep them together)."""
    rng = random.Random(seed)
    data = []
    for a in range(n):
        context_words = rng.choices(FILLER, k=words)
        k = rng.randrange(words)
        context_words[k] = rng.choice(FRUIT)
        context = " ".join(context_words)
        start = len(" ".join(context_words[:k])) + (1 if k else 0)
        qas = [{"id": f"{a}-{q}", "question": rng.choice(QUESTIONS), "answers": [{"text": context_words[k], "answer_start": start}]}
               for q in range(2)]  # fmt: skip
        data.append({"title": str(a), "paragraphs": [{"context": context, "qas": qas}]})
    return {"version": "1.1", "data": data}


def write_json(path: Path, document) -> Path:
    path.write_text(json.dumps(document), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def squad(tmp_path_factory) -> Path:
    return write_json(tmp_path_factory.mktemp("qa") / "toy.json", squad_document(60, 1))


def quick(tiny_bert, data, out, regime, **extra) -> list[str]:
    return tiny_overrides(tiny_bert, data, out, regime, **{"task": "qa", "qa.max_length": 32, "qa.stride": 8, **extra})


PLAIN = r"""
import json, sys, torch
from pathlib import Path
from transformers import AutoModelForQuestionAnswering, AutoTokenizer
folder, rows = Path(sys.argv[1]), json.loads(sys.argv[2])
task = json.loads((folder / "task.json").read_text())
if (folder / "adapter_config.json").exists():
    from peft import PeftModel
    base_path = json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"]
    model = PeftModel.from_pretrained(AutoModelForQuestionAnswering.from_pretrained(base_path), folder).eval()
else:
    model = AutoModelForQuestionAnswering.from_pretrained(folder).eval()
tokenizer = AutoTokenizer.from_pretrained(folder)
answers = []
for question, context in rows:
    enc = tokenizer(question, context, truncation="only_second", max_length=task["max_length"], stride=task["stride"],
                    return_overflowing_tokens=True, return_offsets_mapping=True, padding=True, return_tensors="pt")
    offsets = enc.pop("offset_mapping")
    enc.pop("overflow_to_sample_mapping")
    with torch.no_grad():
        out = model(**enc)
    best = (float("-inf"), "")
    for w in range(len(offsets)):
        is_context = torch.tensor([s == 1 for s in enc.sequence_ids(w)])
        start = out.start_logits[w].masked_fill(~is_context, float("-inf"))
        end = out.end_logits[w].masked_fill(~is_context, float("-inf"))
        k = min(task["n_best"], int(is_context.sum()))
        for s in start.topk(k).indices.tolist():
            for e in end.topk(k).indices.tolist():
                if s <= e < s + task["max_answer_length"] and float(start[s] + end[e]) > best[0]:
                    best = (float(start[s] + end[e]), context[int(offsets[w, s, 0]) : int(offsets[w, e, 1])])
    answers.append(best[1])
print(json.dumps(answers))
"""


def plain_answers(folder: Path, rows: list[tuple[str, str]]) -> list[str]:
    out = subprocess.run([sys.executable, "-c", PLAIN, str(folder), json.dumps(rows)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


# --- the metric ---------------------------------------------------------------------------------------


def test_exact_match_and_f1_follow_the_squad_script():
    assert normalize_answer("The  Apple, pie!") == "apple pie"
    assert best_over_golds("the apple", ["Apple", "a pear"]) == (1.0, 1.0)
    em, f1 = best_over_golds("red apple pie", ["apple"])
    assert em == 0.0 and f1 == pytest.approx(0.5)
    assert best_over_golds("", []) == (1.0, 1.0) and best_over_golds("pear", []) == (0.0, 0.0)  # unanswerable


# --- learning, long contexts, plain loads ---------------------------------------------------------------


@pytest.mark.parametrize("regime", ["full", "lora", "freeze"])
def test_a_regime_learns_to_find_the_answer_and_a_plain_load_finds_the_same(regime, tiny_bert, squad, tmp_path):
    extra = {"full": {"train.epochs": 6, "train.lr": 3e-3}, "lora": {"train.epochs": 8, "train.lr": 1e-2},
             "freeze": {"train.epochs": 12, "train.lr": 2e-2}}[regime]  # fmt: skip
    run = train(None, quick(tiny_bert, squad, tmp_path / "run", regime, **extra))
    test = run.metrics["test"]
    assert test["f1"] > (80 if regime != "freeze" else 40), test
    assert test["examples"] == 24  # 12 of 60 contexts, both of their questions
    card = (run.dir / "model" / "README.md").read_text()
    assert "pipeline_tag: question-answering" in card

    from transferkit.data.examples import Examples
    from transferkit.inference import load_run

    model, cfg = load_run(run.dir)
    fresh = squad_document(12, 9, words=14)
    rows = [(q["question"], p["context"]) for a in fresh["data"] for p in a["paragraphs"] for q in p["qas"]]
    ours = model.task.predict(model, Examples([q for q, _ in rows], None, pairs=[c for _, c in rows]))
    assert ours["answer"] == plain_answers(run.dir / "model", rows)
    for (_, context), text, start in zip(rows, ours["answer"], ours["answer_start"]):
        assert context[start : start + len(text)] == text


def test_answers_in_a_later_window_of_a_long_context_are_found(tiny_bert, tmp_path):
    """Contexts of 30 words in 24-token windows: most answers lie past the first window."""
    train_file = write_json(tmp_path / "long.json", squad_document(50, 2, words=30))
    run = train(None, quick(tiny_bert, train_file, tmp_path / "run", "full", **{"train.epochs": 5, "train.lr": 3e-3,
                                                                                 "qa.max_length": 24, "qa.stride": 6}))  # fmt: skip
    windows = run.metrics["windows"]["test"]
    assert windows["windows"] >= 2 * windows["questions"] and windows["answers_outside"] == 0, windows
    report = (run.dir / "report.html").read_text()  # the windows table: split, questions, windows, per question, outside, share
    assert "qa.max_length 24, qa.stride 6" in report
    assert f"<td>test</td><td>{windows['questions']:,}</td><td>{windows['windows']:,}</td>" in report, report[:2000]
    assert run.metrics["test"]["f1"] > 70, run.metrics["test"]
    # a question whose answer is only in the last window of its context, and the plain load's answer to it
    words = ["the"] * 28 + ["plum", "red"]
    context = " ".join(words)
    from transferkit.data.examples import Examples
    from transferkit.inference import load_run

    model, _ = load_run(run.dir)
    ours = model.task.predict(model, Examples(["which fruit"], None, pairs=[context]))
    assert ours["answer"] == ["plum"] and ours["answer_start"] == [context.index("plum")]
    assert plain_answers(run.dir / "model", [("which fruit", context)]) == ["plum"]


def test_a_flat_table_keeps_the_text_and_predict_writes_answers_beside_it(tiny_bert, squad, tmp_path, capsys):
    document = json.loads(squad.read_text())
    rows = [{"id": q["id"], "question": q["question"], "context": p["context"], "answer": q["answers"][0]["text"],
             "answer_start": q["answers"][0]["answer_start"]} for a in document["data"] for p in a["paragraphs"] for q in p["qas"]]  # fmt: skip
    table = tmp_path / "qa.jsonl"
    table.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = train(None, quick(tiny_bert, table, tmp_path / "run", "full", **{"train.epochs": 6, "train.lr": 3e-3}))
    assert run.metrics["test"]["f1"] > 70
    capsys.readouterr()
    context = "my\r\nold  plum\tis red"  # line ends and runs of spaces stay as written
    assert cli.main(["predict", str(run.dir), "--text", "which fruit", "--pair", context, "--json"]) == 0
    [row] = json.loads(capsys.readouterr().out)
    assert row["answer"] == "plum" and context[row["answer_start"] : row["answer_start"] + 4] == "plum"
    questions = tmp_path / "q.csv"
    questions.write_bytes(b"question,context\r\nwhich fruit,\"a pear\r\nis old\"\r\nthe fruit,my red apple\r\n")
    out = tmp_path / "answers.csv"
    assert cli.main(["predict", str(run.dir), "--input", str(questions), "--output", str(out)]) == 0
    written = list(csv.DictReader(open(out, newline="", encoding="utf-8")))
    assert [r["context"] for r in written] == ["a pear\r\nis old", "my red apple"]
    assert [r["answer"] for r in written] == ["pear", "apple"]
    capsys.readouterr()
    assert cli.main(["evaluate", str(run.dir), "--data", str(table), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["f1"] > 70


def test_unanswerable_questions_get_a_no_answer_threshold_chosen_on_validation(tiny_bert, tmp_path):
    """SQuAD 2.0: half the contexts hold no fruit, and their question is marked is_impossible."""
    document = squad_document(60, 4)
    rng = random.Random(5)
    for article in document["data"][::2]:
        paragraph = article["paragraphs"][0]
        paragraph["context"] = " ".join(rng.choices(FILLER, k=10))
        for q in paragraph["qas"]:
            q["answers"], q["is_impossible"] = [], True
    run = train(None, quick(tiny_bert, write_json(tmp_path / "v2.json", document), tmp_path / "run", "full",
                            **{"train.epochs": 12, "train.lr": 3e-3}))  # fmt: skip  (12 epochs: seeds 0-2 all pass)
    test = run.metrics["test"]
    assert {"has_answer_f1", "no_answer_f1"} <= set(test) and test["f1"] > 70, test
    saved = json.loads((run.dir / "model" / "task.json").read_text())
    assert saved["unanswerable"] and saved["null_threshold"] == run.metrics["chosen_on_validation"]["null_threshold"]

    from transferkit.data.examples import Examples
    from transferkit.inference import load_run

    model, _ = load_run(run.dir)
    # A context of filler words only, as the unanswerable ones it was trained on: no answer.
    ours = model.task.predict(model, Examples(["which fruit", "which fruit"], None, pairs=["my old pear is red", "my old big red"]))
    assert ours["answer"] == ["pear", ""] and ours["answer_start"] == [7, -1], ours


# --- bad input ----------------------------------------------------------------------------------------


def _squad(context="my red plum", question="which fruit", text="plum", start=7, qid="q1") -> dict:
    return {"data": [{"paragraphs": [{"context": context, "qas": [{"id": qid, "question": question,
                                                                    "answers": [{"text": text, "answer_start": start}]}]}]}]}  # fmt: skip


@pytest.mark.parametrize("name, content, words", [
    ("offset.json", json.dumps(_squad(start=3, qid="q-17")), ["'q-17'", "answer_start 3", "'plum'"]),
    ("missing.json", json.dumps(_squad(text="pear", start=7, qid="q-2")), ["'q-2'", "'pear'"]),
    ("nocontext.json", json.dumps(_squad(context="", qid="q-3")), ["'q-3'", "no context"]),
    ("columns.jsonl", '{"question": "which fruit", "context": "my plum", "answer": "plum"}\n', ["answer_start"]),
    ("nocontext.jsonl", '{"question": "which fruit", "answer": "plum", "answer_start": 0}\n', ["context"]),
])  # fmt: skip
def test_bad_qa_files_stop_in_one_line_exit_2(name, content, words, tiny_bert, tmp_path, capsys):
    check_bad_file_refused(capsys, tmp_path, name, content, words, lambda data, out: quick(tiny_bert, data, out, "full", **{"train.epochs": 1}))


# --- a causal LM on the same questions ------------------------------------------------------------------


def test_a_causal_lm_learns_to_answer_in_its_own_words_scored_as_the_span_head_is(tiny_llama, squad, tmp_path, capsys):
    from helpers import llama_overrides

    common = {"task": "qa", "model.max_length": 64, "train.lr": 3e-3, "train.epochs": 20}
    zero = train(None, llama_overrides(tiny_llama, squad, tmp_path / "zero", "icl", **common, **{"icl.shots": 0}))
    tuned = train(None, llama_overrides(tiny_llama, squad, tmp_path / "full", "full", **common))
    for run in (zero, tuned):  # the span head's columns: F1 and exact match over every test question
        assert run.metrics["test"]["examples"] == run.metrics["data"]["test"] and "exact_match" in run.metrics["test"]
    assert tuned.metrics["test"]["f1"] > max(zero.metrics["test"]["f1"] + 20, 50), (zero.metrics["test"], tuned.metrics["test"])
    capsys.readouterr()
    assert cli.main(["predict", str(tuned.dir), "--question", "which fruit", "--context", "my red plum is old", "--json"]) == 0
    [row] = json.loads(capsys.readouterr().out)
    assert row["answer_start"] == ("my red plum is old".find(row["answer"]) if row["answer"] else -1)


def test_a_causal_lms_context_too_long_is_cut_around_the_answer_in_training_and_to_its_beginning_after(tiny_llama, tmp_path):
    from helpers import llama_overrides, model_and_task

    from transferkit.config import load_config

    cfg = load_config(None, llama_overrides(tiny_llama, tmp_path / "x.json", tmp_path / "run", "full", task="qa", **{"model.max_length": 40}))
    model, task = model_and_task(cfg)
    words = ["the"] * 60 + ["plum"] + ["old"] * 20
    context = " ".join(words)
    answer = ("plum", context.index("plum"))
    turn, cut = task._fitted(model, "which fruit", context, answer)
    assert cut and "plum" in turn["content"] and "the" in turn["content"] and "old" in turn["content"]
    assert turn["content"].split("\n\n")[0] in context  # a stretch of the context as written
    item = model.encode_chat([turn, {"role": "assistant", "content": "plum"}])  # fits: no error
    assert len(item["input_ids"]) <= 40
    turn, cut = task._fitted(model, "which fruit", context, None)
    assert cut and context.startswith(turn["content"].split("\n\n")[0]) and "plum" not in turn["content"]
    turn, cut = task._fitted(model, "which fruit", "my red plum", None)
    assert not cut and turn["content"].startswith("my red plum\n\n")  # a context that fits stays whole


def test_compare_puts_qa_regimes_side_by_side_in_f1_and_exact_match(tiny_bert, squad, tmp_path):
    from transferkit import load_config
    from transferkit.compare import compare

    base = load_config(None, quick(tiny_bert, squad, tmp_path / "unused", "full", **{"train.epochs": 2}))
    comparison = compare(base, ["full", "freeze"], [None], [0], tmp_path / "cmp")
    assert [r["regime"] for r in comparison.rows] == ["full", "freeze"]
    for row in comparison.rows:
        metrics = json.loads((Path(row["run"]) / "metrics.json").read_text())
        assert row["f1"] == pytest.approx(metrics["test"]["f1"]) and row["exact_match"] == pytest.approx(metrics["test"]["exact_match"])
    table = (tmp_path / "cmp" / "compare.md").read_text()
    assert "F1" in table or "f1" in table
    assert (tmp_path / "cmp" / "report.html").is_file()
