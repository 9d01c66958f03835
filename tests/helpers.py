"""Helpers the tests share: tiny real models and toy data built inside the tests (fast, offline),
quick-run overrides, and the checks several test files make."""

from __future__ import annotations

import csv
import random
from pathlib import Path

import torch


FRUIT = ["apple", "pear", "plum", "grape", "melon", "cherry"]
VEHICLE = ["car", "bus", "truck", "train", "bike", "tram"]
FILLER = ["the", "a", "big", "small", "red", "blue", "old", "new", "my", "your", "is", "was"]
TOY_LABELS = ["fruit", "vehicle"]


def toy_rows(n: int, seed: int) -> list[dict]:
    """A trivially separable task: the label is which word family the text contains."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = TOY_LABELS[i % 2]
        family = FRUIT if label == "fruit" else VEHICLE
        words = rng.choices(FILLER, k=4) + rng.choices(family, k=2)
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "label": label})
    return rows


def write_csv(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def build_tiny_bert(folder: Path) -> Path:
    """A 2-layer, 32-dim BERT with a word-level vocabulary, saved as a Hugging Face folder.

    It is "pre-trained" for a few seconds on a related task (which word family a text holds),
    so that its features carry the signal, as a real pre-trained model's would: a frozen random
    network gives a head nothing to learn from.
    """
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + FRUIT + VEHICLE + FILLER
    tokenizer = BertTokenizer(vocab={word: i for i, word in enumerate(vocab)})
    tokenizer.save_pretrained(folder)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        num_labels=2,
    )
    torch.manual_seed(0)
    model = BertForSequenceClassification(config)
    rows = toy_rows(256, seed=99)
    enc = tokenizer([r["text"] for r in rows], padding=True, return_tensors="pt")
    labels = torch.tensor([TOY_LABELS.index(r["label"]) for r in rows])
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for step in range(60):
        batch = slice(32 * (step % 8), 32 * (step % 8 + 1))
        loss = model(enc["input_ids"][batch], attention_mask=enc["attention_mask"][batch], labels=labels[batch]).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.config.problem_type = None  # set by the loss above; a pre-trained backbone's config has none
    model.bert.save_pretrained(folder)  # the backbone only: every test run starts a fresh head
    return folder


def quick_overrides(model: Path, data: Path, out: Path, regime: str, **extra) -> list[str]:
    """CLI-style overrides for a quick, deterministic run of `regime` on a tiny model."""
    values = {
        "regime": regime,
        "model.name": str(model),
        "data.name": str(data),
        "output": str(out),
        "train.batch_size": 8,
        "train.patience": None,
        "train.precision": "fp32",
        "staged.head_epochs": 5,
        **extra,
    }
    return [f"{k}={'null' if v is None else v}" for k, v in values.items()]


def check_step(module, trainable: dict, frozen_before: dict) -> None:
    """Regime invariants after a backward pass: every trainable parameter has a finite gradient, and
    after an optimizer step every frozen parameter is bit-identical to `frozen_before`."""
    for name, p in trainable.items():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    torch.optim.AdamW(trainable.values(), lr=1e-2).step()
    for name, p in module.named_parameters():
        if name in frozen_before:
            assert torch.equal(p, frozen_before[name]), name


def tiny_overrides(model: Path, data: Path, out: Path, regime: str, **extra) -> list[str]:
    """A quick run on the tiny BERT and the toy texts."""
    return quick_overrides(model, data, out, regime, **{"model.max_length": 16, **extra})


# --- images -------------------------------------------------------------------------------------

IMAGE_LABELS = ["blue", "red"]
CNN_WIDTHS = (4, 8)  # SmallCNN: 3 -> 4 -> 8 channels


def toy_image(label: str, rng, size=(20, 24)):
    """A trivially separable image task: noise with a strong red or blue (or green) cast."""
    import numpy as np

    pixels = rng.integers(0, 80, (*size, 3), dtype=np.uint8)
    pixels[..., {"red": 0, "green": 1, "blue": 2}[label]] += 150
    return pixels


def write_toy_images(root: Path, per_class: int, seed: int, labels=IMAGE_LABELS) -> Path:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for label in labels:
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(toy_image(label, rng)).save(root / label / f"{i:03d}.png")
    return root


def build_tiny_cnn(folder: Path) -> Path:
    """A 2-block SmallCNN "pre-trained" for a moment on red / green / blue, saved as an image model folder.

    Like the tiny BERT: its features carry the colour signal, so a frozen backbone gives a head
    something to learn from. Its 3-way head does not fit the 2 toy labels, so runs start a fresh one.
    """
    import numpy as np

    from transferkit.data.images import to_tensor
    from transferkit.models.vision import ImageClassifier, ImageConfig, SmallCNN

    torch.manual_seed(0)
    rng = np.random.default_rng(99)
    colours = ["red", "green", "blue"]
    labels = torch.tensor([i % 3 for i in range(96)])
    from PIL import Image

    x = torch.stack([to_tensor(Image.fromarray(toy_image(colours[i], rng, (16, 16))), [0.5] * 3, [0.5] * 3) for i in labels])
    net = SmallCNN(3, CNN_WIDTHS)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-2)
    for step in range(30):
        batch = slice(32 * (step % 3), 32 * (step % 3 + 1))
        torch.nn.functional.cross_entropy(net(x[batch]), labels[batch]).backward()
        optimizer.step()
        optimizer.zero_grad()
    config = ImageConfig("small-cnn", colours, 16, [0.5] * 3, [0.5] * 3, arguments={"widths": list(CNN_WIDTHS)})
    ImageClassifier(net, config).save(folder)
    return folder


def image_overrides(model: Path, data: Path, out: Path, regime: str, **extra) -> list[str]:
    """A quick run on the tiny CNN and the toy images (16 x 16 pixels)."""
    return quick_overrides(model, data, out, regime, **{"model.image_size": 16, **extra})


# --- causal language models ---------------------------------------------------------------------

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|> {{ m['role'] }} {{ m['content'] }} <|im_end|> {% endfor %}"
    "{% if add_generation_prompt %}<|im_start|> assistant {% endif %}"
)
PROMPT_WORDS = ["Text", ":", "Answer", "Classify", "each", "text", "as", "one", "of", ",", ".", "N/A", "user", "assistant",
                "system", "which", "kind", "?", "fruit", "vehicle"]


def build_tiny_llama(folder: Path) -> Path:
    """A 2-layer, 32-dim Llama with a word-level tokenizer and a chat template, saved as a folder.

    "Pre-trained" for a moment on toy texts so that it predicts words better than chance.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<unk>", "<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    vocab = {w: i for i, w in enumerate(specials + PROMPT_WORDS + FRUIT + VEHICLE + FILLER)}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", eos_token="<|im_end|>",
                                        pad_token="<|endoftext|>", bos_token="<|im_start|>")  # fmt: skip
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(folder)
    config = LlamaConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         bos_token_id=2, eos_token_id=3, pad_token_id=1, tie_word_embeddings=True)  # fmt: skip
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    texts = [r["text"] + " <|im_end|>" for r in toy_rows(128, seed=98)]
    enc = tokenizer(texts, padding=True, return_tensors="pt")
    labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for step in range(40):
        batch = slice(32 * (step % 4), 32 * (step % 4 + 1))
        model(enc["input_ids"][batch], attention_mask=enc["attention_mask"][batch], labels=labels[batch]).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(folder)
    return folder


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    import json

    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def toy_chats(n: int, seed: int) -> list[dict]:
    """A generation task with one right answer: which kind of thing the text names."""
    return [{"prompt": f"which kind ? {r['text']}", "response": r["label"]} for r in toy_rows(n, seed)]


