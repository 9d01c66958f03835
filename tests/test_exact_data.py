"""The user's data reaches the model exactly as written and comes back from predict byte for byte;
run folders never destroy anything; the defects of issue 10, each as a test."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import TOY_LABELS, toy_rows, write_csv, write_jsonl
from transferkit import cli, load_config, train
from transferkit.data.tables import csv_records

QUICK = ["train.epochs=2", "train.batch_size=8", "train.patience=null", "train.precision=fp32", "model.max_length=16"]
AWKWARD = [
    "a red apple\nand a pear",  # a quoted newline
    "a bus\r\nthen a tram",  # CR LF inside a field
    "a plum\x0cpage two",  # form feed: no row break
    "my car\u2028line separator",  # U+2028
    'she said "a big melon"',  # quotes
    "naïve café über ÿ 漢字 🍐",  # non-ASCII
    "a bike, a train, a car",  # the delimiter
    "  spaced apple  ",
    "\ttab truck",
    "",  # empty
]


def awkward_rows(n: int = 60) -> list[dict]:
    rows = toy_rows(n, seed=4)
    for i, text in enumerate(AWKWARD):
        rows[i]["text"] = text + (" apple" if rows[i]["label"] == "fruit" else " bus")
    return rows


def write_table(path: Path, rows: list[dict], line_end: str = "\n", bom: bool = False, delimiter: str = ",", last_newline=True) -> Path:
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer, delimiter=delimiter, lineterminator=line_end)
    writer.writerow(list(rows[0]))
    writer.writerows([list(r.values()) for r in rows])
    text = buffer.getvalue()
    text = text if last_newline else text[: -len(line_end)]
    path.write_bytes((("\ufeff" if bom else "") + text).encode("utf-8"))
    return path


@pytest.fixture(scope="module")
def text_run(tiny_bert, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("exact")
    data = write_table(folder / "train.csv", awkward_rows(80))
    out = folder / "run"
    assert cli.main(["train", "--model", str(tiny_bert), "--data", str(data), "--output", str(out), "--regime", "freeze", *QUICK]) == 0
    return out


# --- what the model sees ----------------------------------------------------------------------------


@pytest.mark.parametrize("line_end", ["\n", "\r\n"])
def test_the_model_sees_each_text_exactly_as_written(line_end, tiny_bert, tmp_path):
    from helpers import model_and_task
    from transferkit.data.splits import load_splits

    rows = awkward_rows()
    cfg = load_config(None, {"model.name": str(tiny_bert), "data.name": str(write_table(tmp_path / "d.csv", rows, line_end, bom=True)),
                             "model.max_length": 64})  # fmt: skip
    splits = load_splits(cfg.data, 0)
    everything = [*splits.train.inputs, *splits.validation.inputs, *splits.test.inputs]
    assert sorted(everything) == sorted(r["text"] for r in rows)  # 60 rows in, 60 texts out, each as written
    model, task = model_and_task(cfg, splits.label_names)
    items = task.encode(model, splits.train)
    for i in range(len(splits.train)):
        assert items[i]["input_ids"] == model.tokenizer(splits.train.inputs[i], truncation=True, max_length=64)["input_ids"]


def test_a_form_feed_does_not_split_a_row(text_run, tmp_path, capsys):
    data = write_table(tmp_path / "eight.csv", [{"text": f"row {i}\x0cstill row {i}", "label": "x"} for i in range(8)])
    out = tmp_path / "p.csv"
    assert cli.main(["predict", str(text_run), "--input", str(data), "--output", str(out)]) == 0
    assert "wrote 8 predictions" in capsys.readouterr().out
    assert [r["text"] for r in csv.DictReader(open(out, newline=""))] == [f"row {i}\x0cstill row {i}" for i in range(8)]


# --- predict gives the user's rows back, byte for byte ----------------------------------------------


def _check_records_kept(source: Path, output: Path, delimiter: str, added: int = 2):
    old, new = list(csv_records(source, delimiter)), list(csv_records(output, delimiter))
    assert len(old) == len(new)
    for (_, old_fields, old_raw), (_, new_fields, new_raw) in zip(old, new):
        if not old_fields:
            assert new_raw == old_raw
            continue
        body = old_raw.rstrip("\r\n")
        end = old_raw[len(body) :]
        assert new_raw.startswith(body + delimiter) and new_raw.endswith(end), (old_raw, new_raw)
        assert new_fields[:-added] == old_fields and len(new_fields) == len(old_fields) + added


@pytest.mark.parametrize(
    "line_end, bom, last_newline",
    [("\n", False, True), ("\r\n", True, True), ("\r\n", False, False), ("\n", True, False)],
    ids=["lf", "crlf-bom", "crlf-no-final-newline", "lf-bom-no-final-newline"],
)
def test_predict_keeps_every_byte_of_a_csv(line_end, bom, last_newline, text_run, tmp_path):
    source = write_table(tmp_path / "in.csv", [{"id": str(i), **r} for i, r in enumerate(awkward_rows(30))], line_end, bom, last_newline=last_newline)
    source.chmod(0o640)
    before = (source.read_bytes(), os.stat(source).st_mtime_ns, stat.S_IMODE(os.stat(source).st_mode))
    out = tmp_path / "out.csv"
    assert cli.main(["predict", str(text_run), "--input", str(source), "--output", str(out)]) == 0
    assert (source.read_bytes(), os.stat(source).st_mtime_ns, stat.S_IMODE(os.stat(source).st_mode)) == before
    _check_records_kept(source, out, ",")
    assert out.read_bytes().startswith(b"\xef\xbb\xbf") == bom
    header = next(csv.reader(io.StringIO(out.read_text(encoding="utf-8-sig"))))
    assert header == ["id", "text", "label", "predicted_label", "probability"]


def test_predict_keeps_a_csv_with_quoting_it_did_not_need(text_run, tmp_path):
    source = tmp_path / "q.csv"
    source.write_text('"text","label"\n"a red apple","fruit"\n\n"a, bus",vehicle\n', newline="")
    out = tmp_path / "o.csv"
    assert cli.main(["predict", str(text_run), "--input", str(source), "--output", str(out)]) == 0
    lines = out.read_text().split("\n")
    assert lines[0] == '"text","label",predicted_label,probability'
    assert lines[1].startswith('"a red apple","fruit",') and lines[2] == "" and lines[3].startswith('"a, bus",vehicle,')


def test_predict_keeps_every_byte_of_a_tsv(text_run, tmp_path):
    source = write_table(tmp_path / "in.tsv", awkward_rows(20), delimiter="\t")
    out = tmp_path / "out.tsv"
    assert cli.main(["predict", str(text_run), "--input", str(source), "--output", str(out)]) == 0
    _check_records_kept(source, out, "\t")


def test_predict_keeps_every_byte_of_jsonl(text_run, tmp_path):
    rows = [{"text": t or "a pear", "label": "fruit", "meta": {"n": i, "tags": ["x"]}} for i, t in enumerate(AWKWARD)]
    raw = [json.dumps(r, ensure_ascii=i % 2 == 0) for i, r in enumerate(rows)]
    raw[1] = raw[1].replace(": ", ":")  # spacing as the user wrote it
    source = tmp_path / "in.jsonl"
    source.write_bytes(("\r\n".join(raw[:5]) + "\n\n" + "\n".join(raw[5:])).encode())
    out = tmp_path / "out.jsonl"
    assert cli.main(["predict", str(text_run), "--input", str(source), "--output", str(out)]) == 0
    old = list(open(source, encoding="utf-8", newline=""))  # lines end at \n or \r\n only, not at U+2028
    new = list(open(out, encoding="utf-8", newline=""))
    assert len(old) == len(new)
    for a, b in zip(old, new):
        if not a.strip():
            assert a == b
            continue
        body = a.rstrip("\r\n")
        assert b.startswith(body[:-1]) and b.endswith("}" + a[len(body) :])
        added = json.loads(b)
        assert {k: v for k, v in added.items() if k not in ("predicted_label", "probability")} == json.loads(a)
        assert added["predicted_label"] in TOY_LABELS


def test_predict_keeps_a_parquet_table(text_run, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"text": [r["text"] for r in awkward_rows(20)], "n": list(range(20)), "score": [0.5] * 20})
    source = tmp_path / "in.parquet"
    pq.write_table(table, source)
    out = tmp_path / "out.parquet"
    assert cli.main(["predict", str(text_run), "--input", str(source), "--output", str(out)]) == 0
    got = pq.read_table(out)
    assert got.select(["text", "n", "score"]).equals(table)
    assert got.column_names == ["text", "n", "score", "predicted_label", "probability"]


def test_predict_converts_jsonl_with_differing_keys_to_csv(text_run, tmp_path):
    source = write_jsonl(tmp_path / "in.jsonl", [{"text": "a red apple", "a": 1}, {"text": "a bus", "b": [1, 2]}, {"text": "a pear"}])
    out = tmp_path / "out.csv"
    assert cli.main(["predict", str(text_run), "--input", str(source), "--output", str(out)]) == 0
    rows = list(csv.DictReader(open(out, newline="")))
    assert [r["text"] for r in rows] == ["a red apple", "a bus", "a pear"]
    assert (rows[0]["a"], rows[1]["b"], rows[2]["a"]) == ("1", "[1, 2]", "")


PLAIN = r"""
import json, sys, torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer
model = AutoModelForSequenceClassification.from_pretrained(sys.argv[1]).eval()
tokenizer = AutoTokenizer.from_pretrained(sys.argv[1])
texts = json.loads(open(sys.argv[2], encoding="utf-8").read())
with torch.no_grad():
    logits = model(**tokenizer(texts, truncation=True, padding=True, return_tensors="pt")).logits
