"""Causal language models: next-token prediction for generation, and classification by
verbalisers (each label is a word the model is asked to say).

Any local causal-LM folder (config.json with a *ForCausalLM architecture) loads as it is. A GGUF
file (the built-in SmolLM2 ships as one) is dequantised once into a plain safetensors folder in
the cache, `$TRANSFERKIT_CACHE` or ~/.cache/transferkit, and loaded from there afterwards.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import TaskType
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer

from .. import assets, folders
from ..errors import UserError
from .base import Head
from .text import attention_dropout, choose_max_length, load_pretrained, load_tokenizer, quiet_transformers, read_model_config

LM_FILE = "lm.json"  # beside the weights: task, labels, verbalisers, prompt, demonstrations


def cache_dir() -> Path:
    return Path(os.environ.get("TRANSFERKIT_CACHE", Path.home() / ".cache" / "transferkit"))


def is_causal_lm(location) -> bool:
    """True for a GGUF file / folder or a model folder whose config names a causal-LM architecture."""
    if location.builtin is not None:
        return location.builtin.causal
    if location.gguf is not None:
        return True
    config = location.path / "config.json"
    if not config.is_file():
        return False
    try:
        raw = json.loads(config.read_text(encoding="utf-8"))
    except (ValueError, OSError):  # a damaged config: the text-model loader says what is wrong with it
        return False
    architectures = raw.get("architectures") if isinstance(raw, dict) else None
    if not isinstance(architectures, list):
        return False
    return any(isinstance(a, str) and a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures)


def model_folder(name_or_path: str, on_convert: Callable[[str], None] = lambda message: None) -> Path:
    """A folder `from_pretrained` reads: the model folder itself, or the cached conversion of a GGUF."""
    location = assets.locate_model(name_or_path)
    path = location.gguf
    if path is None:
        if not (location.path / "config.json").is_file():
            raise UserError(f"model '{name_or_path}' is neither a model folder with config.json nor a .gguf file; check the path")
        return location.path
    target = cache_dir() / "models" / f"{path.stem}-{path.stat().st_size}"
    if not (target / "config.json").is_file():
        check_gguf(path)
        on_convert(f"converting {path.name} to a safetensors folder in {target} (once; later loads take a second)")
        target.parent.mkdir(parents=True, exist_ok=True)
        folders.replace_dir(lambda folder: _convert_gguf(path, folder), target)
    return target


def check_gguf(path: Path) -> None:
    """Read the GGUF header (memory-mapped, cheap) before announcing a conversion that cannot work."""
    try:
        from gguf import GGUFReader
    except ImportError:
        raise UserError("reading GGUF files needs the gguf package; install it with: pip install gguf") from None
    try:
        GGUFReader(path)
    except Exception as e:  # not a GGUF file, or a cut-off one
        text = " ".join(str(e).split())[:160] or type(e).__name__
        raise UserError(f"'{path}' is not a readable GGUF file ({text}); pass a complete .gguf file") from None


def _convert_gguf(gguf: Path, folder: Path) -> None:
    quiet_transformers()
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    except ImportError as e:
        raise UserError(f"reading GGUF files needs the gguf package ({e}); install it with: pip install gguf") from None
    except Exception as e:  # not a GGUF file, a cut-off one, an architecture transformers cannot convert
        text = " ".join(str(e).split())[:200] or type(e).__name__
        raise UserError(f"cannot read GGUF file '{gguf}' ({text}); pass a complete .gguf file of a supported architecture") from None
    # The weights come out dequantised to fp32 but still marked as quantised, which makes
    # save_pretrained refuse; they are plain fp32 tensors now, so drop the mark.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)


@dataclass
class LabelPrompt:
    """How a causal LM is asked to classify: an instruction, then `Text: ... / Answer: <word>`.

    The same ids are built for training, for in-context demonstrations and for scoring, so the
    model sees one format everywhere.
    """

    labels: list[str]
    verbalisers: list[str]
    instruction: str

    def prefix_ids(self, tokenizer, demos: list[tuple[str, int]], max_length: int) -> list[int]:
        """Instruction, then each demonstration with its answer: the part every query shares."""
        ids = tokenizer(self.instruction + "\n\n")["input_ids"]
        separator = tokenizer("\n\n", add_special_tokens=False)["input_ids"]
        for text, label in demos:
            ids += self.query_ids(tokenizer, text, max_length) + self.answer_ids(tokenizer)[label] + separator
        return ids

    def query_ids(self, tokenizer, text: str, max_length: int) -> list[int]:
        """`Text: <text, cut to max_length tokens>` and `Answer:`, ready for a label's tokens."""
        words = tokenizer(" " + text, add_special_tokens=False)["input_ids"][:max_length]
        return tokenizer("Text:", add_special_tokens=False)["input_ids"] + words + tokenizer("\nAnswer:", add_special_tokens=False)["input_ids"]

    def answer_ids(self, tokenizer) -> list[list[int]]:
        return [tokenizer(" " + word, add_special_tokens=False)["input_ids"] for word in self.verbalisers]


