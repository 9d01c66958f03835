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
from dataclasses import dataclass, field
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
POOL_FILE = "demonstration_pool.safetensors"  # icl.select=similar: the embeddings of the examples to draw from


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


CHAT_LAYOUTS = ("turns", "one-turn")
CHAT_DEFAULT = "turns"  # measured on SmolLM2 (benchmarks/README.md, icl_calibration.py): see LMConfig.chat
_MARKS = ("\x00user\x00", "\x00answer\x00", "\x00next\x00")  # contents no template writes itself


@dataclass
class LabelPrompt:
    """How a causal LM is asked to classify.

    Plain (`chat` None): an instruction, then `Text: ... / Answer: <word>` for each demonstration
    and for the query. Through the model's chat template (`chat` "turns" or "one-turn"): the
    instruction opens the first user turn; the query is a user turn `Text: ...` and the label word
    is the start of the assistant's answer. "turns" gives each demonstration its own user turn and
    assistant answer; "one-turn" writes them all as `Text: ... / Answer: <word>` in the first user
    turn, before the query's. Either way every query continues one prefix, token for token (the
    cached prefix of eval/scoring.py). The same ids are built for training, for demonstrations and
    for scoring, so the model sees one format everywhere.
    """

    labels: list[str]
    verbalisers: list[str]
    instruction: str
    chat: str | None = None
    """None (plain text), "turns" or "one-turn" (see above); "auto" until the tokenizer is known."""
    _pieces: dict | None = field(default=None, repr=False, compare=False)

    def resolve(self, tokenizer) -> LabelPrompt:
        """This prompt with `chat` "auto" decided by the tokenizer: the chat template where it has one."""
        chat = self.chat
        if chat == "auto":
            chat = CHAT_DEFAULT if tokenizer.chat_template else None
        elif chat in CHAT_LAYOUTS and not tokenizer.chat_template:
            raise UserError(f"lm.chat={chat} needs a chat template, and this model's tokenizer has none; use lm.chat=off")
        return LabelPrompt(self.labels, self.verbalisers, self.instruction, chat)

    def prefix_ids(self, tokenizer, demos: list[tuple[str, int]], max_length: int) -> list[int]:
        """Instruction, then each demonstration with its answer: the part every query shares."""
        if self.chat is None:
            ids = tokenizer(self.instruction)["input_ids"] + self._before_text(tokenizer, "\n\n")
            for text, label in demos:
                ids += self.query_ids(tokenizer, text, max_length) + self.answer_ids(tokenizer)[label] + self._before_text(tokenizer, "\n\n")
            return ids
        pieces = self.pieces(tokenizer)
        ids = pieces["head"] + self._before_text(tokenizer, self.instruction + "\n\n")
        for text, label in demos:
            if self.chat == "turns":
                ids += self._text_ids(tokenizer, text, max_length) + pieces["tail"] + self.answer_ids(tokenizer)[label] + pieces["between"]
            else:
                words = self._before_text(tokenizer, "\nAnswer: " + self.verbalisers[label] + "\n\n")
                ids += self._text_ids(tokenizer, text, max_length) + words
        return ids

    def query_ids(self, tokenizer, text: str, max_length: int) -> list[int]:
        """`Text: <text, cut to max_length tokens>` and what comes before the answer: `Answer:`, or the
        end of the user turn and the start of the assistant's."""
        end = self._ids(tokenizer, "\nAnswer:") if self.chat is None else self.pieces(tokenizer)["prompt"]
        return self._text_ids(tokenizer, text, max_length) + end

    def answer_ids(self, tokenizer) -> list[list[int]]:
        space = " " if self.chat is None else ""  # after "Answer:"; an assistant's answer starts the turn
        return [self._ids(tokenizer, space + word) for word in self.verbalisers]

    def pieces(self, tokenizer) -> dict[str, list[int]]:
        """The chat template's own text around the contents, as token ids: `head` (up to the first user
        turn's content), `tail` (user content to assistant content), `between` (assistant content to the
        next user content) and `prompt` (user content to the assistant's answer: the generation prompt)."""
        if self._pieces is None:
            user, answer, nxt = _MARKS
            messages = [{"role": "user", "content": user}, {"role": "assistant", "content": answer}, {"role": "user", "content": nxt}]
            text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            head, rest = text.split(user)
            tail, rest = rest.split(answer)
            between, prompt = rest.split(nxt)
            self._pieces = {name: self._ids(tokenizer, t) for name, t in
                            [("head", head), ("tail", tail), ("between", between), ("prompt", prompt)]}  # fmt: skip
        return self._pieces

    @staticmethod
    def _ids(tokenizer, text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    def _before_text(self, tokenizer, text: str) -> list[int]:
        """The ids of `text` as the tokenizer splits it with `Text:` next: a byte-level BPE splits "\n\n"
        before a word as two newlines (the form it was trained on), at the end of a string as one."""
        both, after = self._ids(tokenizer, text + "Text:"), self._ids(tokenizer, "Text:")
        return both[: len(both) - len(after)] if both[len(both) - len(after) :] == after else self._ids(tokenizer, text)

    def _text_ids(self, tokenizer, text: str, max_length: int) -> list[int]:
        return self._ids(tokenizer, "Text:") + self._ids(tokenizer, " " + text)[:max_length]


def label_prompt(labels: list[str], verbalisers: list[str] | None, instruction: str | None, chat: str | None = None) -> LabelPrompt:
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
    return LabelPrompt(labels, ordered, instruction or f"Classify each text as one of: {', '.join(ordered)}.", chat)


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
        # icl.select=similar: the training examples each query's demonstrations are drawn from, with
        # their embeddings (`embed`), and how many each query gets (methods/icl.py `nearest`).
        self.pool: list[tuple[str, int]] = []
        self.pool_embeddings: torch.Tensor | None = None
        self.pool_shots = 0
        self.chat_demos: list[list[dict]] = []  # the same for generation: earlier chats, turn by turn
        self.trained = True  # the icl regime sets False: its folder keeps only the prompt

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_token_id

    @property
    def outputs_per_token(self) -> int:
        return self.hf.get_output_embeddings().out_features  # logits over the vocabulary at every position

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

    @torch.no_grad()
    def embed(self, texts: list[str], batch_size: int = 16) -> torch.Tensor:
        """(N, C) the model's own embedding of each text: its last hidden states averaged over the
        text's tokens (cut to max_length), unit length."""
        device = next(self.hf.parameters()).device
        rows = []
        for start in range(0, len(texts), batch_size):
            ids = [self.tokenizer(t)["input_ids"][: self.max_length] or [self.pad_id] for t in texts[start : start + batch_size]]
            width = max(map(len, ids))  # right padding: a causal LM's real tokens never see it
            input_ids = torch.tensor([i + [self.pad_id] * (width - len(i)) for i in ids], device=device)
            mask = torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i in ids], device=device)
            out = self.hf(input_ids=input_ids, attention_mask=mask, output_hidden_states=True, logits_to_keep=1)
            hidden = out.hidden_states[-1].float() * mask[..., None]  # (B, T, C)
            rows.append(torch.nn.functional.normalize(hidden.sum(1) / mask.sum(1, keepdim=True), dim=-1).cpu())
        return torch.cat(rows) if rows else torch.zeros(0, self.hf.config.hidden_size)

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
            "chat": self.prompt.chat if self.prompt else None,
            "demonstrations": [[text, label] for text, label in self.demos],
            "demonstration_pool": {"shots": self.pool_shots, "examples": [[text, label] for text, label in self.pool]} if self.pool else None,
            "chat_demonstrations": self.chat_demos,
            "weights": "saved" if self.trained else "base_model",
        }
        (folder / LM_FILE).write_text(json.dumps(spec, indent=2))
        if self.pool:
            from safetensors.torch import save_file

            save_file({"embeddings": self.pool_embeddings.contiguous()}, folder / POOL_FILE)


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
    prompt = prompt.resolve(tokenizer) if prompt is not None else None
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
    prompt = LabelPrompt(spec["labels"], spec["verbalisers"], spec["instruction"], spec.get("chat")) if spec["task"] == "classify" else None
    model = CausalLM(hf.eval(), tokenizer, spec["max_length"], spec["task"], prompt, spec["base_model"])
    model.demos = [(text, label) for text, label in spec["demonstrations"]]
    model.chat_demos = spec.get("chat_demonstrations", [])
    if spec.get("demonstration_pool"):
        from safetensors.torch import load_file

        model.pool = [(text, label) for text, label in spec["demonstration_pool"]["examples"]]
        model.pool_shots = spec["demonstration_pool"]["shots"]
        model.pool_embeddings = load_file(folder / POOL_FILE)["embeddings"]
    model.trained = spec["weights"] == "saved"
    return model.eval()
