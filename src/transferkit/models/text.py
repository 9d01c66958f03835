"""Text encoders with a task head: a Hugging Face sequence-classification, token-classification or
question-answering model with a backbone/head split.

The split follows timm (`forward_features`, `forward_head`): the frozen-backbone regime runs
`forward_features` once over the data, caches the result, and trains only `forward_head`.
The model itself stays a plain `*ForSequenceClassification` (`*ForTokenClassification`,
`*ForQuestionAnswering`), so what we save loads anywhere.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import transformers
from torch import nn
from peft import TaskType
from transformers import (AutoConfig, AutoModelForQuestionAnswering, AutoModelForSequenceClassification,
                          AutoModelForTokenClassification, AutoTokenizer)  # fmt: skip

from .. import assets
from .base import Head
from ..config import DEFAULT_MAX_LENGTH
from ..errors import UserError


def _bert_head(hf, h):  # the pooler (dense + tanh on the first token) is part of the head
    return hf.classifier(hf.dropout(hf.bert.pooler(h[:, None])))


def _first_token_head(hf, h):  # RoBERTa-style heads take (B, T, C) and read token 0 themselves
    return hf.classifier(h[:, None])


def _distilbert_head(hf, h):
    return hf.classifier(hf.dropout(torch.relu(hf.pre_classifier(h))))


def _deberta_head(hf, h):
    return hf.classifier(hf.dropout(hf.pooler(h[:, None])))


def _token_head(hf, h):  # (B, T, C) -> (B, T, num_labels): one tag per token
    return hf.classifier(hf.dropout(h))


def _span_head(hf, h):  # (B, T, C) -> (B, T, 2): each token's start and end logit
    return hf.qa_outputs(h)


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
# Every architecture in HEADS builds its token and span heads alike: a linear layer over each token's
# hidden state (after dropout for tags), named classifier / qa_outputs.
PER_TOKEN_HEADS = {"token": Head(("classifier",), _token_head, per_token=True), "span": Head(("qa_outputs",), _span_head, per_token=True)}

# What a task asks for (its head_config()["head"]) -> the transformers class that builds it, and peft's task type.
AUTO_CLASSES = {"sequence": AutoModelForSequenceClassification, "token": AutoModelForTokenClassification,
                "span": AutoModelForQuestionAnswering}  # fmt: skip
PEFT_TASK_TYPES = {"sequence": TaskType.SEQ_CLS, "token": TaskType.TOKEN_CLS, "span": TaskType.QUESTION_ANS}


class TextClassifier(nn.Module):
    """A text encoder with a task head: `forward_features` (backbone) and `forward_head` (task head).

    Every task model offers the same face to the regimes, the loop and the runs: forward,
    forward_features, forward_head, head / head_parameters, encode (examples -> loader items),
    add_adapter (peft), reinitialize, save. `head_kind` is what its task asked for: "sequence"
    (one output vector per input), "token" (one per token) or "span" (start and end logits per token).
    """

    kind = "encoder"
    outputs_per_token = 0  # a head's few outputs: never what bounds an evaluation batch
    modality = "text"
    reads_pairs = True  # (text, text_pair) inputs, tokenized as a pair
    lora_targets = "all-linear"  # every linear layer of attention and MLP

    def __init__(self, hf: nn.Module, tokenizer, max_length: int = 512, head_kind: str = "sequence"):
        super().__init__()
        self.hf = hf
        self.tokenizer = tokenizer
        self.tokenizer.model_max_length = max_length  # saved with it: plain truncation=True matches
        self.head_kind = head_kind

    @property
    def peft_task_type(self):
        return PEFT_TASK_TYPES[self.head_kind]

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

    def encode(self, examples, targets: list | None, train: bool = False, note=lambda message: None):
        """Loader items: token ids (unpadded, cached per data file and tokenizer) and the task's targets."""
        from ..data.tokens import token_items

        return token_items(examples, self.tokenizer, self.max_length, targets, note)

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

        Weights go out as safetensors. The label names (and the head's problem_type) travel in the
        model config and, for adapters, in labels.json and head.json, since an adapter folder has no
        base-model config.
        """
        self.hf.save_pretrained(folder, safe_serialization=True)
        self.tokenizer.save_pretrained(folder)
        (folder / "labels.json").write_text(json.dumps(self.label_names))
        head = {"labels": self.label_names, "problem_type": self.hf.config.problem_type, "head": self.head_kind}
        (folder / HEAD_FILE).write_text(json.dumps(head, indent=2))

    @property
    def config(self):
        return self.hf.config

    @property
    def model_type(self) -> str:
        return self.hf.config.model_type

    @property
    def can_split(self) -> bool:
        """Whether the backbone/head split is known, so that a frozen backbone's features can be cached."""
        return self.model_type in HEADS

    def why_no_split(self) -> str:
        return (f"model type '{self.model_type}' has no known head split, so its features cannot be cached; "
                f"use --regime full or lora (supported for caching: {', '.join(HEADS)})")  # fmt: skip

    @property
    def head(self) -> Head:
        if not self.can_split:
            raise UserError(self.why_no_split())
        return PER_TOKEN_HEADS.get(self.head_kind) or HEADS[self.model_type]

    def read_inputs(self, path: str | None, text: str | None, column: str, pair: str | None = None, pair_column: str | None = None):
        """What `predict` reads for this model (data/inputs.py)."""
        from ..data.inputs import text_inputs

        return text_inputs(path, text, column, pair, pair_column)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        segments = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
        out = self.hf(input_ids=input_ids, attention_mask=attention_mask, **segments)
        if self.head_kind == "span":
            return torch.stack([out.start_logits, out.end_logits], -1)[:, -input_ids.shape[1] :]  # (B, T, 2)
        if self.head_kind == "token":  # a soft prompt (prompt tuning) adds outputs before the input's own: dropped
            return out.logits[:, -input_ids.shape[1] :]  # (B, T, num_labels)
        return out.logits  # (B, num_labels)

    def forward_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Hidden state of the first token, the input of every head in HEADS: (B, C); every token's for a
        token or span head: (B, T, C)."""
        backbone = getattr(self.hf, self.hf.base_model_prefix)
        segments = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
        hidden = backbone(input_ids=input_ids, attention_mask=attention_mask, **segments).last_hidden_state
        return hidden if self.head.per_token else hidden[:, 0]

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.head.forward(self.hf, features)

    def head_parameters(self) -> list[tuple[str, nn.Parameter]]:
        return [
            (name, p)
            for name, p in self.hf.named_parameters()
            if any(name == m or name.startswith(m + ".") for m in self.head.modules)
        ]


HEAD_FILE = "head.json"  # adapter folders: the head's label names and problem_type


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
    max_length: int | None = None,
    attention_dropout_p: float | None = None,
    problem_type: str | None = "single_label_classification",
    head: str = "sequence",
) -> TextClassifier:
    """A pre-trained encoder (built-in name or local folder) with a fresh `head` (sequence, token or
    span) with one output per name in `label_names` (classes, regression targets, tags; start and end)."""
    path = assets.locate_model(name_or_path).path
    if not path.is_dir():
        raise UserError(f"model '{name_or_path}' is a file, not a model folder; pass a Hugging Face model folder")
    config = read_model_config(path, trust_remote_code)
    max_length = choose_max_length(config, max_length, path)
    quiet_transformers()
    tokenizer = load_tokenizer(path, trust_remote_code)
    # The head as the task asks for it. A folder fine-tuned before may say another problem_type, which
    # transformers would check the new label count against: cleared first, then set.
    config.problem_type = None
    config.num_labels = len(label_names)
    config.id2label, config.label2id = dict(enumerate(label_names)), {name: i for i, name in enumerate(label_names)}
    config.problem_type = problem_type
    for key, value in attention_dropout(path, attention_dropout_p, trust_remote_code).items():
        setattr(config, key, value)
    known = PER_TOKEN_HEADS[head] if head in PER_TOKEN_HEADS else HEADS.get(config.model_type)
    hf = load_pretrained(
        AUTO_CLASSES[head],
        path,
        head=known.modules if known else (),
        config=config,
        ignore_mismatched_sizes=True,  # a folder fine-tuned earlier may carry a head of another size
        trust_remote_code=trust_remote_code,
    )
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    hf.config.pad_token_id = tokenizer.pad_token_id
    return TextClassifier(hf, tokenizer, max_length, head)


def load(cfg, head: dict, note=lambda message: None) -> TextClassifier:
    """The encoder `cfg` (a RunConfig) names, with the head `head` (a task's head_config) asks for:
    head["head"] is sequence (the default), token or span."""
    m = cfg.model
    return load_text_classifier(m.name, head["labels"], m.trust_remote_code, m.max_length, m.attention_dropout, head.get("problem_type"),
                                head.get("head", "sequence"))  # fmt: skip


def read_model_config(path: Path, trust_remote_code: bool = False):
    """The folder's config.json as a transformers config, or a one-line error saying what is wrong with it."""
    file = path / "config.json"
    if not file.is_file():
        raise UserError(f"model folder '{path}' has no config.json; pass a Hugging Face model folder")
    try:
        raw = json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"'{file}' is not valid JSON ({e}); the model folder is damaged") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("model_type"), str):
        raise UserError(f"'{file}' is not a Hugging Face model config (it has no model_type); pass a Hugging Face model folder")
    try:
        return AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (ValueError, KeyError, TypeError, OSError) as e:
        text = " ".join(str(e).split())[:200]
        if "trust_remote_code" in text:
            raise UserError(f"model '{path}' needs code shipped inside its folder; pass --trust-remote-code if you trust its author") from None
        raise UserError(f"cannot read the config of model '{path}' ({text}); check model_type in {file}") from None