def label_prompt(labels: list[str], verbalisers: list[str] | None, instruction: str | None) -> LabelPrompt:
    """The verbaliser of every label (`label=word` pairs; default: the label itself), checked."""
    words = {label: label.replace("_", " ") for label in labels}
    for pair in verbalisers or []:
        label, sep, word = pair.partition("=")
        if not sep or label.strip() not in words:
            raise UserError(f"verbaliser '{pair}' must look like label=word with a label of the data ({', '.join(labels)})")
        if not word.strip():
            raise UserError(f"the verbaliser of label '{label.strip()}' is empty; give it a word, e.g. {label.strip()}=yes")
        words[label.strip()] = word.strip()
    seen: dict[str, str] = {}
    for label, word in words.items():
        if word.lower() in seen:
            raise UserError(f"labels '{seen[word.lower()]}' and '{label}' share the verbaliser '{word}'; give each label its own word")
        seen[word.lower()] = label
    ordered = [words[label] for label in labels]
    return LabelPrompt(labels, ordered, instruction or f"Classify each text as one of: {', '.join(ordered)}.")


class CausalLM(nn.Module):
    """A causal LM with the face of every model kind (models/base.py); its own LM head answers.

    The tasks encode their data with it (tasks/generate.py: chats and plain text; tasks/verbalise.py:
    the prompt and each label's verbaliser); `mode` and `prompt` say how it is asked, and are saved
    with it in lm.json.
    """

    kind = "causal"
    peft_task_type = TaskType.CAUSAL_LM
    modality = "text"
    reads_pairs = False  # (text, text_pair) inputs, tokenized as a pair
    lora_targets = "all-linear"  # peft leaves the output layer out of all-linear
    head = Head((), None)  # no new head: the pre-trained LM head answers
    can_split = False  # nothing to train on cached features: the LM head reads every position

    def why_no_split(self) -> str:
        return "a causal LM has no separate head to train on cached features; use --regime full, lora, prompt or icl"

    def __init__(self, hf: nn.Module, tokenizer, max_length: int, mode: str, prompt: LabelPrompt | None, base: str):
        super().__init__()
        # mode: "classify" (asked for a label's verbaliser) or "generate"; lm.json keeps it as "task".
        self.hf, self.tokenizer, self.max_length, self.mode, self.prompt, self.base = hf, tokenizer, max_length, mode, prompt, base
        self.demos: list[tuple[str, int]] = []  # in-context demonstrations (regime icl): (text, label index)
        self.chat_demos: list[list[dict]] = []  # the same for generation: earlier chats, turn by turn
        self.trained = True  # the icl regime sets False: its folder keeps only the prompt

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_token_id

    @property
    def label_names(self) -> list[str]:
        return self.prompt.labels if self.prompt else []

    @property
    def context_length(self) -> int:
        return getattr(self.hf.config, "max_position_embeddings", None) or self.tokenizer.model_max_length

    def read_inputs(self, path: str | None, text: str | None, column: str, pair: str | None = None, pair_column: str | None = None):
        """What `predict` reads for this model (data/inputs.py)."""
        from ..data.inputs import text_inputs

        return text_inputs(path, text, column, pair, pair_column)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        logits = self.hf(input_ids=input_ids, attention_mask=attention_mask).logits
        return logits[:, -input_ids.shape[1] :]  # (B, T, V); prompt tuning prepends its virtual tokens

    # --- examples -> token ids ------------------------------------------------------------------

    def prefix_ids(self) -> list[int]:
        """What comes before every classification query: the instruction and any demonstrations."""
        return self.prompt.prefix_ids(self.tokenizer, self.demos, self.max_length)

    def encode_text(self, text: str) -> list[dict]:
        """Plain text: every token is learned; long texts become several blocks of max_length."""
        ids = self.tokenizer(text)["input_ids"] + [self.tokenizer.eos_token_id]
        blocks = [ids[i : i + self.max_length] for i in range(0, len(ids), self.max_length)]
        return [{"input_ids": b, "labels": list(b)} for b in blocks if len(b) > 1]

    def chat_prompt(self, messages: list[dict]) -> str:
        """The prompt text before the response, through the model's chat template where it has one,
        the same at training and at inference (a mismatch is a classic cause of bad results)."""
        if self.tokenizer.chat_template:
            return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return "".join(f"{m['content']}\n" for m in messages)

    def demo_turns(self) -> list[dict]:
        return [turn for chat in self.chat_demos for turn in chat]

    def encode_chat(self, messages: list[dict]) -> dict:
        """Prompt tokens (not learned) then response tokens (learned), within max_length."""
        messages = self.demo_turns() + messages
        prompt_text = self.chat_prompt(messages[:-1])
        response = messages[-1]["content"] + self.tokenizer.eos_token
        if self.tokenizer.chat_template:
            full = self.tokenizer.apply_chat_template(messages, tokenize=False)
            response = full[len(prompt_text) :] if full.startswith(prompt_text) else response
        prompt = self.prompt_tokens(prompt_text, _describe(messages))
        answer = self.tokenizer(response, add_special_tokens=False)["input_ids"]
        if len(prompt) + len(answer) > self.max_length:
            # Cutting the response would cut its end-of-turn token too, and a model trained on
            # cut responses learns never to stop.
            raise UserError(
                f"the example {_describe(messages)} needs {len(prompt) + len(answer)} tokens (prompt {len(prompt)}, response {len(answer)}), "
                f"more than model.max_length={self.max_length}; raise model.max_length (the model holds {self.context_length}) "
                "or shorten the example"
            )
        return {"input_ids": prompt + answer, "labels": [-100] * len(prompt) + answer}

    def prompt_tokens(self, prompt_text: str, example: str = "") -> list[int]:
        ids = self.tokenizer(prompt_text, add_special_tokens=not self.tokenizer.chat_template)["input_ids"]
        if len(ids) >= self.context_length:
            raise UserError(
                f"the prompt {example} has {len(ids)} tokens, longer than the model's context "
                f"({self.context_length}); shorten the prompt"
            )
        if len(ids) >= self.max_length:
            raise UserError(
                f"the prompt {example} has {len(ids)} tokens and leaves no room for the response within "
                f"model.max_length={self.max_length}; raise model.max_length (the model holds {self.context_length})"
            )
        return ids

    # --- regimes and artefacts ------------------------------------------------------------------

    def add_adapter(self, peft_config) -> None:
        from peft import get_peft_model

        self.hf = get_peft_model(self.hf, peft_config)

    def reinitialize(self) -> None:
        """Random weights in the same architecture (a fresh instance: see TextClassifier.reinitialize)."""
        self.hf = type(self.hf)(self.hf.config)

    def save(self, folder: Path) -> None:
        """A Hugging Face causal-LM folder or a PEFT adapter folder, plus lm.json (how it was asked).

        In-context learning trains nothing: its folder holds lm.json (the base model and the
        demonstrations) and the tokenizer.
        """
        if self.trained:
            self.hf.save_pretrained(folder, safe_serialization=True)
        self.tokenizer.save_pretrained(folder)
        spec = {
            "task": self.mode,
            "base_model": self.base,
            "max_length": self.max_length,
            "labels": self.label_names,
            "verbalisers": self.prompt.verbalisers if self.prompt else [],
            "instruction": self.prompt.instruction if self.prompt else None,
            "demonstrations": [[text, label] for text, label in self.demos],
            "chat_demonstrations": self.chat_demos,
            "weights": "saved" if self.trained else "base_model",
        }
        (folder / LM_FILE).write_text(json.dumps(spec, indent=2))