print(json.dumps([model.config.id2label[i] for i in logits.argmax(-1).tolist()]))
"""


def test_predict_on_multi_line_texts_agrees_with_a_plain_transformers_load(text_run, tmp_path):
    rows = awkward_rows(40)
    source = write_table(tmp_path / "multi.csv", rows, "\r\n")
    out = tmp_path / "p.csv"
    assert cli.main(["predict", str(text_run), "--input", str(source), "--output", str(out)]) == 0
    texts = tmp_path / "texts.json"
    texts.write_text(json.dumps([r["text"] for r in rows]), encoding="utf-8")
    plain = subprocess.run([sys.executable, "-c", PLAIN, str(text_run / "model"), str(texts)], capture_output=True, text=True, check=True)
    ours = [r["predicted_label"] for r in csv.DictReader(open(out, newline="", encoding="utf-8"))]
    assert ours == json.loads(plain.stdout.strip().splitlines()[-1])


# --- run folders ------------------------------------------------------------------------------------


def test_run_files_follow_the_umask(text_run):
    for path in [text_run, *text_run.rglob("*")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o777 if path.is_dir() else 0o666) & ~_umask(), (path, oct(mode))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_config_yaml_holds_the_values_used_and_reruns_identically(text_run, tmp_path):
    cfg = load_config(text_run / "config.yaml")
    assert (cfg.train.lr, cfg.train.epochs, cfg.train.batch_size, cfg.model.max_length) == (1e-3, 2, 8, 16)
    assert (text_run / "config.yaml").read_text().startswith("# transferkit run configuration\n")
    again = train(text_run / "config.yaml", [f"output={tmp_path / 'again'}"])
    assert again.metrics["test"] == json.loads((text_run / "metrics.json").read_text())["test"]


def test_predict_output_follows_the_umask_and_refuses_the_input(text_run, tmp_path, capsys):
    source = write_table(tmp_path / "in.csv", awkward_rows(10))
    source.chmod(0o600)
    assert cli.main(["predict", str(text_run), "--input", str(source), "--output", str(source)]) == 2
    assert stat.S_IMODE(source.stat().st_mode) == 0o600
    out = tmp_path / "out.csv"
    assert cli.main(["predict", str(text_run), "--input", str(source), "--output", str(out)]) == 0
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~_umask()
    assert cli.main(["predict", str(text_run), "--input", str(source), "--output", str(out)]) == 2  # exists
    assert cli.main(["predict", str(text_run), "--input", str(source), "--output", str(out), "--overwrite"]) == 0


@pytest.mark.parametrize("output", ["runs/x #2", "runs/a: b", "runs/{braces}", "runs/null"])
def test_flag_values_are_literal(output, tiny_bert, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = tmp_path / "d" / "data #1.csv"
    data.parent.mkdir()
    write_csv(data, toy_rows(40, seed=1))
    assert cli.main(["train", "--model", str(tiny_bert), "--data", str(data), "--output", output, "--regime", "freeze", *QUICK]) == 0
    assert (tmp_path / output / "metrics.json").is_file()
    assert load_config(tmp_path / output / "config.yaml").data.name == str(data)


@pytest.mark.parametrize("column", ["on", "010", "null", "1e3"])
def test_column_names_are_literal(column, tiny_bert, tmp_path):
    data = write_csv(tmp_path / "d.csv", [{column: r["text"], "y": r["label"]} for r in toy_rows(40, seed=1)])
    out = tmp_path / "run"
    argv = ["train", "--model", str(tiny_bert), "--data", str(data), "--text-column", column, "--label-column", "y", "--output", str(out), *QUICK]
    assert cli.main(argv) == 0
    assert load_config(out / "config.yaml").data.text_column == column


def test_overrides_may_follow_the_flags(tiny_bert, toy_csv, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("regime: freeze\n")
    out = tmp_path / "run"
    assert cli.main(["train", str(config), "--model", str(tiny_bert), "--data", str(toy_csv), *QUICK, "--output", str(out), "train.epochs=1"]) == 0
    assert load_config(out / "config.yaml").train.epochs == 1


def _start_train(tiny_bert, data: Path, out: Path, *extra: str) -> subprocess.Popen:
    argv = [sys.executable, "-m", "transferkit", "train", "--model", str(tiny_bert), "--data", str(data), "--output", str(out),
            "--regime", "full", *QUICK, "train.epochs=400", *extra]  # fmt: skip
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not (out.with_name(out.name + ".partial") / "metrics.jsonl").is_file():  # training has begun
        assert process.poll() is None and time.time() < deadline, process.stderr.read() if process.poll() is not None else "timed out"
        time.sleep(0.1)
    return process


def test_a_second_train_into_the_same_folder_stops_at_once(tiny_bert, toy_csv, tmp_path, capsys):
    out = tmp_path / "run"
    first = _start_train(tiny_bert, toy_csv, out, "train.seed=0")
    try:
        started = time.time()
        assert cli.main(["train", "--model", str(tiny_bert), "--data", str(toy_csv), "--output", str(out), *QUICK, "train.seed=1"]) == 2
        message = capsys.readouterr().err.strip().splitlines()[-1]
        assert f"pid {first.pid}" in message and "another transferkit process" in message
        assert time.time() - started < 10
    finally:
        first.send_signal(signal.SIGTERM)
        first.wait(60)


def test_sigterm_is_handled_like_ctrl_c(tiny_bert, toy_csv, tmp_path):
    out = tmp_path / "run"
    process = _start_train(tiny_bert, toy_csv, out)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 143
    lines = [line for line in err.strip().splitlines() if "terminated" in line]
    assert lines and "Traceback" not in err
    assert not out.exists() and not out.with_name("run.partial").exists() and not list(tmp_path.glob(".run*"))


def test_reading_into_a_closed_pipe_ends_quietly(text_run, tmp_path):
    source = write_table(tmp_path / "in.csv", awkward_rows(60))
    for command in ([f"predict {text_run} --input {source}"], [f"evaluate {text_run} --json"]):
        result = subprocess.run(["bash", "-c", f"set -o pipefail; {sys.executable} -m transferkit {command[0]} | head -1"],
                                capture_output=True, text=True)  # fmt: skip
        assert result.stderr == "" and len(result.stdout.splitlines()) == 1, result.stderr


def test_predict_on_a_run_that_failed_says_so(tiny_bert, toy_csv, tmp_path, capsys):
    out = tmp_path / "nan"
    assert cli.main(["train", "--model", str(tiny_bert), "--data", str(toy_csv), "--output", str(out), *QUICK, "train.lr=1e30",
                     "train.max_grad_norm=0"]) == 2  # fmt: skip
    capsys.readouterr()
    assert cli.main(["predict", str(out), "--text", "a red apple"]) == 0
    err = capsys.readouterr().err
    assert "warning: run" in err and "did not finish" in err and "NaN" in err


def test_compare_exits_non_zero_when_a_regime_fails(tiny_cnn, toy_images, tmp_path, capsys):
    out = tmp_path / "cmp"
    argv = ["compare", "--model", str(tiny_cnn), "--data", str(toy_images), "--regimes", "freeze,prompt", "--output", str(out),
            "train.epochs=1", "train.precision=fp32", "model.image_size=16"]  # fmt: skip
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert "1 of 2 runs failed" in err and "prompt" in err
    assert (out / "compare.json").is_file() and (out / "compare.yaml").is_file() and not (out / ".lock").exists()


def test_train_then_compare_reads_the_tokens_from_the_cache(tiny_bert, tmp_path, monkeypatch):
    monkeypatch.setenv("TRANSFERKIT_CACHE", str(tmp_path / "cache"))
    data = write_table(tmp_path / "reviews.csv", awkward_rows(60))
    first = train(None, {"model.name": str(tiny_bert), "data.name": str(data), "output": str(tmp_path / "run"), "regime": "freeze",
                         "train.epochs": 1, "model.max_length": 16})  # fmt: skip
    assert any("computed and cached" in n for n in first.metrics["data"]["notes"])
    assert cli.main(["compare", "--model", str(tiny_bert), "--data", str(data), "--regimes", "freeze,full", "--output", str(tmp_path / "cmp"),
                     "train.epochs=1", "model.max_length=16", "train.precision=fp32"]) == 0  # fmt: skip
    for regime in ("freeze", "full"):
        notes = json.loads((tmp_path / "cmp" / f"{regime}-nall-seed0" / "metrics.json").read_text())["data"]["notes"]
        assert notes and all("read from the cache" in n for n in notes), notes


CLASSES = r"""
import json, resource, sys
from transferkit import train
run = train(None, {"model.name": sys.argv[1], "data.name": sys.argv[2], "output": sys.argv[3], "regime": "freeze",
                   "train.epochs": 1, "model.max_length": 16, "train.precision": "fp32"})
print(json.dumps({"rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "labels": len(run.metrics["labels"])}))
"""


def test_many_classes_cost_no_more_memory_than_few(tiny_bert, tmp_path):
    """200 classes train and report within 10% of the peak RSS of 3 classes on as many rows."""
    peaks = {}
    for classes in (3, 200):
        rows = [{"text": f"{toy_rows(1, seed=i)[0]['text']} item {i}", "label": f"class {i % classes:03d}"} for i in range(1200)]
        data = write_csv(tmp_path / f"c{classes}.csv", rows)
        result = subprocess.run([sys.executable, "-c", CLASSES, str(tiny_bert), str(data), str(tmp_path / f"run{classes}")],
                                capture_output=True, text=True, check=True)  # fmt: skip
        peaks[classes] = json.loads(result.stdout.strip().splitlines()[-1])
    assert peaks[200]["labels"] == 200 and peaks[3]["labels"] == 3
    assert peaks[200]["rss"] <= 1.10 * peaks[3]["rss"], peaks
    assert "confusion matrix is not drawn" in (tmp_path / "run200" / "report.html").read_text()
