"""Run configuration: plain dataclasses, a YAML file, then `section.key=value` overrides.

Every knob has a docstring under it. Regime-specific knobs live in each regime's module
(`methods/<name>.py`) and appear here as one section each.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .errors import UserError
from .methods import REGIMES, freeze, icl, lora, prompt, scratch, staged
from .tracking import check_names as check_trackers


DEFAULT_MAX_LENGTH = 128  # tokens, where model.max_length is empty (or the model's context, if shorter)

# Tasks whose tables name their columns otherwise, where data.*_column are left as they are: a flat
# question-answering file holds question, context, answer (and answer_start), and `predict` reads the
# question and context columns as the two texts of a pair.
TASK_COLUMNS = {"qa": {"text_column": "question", "pair_column": "context", "label_column": "answer"}}


@dataclass
class ModelConfig:
    name: str = "minilm-l6"
    """A built-in model name (see `transferkit models`) or a local Hugging Face model folder."""
    max_length: int | None = None
    """Inputs are truncated to this many tokens. Empty: 128, or the model's context where that is shorter."""
    trust_remote_code: bool = False
    """Run code shipped inside the model folder. Off unless you trust the folder's author."""
    image_size: int = 128
    """Images are resized and cropped to image_size x image_size pixels (image models)."""
    architecture: str | None = None
    """Architecture of a weights file given as model.name (.safetensors / .pth), e.g. efficientnet-lite0."""
    attention_dropout: float | None = 0.0
    """Dropout on the attention weights of a text model while it trains; empty keeps the model's own.
    Off by default: with it, PyTorch's fused attention cannot run on a CPU and a MiniLM step takes a
    third longer (1.29 s against 0.96 s), while hidden-state dropout still regularises."""

    def __post_init__(self):
        if self.max_length is not None:
            _check_positive("model.max_length", self.max_length)
        if self.attention_dropout is not None and not 0 <= self.attention_dropout < 1:
            raise UserError(f"model.attention_dropout must be in [0, 1) (got {self.attention_dropout}); try 0.1, or leave it empty")
        if self.image_size < 16:
            raise UserError(f"model.image_size must be at least 16 pixels (got {self.image_size})")


@dataclass
class DataConfig:
    name: str = "bbc-news"
    """A built-in dataset name (see `transferkit datasets`), a CSV / JSONL file, or an image folder
    with one sub-folder of images per class (the training data)."""
    validation: str | None = None
    """Optional file with the validation split; otherwise it is split off the training data."""
    test: str | None = None
    """Optional file with the test split; otherwise it is split off the training data."""
    text_column: str = "text"
    """Column (CSV) or field (JSONL) that holds the input text."""
    label_column: str = "label"
    """Column (CSV) or field (JSONL) that holds the label (regression: the target value; multi-label: the
    labels of the row, joined by task.label_separator)."""
    label_columns: list[str] | None = None
    """Several columns instead of label_column: regression with several targets, or multi-label with one
    0/1 column per label (e.g. data.label_columns=sports,politics)."""
    pair_column: str | None = None
    """Column with the second text of a text pair (inference, paraphrase, similarity): the two texts go to
    the tokenizer as a pair. Empty: single texts (built-in pair sets use their own)."""
    validation_fraction: float = 0.1
    """Share of the data held out for validation when no validation file is given (stratified)."""
    test_fraction: float = 0.2
    """Share of the data held out for testing when no test file is given (stratified)."""
    train_size: int | None = None
    """Train on a stratified, seeded subset of this many examples (to see quality against data size)."""
    validation_size: int | None = None
    """Validate on a stratified subset of this many examples, the same whatever train.seed (validation is a
    forward pass over it every epoch). Unset with train_size: a split held out of the data file shrinks in
    proportion to train_size, to no fewer than 500."""
    test_size: int | None = None
    """Test on a stratified subset of this many examples, the same whatever train.seed."""

    def __post_init__(self):
        for key in ("validation_fraction", "test_fraction"):
            value = getattr(self, key)
            if not 0 < value < 1:
                raise UserError(f"data.{key} must be between 0 and 1 (got {value}); use e.g. 0.1")
        if self.validation_fraction + self.test_fraction >= 0.9:
            raise UserError("data.validation_fraction + data.test_fraction leave under 10% to train on; lower them")
        for key in ("train_size", "validation_size", "test_size"):
            if getattr(self, key) is not None:
                _check_positive(f"data.{key}", getattr(self, key))