def choose_max_length(config, max_length: int | None, path: Path) -> int:
    """The truncation length: `max_length` if the model holds it, by default 128 or the model's context if shorter."""
    positions = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    if max_length is None:
        return min(DEFAULT_MAX_LENGTH, positions) if positions else DEFAULT_MAX_LENGTH
    if positions and max_length > positions:
        raise UserError(f"model.max_length={max_length} is more than model '{path}' holds ({positions} positions); "
                        f"set model.max_length={positions} or less")  # fmt: skip
    return max_length


# A folder holds its tokenizer in one of these; without them transformers builds an empty tokenizer that
# knows only the special tokens, and every word becomes [UNK].
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "tokenizer.model", "spiece.model", "sentencepiece.bpe.model", "merges.txt")


def load_tokenizer(path: Path, trust_remote_code: bool = False, **kwargs):
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise UserError(f"model folder '{path}' has no tokenizer (none of {', '.join(TOKENIZER_FILES[:3])}, ...); "
                        "save the tokenizer into it (tokenizer.save_pretrained(folder))")  # fmt: skip
    try:
        return AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code, **kwargs)
    except Exception as e:  # a missing or damaged tokenizer raises many types: all mean the same here
        text = " ".join(str(e).split())[:160] or type(e).__name__
        raise UserError(f"cannot load the tokenizer of model '{path}' ({text}); the folder needs its tokenizer files") from None


