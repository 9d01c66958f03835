"""Memory plan of a fine-tuning run, from the model's config alone.

peak = weights + optimizer state
       + the larger of (activations + backward working memory)      (forward and backward)
                   and (gradients + optimizer-step working memory)  (optimizer step)

Gradients are allocated as the backward pass frees activations and are freed again after each
step (`zero_grad(set_to_none=True)`), so the two are not alive at once; with gradient
accumulation they are, and both count. Activations are what autograd keeps for the backward
pass, counted tensor by tensor for the Hugging Face implementations in `activations.py`.
The frozen regime (`freeze`) runs the backbone once without autograd and trains only the head
on the cached features, so it needs the weights plus one forward pass's working memory.

Every figure is per device. On N processes without sharding (DDP) each device holds a full
replica, plus DDP's all-reduce buckets: a second copy of every gradient, since accelerate keeps
PyTorch's default `gradient_as_bucket_view=False`. With FSDP full sharding (ZeRO-3) each device
holds 1/N of the weights, gradients and optimizer state; activations do not shrink (each device
runs its own micro-batch), and the forward and backward passes gather full weights one block at
a time (`gathered`).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

from .activations import block_bytes, inference_bytes, largest_transient, outside_blocks_bytes
from .architecture import Architecture, lora_targets
from ..config import DEFAULT_MAX_LENGTH, ModelConfig
from ..errors import UserError
from ..methods import lora, prompt

REGIMES = ("full", "freeze", "lora", "prompt")
PRECISIONS = ("fp32", "mixed-bf16", "mixed-fp16", "bf16", "int8", "int4")
OPTIMIZERS = ("adamw", "adamw-8bit", "sgd")
TASKS = ("classify", "span", "token", "lm")
TOKEN_HEADS = ("span", "token")  # a linear layer on every token (extractive QA, tagging)
DEVICES = ("cuda", "cpu")
SHARDINGS = ("none", "fsdp")

# Bytes per weight once quantised by bitsandbytes. int8: one byte plus an fp32 scale per row
# (LLM.int8, Dettmers et al. 2022). int4: NF4 with double quantisation, 4.127 bits per weight
# (QLoRA, Dettmers et al. 2023).
INT4_BYTES = 4.127 / 8
CUDA_CONTEXT = 1 << 30
"""Kept free for the CUDA context and kernels, which live outside PyTorch's allocator."""


@dataclass(frozen=True)
class Setup:
    """What a run would do: the knobs that change its memory."""

    regime: str = "full"
    """full, freeze (head on cached features), lora or prompt."""
    precision: str = "mixed-bf16"
    """fp32; mixed-bf16 / mixed-fp16 (fp32 weights, 16-bit autocast); bf16 (pure 16-bit);
    int8 / int4 (frozen weights quantised by bitsandbytes, 16-bit compute)."""
    optimizer: str = "adamw"
    """adamw, adamw-8bit (bitsandbytes) or sgd (with momentum)."""
    batch_size: int = 16
    """Examples per forward pass (the micro-batch)."""
    seq_len: int = DEFAULT_MAX_LENGTH
    """Tokens per example, padded or truncated."""
    gradient_checkpointing: bool = False
    """Keep only each block's input and recompute the block in the backward pass."""
    accumulation: int = 1
    """Micro-batches per optimizer step; above 1, gradients stay alive through the forward pass."""
    lora_r: int = lora.Config.r
    """LoRA rank (transferkit's default, `methods/lora.py`)."""
    lora_targets: tuple[str, ...] = ()
    """Linear-layer names to adapt; empty: every linear layer of the blocks ("all-linear")."""
    lora_dropout: float = lora.Config.dropout
    """Dropout on the adapters' input: with it, autograd keeps a mask and a copy of each input."""
    prompt_tokens: int = prompt.Config.num_virtual_tokens
    """Soft-prompt length (transferkit's default, `methods/prompt.py`)."""
    task: str = "classify"
    """classify (a sequence classifier), span (extractive QA: start and end logits per token),
    token (a tag per token) or lm (next-token logits)."""
    num_labels: int = 2
    device: str = "cuda"
    """cuda or cpu: which attention kernel and dropout masks autograd keeps differ."""
    attention_dropout: float | None = ModelConfig.attention_dropout
    """Dropout on the attention weights while training: transferkit's default (off), or None for
    the model's own. On a CPU any such dropout sends attention down the math kernel."""
    examples: int | None = None
    """Examples whose features the frozen regime caches (all splits); None: not counted."""
    processes: int = 1
    """Data-parallel processes, one device each; `batch_size` is each one's micro-batch."""
    sharding: str = "none"
    """none (DDP: a full replica per device) or fsdp (full shard: weights, gradients and
    optimizer state split `processes` ways)."""

    def __post_init__(self):
        if self.processes < 1:
            raise UserError(f"--processes must be at least 1 (got {self.processes})")
        for name, allowed in (
            ("regime", REGIMES),
            ("precision", PRECISIONS),
            ("optimizer", OPTIMIZERS),
            ("task", TASKS),
            ("device", DEVICES),
            ("sharding", SHARDINGS),
        ):
            if getattr(self, name) not in allowed:
                raise UserError(f"--{name} must be one of {', '.join(allowed)} (got '{getattr(self, name)}')")
        for name in ("batch_size", "seq_len", "accumulation", "lora_r", "prompt_tokens", "num_labels"):
            if getattr(self, name) < 1:
                raise UserError(f"{name.replace('_', ' ')} must be at least 1 (got {getattr(self, name)})")

    @property
    def mixed(self) -> bool:
        return self.precision.startswith("mixed")

    @property
    def quantized(self) -> bool:
        return self.precision in ("int8", "int4")

    @property
    def shards(self) -> int:
        """Ways the weights, gradients and optimizer state are split. FSDP on one process is one
        shard: PyTorch runs FULL_SHARD as NO_SHARD at world size 1."""
        return self.processes if self.sharding == "fsdp" else 1

    @property
    def ddp(self) -> bool:
        return self.processes > 1 and self.sharding == "none"