@dataclass
class TrainConfig:
    _words = {"lr": ("suggested",)}  # words a key takes besides its type
    lr: float | str | None = None
    """Peak learning rate. Empty: the regime's own default (each regime needs a different one). suggested:
    the rate an LR range test on the training split suggests (`transferkit lr-find`), found first."""
    epochs: int | None = None
    """Passes over the training data. Empty: the regime's own default."""
    max_steps: int | None = None
    """Stop after this many optimizer steps (overrides epochs when set)."""
    batch_size: int | None = None
    """Examples per optimizer step. Empty: the regime's own default (16; 32 on cached features)."""
    micro_batch_size: int | None = None
    """Examples per forward pass; batch_size / micro_batch_size steps are accumulated. Empty: batch_size."""
    weight_decay: float = 0.01
    """AdamW weight decay (not applied to biases and norms)."""
    warmup_ratio: float = 0.1
    """Share of the steps over which the learning rate rises linearly from zero."""
    schedule: str = "linear"
    """Decay after warmup: linear, cosine or constant."""
    max_grad_norm: float = 1.0
    """Clip the gradient norm to this (0 turns clipping off)."""
    eval_every_steps: int | None = None
    """Validate every N optimizer steps. Empty: once per epoch."""
    patience: int | None = 3
    """Stop after this many validations without improvement (empty: never stop early)."""
    min_steps: int | None = None
    """Validations before this many optimizer steps do not count toward patience, so that a run cannot
    stop before it learns. Empty: a third of the stage's steps."""
    metric: str | None = None
    """Validation metric that picks the best checkpoint: accuracy, macro_f1, loss, or loss+general (the
    validation loss plus the loss on held-out general text, forgetting.corpus); each task says which it
    measures. Empty: the task's own (classification: accuracy; causal LMs, regression: loss)."""
    precision: str = "auto"
    """auto (bf16 autocast where the hardware has fast bf16, else fp32), bf16 or fp32."""
    seed: int = 0
    """Seeds the split, the initialisation and the batch order: same seed, same metrics."""
    l2sp: float = 0.0
    """Pull toward the pre-trained weights: adds l2sp * (w - w_pretrained) to each trainable weight's
    gradient (L2-SP, Li et al. 2018), a penalty against forgetting. 0: off."""
    checkpoint_minutes: float | None = 5.0
    """Save a checkpoint (into the run's .partial folder) this often while training, and at the end of
    each stage; a checkpoint that takes long is taken less often, so that saving costs at most 1/40 of
    the time. Empty or 0: only at the end of each stage. See train.resume."""
    checkpoint_every_steps: int | None = None
    """Also save a checkpoint every this many optimizer steps."""
    resume: str = "auto"
    """After an interruption: auto (go on from the run's last checkpoint when it belongs to the same
    configuration and data; refuse another's), always (--resume: as auto, and it is an error when there
    is no checkpoint) or never (--no-resume: discard it and start over)."""
    report_to: list[str] | None = None
    """Experiment trackers that follow the run, through accelerate's: tensorboard (event files in the run
    folder's tensorboard/), trackio, mlflow, wandb; several comma-separated. Empty or none: no tracker.
    They get what metrics.jsonl gets, the resolved configuration and the final metrics."""
    distributed: str = "ddp"
    """With several processes (--processes, accelerate launch): ddp (each process holds the whole model
    and trains on its share of every batch) or fsdp (fully sharded: each holds 1/N of the weights,
    gradients and optimizer state, for a model whose training does not fit one device; regimes that
    train on cached features have nothing to shard). One process: ignored."""

    def __post_init__(self):
        check_trackers(self.report_to or [])
        if not 0 <= self.seed < 2**32:
            raise UserError(f"train.seed must be a whole number from 0 to 4294967295 (got {self.seed})")
        if isinstance(self.lr, str) and self.lr != "suggested":
            raise UserError(f"train.lr must be a positive number or suggested (got '{self.lr}'); try 1e-4")
        if self.lr is not None and not isinstance(self.lr, str) and not self.lr > 0:
            raise UserError(f"train.lr must be positive (got {self.lr}); try 1e-4")
        if self.resume not in ("auto", "always", "never"):
            raise UserError(f"train.resume must be auto, always or never (got '{self.resume}')")
        if self.distributed not in ("ddp", "fsdp"):
            raise UserError(f"train.distributed must be ddp or fsdp (got '{self.distributed}')")
        if self.checkpoint_minutes is not None and not self.checkpoint_minutes >= 0:
            raise UserError(f"train.checkpoint_minutes must be 0 or more (got {self.checkpoint_minutes}); 0 saves only between stages")
        for key in ("epochs", "max_steps", "batch_size", "micro_batch_size", "eval_every_steps", "checkpoint_every_steps"):
            if getattr(self, key) is not None:
                _check_positive(f"train.{key}", getattr(self, key))
        if self.min_steps is not None and (isinstance(self.min_steps, bool) or not isinstance(self.min_steps, int) or self.min_steps < 0):
            raise UserError(f"train.min_steps must be a whole number of steps, 0 or more (got {self.min_steps})")
        if self.patience is not None and self.patience < 1:
            raise UserError(f"train.patience must be at least 1 (got {self.patience}); leave it empty to never stop early")
        if self.batch_size and self.micro_batch_size and self.batch_size % self.micro_batch_size:
            raise UserError(
                f"train.batch_size ({self.batch_size}) must be a multiple of train.micro_batch_size ({self.micro_batch_size})"
            )
        if self.schedule not in ("linear", "cosine", "constant"):
            raise UserError(f"train.schedule must be linear, cosine or constant (got '{self.schedule}')")
        if self.l2sp < 0:
            raise UserError(f"train.l2sp must not be negative (got {self.l2sp}); try 0.01")
        if self.precision not in ("auto", "bf16", "fp32"):
            raise UserError(f"train.precision must be auto, bf16 or fp32 (got '{self.precision}')")
        if not 0 <= self.warmup_ratio < 1:
            raise UserError(f"train.warmup_ratio must be in [0, 1) (got {self.warmup_ratio})")
        if self.weight_decay < 0 or self.max_grad_norm < 0:
            raise UserError("train.weight_decay and train.max_grad_norm must not be negative")