def llama_overrides(model: Path, data: Path, out: Path, regime: str, **extra) -> list[str]:
    """A quick run on the tiny Llama."""
    return quick_overrides(model, data, out, regime, **{"model.max_length": 48, "icl.shots": 4, **extra})


def model_and_task(cfg, labels: list[str] | None = None):
    """The model a run of `cfg` would train, with its task (label names given, as reading the data would set them)."""
    from transferkit import tasks
    from transferkit.models import kind_of, load_model

    task = tasks.make(kind_of(cfg.model), cfg)
    task.label_names = list(labels or [])
    return load_model(cfg, task), task


# --- the bad-input contract -----------------------------------------------------------------------


def fingerprint(folder: Path) -> dict[str, str]:
    import hashlib

    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def check_refused(capsys, argv: list[str], run_dir: Path, *words: str) -> str:
    """Runs the CLI in-process; asserts exit 2, a single-line message with `words`, the run intact."""
    from transferkit import cli

    before = fingerprint(run_dir)
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    message = err[-1]
    assert message.startswith("error: "), err
    assert not any("Traceback" in line for line in err)
    for word in words:
        assert word in message, message
    assert fingerprint(run_dir) == before
    assert not run_dir.with_name(run_dir.name + ".partial").exists()
    return message


def check_bad_file_refused(capsys, folder: Path, name: str, content: str, words, train_args) -> None:
    """Writes `content` as `folder/name` and trains on it (`train_args(data, out)`, CLI arguments):
    exit 2, one line naming `words`, no traceback, and nothing written beside the file."""
    from transferkit import cli

    data = folder / name
    data.write_text(content)
    out = folder / "run"
    assert cli.main(["train", *train_args(data, out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for word in words:
        assert word in err, err
    assert not out.exists() and sorted(p.name for p in folder.iterdir()) == [name]
