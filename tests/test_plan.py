"""The memory plan: exact parameter counts, activations against what autograd keeps, published
figures, the search for a change that fits, advice, the CLI contract, and (slow) measured peaks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers as T

from transferkit import assets
from transferkit.architecture import from_config, load_config

TINY = dict(vocab_size=99, num_hidden_layers=2, pad_token_id=0)
DECODER = dict(hidden_size=32, num_attention_heads=4, num_key_value_heads=2, intermediate_size=48, **TINY)
ENCODER = dict(hidden_size=32, num_attention_heads=2, intermediate_size=64, max_position_embeddings=40, **TINY)
FAMILIES = {
    "bert": T.BertConfig(**ENCODER),
    "roberta": T.RobertaConfig(**ENCODER, type_vocab_size=1),
    "xlm-roberta": T.XLMRobertaConfig(**ENCODER),
    "electra": T.ElectraConfig(**ENCODER, embedding_size=16),
    "distilbert": T.DistilBertConfig(vocab_size=99, dim=32, n_layers=2, n_heads=2, hidden_dim=64, max_position_embeddings=40),
    "llama": T.LlamaConfig(**DECODER),
    "llama-tied-with-biases": T.LlamaConfig(**DECODER, tie_word_embeddings=True, attention_bias=True, mlp_bias=True),
    "mistral": T.MistralConfig(**DECODER, head_dim=16),
    "qwen2": T.Qwen2Config(**DECODER),
    "qwen3": T.Qwen3Config(**DECODER, head_dim=16),
    "gemma": T.GemmaConfig(**{**DECODER, "num_key_value_heads": 1}, head_dim=16),
    "phi3": T.Phi3Config(**DECODER),
    "gpt2": T.GPT2Config(vocab_size=99, n_embd=32, n_layer=2, n_head=2, n_positions=40, pad_token_id=0, bos_token_id=0, eos_token_id=0),
}


def numel(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("family", FAMILIES)
def test_parameter_count_is_exact(family):
    config = FAMILIES[family]
    config.num_labels = 3
    arch = from_config(config)
    assert arch.parameters("none") == numel(T.AutoModel.from_config(config))
    assert arch.parameters("classify", 3) == numel(T.AutoModelForSequenceClassification.from_config(config))
    if arch.kind == "decoder":
        assert arch.parameters("lm") == numel(T.AutoModelForCausalLM.from_config(config))


def write_config(folder: Path, **fields) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(fields))
    return folder


def test_count_from_a_written_config_json(tmp_path):
    folder = write_config(
        tmp_path / "tiny-llama",
        model_type="llama",
        hidden_size=64,
        intermediate_size=160,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=128,
        tie_word_embeddings=True,
    )
    config = load_config(str(folder))
    assert from_config(config).parameters("lm") == numel(T.AutoModelForCausalLM.from_config(config))
    # A path to the config.json itself works too.
    assert from_config(load_config(str(folder / "config.json"))).hidden == 64


@pytest.mark.skipif(not assets.MODELS["minilm-l6"].installed, reason="MiniLM is not installed")
def test_minilm_count_matches_the_real_model():
    folder = assets.MODELS["minilm-l6"].path()
    arch = from_config(load_config("minilm-l6"))
    assert arch.parameters("none") == numel(T.AutoModel.from_pretrained(folder)) == 22_713_216
    real = T.AutoModelForSequenceClassification.from_pretrained(folder, num_labels=5)
    assert arch.parameters("classify", 5) == numel(real)
