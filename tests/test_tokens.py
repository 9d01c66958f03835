"""Token classification (`--task tokens`): CoNLL and JSONL tagged sentences, labels on each word's first
sub-word, entity F1 by seqeval's definition; full, lora and freeze learn a toy tagging task; `predict`
gives entities with character spans into the text exactly as written; the saved folder loads in plain
AutoModelForTokenClassification and tags the same; bad files stop in one line, exit 2."""

from __future__ import annotations

import csv
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import FILLER, FRUIT, VEHICLE, check_bad_file_refused, tiny_overrides
from transferkit import cli, train
from transferkit.eval.entities import entity_metrics, get_entities


def tagged_sentences(n: int, seed: int, two_word: bool = False) -> list[tuple[list[str], list[str]]]:
    """Fruit words are FRUIT entities, vehicle words VEHICLE ones (with `two_word`, "new <vehicle>" too), the rest O."""
    rng = random.Random(seed)
    fillers = [w for w in FILLER if w != "new"]
    sentences = []
    for _ in range(n):
        words, tags = [], []
        for _ in range(rng.randint(4, 8)):
            r = rng.random()
            if r < 0.25:
                words.append(rng.choice(FRUIT)), tags.append("B-FRUIT")
            elif r < 0.5:
                words.append(rng.choice(VEHICLE)), tags.append("B-VEHICLE")
            elif r < 0.6 and two_word:
                words += ["new", rng.choice(VEHICLE)]
                tags += ["B-VEHICLE", "I-VEHICLE"]
            else:
                words.append(rng.choice(fillers)), tags.append("O")
        sentences.append((words, tags))
    return sentences


def write_conll(path: Path, sentences, columns: int = 2) -> Path:
    """Token ... tag per line (extra middle columns as POS-like fillers), a blank line between sentences."""
    lines = []
    for words, tags in sentences:
        lines += ["\t".join([w, *["X"] * (columns - 2), t]) for w, t in zip(words, tags)] + [""]
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def conll(tmp_path_factory) -> Path:
    return write_conll(tmp_path_factory.mktemp("tokens") / "toy.conll", tagged_sentences(200, 1), columns=3)


def quick(tiny_bert, data, out, regime, **extra) -> list[str]:
    return tiny_overrides(tiny_bert, data, out, regime, **{"task": "tokens", "model.max_length": 24, **extra})


PLAIN = r"""
import json, sys, torch
from pathlib import Path
from transformers import AutoConfig, AutoModelForTokenClassification, AutoTokenizer
folder, sentences = Path(sys.argv[1]), json.loads(sys.argv[2])
if (folder / "adapter_config.json").exists():  # the README's lines for an adapter folder
    from peft import PeftModel
    labels = json.loads((folder / "labels.json").read_text())
    base_path = json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"]
    base = AutoModelForTokenClassification.from_pretrained(base_path, num_labels=len(labels), id2label=dict(enumerate(labels)),
                                                           label2id={l: i for i, l in enumerate(labels)})
    model = PeftModel.from_pretrained(base, folder).eval()
    id2label = dict(enumerate(labels))
else:
    model = AutoModelForTokenClassification.from_pretrained(folder).eval()
    id2label = model.config.id2label
tokenizer = AutoTokenizer.from_pretrained(folder)
enc = tokenizer(sentences, is_split_into_words=True, truncation=True, padding=True, return_tensors="pt")
with torch.no_grad():
    predicted = model(**enc).logits.argmax(-1)
out = []
for i, words in enumerate(sentences):
    tags, previous = ["O"] * len(words), None
    for position, w in enumerate(enc.word_ids(i)):
        if w is not None and w != previous:  # the word's first sub-word carries its tag
            tags[w] = id2label[int(predicted[i, position])]
        previous = w
    out.append(tags)
print(json.dumps(out))
"""