@dataclass
class LMConfig:
    verbalisers: list[str] | None = None
    """Classification with a causal LM: the word each label is answered with, as label=word pairs
    (e.g. positive=great,negative=terrible). Empty: each label's own name."""
    instruction: str | None = None
    """The instruction before the examples. Empty: "Classify each text as one of: <verbalisers>."."""
    chat: str = "auto"
    """Classification with a causal LM: ask through the model's chat template, demonstrations as one
    user turn (one-turn) or as a user turn and an assistant answer each (turns); off: plain text
    (instruction, then Text: ... / Answer: ...). auto: turns where the tokenizer has a chat template
    (at 8 shots it did far better than one-turn on SmolLM2: benchmarks/README.md), plain text where it has none."""
    max_new_tokens: int = 64
    """Generation: the longest answer generated for exact match, samples and predict."""
    generate_examples: int = 50
    """Generation: how many test examples are answered greedily for exact match and report samples."""

    def __post_init__(self):
        _check_positive("lm.max_new_tokens", self.max_new_tokens)
        if self.chat not in ("auto", "one-turn", "turns", "off"):
            raise UserError(f"lm.chat must be auto, one-turn, turns or off (got '{self.chat}')")
        if self.generate_examples < 0:
            raise UserError(f"lm.generate_examples must not be negative (got {self.generate_examples})")