@dataclass
class Plan:
    """Memory of one setup, in bytes, with what it rests on."""

    setup: Setup
    parameters: int
    """Parameters of the model being trained (backbone and task head)."""
    trainable: int
    weights: int
    """All weights as stored (with peft's adapters and its copy of the head)."""
    weight_copies: int
    """16-bit copies of the linear weights that autocast makes and keeps for the backward pass
    (mixed precision only; gone by the optimizer step)."""
    gradients: int
    optimizer: int
    activations: int
    """What autograd keeps for the backward pass (frozen regime: one forward pass, no autograd)."""
    feature_cache: int
    """The frozen regime's cached features (in host memory on a GPU, so counted only on a CPU)."""
    backward_work: int
    """Transient gradients of the largest activations during the backward pass."""
    step_work: int
    """Temporaries of the optimizer step (a parameter-sized buffer for foreach AdamW on a GPU)."""
    peak: int
    peak_phase: str
    gathered: int = 0
    """FSDP: full weights gathered for the forward and backward passes (the blocks-outside part,
    the block computing and the one prefetched) and one unit's full gradients before they are
    reduce-scattered."""
    buckets: int = 0
    """DDP: the all-reduce buckets, a copy of every gradient, allocated for the whole run."""
    possible: bool = True
    why_not: str = ""
    """Why the setup cannot run at all (8-bit or 4-bit weights do not train directly)."""

    @property
    def working(self) -> int:
        """The working memory of the phase that sets the peak."""
        return {"forward/backward": self.backward_work, "feature caching": 0}.get(self.peak_phase, self.step_work)

    def fits(self, budget_bytes: int) -> bool:
        reserve = CUDA_CONTEXT if self.setup.device == "cuda" else 0
        return self.possible and self.peak + reserve <= budget_bytes

    def to_dict(self) -> dict:
        return asdict(self)


