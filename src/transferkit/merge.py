"""A run's model as a plain model: LoRA updates merged into the weights, a soft prompt turned into tokens.

LoRA (Hu et al. 2021) merges exactly: W + (alpha / r) B A is one matrix again (peft's
`merge_and_unload`). A soft prompt (Lester et al. 2021) is a sequence of vectors peft puts
before every input's embeddings; the same vectors become rows of the embedding matrix under new
tokens, and the tokenizer puts those tokens first, so a plain `transformers` model and tokenizer
compute what the adapter did (the positions, the attention mask and the token types come out
the same: the prompt stands first in both).
"""

from __future__ import annotations

import json

import torch
from torch import nn

from .errors import UserError

PROMPT_TOKEN = "<transferkit_prompt_{}>"


def is_adapter(hf: nn.Module) -> bool:
    from peft import PeftModel

    return isinstance(hf, PeftModel)


def merge_adapter(hf: nn.Module, tokenizer) -> tuple[nn.Module, object]:
    """The plain model and tokenizer of a peft-wrapped `hf` (changed in place: call it last)."""
    if hf.active_peft_config.is_prompt_learning:
        return fold_prompt(hf, tokenizer)
    return hf.merge_and_unload(safe_merge=True), tokenizer  # the head in modules_to_save comes out trained


def fold_prompt(hf: nn.Module, tokenizer) -> tuple[nn.Module, object]:
    """A prompt-tuned encoder as a plain model whose tokenizer adds the prompt as its first tokens."""
    import copy

    from transformers import PreTrainedTokenizerFast

    if not getattr(tokenizer, "is_fast", False):
        raise UserError("folding a soft prompt into a plain model needs a fast tokenizer (tokenizer.json); this run's has none")
    n = hf.active_peft_config.num_virtual_tokens
    vectors = hf.get_prompt(batch_size=1)[0].detach()  # (n, C)
    model = unwrap_saved_modules(hf.base_model, hf.active_adapter)
    backend = copy.deepcopy(tokenizer.backend_tokenizer)
    backend.no_truncation()  # per-call settings of the last call, which would be saved as defaults
    backend.no_padding()
    names = [PROMPT_TOKEN.format(i) for i in range(n)]
    backend.add_special_tokens(names)
    ids = [backend.token_to_id(name) for name in names]
    backend.post_processor = _prompt_first(backend, list(zip(names, ids)))
    # The generic class: a model-specific one (BertTokenizer) rebuilds its own post-processor on
    # loading, without the prompt. The text keeps the tokens it had; the prompt comes on top, as in peft.
    plain = PreTrainedTokenizerFast(tokenizer_object=backend, model_max_length=tokenizer.model_max_length + n, **tokenizer.special_tokens_map)
    model.resize_token_embeddings(len(plain))
    with torch.no_grad():
        model.get_input_embeddings().weight[ids] = vectors.to(model.get_input_embeddings().weight.dtype)
    return model, plain


def unwrap_saved_modules(model: nn.Module, adapter: str) -> nn.Module:
    """Put each trained copy that peft keeps in a ModulesToSaveWrapper (the head) in its wrapper's place."""
    from peft.utils import ModulesToSaveWrapper

    for name, module in list(model.named_modules()):
        if isinstance(module, ModulesToSaveWrapper):
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, module.modules_to_save[adapter])
    return model


def _prompt_first(backend, tokens: list[tuple[str, int]]):
    """The tokenizer's post-processor with the prompt tokens before everything it adds (type id 0)."""
    spec = json.loads(backend.to_str())["post_processor"]
    template = _template(spec, backend)
    if template is None:
        kind = spec["type"] if spec else "none"
        raise UserError(f"this tokenizer's post-processor ({kind}) cannot put the soft prompt first; export the "
                        "adapter folder as it is (peft loads it) or train with --regime lora")  # fmt: skip
    prompt = [{"SpecialToken": {"id": name, "type_id": 0}} for name, _ in tokens]
    template["single"], template["pair"] = prompt + template["single"], prompt + template["pair"]
    template["special_tokens"] |= {name: {"id": name, "ids": [i], "tokens": [name]} for name, i in tokens}
    if spec is not None and spec["type"] == "Sequence":
        spec["processors"] = [template if p["type"] in ("TemplateProcessing", "BertProcessing", "RobertaProcessing") else p
                              for p in spec["processors"]]  # fmt: skip
        return _from_json(spec)
    return _from_json(template)


def _template(spec: dict | None, backend) -> dict | None:
    """The post-processor as a TemplateProcessing spec (BERT's and RoBERTa's rewritten as one), or None."""
    if spec is None:
        return None
    if spec["type"] == "Sequence":
        inner = [p for p in spec["processors"] if p["type"] in ("TemplateProcessing", "BertProcessing", "RobertaProcessing")]
        return _template(inner[0], backend) if len(inner) == 1 else None
    if spec["type"] == "TemplateProcessing":
        return spec
    if spec["type"] in ("BertProcessing", "RobertaProcessing"):
        (sep, sep_id), (cls, cls_id) = spec["sep"], spec["cls"]
        special = lambda token, type_id=0: {"SpecialToken": {"id": token, "type_id": type_id}}  # noqa: E731
        sequence = lambda name, type_id: {"Sequence": {"id": name, "type_id": type_id}}  # noqa: E731
        # RoBERTa puts two separators between the texts of a pair, BERT one.
        middle = [special(sep), special(sep, 1)] if spec["type"] == "RobertaProcessing" else [special(sep)]
        return {
            "type": "TemplateProcessing",
            "single": [special(cls), sequence("A", 0), special(sep)],
            "pair": [special(cls), sequence("A", 0), *middle, sequence("B", 1), special(sep, 1)],
            "special_tokens": {cls: {"id": cls, "ids": [cls_id], "tokens": [cls]}, sep: {"id": sep, "ids": [sep_id], "tokens": [sep]}},
        }
    return None


def _from_json(spec: dict):
    """A tokenizers post-processor from its JSON spec (the library builds one only through a whole tokenizer)."""
    from tokenizers import Tokenizer, models

    holder = json.loads(Tokenizer(models.WordLevel({"x": 0}, unk_token="x")).to_str())
    holder["post_processor"] = spec
    return Tokenizer.from_str(json.dumps(holder)).post_processor