@dataclass
class ForgettingConfig:
    corpus: str | None = None
    """General text to measure forgetting on: a built-in corpus (bbc-news-text, shakespeare), a .txt file
    or a folder of them. Empty: forgetting is not measured."""
    tokens: int = 8192
    """Tokens of held-out general text the causal LM's perplexity is measured on, before and after."""
    probe: str | None = None
    """Encoders: a second built-in labelled dataset whose linear-probe accuracy is measured before and after.
    Empty: tweet-sentiment (bbc-news when training on tweet-sentiment)."""
    probe_size: int = 600
    """Encoders: examples of the probe task (two thirds train the probe, one third tests it)."""

    def __post_init__(self):
        _check_positive("forgetting.tokens", self.tokens)
        if self.probe_size < 20:
            raise UserError(f"forgetting.probe_size must be at least 20 (got {self.probe_size})")


@dataclass
class ReplayConfig:
    ratio: float = 0.0
    """Share of each epoch's training examples that are general text (language-model loss), mixed in
    against forgetting. 0: off. Causal LMs only."""
    corpus: str | None = None
    """General text to replay. Empty: forgetting.corpus (its replay half; forgetting is measured on the other)."""

    def __post_init__(self):
        if not 0 <= self.ratio < 1:
            raise UserError(f"replay.ratio must be in [0, 1) (got {self.ratio}); try 0.2")


@dataclass
class TaskConfig:
    name: str | None = None
    """What the model learns: classify (one label per input), regress (numeric targets), multilabel (any
    number of labels per input), generate (a causal LM learns responses or plain text), qa (extractive
    question answering: the answer's span in a context) or tokens (a tag per word: named entities).
    `task: NAME` in a YAML file and `--task NAME` set this. Empty: what a built-in dataset is for, else classify."""
    loss: str = "mse"
    """Regression loss: mse, or huber (less pulled by outlying targets)."""
    label_separator: str = "|"
    """Multi-label: the character between the labels of one row in the label column."""
    scheme: str = "auto"
    """Token classification: the tag scheme, bio (O, B-TYPE, I-TYPE) or bioes (also E-TYPE, S-TYPE).
    auto: bioes where any tag starts with E- or S-, else bio. A tag outside the scheme stops the run."""

    _shorthand = "name"  # `task: regress` means `task: {name: regress}`

    def __post_init__(self):
        if self.loss not in ("mse", "huber"):
            raise UserError(f"task.loss must be mse or huber (got '{self.loss}')")
        if len(self.label_separator) != 1:
            raise UserError(f"task.label_separator must be one character (got '{self.label_separator}')")
        if self.scheme not in ("auto", "bio", "bioes"):
            raise UserError(f"task.scheme must be auto, bio or bioes (got '{self.scheme}')")


@dataclass
class QAConfig:
    max_length: int = 384
    """Extractive question answering: tokens per window (the question, a piece of the context and the
    special tokens). A longer context is cut into overlapping windows, each scored on its own."""
    stride: int = 128
    """Tokens of context that consecutive windows share, so that an answer cut off at the end of one
    window lies whole in the next."""
    max_answer_length: int = 30
    """The longest answer considered, in tokens."""
    n_best: int = 20
    """The highest start and end logits of each window whose pairs are scored as candidate answers."""

    def __post_init__(self):
        for key in ("max_length", "stride", "max_answer_length", "n_best"):
            _check_positive(f"qa.{key}", getattr(self, key))
        if self.stride >= self.max_length // 2:
            raise UserError(f"qa.stride ({self.stride}) must be under half of qa.max_length ({self.max_length}), or the "
                            "windows barely move forward; lower qa.stride (e.g. 128 for 384)")  # fmt: skip


