"""A model's shapes and exact parameter count, from its config.json alone.

No weights are read, so a plan works for models far larger than the machine. Each supported
family is described by the linear layers of one transformer block (with the activation each one
reads, which the memory plan needs) plus the few parameters around them (norms, embeddings,
heads). `tests/test_plan.py` checks every family against `sum(p.numel())` of a real model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .. import assets
from ..errors import UserError

# Post-LN BERT-style encoders (embeddings + LayerNorm, GELU MLP, dropout everywhere).
BERT_LIKE = ("bert", "roberta", "xlm-roberta", "camembert", "electra")
# Pre-norm decoders with RMSNorm, rotary positions and a gated (SwiGLU) MLP.
LLAMA_LIKE = ("llama", "mistral", "qwen2", "qwen3", "gemma", "phi3")
SUPPORTED = (*BERT_LIKE, "distilbert", *LLAMA_LIKE, "gpt2")


@dataclass(frozen=True)
class Linear:
    """One linear layer of a transformer block."""

    name: str
    """The module's own name, as LoRA's `target_modules` matches it."""
    inputs: int
    outputs: int
    bias: bool
    source: str
    """The activation it reads: "x" (block input, after the norm in pre-norm models), "ctx"
    (attention output), "x2" (input of the MLP), "act" (the MLP's hidden activation). Linears
    that read the same source share one saved input."""

    @property
    def parameters(self) -> int:
        return self.inputs * self.outputs + (self.outputs if self.bias else 0)


@dataclass(frozen=True)
class Architecture:
    """What the memory plan needs to know about a model, read from its config."""

    model_type: str
    kind: str
    """"encoder" (BERT-like, post-LN) or "decoder" (pre-norm, causal)."""

    @property
    def is_decoder(self) -> bool:
        return self.kind == "decoder"
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    block: tuple[Linear, ...]
    """The linear layers of one transformer block."""
    block_other: int
    """Parameters of one block outside its linear layers (norm weights and biases)."""
    embedding: int
    """Token, position and token-type embeddings with their norm and projection."""
    final_norm: int
    """The norm after the last block (pre-norm models); 0 for post-LN encoders."""
    pooler: int
    """A pooler that the bare backbone carries (BERT, RoBERTa); classifiers may drop or reuse it."""
    tied_embeddings: bool
    """The language-model head reuses the input embedding matrix."""
    attention_dropout: float
    hidden_dropout: float
    rms_norm: bool
    """RMSNorm (weight only, computed in fp32 by Hugging Face) rather than LayerNorm."""
    mlp_saves: int
    """Intermediate-sized tensors the MLP's nonlinearity keeps for the backward pass: 1 for a
    native GELU, 4 for GPT-2's tanh GELU written in Python, 3 for a gated MLP (gate, activation
    and up-projection outputs)."""

    @property
    def block_linear_weights(self) -> int:
        """Weight-matrix entries of all blocks: the part 8-bit and 4-bit loading quantises."""
        return self.layers * sum(lin.inputs * lin.outputs for lin in self.block)

    @property
    def block_parameters(self) -> int:
        return sum(lin.parameters for lin in self.block) + self.block_other

    @property
    def backbone(self) -> int:
        """Embeddings, every block and the final norm (no pooler, no head)."""
        return self.embedding + self.layers * self.block_parameters + self.final_norm

    def head(self, task: str, num_labels: int) -> int:
        """Parameters of the task head: "classify" (a sequence classifier), "span" (extractive QA's
        start and end logits per token), "token" (a tag per token), "lm" or "none"."""
        h, k = self.hidden, num_labels
        if task == "none":
            return self.pooler
        if task == "lm":
            return 0 if self.tied_embeddings else self.vocab * h
        # Token-level heads are one linear layer on every token; an encoder drops its pooler for them.
        if task == "span":
            return h * 2 + 2
        if task == "token":
            return h * k + k
        if self.kind == "decoder":
            return h * k  # `score`: one bias-free linear layer on the last token
        # BERT keeps its pooler as the hidden layer of its head; the others add a dense layer.
        return (h * h + h) + (h * k + k)

    def parameters(self, task: str = "classify", num_labels: int = 2) -> int:
        """Exact parameter count of the backbone plus the head for `task`."""
        return self.backbone + self.head(task, num_labels)


def locate(name_or_path: str) -> tuple[Path, str | None]:
    """(folder, GGUF file name or None) of a built-in name, a model folder, a config.json or a .gguf file."""
    location = assets.locate_model(name_or_path)
    if location.gguf is not None:
        return location.gguf.parent, location.gguf.name
    if location.path.is_file() or (location.path / "config.json").is_file():
        return location.folder, None
    raise UserError(f"model folder '{location.path}' has no config.json (nor a .gguf file); pass a Hugging Face model folder")


def load_config(name_or_path: str):
    """A transformers config from a built-in name, a model folder, a config.json or a GGUF file."""
    from transformers import AutoConfig

    folder, gguf = locate(name_or_path)
    path = Path(name_or_path).expanduser()
    source = path if path.is_file() and path.suffix == ".json" else folder
    try:
        if gguf:
            # Reads the GGUF header only; the tensors stay on disk.
            return AutoConfig.from_pretrained(folder, gguf_file=gguf)
        return AutoConfig.from_pretrained(source)
    except (ValueError, KeyError, OSError, json.JSONDecodeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"cannot read the model config at '{source}' ({first}); pass a folder with a valid config.json") from None


def from_config(config) -> Architecture:
    """The Architecture of a transformers config; UserError for families the planner does not know."""
    kind = config.model_type
    if kind in BERT_LIKE:
        return _bert_like(config)
    if kind == "distilbert":
        return _distilbert(config)
    if kind in LLAMA_LIKE:
        return _llama_like(config)
    if kind == "gpt2":
        return _gpt2(config)
    raise UserError(f"plan does not know the '{kind}' architecture yet; supported: {', '.join(SUPPORTED)}")


def _bert_like(c) -> Architecture:
    h, i = c.hidden_size, c.intermediate_size
    e = getattr(c, "embedding_size", None) or h  # ELECTRA's embeddings can be narrower than the blocks
    block = (
        Linear("query", h, h, True, "x"),
        Linear("key", h, h, True, "x"),
        Linear("value", h, h, True, "x"),
        Linear("dense", h, h, True, "ctx"),  # attention.output.dense
        Linear("dense", h, i, True, "x2"),  # intermediate.dense
        Linear("dense", i, h, True, "act"),  # output.dense
    )
    embedding = (c.vocab_size + c.max_position_embeddings + c.type_vocab_size) * e + 2 * e
    if e != h:
        embedding += e * h + h
    return Architecture(
        model_type=c.model_type,
        kind="encoder",
        hidden=h,
        layers=c.num_hidden_layers,
        heads=c.num_attention_heads,
        kv_heads=c.num_attention_heads,
        head_dim=h // c.num_attention_heads,
        intermediate=i,
        vocab=c.vocab_size,
        block=block,
        block_other=2 * 2 * h,  # two LayerNorms, weight and bias
        embedding=embedding,
        final_norm=0,
        pooler=0 if c.model_type == "electra" else h * h + h,
        tied_embeddings=True,
        attention_dropout=c.attention_probs_dropout_prob,
        hidden_dropout=c.hidden_dropout_prob,
        rms_norm=False,
        mlp_saves=1,
    )


def _distilbert(c) -> Architecture:
    h, i = c.dim, c.hidden_dim
    block = (
        Linear("q_lin", h, h, True, "x"),
        Linear("k_lin", h, h, True, "x"),
        Linear("v_lin", h, h, True, "x"),
        Linear("out_lin", h, h, True, "ctx"),
        Linear("lin1", h, i, True, "x2"),
        Linear("lin2", i, h, True, "act"),
    )
    return Architecture(
        model_type="distilbert",
        kind="encoder",
        hidden=h,
        layers=c.n_layers,
        heads=c.n_heads,
        kv_heads=c.n_heads,
        head_dim=h // c.n_heads,
        intermediate=i,
        vocab=c.vocab_size,
        block=block,
        block_other=2 * 2 * h,
        embedding=(c.vocab_size + c.max_position_embeddings) * h + 2 * h,
        final_norm=0,
        pooler=0,
        tied_embeddings=True,
        attention_dropout=c.attention_dropout,
        hidden_dropout=c.dropout,
        rms_norm=False,
        mlp_saves=1,
    )


def _llama_like(c) -> Architecture:
    h, a, i = c.hidden_size, c.num_attention_heads, c.intermediate_size
    g = getattr(c, "num_key_value_heads", None) or a  # grouped-query attention: fewer K/V heads
    d = getattr(c, "head_dim", None) or h // a
    bias = bool(getattr(c, "attention_bias", False))
    qkv_bias = bias or c.model_type == "qwen2"  # Qwen2 always has Q/K/V biases, never an O bias
    mlp_bias = bool(getattr(c, "mlp_bias", False))
    if c.model_type == "phi3":  # fused projections
        block = (
            Linear("qkv_proj", h, (a + 2 * g) * d, False, "x"),
            Linear("o_proj", a * d, h, False, "ctx"),
            Linear("gate_up_proj", h, 2 * i, False, "x2"),
            Linear("down_proj", i, h, False, "act"),
        )
    else:
        block = (
            Linear("q_proj", h, a * d, qkv_bias, "x"),
            Linear("k_proj", h, g * d, qkv_bias, "x"),
            Linear("v_proj", h, g * d, qkv_bias, "x"),
            Linear("o_proj", a * d, h, bias, "ctx"),
            Linear("gate_proj", h, i, mlp_bias, "x2"),
            Linear("up_proj", h, i, mlp_bias, "x2"),
            Linear("down_proj", i, h, mlp_bias, "act"),
        )
    qk_norm = 2 * d if c.model_type == "qwen3" else 0
    return Architecture(
        model_type=c.model_type,
        kind="decoder",
        hidden=h,
        layers=c.num_hidden_layers,
        heads=a,
        kv_heads=g,
        head_dim=d,
        intermediate=i,
        vocab=c.vocab_size,
        block=block,
        block_other=2 * h + qk_norm,
        embedding=c.vocab_size * h,
        final_norm=h,
        pooler=0,
        tied_embeddings=bool(getattr(c, "tie_word_embeddings", False)),
        attention_dropout=float(getattr(c, "attention_dropout", 0.0) or 0.0),
        hidden_dropout=0.0,
        rms_norm=True,
        mlp_saves=3,
    )


def _gpt2(c) -> Architecture:
    h = c.n_embd
    i = c.n_inner or 4 * h
    block = (
        Linear("c_attn", h, 3 * h, True, "x"),
        Linear("c_proj", h, h, True, "ctx"),
        Linear("c_fc", h, i, True, "x2"),
        Linear("c_proj", i, h, True, "act"),
    )
    return Architecture(
        model_type="gpt2",
        kind="decoder",
        hidden=h,
        layers=c.n_layer,
        heads=c.n_head,
        kv_heads=c.n_head,
        head_dim=h // c.n_head,
        intermediate=i,
        vocab=c.vocab_size,
        block=block,
        block_other=2 * 2 * h,
        embedding=(c.vocab_size + c.n_positions) * h,
        final_norm=2 * h,
        pooler=0,
        tied_embeddings=bool(getattr(c, "tie_word_embeddings", True)),
        attention_dropout=c.attn_pdrop,
        hidden_dropout=c.resid_pdrop,
        rms_norm=False,
        mlp_saves=4 if c.activation_function == "gelu_new" else 1,
    )


def lora_targets(arch: Architecture, names: tuple[str, ...]) -> list[Linear]:
    """The linear layers of a block that LoRA adapts: those named, or every one."""
    if not names:
        return list(arch.block)
    chosen = [lin for lin in arch.block if lin.name in names]
    if not chosen:
        known = ", ".join(dict.fromkeys(lin.name for lin in arch.block))
        raise UserError(f"--lora-targets matches no linear layer of a {arch.model_type} block; its layers are: {known}")
    return chosen