def load_pretrained(auto_class, path: Path, head: tuple[str, ...] = (), **kwargs):
    """`auto_class.from_pretrained(path)` in fp32 from safetensors only, refusing a folder whose weights do
    not cover the backbone (a random network would train without a word otherwise)."""
    safetensors = list(path.glob("*.safetensors")) or list(path.glob("*.safetensors.index.json"))
    if not safetensors:
        pickles = sorted(p.name for p in path.glob("*.bin")) + sorted(p.name for p in path.glob("*.pt*"))
        if pickles:
            raise UserError(f"model folder '{path}' has its weights only as a pickle ({pickles[0]}), which transferkit never "
                            "loads; convert them to safetensors (model.save_pretrained(folder, safe_serialization=True))")  # fmt: skip
        raise UserError(f"model folder '{path}' holds no weights (*.safetensors); pass a folder with the model's weights")
    try:
        hf, info = auto_class.from_pretrained(path, use_safetensors=True, dtype=torch.float32, output_loading_info=True, **kwargs)
    except Exception as e:  # truncated or damaged weight files raise many types
        text = " ".join(str(e).split())[:200] or type(e).__name__
        raise UserError(f"cannot load the weights of model '{path}' ({text}); the weights files are damaged or incomplete") from None
    prefix = hf.base_model_prefix + "."
    missing = [k for k in info["missing_keys"] if k.startswith(prefix) and not any(k.startswith(m + ".") for m in head)]
    if missing:
        total = sum(1 for k in hf.state_dict() if k.startswith(prefix))
        raise UserError(f"model folder '{path}' lacks {len(missing)} of the backbone's {total} weights (e.g. {missing[0]}); "
                        "it would train from random weights: pass a complete model folder (or --regime scratch on purpose)")  # fmt: skip
    return hf


def load_saved(model_dir: Path) -> TextClassifier:
    """A classifier saved by `transferkit train`: a full model folder or a PEFT adapter folder."""
    quiet_transformers()
    tokenizer = load_tokenizer(model_dir)
    adapter_config = model_dir / "adapter_config.json"
    head = model_dir / HEAD_FILE  # folders saved before head.json existed: labels.json, single-label
    head = json.loads(head.read_text()) if head.is_file() else {"labels": json.loads((model_dir / "labels.json").read_text())}
    auto_class = AUTO_CLASSES[head.get("head", "sequence")]
    if adapter_config.is_file():
        from peft import PeftModel

        labels = head["labels"]
        base_path = Path(json.loads(adapter_config.read_text())["base_model_name_or_path"])
        config = AutoConfig.from_pretrained(base_path)
        config.problem_type = None  # see load_text_classifier: cleared, then set to the head's own
        config.num_labels = len(labels)
        config.id2label, config.label2id = dict(enumerate(labels)), {name: i for i, name in enumerate(labels)}
        config.problem_type = head.get("problem_type") or ("single_label_classification" if head.get("head", "sequence") == "sequence" else None)
        base = auto_class.from_pretrained(base_path, config=config, ignore_mismatched_sizes=True, dtype=torch.float32)
        base.config.pad_token_id = tokenizer.pad_token_id
        hf = PeftModel.from_pretrained(base, model_dir)
    else:
        hf = auto_class.from_pretrained(model_dir, dtype=torch.float32)
    return TextClassifier(hf.eval(), tokenizer, tokenizer.model_max_length, head.get("head", "sequence"))
