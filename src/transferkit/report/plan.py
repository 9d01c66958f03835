"""The memory plan and the advice as text: regimes side by side, what does not fit, the assumptions."""

from __future__ import annotations

from ..planning.activations import flash_attention
from ..planning.advice import Advice, DataSummary
from ..planning.architecture import Architecture
from ..planning.fixes import Fix, fewest_processes
from ..planning.memory import CUDA_CONTEXT, INT4_BYTES, Plan, Setup

PRECISION_NOTES = {
    "fp32": "fp32: weights, gradients, optimizer state and activations in 32 bits",
    "mixed-bf16": "mixed-bf16: fp32 weights, gradients and optimizer state; autocast runs matmuls in bf16 and keeps a "
    "16-bit copy of every linear weight for the backward pass (2 bytes per weight on top of the 4); norms and the "
    "residual stream stay fp32",
    "bf16": "bf16: every weight, gradient and optimizer moment in 16 bits (peft still keeps LoRA adapters and soft "
    "prompts in fp32); activations 16-bit except the fp32 inside RMSNorm",
    "int8": "int8: the blocks' linear weights quantised to 1 byte (LLM.int8, bitsandbytes), everything else in bf16; "
    "such weights cannot train, only adapters, prompts or heads; activations bf16",
    "int4": f"int4: the blocks' linear weights in NF4 with double quantisation ({INT4_BYTES:.3f} bytes each, QLoRA), "
    "everything else in bf16; such weights cannot train, only adapters, prompts or heads; activations bf16",
}
PRECISION_NOTES["mixed-fp16"] = PRECISION_NOTES["mixed-bf16"].replace("bf16", "fp16") + " (plus a GradScaler)"
OPTIMIZER_NOTES = {
    "adamw": "AdamW: two moments per trained value in the value's dtype (8 bytes per fp32 value)",
    "adamw-8bit": "8-bit AdamW (bitsandbytes): two 1-byte moments per trained value",
    "sgd": "SGD with momentum: one buffer per trained value",
}


def size(n: float) -> str:
    if not n:
        return "-"
    if n >= 2**30:
        return f"{n / 2**30:.1f} GiB"
    return f"{n / 2**20:.0f} MiB" if n >= 2**20 else f"{n / 2**10:.0f} KiB"


def count(n: int) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f}{unit}"
    return str(n)


def describe(arch: Architecture, s: Setup) -> str:
    heads = f"{arch.heads} heads" + (f" ({arch.kv_heads} key/value)" if arch.kv_heads != arch.heads else "")
    head = {"classify": f"a {s.num_labels}-way classifier head", "span": "a span head (start and end logits per token)",
            "token": f"a {s.num_labels}-tag token head", "lm": "a language-model head"}[s.task]  # fmt: skip
    return (
        f"{arch.model_type} {arch.kind}: {arch.layers} blocks, hidden {arch.hidden}, {heads}, MLP {arch.intermediate}, "
        f"vocabulary {arch.vocab:,}; {arch.parameters(s.task, s.num_labels):,} parameters with {head}"
    )


def assumptions(arch: Architecture, s: Setup) -> list[str]:
    """What every number of the plan rests on, in words."""
    per_pass = f"{s.batch_size} examples x {s.seq_len} tokens per forward pass, every example at full length"
    if s.accumulation > 1:
        per_pass += f"; gradients accumulated over {s.accumulation} micro-batches (they stay alive through the forward pass)"
    targets = ", ".join(s.lora_targets) if s.lora_targets else "every linear layer of every block"
    lines = [
        describe(arch, s),
        processes_note(s),
        PRECISION_NOTES[s.precision],
        OPTIMIZER_NOTES[s.optimizer],
        per_pass,
        "peak = weights + optimizer state + the larger of (activations + backward working memory) and (gradients + "
        "optimizer-step working memory): gradients grow as the backward pass frees activations, and are freed after "
        "each step (zero_grad(set_to_none=True))",
        "activations: what autograd keeps, tensor by tensor, for the Hugging Face implementation"
        + (" (gradient checkpointing: each block's input, plus one block recomputed at a time)" if s.gradient_checkpointing else ""),
        (
            "attention: PyTorch's flash / memory-efficient kernel, no seq x seq scores kept"
            if flash_attention(arch, s)
            else "attention: the math kernel (a CPU with attention dropout), keeping three seq x seq tensors per head"
        ),
        f"lora: rank {s.lora_r} on {targets}, dropout {s.lora_dropout}; the task head trains in full",
        f"prompt: {s.prompt_tokens} soft-prompt tokens before every input; the task head trains",
        "freeze: the backbone runs once under no_grad and the head trains on its cached features (kept in host "
        "memory on a GPU, so counted in the peak only on a CPU)",
    ]
    if s.device == "cuda":
        lines.append(
            f"fits: peak + {size(CUDA_CONTEXT)} for the CUDA context within the budget; PyTorch's caching allocator "
            "may hold 5-10% more than this (fragmentation); dropout keeps 1-byte masks"
        )
    else:
        lines.append(
            "cpu: peak memory is the process's resident memory above what it held before loading the model; dropout "
            "keeps full-size masks; glibc may keep freed memory (MiniLM full fine-tuning: +41%) unless "
            "MALLOC_MMAP_THRESHOLD_=131072 is set"
        )
    lines.append("not counted: the tokenizer, the data, Python objects")
    return lines