@dataclass
class RunConfig:
    regime: str = "full"
    """How to adapt the model: full, freeze, lora, prompt, staged, scratch (random weights, the control) or
    icl (in-context learning with a causal LM: no training)."""
    task: TaskConfig = field(default_factory=TaskConfig)
    qa: QAConfig = field(default_factory=QAConfig)
    output: str | None = None
    """Run folder. Empty: runs/<dataset>-<regime>."""
    overwrite: bool = False
    """Replace a run folder that already holds a finished run."""
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    freeze: freeze.Config = field(default_factory=freeze.Config)
    lora: lora.Config = field(default_factory=lora.Config)
    prompt: prompt.Config = field(default_factory=prompt.Config)
    staged: staged.Config = field(default_factory=staged.Config)
    scratch: scratch.Config = field(default_factory=scratch.Config)
    icl: icl.Config = field(default_factory=icl.Config)
    lm: LMConfig = field(default_factory=LMConfig)
    forgetting: ForgettingConfig = field(default_factory=ForgettingConfig)
    replay: ReplayConfig = field(default_factory=ReplayConfig)

    def __post_init__(self):
        if self.regime not in REGIMES:
            raise UserError(f"unknown regime '{self.regime}'; choose one of: {', '.join(REGIMES)}")
        if self.train.metric == "loss+general" and not self.forgetting.corpus:
            raise UserError("train.metric=loss+general needs general text: set forgetting.corpus (e.g. bbc-news-text)")
        if self.replay.ratio > 0 and not (self.replay.corpus or self.forgetting.corpus):
            raise UserError("replay.ratio needs general text to replay: set replay.corpus or forgetting.corpus")

    def with_dataset_defaults(self) -> RunConfig:
        """This config with what the data decides filled in: task.name (a built-in dataset's own task, else
        classify) and data.pair_column (a built-in pair dataset's "pair")."""
        from . import assets

        asset = assets.DATASETS.get(self.data.name)
        cfg = self
        if cfg.task.name is None:
            cfg = dataclasses.replace(cfg, task=dataclasses.replace(cfg.task, name=asset.task if asset else "classify"))
        if cfg.data.pair_column is None and asset is not None and asset.pair:
            cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, pair_column="pair"))
        columns = TASK_COLUMNS.get(cfg.task.name)
        if columns and (cfg.data.text_column, cfg.data.pair_column, cfg.data.label_column) == ("text", None, "label"):
            cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, **columns))
        return cfg

    @property
    def run_dir(self) -> Path:
        if self.output:
            return Path(self.output)
        return Path("runs") / f"{Path(self.data.name).stem}-{self.regime}"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def load_config(
    path: str | Path | RunConfig | None = None,
    overrides: list[str] | dict | None = None,
    flags: dict[str, object] | None = None,
) -> RunConfig:
    """Read a YAML config (or start from the defaults), then apply `flags` and `section.key=value` overrides.

    `flags` ({"data.name": "d/data #1.csv"}) are taken literally, as a command line's flag values should
    be; the text of an override goes through YAML only where the key wants a number, a boolean or a list.
    """
    raw: dict = {}
    if isinstance(path, RunConfig):
        raw = path.to_dict()
    elif path is not None:
        raw = _read_yaml(Path(path))
    items = list(overrides.items()) if isinstance(overrides, dict) else [_split_override(o) for o in overrides or []]
    for key, value in [*(flags or {}).items(), *items]:
        _set_dotted(raw, key, value)
    return from_dict(RunConfig, raw)


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise UserError(f"config file '{path}' does not exist; pass the path of a YAML file")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise UserError(f"config file '{path}' is not UTF-8 text; pass a YAML file") from None
    except yaml.YAMLError as e:
        first = str(e).splitlines()[0]
        raise UserError(f"config file '{path}' is not valid YAML ({first}); fix the file") from None
    except OSError as e:
        raise UserError(f"cannot read config file '{path}' ({e.strerror}); check its permissions") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise UserError(f"config file '{path}' must hold a mapping of sections (it holds {type(raw).__name__}); see configs/ for examples")
    return raw


