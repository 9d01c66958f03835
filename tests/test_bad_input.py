"""Every bad or awkward input: exit code 2, one line on stderr naming the problem (no traceback), and
nothing that existed before the command lost, changed or half-written (checked by a fingerprint of
path, size, modification time and hash of every file in the workspace, the data, the output folder
and a finished run among them)."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

from helpers import toy_rows, write_csv, write_jsonl
from transferkit import cli

QUICK = ["train.epochs=1", "train.batch_size=8", "train.patience=null", "train.precision=fp32", "model.max_length=16"]


def fingerprint(folder: Path) -> dict:
    out = {}
    for p in sorted(folder.rglob("*")):
        st = p.lstat()
        out[str(p.relative_to(folder))] = (p.is_dir(), st.st_size, st.st_mtime_ns, st.st_mode,
                                           None if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest())  # fmt: skip
    return out


@pytest.fixture(scope="module")
def finished_run(tiny_bert, toy_csv, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bad-input") / "done"
    assert cli.main(["train", "--model", str(tiny_bert), "--data", str(toy_csv), "--output", str(out), "--regime", "freeze", *QUICK]) == 0
    return out


class Workspace:
    """A folder holding the data files of a case, a copy of a finished run, and the current directory."""

    def __init__(self, root: Path, tiny_bert: Path, finished: Path):
        self.root, self.bert = root, tiny_bert
        self.run = root / "run"
        shutil.copytree(finished, self.run)
        self.good = write_csv(root / "good.csv", toy_rows(40, seed=5))

    def csv(self, name: str, text: str) -> Path:
        path = self.root / name
        path.write_bytes(text.encode("utf-8") if isinstance(text, str) else text)
        return path

    def rows(self, *extra: list[str], header="text,label") -> str:
        lines = [header] + [f"{r['text']},{r['label']}" for r in toy_rows(30, seed=2)] + [",".join(x) for x in extra]
        return "\n".join(lines) + "\n"

    def train(self, data: Path | str, *extra: str, output: str | None = None, regime: str = "freeze") -> list[str]:
        out = output if output is not None else str(self.root / "out")
        return ["train", "--model", str(self.bert), "--data", str(data), "--output", out, "--regime", regime, *QUICK, *extra]

    def model(self, name: str, config=None, weights: bytes | None = None, tokenizer: bool = True) -> Path:
        folder = self.root / name
        folder.mkdir()
        if config is not None:
            (folder / "config.json").write_text(config if isinstance(config, str) else json.dumps(config))
        if weights is not None:
            (folder / "model.safetensors").write_bytes(weights)
        if tokenizer:
            for f in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
                if (self.bert / f).is_file():
                    shutil.copy(self.bert / f, folder / f)
        return folder

    def user_folder(self) -> Path:
        folder = self.root / "mydata"
        folder.mkdir(exist_ok=True)
        shutil.copy(self.good, folder / "reviews.csv")
        return folder

    def copy_bert(self, name: str) -> Path:
        return Path(shutil.copytree(self.bert, self.root / name))


def _truncated_weights(w: Workspace) -> list[str]:
    model = w.copy_bert("cut-bert")
    data = (model / "model.safetensors").read_bytes()
    (model / "model.safetensors").write_bytes(data[: len(data) // 2])
    return w.train(w.good, "--model", str(model))


def _partial_weights(w: Workspace) -> list[str]:
    from safetensors.torch import load_file, save_file

    model = w.copy_bert("half-bert")
    state = load_file(model / "model.safetensors")
    save_file({k: v for k, v in state.items() if "encoder.layer.1." not in k}, model / "model.safetensors")
    return w.train(w.good, "--model", str(model))


def _pickle_only(w: Workspace) -> list[str]:
    model = w.copy_bert("pickle-bert")
    (model / "model.safetensors").rename(model / "pytorch_model.bin")
    return w.train(w.good, "--model", str(model))


def _run_damaged(w: Workspace, what: str) -> list[str]:
    if what == "weights":
        path = w.run / "model" / "model.safetensors"
        path.write_bytes(path.read_bytes()[:100])
    elif what == "tokenizer":
        for f in (w.run / "model").glob("tokenizer*"):
            f.unlink()
        (w.run / "model" / "vocab.txt").unlink(missing_ok=True)
    elif what == "metrics":
        path = w.run / "metrics.json"
        path.write_text(path.read_text()[:50])
        return ["evaluate", str(w.run)]
    return ["predict", str(w.run), "--text", "a red apple"]


def _locked(w: Workspace) -> list[str]:
    staging = w.root / "out.partial"
    staging.mkdir()
    fd = os.open(staging / ".lock", os.O_RDWR | os.O_CREAT)
    os.write(fd, b"424242")
    fcntl.flock(fd, fcntl.LOCK_EX)  # held by "another process": another open file of this one conflicts
    w.held = fd
    return w.train(w.good)


def _unwritable(w: Workspace) -> list[str]:
    folder = w.root / "readonly"
    folder.mkdir()
    folder.chmod(0o555)
    return w.train(w.good, output=str(folder / "out"))


def _json_array(w: Workspace, items) -> Path:
    path = w.root / "data.json"
    path.write_text(json.dumps(items))
    return path


def _parquet(w: Workspace, table: dict) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = w.root / "data.parquet"
    pq.write_table(pa.table(table), path)
    return path


def toy_jsonl(w: Workspace, *extra: dict, name: str = "data.jsonl") -> Path:
    return write_jsonl(w.root / name, [*toy_rows(30, seed=2), *extra])


# (id, argv from a Workspace, words the one-line message must hold)
CASES = [
    # --- the data file itself ---
    ("missing file", lambda w: w.train(w.root / "nope.csv"), ["nope.csv", "does not exist"]),
    ("folder as data", lambda w: w.train((w.root / "d.csv").mkdir() or w.root / "d.csv"), ["folder"]),
    ("empty file", lambda w: w.train(w.csv("e.csv", "")), ["empty"]),
    ("header only", lambda w: w.train(w.csv("h.csv", "text,label\n")), ["no examples"]),
    ("unknown suffix", lambda w: w.train(w.csv("d.txt", "text,label\na,b\n")), [".txt", ".csv"]),
    ("duplicate column", lambda w: w.train(w.csv("dup.csv", w.rows(header="text,text"))), ["'text' twice"]),
    ("row with a field too many", lambda w: w.train(w.csv("r.csv", w.rows(["a plum", "fruit", "extra"]))), ["r.csv:32", "3 fields", "2"]),
    ("row with a field too few", lambda w: w.train(w.csv("s.csv", w.rows(["a plum"]))), ["s.csv:32", "1 fields"]),
    ("unclosed quote", lambda w: w.train(w.csv("q.csv", w.rows(['"an open quote', "fruit"]))), ["q.csv:32", "quoting"]),
    ("quote then junk", lambda w: w.train(w.csv("j.csv", w.rows(['"quoted" then more', "fruit"]))), ["j.csv:32", "quoting"]),
    ("NUL byte", lambda w: w.train(w.csv("n.csv", w.rows(["a\0plum", "fruit"]))), ["n.csv", "NUL"]),
    ("latin-1 byte", lambda w: w.train(w.csv("l.csv", w.rows().encode() + "caf\xe9,fruit\n".encode("latin-1"))), ["l.csv", "UTF-8", "line 32", "0xe9", "iconv"]),
    ("binary file", lambda w: w.train(w.csv("b.csv", bytes(range(256)) * 4)), ["b.csv", "UTF-8"]),
    ("no text column", lambda w: w.train(w.good, "--text-column", "review"), ["'review'", "--text-column", "text, label"]),
    ("no label column", lambda w: w.train(w.good, "--label-column", "stars"), ["'stars'", "--label-column"]),
    ("empty label", lambda w: w.train(w.csv("el.csv", w.rows(["a plum", ""]))), ["el.csv:32", "no label"]),
    ("label nan", lambda w: w.train(w.csv("nan.csv", w.rows(["a plum", "nan"]))), ["nan.csv:32", "'nan'", "missing"]),
    ("label NULL", lambda w: w.train(w.csv("null.csv", w.rows(["a plum", "NULL"]))), ["'NULL'", "missing"]),
    ("label None", lambda w: w.train(w.csv("none.csv", w.rows(["a plum", "None"]))), ["'None'", "missing"]),
    ("labels 0 and 0.0", lambda w: w.train(w.csv("z.csv", "text,label\n" + "".join(f"t{i},{['0', '1', '0.0'][i % 3]}\n" for i in range(30)))),
     ["'0'", "'0.0'", "number format"]),
    ("labels of two cases", lambda w: w.train(w.csv("c.csv", w.rows(["a plum", "Fruit"]))), ["'fruit'", "'Fruit'", "case"]),
    ("label with spaces", lambda w: w.train(w.csv("sp.csv", w.rows(["a plum", " fruit "]))), ["' fruit '", "space"]),
    ("many empty texts", lambda w: w.train(w.csv("et.csv", w.rows(*[["", "fruit"]] * 8))), ["8 of 38", "empty text"]),
    ("single label", lambda w: w.train(w.csv("one.csv", "text,label\n" + "a plum,fruit\n" * 10)), ["single label"]),
    ("class too small", lambda w: w.train(w.csv("small.csv", w.rows(["a plum", "rare"], ["a pear", "rare"]))), ["'rare'", "2 example"]),
    ("test label unseen", lambda w: w.train(w.good, f"data.test={w.csv('t.csv', 'text,label' + chr(10) + 'a cat,animal' + chr(10))}"),
     ["'animal'", "never in training"]),
    # --- JSON Lines, JSON, Parquet ---
    ("JSONL invalid line", lambda w: w.train(w.csv("bad.jsonl", '{"text": "a", "label": "x"}\n{"text": "b", label: y}\n')), ["bad.jsonl:2", "not valid JSON"]),
    ("JSONL line not an object", lambda w: w.train(w.csv("arr.jsonl", '{"text": "a", "label": "x"}\n[1, 2]\n')), ["arr.jsonl:2", "not a JSON object"]),
    ("JSONL text is an object", lambda w: w.train(toy_jsonl(w, {"text": {"x": 1}, "label": "fruit"})), ["data.jsonl:31", "dict", "not text"]),
    ("JSONL row without text", lambda w: w.train(toy_jsonl(w, {"label": "fruit"})), ["data.jsonl:31", "no text"]),
    ("JSONL label is an object", lambda w: w.train(toy_jsonl(w, {"text": "a plum", "label": {"a": 1}})), ["single value"]),
    ("JSONL label null", lambda w: w.train(toy_jsonl(w, {"text": "a plum", "label": None})), ["data.jsonl:31", "no label"]),
    ("JSONL duplicate key", lambda w: w.train(w.csv("dk.jsonl", '{"text": "a", "text": "b", "label": "x"}\n')), ["dk.jsonl:1", "twice"]),
    ("JSONL labels 1 and 1.0", lambda w: w.train(toy_jsonl(w, *[{"text": f"t {i}", "label": [1, 1.0][i % 2]} for i in range(6)])), ["'1'", "'1.0'"]),
    ("JSON array element not an object", lambda w: w.train(_json_array(w, [{"text": "a", "label": "x"}, 3])), ["element 2", "not an object"]),
    ("JSON broken", lambda w: w.train(w.csv("broken.json", '[{"text": "a", "label": "x"},')), ["broken.json", "not valid JSON"]),
    ("Parquet damaged", lambda w: w.train(w.csv("d.parquet", b"PAR1 not really parquet")), ["d.parquet", "Parquet"]),
    ("Parquet text numbers", lambda w: w.train(_parquet(w, {"text": list(range(30)), "label": ["a", "b", "c"] * 10})), ["int", "not text"]),
    # --- configuration and the command line ---
    ("unknown regime", lambda w: w.train(w.good, "regime=magic"), ["magic", "full, freeze"]),
    ("lr zero", lambda w: w.train(w.good, "train.lr=0"), ["train.lr", "positive"]),
    ("lr inf", lambda w: w.train(w.good, "train.lr=inf"), ["train.lr", "finite"]),
    ("lr nan", lambda w: w.train(w.good, "train.lr=nan"), ["train.lr", "finite"]),
    ("epochs true", lambda w: w.train(w.good, "train.epochs=true"), ["train.epochs", "whole number"]),
    ("epochs text", lambda w: w.train(w.good, "train.epochs=two"), ["train.epochs", "whole number"]),
    ("section set to a number", lambda w: w.train(w.good, "train=0"), ["'train'", "mapping"]),
    ("seed negative", lambda w: w.train(w.good, "train.seed=-1"), ["train.seed", "4294967295"]),
    ("seed too large", lambda w: w.train(w.good, "train.seed=99999999999"), ["train.seed"]),
    ("YAML file holding 0", lambda w: ["train", str(w.csv("zero.yaml", "0\n")), *w.train(w.good)[1:]], ["zero.yaml", "mapping"]),
    ("binary YAML file", lambda w: ["train", str(w.csv("bin.yaml", bytes(range(256)))), *w.train(w.good)[1:]], ["bin.yaml"]),
    ("invalid YAML", lambda w: ["train", str(w.csv("bad.yaml", "train: [unclosed\n")), *w.train(w.good)[1:]], ["bad.yaml", "not valid YAML"]),
    ("unknown key", lambda w: w.train(w.good, "train.lrr=1e-4"), ["train.lrr", "unknown"]),
    ("word that is no override", lambda w: w.train(w.good, "epochs"), ["'epochs'", "section.key=value"]),
    ("unknown flag", lambda w: w.train(w.good, "--epoch", "3"), ["--epoch"]),
    ("max_length beyond positions", lambda w: w.train(w.good, "model.max_length=10000"), ["model.max_length=10000", "64 positions"]),
    ("attention dropout 1.5", lambda w: w.train(w.good, "model.attention_dropout=1.5"), ["model.attention_dropout"]),
    ("lora target missing", lambda w: w.train(w.good, "lora.targets=no_such_layer", regime="lora"), ["lora.targets"]),
    ("unknown model name", lambda w: w.train(w.good, "--model", "no-such-model"), ["no-such-model", "built-in"]),
    ("unknown dataset", lambda w: w.train("no-such-set"), ["no-such-set", "built-in"]),
    # --- where the run goes ---
    ("output is the current folder", lambda w: w.train(w.good, output="."), ["'.'", "current folder"]),
    ("output is the parent folder", lambda w: w.train(w.good, output=".."), ["'..'", "current folder"]),
    ("output is a file", lambda w: w.train(w.good, output=str(w.csv("notes.txt", "my notes\n"))), ["notes.txt", "existing file"]),
    ("output is a user's folder", lambda w: w.train(w.good, output=str(w.user_folder())), ["did not write", "reviews.csv"]),
    ("output is a user's folder, --overwrite", lambda w: w.train(w.good, "--overwrite", output=str(w.user_folder())), ["did not write", "never"]),
    ("output is the data's own folder", lambda w: w.train(w.user_folder() / "reviews.csv", output=str(w.root / "mydata")), ["did not write"]),
    ("output is a finished run", lambda w: w.train(w.good, output=str(w.run)), ["finished run", "--overwrite"]),
    ("output is a run holding a user's file", lambda w: (w.run / "my-notes.txt").write_text("mine") and w.train(w.good, "--overwrite", output=str(w.run)),
     ["my-notes.txt", "did not write"]),
    ("output staging is a user's folder", lambda w: (w.root / "out.partial").mkdir() or (w.root / "out.partial" / "x.txt").write_text("x") and w.train(w.good),
     ["out.partial", "not written by transferkit"]),
    ("output locked by another process", _locked, ["another transferkit process", "pid 424242"]),
    ("output folder not writable", _unwritable, ["permission denied"]),
    ("compare into a train run", lambda w: ["compare", "--model", str(w.bert), "--data", str(w.good), "--output", str(w.run), "--regimes", "freeze", *QUICK],
     ["did not write as a comparison"]),
    ("compare with bad data", lambda w: ["compare", "--model", str(w.bert), "--data", str(w.root / "gone.csv"), "--output", str(w.root / "cmp"),
                                         "--regimes", "freeze", *QUICK], ["gone.csv", "does not exist"]),
    # --- the model ---
    ("model folder with config only", lambda w: w.train(w.good, "--model", str(w.model("cfg-only", {"model_type": "bert"}))), ["no weights"]),
    ("model config broken JSON", lambda w: w.train(w.good, "--model", str(w.model("broken", "{not json"))), ["config.json", "not valid JSON"]),
    ("model config an array", lambda w: w.train(w.good, "--model", str(w.model("array", [1, 2]))), ["config.json", "model_type"]),
    ("model config unknown model_type", lambda w: w.train(w.good, "--model", str(w.model("alien", {"model_type": "alien-net"}))), ["alien-net"]),
    ("model folder with only a pickle", _pickle_only, ["pytorch_model.bin", "pickle", "safetensors"]),
    ("model weights truncated", _truncated_weights, ["weights", "damaged"]),
    ("model weights cover half the backbone", _partial_weights, ["lacks", "backbone", "random"]),
    ("model folder without tokenizer", lambda w: w.train(w.good, "--model", str(w.model("no-tok", json.loads((w.bert / "config.json").read_text()),
                                                                                                (w.bert / "model.safetensors").read_bytes(), tokenizer=False))),
     ["tokenizer"]),
    ("fake gguf", lambda w: w.train(w.good, "--model", str(w.csv("fake.gguf", b"GGUF but not really")), regime="full"), ["fake.gguf", "GGUF"]),
    ("not a model folder", lambda w: w.train(w.good, "--model", str(w.root)), ["no config.json"]),
    # --- predict and evaluate ---
    ("predict output is the input", lambda w: ["predict", str(w.run), "--input", str(w.good), "--output", str(w.good)], ["input file itself"]),
    ("predict output exists", lambda w: ["predict", str(w.run), "--input", str(w.good), "--output", str(w.csv("p.csv", "mine\n"))], ["already exists", "--overwrite"]),
    ("predict output suffix", lambda w: ["predict", str(w.run), "--input", str(w.good), "--output", str(w.root / "p.xlsx")], [".xlsx", ".csv"]),
    ("predict output in a missing folder", lambda w: ["predict", str(w.run), "--input", str(w.good), "--output", str(w.root / "no" / "p.csv")], ["does not exist"]),
    ("predict input lacks text column", lambda w: ["predict", str(w.run), "--input", str(w.csv("i.csv", "review\nnice\n"))], ["'text'", "--text-column"]),
    ("predict input already has the column", lambda w: ["predict", str(w.run), "--input", str(w.csv("pp.csv", "text,predicted_label\na,b\n")),
                                                        "--output", str(w.root / "out.csv")], ["'predicted_label'"]),
    ("predict text and input", lambda w: ["predict", str(w.run), "--input", str(w.good), "--text", "x"], ["either --input"]),
    ("predict with truncated weights", lambda w: _run_damaged(w, "weights"), ["cannot be loaded", "damaged"]),
    ("predict without tokenizer", lambda w: _run_damaged(w, "tokenizer"), ["tokenizer"]),
    ("evaluate truncated metrics.json", lambda w: _run_damaged(w, "metrics"), ["metrics.json", "damaged"]),
    ("evaluate not a run", lambda w: ["evaluate", str(w.root)], ["not a run folder"]),
    ("evaluate unseen label", lambda w: ["evaluate", str(w.run), "--data", str(w.csv("u.csv", "text,label\na cat,animal\n"))], ["'animal'", "never seen"]),
    ("NUL in a path is shown escaped", lambda w: w.train("bad\x01name.csv"), ["\\x01"]),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_loses_nothing(case, capsys, tiny_bert, finished_run, tmp_path, monkeypatch):
    name, make_argv, words = case
    root = tmp_path / "ws"
    root.mkdir()
    monkeypatch.chdir(root)
    w = Workspace(root, tiny_bert, finished_run)
    argv = make_argv(w)
    capsys.readouterr()
    if name == "output folder not writable" and os.geteuid() == 0:
        pytest.skip("root may write anywhere: permissions cannot be tested as root")
    before = fingerprint(root)
    try:
        code = cli.main(argv)
    finally:
        if hasattr(w, "held"):
            os.close(w.held)
        (root / "readonly").exists() and (root / "readonly").chmod(0o755)
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if line.strip() and not line.startswith("warning: ")]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err and "\x00" not in err and "\x01" not in err
    for word in words:
        assert word in lines[0], lines[0]
    after = fingerprint(root)
    assert after == before, {k: (before.get(k), after.get(k)) for k in set(before) | set(after) if before.get(k) != after.get(k)}


def test_the_table_holds_at_least_sixty_cases():
    assert len(CASES) >= 60
    assert len({c[0] for c in CASES}) == len(CASES)


def test_labels_are_read_as_written(tmp_path):
    """0, 00 and 1 are three labels as written; numeric labels sort as numbers, the same on every run."""
    from transferkit.data.splits import sort_labels
    from transferkit.data.tables import labelled_examples

    path = write_csv(tmp_path / "n.csv", [{"text": f"t{i}", "label": ["1", "2", "10"][i % 3]} for i in range(9)])
    assert sort_labels(set(labelled_examples(path, "text", "label").labels)) == ["1", "2", "10"]
    assert sort_labels({"b", "a", "B"}) == ["B", "a", "b"]
    assert sort_labels({"1", "inf", "2"}) == sorted({"1", "inf", "2"})