def _describe(messages: list[dict]) -> str:
    """The start of an example's last prompt turn, to name it in an error."""
    text = " ".join((messages[-2] if len(messages) > 1 else messages[-1])["content"].split())
    return repr(text[:40] + ("..." if len(text) > 40 else ""))


def load(cfg, head: dict, note=lambda message: None) -> CausalLM:
    """The causal LM `cfg` (a RunConfig) names, asked as `head` (a task's head_config) says."""
    m = cfg.model
    return load_causal_lm(m.name, head["task"], head["prompt"], m.max_length, m.trust_remote_code, note, m.attention_dropout)


def load_causal_lm(name_or_path: str, task: str, prompt: LabelPrompt | None, max_length: int | None, trust_remote_code: bool = False,
                   on_convert: Callable[[str], None] = lambda message: None, attention_dropout_p: float | None = None) -> CausalLM:  # fmt: skip
    """A pre-trained causal LM (built-in name, folder or GGUF file), ready for `task`."""
    folder = model_folder(name_or_path, on_convert)
    max_length = choose_max_length(read_model_config(folder, trust_remote_code), max_length, folder)
    quiet_transformers()
    tokenizer = load_tokenizer(folder, trust_remote_code)
    dropout = attention_dropout(folder, attention_dropout_p, trust_remote_code)
    hf = load_pretrained(AutoModelForCausalLM, folder, trust_remote_code=trust_remote_code, **dropout)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return CausalLM(hf, tokenizer, max_length, task, prompt, str(folder.resolve()))


def load_saved(folder: Path) -> CausalLM:
    """A model saved by `transferkit train` (full folder, PEFT adapter, or an icl prompt), fp32, eval mode."""
    quiet_transformers()
    spec = json.loads((folder / LM_FILE).read_text())
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if (folder / "adapter_config.json").is_file():
        from peft import PeftModel

        base = AutoModelForCausalLM.from_pretrained(spec["base_model"], dtype=torch.float32)
        hf = PeftModel.from_pretrained(base, folder)
    else:
        source = folder if spec["weights"] == "saved" else spec["base_model"]
        hf = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    prompt = LabelPrompt(spec["labels"], spec["verbalisers"], spec["instruction"]) if spec["task"] == "classify" else None
    model = CausalLM(hf.eval(), tokenizer, spec["max_length"], spec["task"], prompt, spec["base_model"])
    model.demos = [(text, label) for text, label in spec["demonstrations"]]
    model.chat_demos = spec.get("chat_demonstrations", [])
    model.trained = spec["weights"] == "saved"
    return model.eval()