class Raw(str):
    """The text of a command-line override, before it is read as the key's type."""


def from_dict(cls, raw: dict, prefix: str = ""):
    """Build dataclass `cls` from a nested dict, checking keys and coercing scalar types."""
    if not isinstance(raw, dict):
        raise UserError(f"config section '{prefix.rstrip('.')}' must be a mapping of keys (got {_shown(raw)}); e.g. {prefix}lr=1e-4")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in raw.items():
        if not isinstance(key, str) or key not in names:
            raise UserError(f"unknown config key '{prefix}{key}'; known keys here: {', '.join(sorted(names))}")
        hint = hints[key]
        if dataclasses.is_dataclass(hint) and isinstance(value, str) and getattr(hint, "_shorthand", None):
            value = {hint._shorthand: str(value)}
        if isinstance(value, str) and value.strip().lower() in getattr(cls, "_words", {}).get(key, ()):
            kwargs[key] = value.strip().lower()  # a word the key takes besides its type (train.lr=suggested)
        elif dataclasses.is_dataclass(hint):
            kwargs[key] = from_dict(hint, {} if value is None else value, f"{prefix}{key}.")
        else:
            kwargs[key] = _coerce(value, hint, f"{prefix}{key}")
    return cls(**kwargs)


def _coerce(value, hint, key: str):
    args = typing.get_args(hint)
    optional = type(None) in args
    base = next((a for a in args if a is not type(None)), hint) if args else hint
    if isinstance(value, Raw):
        text = str(value)
        if optional and text.strip().lower() in ("", "null", "none", "~"):
            return None
        if base is str:
            return text  # literal: 010 stays 010, on stays on
        if typing.get_origin(base) is list or base is list:
            value = _yaml(text, key) if text.strip().startswith("[") else text
        else:
            value = _yaml(text, key)
    if value is None:
        if optional:
            return None
        raise UserError(f"config key '{key}' needs a value ({_type_name(base)})")
    if typing.get_origin(base) is list or base is list:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise UserError(f"config key '{key}' must be a comma-separated list (got {_shown(value)})")
        return list(value)
    try:
        if base is bool:
            if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no"):
                return value.lower() in ("true", "yes")
            if not isinstance(value, bool):
                raise ValueError
            return value
        if isinstance(value, bool):  # true is not a number, even though Python says it is 1
            raise ValueError
        if base is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if base is float:
            number = float(value)  # YAML reads "3e-4" as a string
            if not math.isfinite(number):
                raise ValueError
            return number
        if base is str:
            if not isinstance(value, (str, int, float)):
                raise ValueError
            return str(value)
    except (TypeError, ValueError, OverflowError):
        raise UserError(f"config key '{key}' must be {_type_name(base)} (got {_shown(value)})") from None
    return value


def _yaml(text: str, key: str):
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        raise UserError(f"override '{key}={text}' has a value that is not valid YAML; quote it or fix it") from None


def _shown(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _type_name(t) -> str:
    return {int: "a whole number", float: "a finite number", bool: "true or false", str: "text"}.get(t, str(t))


def _split_override(text: str) -> tuple[str, Raw]:
    if "=" not in text or text.startswith("="):
        raise UserError(f"override '{text}' must look like section.key=value, e.g. train.lr=3e-4")
    key, value = text.split("=", 1)
    return key.strip(), Raw(value)


def _set_dotted(raw: dict, key: str, value) -> None:
    parts = key.split(".")
    node = raw
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise UserError(f"override '{key}': '{part}' is not a config section")
    node[parts[-1]] = value


def _check_positive(key: str, value) -> None:
    if value is None or value <= 0:
        raise UserError(f"{key} must be positive (got {value})")