def processes_note(s: Setup) -> str:
    """What the figures are per: one device, DDP replicas or FSDP shards."""
    if s.processes == 1 and s.sharding == "none":
        return "one process on one device (--processes 1 --sharding none)"
    if s.processes == 1:
        return ("--sharding fsdp on one process is one shard: nothing is split (PyTorch runs FULL_SHARD as NO_SHARD "
                "at world size 1), so the figures are those of one device")
    batch = f"every figure is per device; --batch {s.batch_size} is each process's micro-batch, so activations do not shrink"
    if s.sharding == "none":
        return (f"{s.processes} processes with DDP (--sharding none): {batch}; each device holds a full replica of "
                "the weights, gradients and optimizer state, plus DDP's all-reduce buckets: a second copy of the "
                "gradients for the whole run (accelerate's default gradient_as_bucket_view=False)")
    return (f"{s.processes} processes with FSDP full sharding (ZeRO-3): {batch}; weights, gradients and optimizer "
            f"state are split {s.processes} ways; gathered: accelerate's transformer_based_wrap (one FSDP unit per "
            "block), so the embeddings and head stay gathered through forward and backward and two blocks at a time "
            "(one prefetched) are gathered in 16 bits under mixed precision, plus one unit's full gradients before "
            "reduce-scatter (with accelerate's default NO_WRAP the whole model is one unit and is gathered at once)")


ROWS = [
    ("trainable parameters", lambda p: count(p.trainable)),
    ("weights", lambda p: size(p.weights)),
    ("16-bit weight copies", lambda p: size(p.weight_copies)),
    ("gradients", lambda p: size(p.gradients)),
    ("optimizer state", lambda p: size(p.optimizer)),
    ("activations", lambda p: size(p.activations)),
    ("feature cache", lambda p: size(p.feature_cache)),
    ("gathered (FSDP)", lambda p: size(p.gathered)),
    ("DDP buckets", lambda p: size(p.buckets)),
    ("working memory", lambda p: size(p.working)),
    ("peak", lambda p: size(p.peak)),
    ("peak while", lambda p: p.peak_phase),
]


def format_plans(
    plans: dict[str, Plan], budget: int | None, fixes: dict[str, Fix], spread: dict[str, str] | None = None
) -> str:
    """A table with one column per regime, then what to change where one does not fit."""
    optional = {
        "feature cache": "feature_cache",
        "16-bit weight copies": "weight_copies",
        "gathered (FSDP)": "gathered",
        "DDP buckets": "buckets",
    }
    rows = [r for r in ROWS if r[0] not in optional or any(getattr(p, optional[r[0]]) for p in plans.values())]
    width = max(12, *(len(p.peak_phase) + 2 for p in plans.values()))
    lines = [f"{'':<22}" + "".join(f"{r:>{width}}" for r in plans)]
    s = next(iter(plans.values())).setup
    if s.processes > 1:
        lines.insert(0, f"per device, on each of {s.processes} processes ({'FSDP full shard' if s.shards > 1 else 'DDP'}):")
    for label, value in rows:
        lines.append(f"{label:<22}" + "".join(f"{value(p) if p.possible else 'n/a':>{width}}" for p in plans.values()))
    if budget is not None:
        cells = ["yes" if p.fits(budget) else ("n/a" if not p.possible else "NO") for p in plans.values()]
        lines.append(f"{'fits ' + size(budget):<22}" + "".join(f"{c:>{width}}" for c in cells))
    for regime, p in plans.items():
        if not p.possible:
            lines.append(f"{regime}: not possible: {p.why_not}")
        elif budget is not None and not p.fits(budget):
            lines.append(_not_fitting(regime, p, budget, fixes[regime]))
            if spread and regime in spread:
                lines.append(spread[regime])
    return "\n".join(lines)