_UNITS = {"k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40, "kb": 1e3, "mb": 1e6, "gb": 1e9, "tb": 1e12}


def parse_memory(text: str) -> int:
    """Bytes in "24GiB", "24GB" (10^9), "80G" or a bare "24" (GiB, like GPU spec sheets' "80G")."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([kmgt](?:i?b)?)?\s*", text.lower())
    if not match or float(match.group(1)) <= 0:
        raise UserError(f"--gpu-memory '{text}' is not a memory size; write it like 24GiB, 24GB, 80G or 24 (GiB)")
    unit = (match.group(2) or "g").replace("ib", "")
    return int(float(match.group(1)) * _UNITS[unit])


def lora_parameters(arch: Architecture, setup: Setup) -> int:
    """Parameters LoRA adds: r * (in + out) for each targeted linear layer of every block."""
    return arch.layers * sum(setup.lora_r * (lin.inputs + lin.outputs) for lin in lora_targets(arch, setup.lora_targets))


def plan(arch: Architecture, setup: Setup) -> Plan:
    """The memory plan of `setup` on `arch`."""
    s = setup
    total = arch.parameters(s.task, s.num_labels)
    # A task head always trains; an LM head trains only in full fine-tuning (or alone, in the
    # frozen regime, when it is not tied to the embeddings).
    head = arch.head(s.task, s.num_labels) if s.task != "lm" or s.regime == "freeze" else 0
    model_bytes = 4 if s.precision == "fp32" or s.mixed else 2  # a weight that is not quantised
    # (count, bytes per value) of what trains: gradients and optimizer state take the parameter's dtype.
    groups, extra_weights = _trainable_groups(arch, s, head, model_bytes)
    possible, why_not = True, ""
    if s.quantized and s.regime == "full":
        possible, why_not = False, f"{s.precision} weights cannot be trained directly; use --regime lora (QLoRA)"
    if not sum(n for n, _ in groups):
        possible, why_not = False, "nothing to train: the LM head is tied to the embeddings; use full, lora or prompt"

    weights = _weight_bytes(arch, s, total, model_bytes) + extra_weights
    copies = _weight_copies(arch, s)
    gradients = sum(n * b for n, b in groups)
    optimizer = sum(n * _state_bytes(s.optimizer, b) for n, b in groups)
    step_work = _step_work(arch, s, groups)
    gathered, buckets = 0, gradients if s.ddp else 0
    if s.shards > 1:
        gathered = _gathered(arch, s, total, weights, _trainable_units(arch, s, head))
        copies = 0  # FSDP's MixedPrecision gathers the weights in 16 bits: autocast has nothing to cast
        weights, gradients, optimizer, step_work = (x / s.shards for x in (weights, gradients, optimizer, step_work))
    cache = 0
    if s.regime == "freeze":
        activations = inference_bytes(arch, s)
        if s.examples:
            # fp32 features, moved to host memory: one vector per example, or per token for a token-level head.
            cache = s.examples * arch.hidden * 4 * (s.seq_len if s.task in TOKEN_HEADS else 1)
        work = s.batch_size * 4 * arch.hidden * (s.seq_len if s.task in TOKEN_HEADS else 1)  # the head's own backward pass
        on_device_cache = cache if s.device == "cpu" else 0
        caching = weights + activations + gathered + buckets
        head_training = weights + on_device_cache + gradients + optimizer + step_work + buckets
        peak, phase = max((caching, "feature caching"), (head_training, "head training"))
    else:
        activations, work = _training_activations(arch, s)
        keep_grads = gradients if s.accumulation > 1 else 0
        backward = weights + copies + optimizer + activations + work + keep_grads + gathered + buckets
        step = weights + optimizer + gradients + step_work + buckets
        peak, phase = max((backward, "forward/backward"), (step, "optimizer step"))
    return Plan(
        setup=s,
        parameters=total,
        trainable=sum(n for n, _ in groups),
        weights=int(weights),
        weight_copies=int(copies),
        gradients=int(gradients),
        optimizer=int(optimizer),
        activations=int(activations),
        feature_cache=int(cache),
        backward_work=int(work),
        step_work=int(step_work),
        peak=int(peak),
        peak_phase=phase,
        gathered=int(gathered),
        buckets=int(buckets),
        possible=possible,
        why_not=why_not,
    )


def _trainable_groups(arch: Architecture, s: Setup, head: int, model_bytes: int):
    """What trains as (count, bytes per value), and the weights that adds to the model's."""
    if s.regime == "full":
        return [(arch.parameters(s.task, s.num_labels), model_bytes)], 0
    if s.regime == "freeze":
        return [(head, model_bytes)], 0
    # peft keeps adapters and soft prompts in fp32 whatever the model's dtype, and trains a copy
    # of the task head (`modules_to_save`), so the head is stored twice.
    added = lora_parameters(arch, s) if s.regime == "lora" else s.prompt_tokens * arch.hidden
    return [(added, 4), (head, model_bytes)], added * 4 + head * model_bytes


def _trainable_units(arch: Architecture, s: Setup, head: int) -> tuple[int, int]:
    """Values that train in the unit outside the blocks and in one block, as FSDP wraps them."""
    if s.regime == "full":
        total = arch.parameters(s.task, s.num_labels)
        return total - arch.layers * arch.block_parameters, arch.block_parameters
    if s.regime == "lora":
        return head, lora_parameters(arch, s) // arch.layers
    if s.regime == "prompt":
        return head + s.prompt_tokens * arch.hidden, 0
    return head, 0


def _gathered(arch: Architecture, s: Setup, total: int, weights: float, units: tuple[int, int]) -> float:
    """FSDP's full (unsharded) working set, assuming accelerate's transformer_based_wrap: one FSDP
    unit per block, and the rest (embeddings, final norm, head) in the root unit, which stays
    gathered from the forward pass to the end of the backward pass. The next block is prefetched
    while one computes, so two blocks are gathered at a time. Conservative: the root unit's full
    gradients are counted while the activations are still alive."""
    outside = total - arch.layers * arch.block_parameters
    share = (outside + 2 * arch.block_parameters) / total
    # Mixed precision: FSDP's MixedPrecision(param_dtype=bf16) gathers the fp32 shards in 16 bits
    # and reduce-scatters 16-bit gradients.
    gather = 0.5 if s.mixed else 1
    grad_bytes = 4 if s.precision == "fp32" else 2
    return weights * share * gather + grad_bytes * max(units)


def _weight_bytes(arch: Architecture, s: Setup, total: int, model_bytes: int) -> float:
    quantizable = arch.block_linear_weights
    if s.precision == "int8":
        rows = arch.layers * sum(lin.outputs for lin in arch.block)
        stored = quantizable + 4 * rows + 2 * (total - quantizable)
    elif s.precision == "int4":
        stored = INT4_BYTES * quantizable + 2 * (total - quantizable)
    else:
        stored = model_bytes * total
    return stored


def _weight_copies(arch: Architecture, s: Setup) -> int:
    if not s.mixed or s.regime == "freeze":  # without autograd each cast is freed after its matmul
        return 0
    # Autocast casts each linear weight to 16 bits, and the cast is kept for the backward pass
    # (it is needed for the input gradients even where the weight is frozen).
    head_linear = arch.head(s.task, s.num_labels) if s.task != "lm" else 0
    return 2 * (arch.block_linear_weights + head_linear)


def _state_bytes(optimizer: str, value_bytes: int) -> float:
    if optimizer == "adamw":
        return 2 * value_bytes  # first and second moments in the parameter's dtype
    if optimizer == "adamw-8bit":
        return 2  # two 8-bit moments (block-wise quantised, Dettmers et al. 2022)
    return value_bytes  # SGD's momentum buffer


def _step_work(arch: Architecture, s: Setup, groups) -> float:
    if s.optimizer != "adamw":
        return 0  # 8-bit AdamW is one fused kernel; SGD updates in place
    if s.device == "cuda":
        # foreach AdamW (PyTorch's default on GPUs) builds sqrt(v) for a whole dtype group at once.
        return max(n * b for n, b in groups)
    # On a CPU the per-tensor implementation makes two temporaries the size of the largest tensor.
    largest = _largest_trainable_tensor(arch, s)
    return 2 * largest * 4


def _largest_trainable_tensor(arch: Architecture, s: Setup) -> int:
    if s.regime != "full":
        return max(arch.hidden * arch.hidden, arch.hidden * s.num_labels)
    lm_head = arch.vocab * arch.hidden if s.task == "lm" and not arch.tied_embeddings else 0
    return max(arch.vocab * arch.hidden, lm_head, max(lin.inputs * lin.outputs for lin in arch.block))


def _training_activations(arch: Architecture, s: Setup) -> tuple[int, int]:
    """Activations autograd keeps for one micro-batch, and the backward pass's working memory."""
    seq = s.seq_len + (s.prompt_tokens if s.regime == "prompt" else 0)
    tokens = s.batch_size * seq
    per_block = block_bytes(arch, s, seq)
    if s.gradient_checkpointing:
        # Each block keeps only its input; the backward pass recomputes one block at a time.
        stream = 4 if s.precision == "fp32" or s.mixed else 2
        blocks = arch.layers * arch.hidden * stream + per_block
    else:
        blocks = arch.layers * per_block
    activations = tokens * (blocks + outside_blocks_bytes(arch, s))
    # Gradients of the largest saved tensors exist briefly while their block runs backward.
    work = 2 * tokens * largest_transient(arch, s, seq)
    return int(activations), int(work)
