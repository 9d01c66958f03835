"""Text classifiers: a Hugging Face sequence-classification model with a backbone/head split.

The split follows timm (`forward_features`, `forward_head`): the frozen-backbone regime runs
`forward_features` once over the data, caches the result, and trains only `forward_head`.
The model itself stays a plain `*ForSequenceClassification`, so what we save loads anywhere.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers
from torch import nn
from peft import TaskType
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

from .. import assets
from ..errors import UserError


@dataclass(frozen=True)
class Head:
    """Which modules form the task head, and how they map first-token features to logits."""

    modules: tuple[str, ...]
    forward: Callable[[nn.Module, torch.Tensor], torch.Tensor]


def _bert_head(hf, h):  # the pooler (dense + tanh on the first token) is part of the head
    return hf.classifier(hf.dropout(hf.bert.pooler(h[:, None])))


def _first_token_head(hf, h):  # RoBERTa-style heads take (B, T, C) and read token 0 themselves
    return hf.classifier(h[:, None])


def _distilbert_head(hf, h):
    return hf.classifier(hf.dropout(torch.relu(hf.pre_classifier(h))))


def _deberta_head(hf, h):
    return hf.classifier(hf.dropout(hf.pooler(h[:, None])))


# model_type -> head. A plain dict so that grep finds what is supported.
HEADS: dict[str, Head] = {
    "bert": Head(("bert.pooler", "classifier"), _bert_head),
    "roberta": Head(("classifier",), _first_token_head),
    "xlm-roberta": Head(("classifier",), _first_token_head),
    "camembert": Head(("classifier",), _first_token_head),
    "electra": Head(("classifier",), _first_token_head),
    "distilbert": Head(("pre_classifier", "classifier"), _distilbert_head),
    "deberta-v2": Head(("pooler", "classifier"), _deberta_head),
}


class TextClassifier(nn.Module):
    """A sequence classifier with `forward_features` (backbone) and `forward_head` (task head).

    Every task model offers the same face to the regimes, the loop and the runs: forward,
    forward_features, forward_head, head / head_parameters, encode (examples -> loader items),
    add_adapter (peft), reinitialize, save.
    """

    peft_task_type = TaskType.SEQ_CLS
    modality = "text"
    lora_targets = "all-linear"  # every linear layer of attention and MLP

    def __init__(self, hf: nn.Module, tokenizer, max_length: int = 512):
        super().__init__()
        self.hf = hf
        self.tokenizer = tokenizer
        self.tokenizer.model_max_length = max_length  # saved with it: plain truncation=True matches

    @property
    def max_length(self) -> int:
        return self.tokenizer.model_max_length

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_token_id or 0

    @property
    def label_names(self) -> list[str]:
        id2label = self.hf.config.id2label
        return [id2label[i] for i in range(len(id2label))]

    def encode(self, examples, train: bool = False) -> list[dict]:
        """Loader items: token ids (unpadded) and the label index, when the examples have labels."""
        ids = self.tokenizer(list(examples.inputs), truncation=True, max_length=self.max_length)["input_ids"]
        if examples.labels is None:
            return [{"input_ids": x} for x in ids]
        index = {name: i for i, name in enumerate(self.label_names)}
        return [{"input_ids": x, "labels": index[y]} for x, y in zip(ids, examples.labels)]

    def add_adapter(self, peft_config) -> None:
        from peft import get_peft_model

        self.hf = get_peft_model(self.hf, peft_config)

    def reinitialize(self) -> None:
        """Random weights in the same architecture: the control that shows what pre-training buys.

        A fresh instance from the config, because transformers marks loaded modules as initialised
        and `_init_weights` then leaves their pre-trained values in place.
        """
        self.hf = type(self.hf)(self.hf.config)

    def save(self, folder: Path) -> None:
        """A Hugging Face model folder, or a PEFT adapter folder (adapter + trained head).

        Weights go out as safetensors. The label names travel in the model config (id2label)
        and, for adapters, in labels.json, since an adapter folder has no base-model config.
        """
        self.hf.save_pretrained(folder, safe_serialization=True)
        self.tokenizer.save_pretrained(folder)
        (folder / "labels.json").write_text(json.dumps(self.label_names))

    @property
    def config(self):
        return self.hf.config

    @property
    def model_type(self) -> str:
        return self.hf.config.model_type

    @property
    def head(self) -> Head:
        if self.model_type not in HEADS:
            raise UserError(
                f"model type '{self.model_type}' has no known head split, so its features cannot be cached; "
                f"use --regime full or lora (supported for caching: {', '.join(HEADS)})"
            )
        return HEADS[self.model_type]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.hf(input_ids=input_ids, attention_mask=attention_mask).logits  # (B, num_labels)

    def forward_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Hidden state of the first token, the input of every head in HEADS: (B, C)."""
        backbone = getattr(self.hf, self.hf.base_model_prefix)
        return backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state[:, 0]

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.head.forward(self.hf, features)

    def head_parameters(self) -> list[tuple[str, nn.Parameter]]:
        return [
            (name, p)
            for name, p in self.hf.named_parameters()
            if any(name == m or name.startswith(m + ".") for m in self.head.modules)
        ]