def _not_fitting(regime: str, p: Plan, budget: int, fix: Fix) -> str:
    """`fix` is cheapest_fix's answer, or lowest_memory's where nothing fits."""
    head = f"{regime} does not fit in {size(budget)}: it needs {size(p.peak)}"
    if p.setup.device == "cuda":
        head += f" + {size(CUDA_CONTEXT)} for the CUDA context"
    if not fix.plan.fits(budget):
        return (
            f"{head}. Nothing in transferkit's list of changes makes it fit: even {' + '.join(fix.changes)} needs "
            f"{size(fix.plan.peak)}. Use a GPU with more memory, several GPUs, or a smaller model"
        )
    if len(fix.changes) == 1:
        return f"{head}. Cheapest change that fits: {fix.changes[0]} -> {size(fix.plan.peak)}"
    return f"{head}. Cheapest changes that fit together: {' + '.join(fix.changes)} -> {size(fix.plan.peak)}"


def devices_needed(arch: Architecture, regime: str, s: Setup, budget: int) -> tuple[Plan | None, Plan | None]:
    """The fewest FSDP processes for `s` as it is, and with gradient checkpointing where it is off."""
    as_is = fewest_processes(arch, s, budget)
    if s.gradient_checkpointing or regime == "freeze" or (as_is is not None and as_is.setup.processes == 1):
        return as_is, None
    from dataclasses import replace

    return as_is, fewest_processes(arch, replace(s, gradient_checkpointing=True), budget)


def format_devices(arch: Architecture, regime: str, s: Setup, budget: int, found: tuple[Plan | None, Plan | None]) -> str:
    """One line: how many devices of `budget` the regime needs when sharded with FSDP."""
    as_is, checkpointed = found
    unit = "GPUs" if s.device == "cuda" else "processes"
    what = f"{count(arch.parameters(s.task, s.num_labels))} {regime} {'fine-tuning' if regime == 'full' else 'training'} in {s.precision}"
    if as_is is not None:
        line = (f"{what} needs at least {as_is.setup.processes} {unit} of {size(budget)} with --sharding fsdp "
                f"({size(as_is.peak)} per device)")
    else:
        line = (f"{what} fits no number of {unit} of {size(budget)} as it is: activations and the gathered blocks "
                "stay on every device whatever --processes is")
    if checkpointed is not None:
        line += (f"; with gradient checkpointing, at least {checkpointed.setup.processes} "
                 f"({size(checkpointed.peak)} per device)")
    return line


def format_advice(data: DataSummary, advice: Advice) -> str:
    counts = ", ".join(f"{name} {n:,}" for name, n in list(data.class_counts.items())[:8])
    more = ", ..." if len(data.class_counts) > 8 else ""
    classes = f" in {len(data.class_counts)} classes ({counts}{more})" if data.class_counts else ""
    lines = [f"data: {data.examples:,} {data.unit}{classes}"]
    if data.shift is not None:
        s = data.shift
        lines.append(
            f"text under the model's tokenizer: {s.pieces_per_word:.2f} pieces per word, {s.split_words:.1%} of words "
            f"split into 3+ pieces, {s.unknown_tokens:.2%} unknown tokens"
        )
    lines.append("advice:")
    for verdict in ("recommended", "possible", "not advised", "does not fit", "not applicable"):
        regimes = [r for r in advice.ranking if advice.verdicts[r] == verdict]
        if regimes:
            lines.append(f"  {verdict + ':':<16}{', '.join(regimes)}")
    lines.append("because:")
    lines += [f"  - {f.rule}: {f.reason}" for f in advice.findings]
    lines += [f"  - {note}" for note in advice.notes]
    return "\n".join(lines)