def plain_tags(folder: Path, sentences: list[list[str]]) -> list[list[str]]:
    out = subprocess.run([sys.executable, "-c", PLAIN, str(folder), json.dumps(sentences)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


# --- the metric ---------------------------------------------------------------------------------------


def test_entities_and_f1_follow_seqeval():
    # seqeval's README example: 1 of 2 gold entities found, 1 of 2 predicted right.
    gold = [["O", "O", "O", "B-MISC", "I-MISC", "I-MISC", "O"], ["B-PER", "I-PER", "O"]]
    predicted = [["O", "O", "B-MISC", "I-MISC", "I-MISC", "I-MISC", "O"], ["B-PER", "I-PER", "O"]]
    m = entity_metrics(gold, predicted)
    assert (m["precision"], m["recall"], m["f1"]) == (0.5, 0.5, 0.5)
    assert m["per_type"]["PER"]["f1"] == 1.0 and m["per_type"]["MISC"]["f1"] == 0.0
    # conlleval: an I- after O, or after another type, starts an entity; a B- ends the one before.
    assert get_entities(["I-PER", "I-PER", "I-LOC", "B-LOC", "O", "I-LOC"]) == [("PER", 0, 1), ("LOC", 2, 2), ("LOC", 3, 3), ("LOC", 5, 5)]
    assert get_entities(["S-PER", "B-LOC", "I-LOC", "E-LOC", "O", "B-ORG", "E-ORG"]) == [("PER", 0, 0), ("LOC", 1, 3), ("ORG", 5, 6)]
    assert entity_metrics([["O"]], [["O"]])["f1"] == 0.0  # no entities on either side: seqeval's 0


# --- learning, predicting, plain loads ------------------------------------------------------------------


@pytest.mark.parametrize("regime", ["full", "lora", "freeze"])
def test_a_regime_learns_to_tag_and_a_plain_load_tags_the_same(regime, tiny_bert, conll, tmp_path, capsys):
    extra = {"full": {"train.epochs": 5, "train.lr": 3e-3}, "lora": {"train.epochs": 10, "train.lr": 1e-2},
             "freeze": {"train.epochs": 20, "train.lr": 1e-2}}[regime]  # fmt: skip
    run = train(None, quick(tiny_bert, conll, tmp_path / "run", regime, **extra))
    test = run.metrics["test"]
    assert set(test) >= {"f1", "precision", "recall", "token_accuracy", "per_type"}
    assert set(test["per_type"]) == {"FRUIT", "VEHICLE"}
    assert test["f1"] > (0.8 if regime != "freeze" else 0.5), test
    assert test["per_type"]["FRUIT"]["f1"] > 0.8, test  # a word family the tiny backbone was pre-trained on
    assert run.metrics["labels"] == ["O", "B-FRUIT", "B-VEHICLE"]
    assert json.loads((run.dir / "model" / "task.json").read_text())["scheme"] == "bio"
    assert (run.dir / "model" / ("adapter_config.json" if regime == "lora" else "config.json")).is_file()
    card = (run.dir / "model" / "README.md").read_text()
    assert "pipeline_tag: token-classification" in card and "AutoModelForTokenClassification" in card

    from transferkit.inference import load_run

    model, cfg = load_run(run.dir)
    sentences = [words for words, _ in tagged_sentences(30, 7)]
    from transferkit.data.examples import Examples

    ours = model.task.predict(model, Examples(sentences, None))["tags"]
    assert ours == plain_tags(run.dir / "model", sentences)

    # evaluate on a file gives the task's metrics again, with a table per entity type
    assert cli.main(["evaluate", str(run.dir), "--data", str(conll)]) == 0
    assert "VEHICLE" in capsys.readouterr().out.splitlines()[-1]


def test_predict_gives_entity_spans_in_the_text_as_written(tiny_bert, conll, tmp_path, capsys):
    run = train(None, quick(tiny_bert, conll, tmp_path / "run", "full", **{"train.epochs": 5, "train.lr": 3e-3}))
    capsys.readouterr()
    text = "my  apple,\r\nthe new bus\tand a pear\u00a0 é plum\n"
    assert cli.main(["predict", str(run.dir), "--text", text, "--json"]) == 0
    [row] = json.loads(capsys.readouterr().out)
    assert row["text"] == text
    found = {(e["type"], e["text"]) for e in row["entities"]}
    assert {("FRUIT", "apple"), ("FRUIT", "pear"), ("FRUIT", "plum")} <= found, row
    for e in row["entities"]:
        assert text[e["start"] : e["end"]] == e["text"]
    # a table in, the same rows out with the entities beside them
    table = tmp_path / "in.csv"
    table.write_bytes(b"id,text\r\n1,a pear on the tram\r\n2,\"the new car,\r\nmy plum\"\r\n")
    out = tmp_path / "out.csv"
    assert cli.main(["predict", str(run.dir), "--input", str(table), "--output", str(out)]) == 0
    rows = list(csv.DictReader(open(out, newline="", encoding="utf-8")))
    assert [r["text"] for r in rows] == ["a pear on the tram", "the new car,\r\nmy plum"]
    for r in rows:
        for e in json.loads(r["entities"]):
            assert r["text"][e["start"] : e["end"]] == e["text"]


def test_jsonl_sentences_and_bioes_tags(tiny_bert, tmp_path):
    rows = []
    for words, tags in tagged_sentences(120, 3, two_word=True):
        bioes = [("S-" if t.startswith("B-") and (k + 1 == len(tags) or not tags[k + 1].startswith("I-")) else
                  "E-" if t.startswith("I-") else t[:2]) + t[2:] if t != "O" else t for k, t in enumerate(tags)]  # fmt: skip
        rows.append({"tokens": words, "tags": bioes})
    data = tmp_path / "toy.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = train(None, quick(tiny_bert, data, tmp_path / "run", "full", **{"train.epochs": 6, "train.lr": 3e-3}))
    assert json.loads((run.dir / "model" / "task.json").read_text())["scheme"] == "bioes"
    assert {"S-FRUIT", "B-VEHICLE", "E-VEHICLE"} <= set(run.metrics["labels"])
    assert run.metrics["test"]["f1"] > 0.4


# --- bad input ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, text, words", [
    ("ragged.conll", "apple\tX\tB-FRUIT\nis\tO\n\nbus\tX\tB-VEHICLE\n", ["ragged.conll:2", "2 columns", "3"]),
    ("one.conll", "apple B-FRUIT\nis\n", ["one.conll:2", "1 column"]),
    ("scheme.conll", "apple\tB-FRUIT\nis\tFRUIT\n", ["scheme.conll:2", "'FRUIT'", "BIO"]),
    ("count.jsonl", '{"tokens": ["a", "pear"], "tags": ["O", "B-FRUIT"]}\n{"tokens": ["a", "bus"], "tags": ["O"]}\n',
     ["count.jsonl:2", "2 tokens but 1 tags"]),
    ("columns.jsonl", '{"words": ["a", "pear"], "tags": ["O", "B-FRUIT"]}\n', ["'tokens'"]),
])  # fmt: skip
def test_bad_tagged_files_stop_in_one_line_exit_2(name, text, words, tiny_bert, tmp_path, capsys):
    check_bad_file_refused(capsys, tmp_path, name, text, words, lambda data, out: quick(tiny_bert, data, out, "full", **{"train.epochs": 1}))