def quiet_transformers() -> None:
    """Library code never prints: no load reports or weight-loading progress bars."""
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


# What architectures call the dropout on attention weights in their config (BERT family;
# DistilBERT, Llama and most decoders; GPT-2).
ATTENTION_DROPOUT_KEYS = ("attention_probs_dropout_prob", "attention_dropout", "attn_pdrop")


def attention_dropout(path: Path, p: float | None, trust_remote_code: bool = False) -> dict:
    """from_pretrained keyword arguments that set the model's attention dropout to `p` (None: its own)."""
    if p is None:
        return {}
    config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    return {key: p for key in ATTENTION_DROPOUT_KEYS if hasattr(config, key)}


def load_text_classifier(
    name_or_path: str,
    label_names: list[str],
    trust_remote_code: bool = False,
    max_length: int = 512,
    attention_dropout_p: float | None = None,
) -> TextClassifier:
    """A pre-trained encoder (built-in name or local folder) with a fresh head for `label_names`."""
    path = assets.resolve_model(name_or_path)
    if not (path / "config.json").is_file():
        raise UserError(f"model folder '{path}' has no config.json; pass a Hugging Face model folder")
    quiet_transformers()
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    hf = AutoModelForSequenceClassification.from_pretrained(
        path,
        **attention_dropout(path, attention_dropout_p, trust_remote_code),
        num_labels=len(label_names),
        id2label=dict(enumerate(label_names)),
        label2id={name: i for i, name in enumerate(label_names)},
        ignore_mismatched_sizes=True,  # a folder fine-tuned earlier may carry a head of another size
        trust_remote_code=trust_remote_code,
        dtype=torch.float32,
    )
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    hf.config.pad_token_id = tokenizer.pad_token_id
    return TextClassifier(hf, tokenizer, max_length)


def load_saved_classifier(model_dir: Path) -> TextClassifier:
    """A classifier saved by `transferkit train`: a full model folder or a PEFT adapter folder."""
    quiet_transformers()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    adapter_config = model_dir / "adapter_config.json"
    if adapter_config.is_file():
        from peft import PeftModel

        labels = json.loads((model_dir / "labels.json").read_text())
        base_path = json.loads(adapter_config.read_text())["base_model_name_or_path"]
        base = AutoModelForSequenceClassification.from_pretrained(
            base_path,
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            label2id={name: i for i, name in enumerate(labels)},
            ignore_mismatched_sizes=True,
            dtype=torch.float32,
        )
        base.config.pad_token_id = tokenizer.pad_token_id
        hf = PeftModel.from_pretrained(base, model_dir)
    else:
        hf = AutoModelForSequenceClassification.from_pretrained(model_dir, dtype=torch.float32)
    return TextClassifier(hf.eval(), tokenizer, tokenizer.model_max_length)
