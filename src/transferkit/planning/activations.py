"""What autograd keeps for the backward pass, tensor by tensor, per token of one block.

The rows follow the Hugging Face implementations (BERT-like post-LN encoders, Llama-like and
GPT-2 pre-norm decoders) the way Korthikanti et al. 2022 ("Reducing Activation Recomputation in
Large Transformer Models") count a GPT block, and were checked against the tensors autograd
actually saves (`torch.autograd.graph.saved_tensors_hooks`, see tests/test_plan.py). Sizes:

    c  compute dtype: 4 bytes in fp32, 2 in 16-bit (linear outputs, attention, MLP)
    f  residual stream and norm outputs: 4 bytes in fp32 and under autocast (norms run in fp32
       there), 2 in pure 16-bit
    m  a dropout mask: 1 byte on a GPU (fused dropout keeps a bool mask); on a CPU dropout keeps
       a full scaled mask in the dtype of its input

What a linear layer keeps depends on what trains: its input is kept only for its weight's
gradient (full fine-tuning), except that bitsandbytes' quantised layers keep it whenever
gradients flow. Under autocast each linear keeps its own 16-bit cast of an fp32 input.
"""

from __future__ import annotations

from .architecture import Architecture, lora_targets


def sizes(s) -> tuple[int, int]:
    """(c, f) for a Setup."""
    c = 4 if s.precision == "fp32" else 2
    f = 4 if s.precision == "fp32" or s.mixed else 2
    return c, f


def flash_attention(arch: Architecture, s) -> bool:
    """Whether PyTorch's SDPA picks a kernel that keeps no (seq x seq) scores.

    On a GPU the flash / memory-efficient kernels handle dropout; on a CPU a model trained with
    attention dropout falls back to the math path, which keeps the scores."""
    p = arch.attention_dropout if s.attention_dropout is None else s.attention_dropout
    return not (s.device == "cpu" and p > 0)


def saved_tensor_bytes(arch: Architecture, s, seq: int) -> list[tuple[str, float]]:
    """(what, bytes per token) for each tensor one block keeps while gradients flow through it."""
    c, f = sizes(s)
    h, i, a, g, d = arch.hidden, arch.intermediate, arch.heads, arch.kv_heads, arch.head_dim
    mask = lambda dtype_bytes: 1 if s.device == "cuda" else dtype_bytes  # noqa: E731
    trains_weights = s.regime == "full"
    rows = []
    if arch.rms_norm:
        for where in ("attention", "MLP"):
            rows.append((f"RMSNorm before {where}: fp32 input and 1/rms", h * 4 + 4))
            if trains_weights:  # the normalised values matter only for the norm weight's gradient
                rows.append((f"RMSNorm before {where}: normalised values", h * f))
        if arch.model_type == "qwen3":  # RMSNorm on each query and key head
            rows.append(("Q/K RMSNorm: fp32 inputs and 1/rms", (a + g) * (d * 4 + 4)))
            if trains_weights:
                rows.append(("Q/K RMSNorm: normalised values", (a + g) * d * f))
    else:
        rows.append(("LayerNorm after attention: input and statistics", h * f + 8))
        rows.append(("LayerNorm after MLP: input and statistics", h * f + 8))
    if flash_attention(arch, s):
        rows += [
            ("attention: queries", a * d * c),
            ("attention: keys and values", 2 * g * d * c),
            ("attention: output", a * d * c),
            ("attention: log-sum-exp", a * 4),
        ]
    else:  # the CPU math kernel computes in fp32 whatever the inputs' dtype
        rows += [
            ("attention (math kernel): scaled queries, keys, values", (a + 2 * g) * d * 4),
            ("attention (math kernel): probabilities", a * seq * 4),
            ("attention (math kernel): dropout mask", a * seq * 4),
            ("attention (math kernel): dropped probabilities", a * seq * 4),
        ]
    if arch.hidden_dropout > 0:
        rows.append(("dropout masks after attention and MLP", 2 * h * mask(c)))
    rows.append(("MLP nonlinearity", arch.mlp_saves * i * c))
    rows += _linear_inputs(arch, s, c, f)
    if s.regime == "lora":
        rows += _lora_inputs(arch, s, c, f, mask)
    return rows


def block_bytes(arch: Architecture, s, seq: int) -> float:
    """Bytes per token that one block keeps for the backward pass."""
    return sum(size for _, size in saved_tensor_bytes(arch, s, seq))


def _kept_by_attention(arch: Architecture, s) -> set[str]:
    """Linear-layer inputs the fused attention kernel keeps already: its output, `ctx`."""
    return {"ctx"} if flash_attention(arch, s) else set()


def _source_width(arch: Architecture, source: str) -> int:
    return next(lin.inputs for lin in arch.block if lin.source == source)


def _linear_inputs(arch: Architecture, s, c: int, f: int) -> list[tuple[str, float]]:
    if not (s.regime == "full" or s.quantized):
        return []
    rows = []
    for source in ("x", "ctx", "x2", "act"):
        consumers = [lin for lin in arch.block if lin.source == source]
        width = _source_width(arch, source)
        if source in _kept_by_attention(arch, s):
            continue
        in_stream = source in ("x", "x2")  # norm outputs: fp32 under autocast
        if s.mixed and in_stream:
            rows.append((f"16-bit casts of {source} for {len(consumers)} linear layer(s)", len(consumers) * width * c))
        else:
            rows.append((f"input {source} of the linear layer(s)", width * (f if in_stream else c)))
    return rows


def _lora_inputs(arch: Architecture, s, c: int, f: int, mask) -> list[tuple[str, float]]:
    targets = lora_targets(arch, s.lora_targets)
    # peft casts the adapter's input to the adapter's dtype (fp32) before its dropout; under
    # autocast lora_A then keeps a 16-bit cast of it, otherwise the fp32 dropout output.
    kept = c if s.mixed else 4
    width = sum(lin.inputs for lin in targets)
    if s.lora_dropout > 0:
        rows = [("LoRA dropout masks", width * mask(4)), ("LoRA adapter inputs", width * kept)]
    elif s.precision == "fp32":
        shared = {lin.source: lin.inputs for lin in targets}  # one tensor per source, shared by its adapters
        rows = [("LoRA adapter inputs", sum(w for source, w in shared.items() if source not in _kept_by_attention(arch, s)) * 4)]
    else:
        rows = [("LoRA adapter inputs", width * kept)]
    rows.append(("LoRA A outputs (rank r)", len(targets) * s.lora_r * kept))
    return rows


def outside_blocks_bytes(arch: Architecture, s) -> float:
    """Bytes per token kept outside the blocks: embedding norm, final norm, head, LM logits."""
    c, f = sizes(s)
    total = 0.0
    if s.task in ("span", "token"):
        # A token-level head's input, after its dropout, is kept for its weight's gradient; its
        # logits and their log-softmax (fp32) for the loss.
        outputs = 2 if s.task == "span" else s.num_labels
        total += arch.hidden * (c if s.mixed else f) + 8 * outputs
    if arch.kind == "encoder":
        if s.regime in ("full", "prompt"):  # gradients reach the embedding LayerNorm
            total += arch.hidden * f + 8 + (arch.hidden * (1 if s.device == "cuda" else f) if arch.hidden_dropout else 0)
        return total
    total += arch.hidden * 4 + 4  # final norm input (fp32)
    if s.regime == "full":
        total += arch.hidden * f  # normalised values, for the norm weight's gradient
    if s.task == "classify" or (s.regime == "full" and s.task == "lm"):
        total += arch.hidden * (c if s.mixed else f)  # input of the head
    if s.task == "lm":
        # The logits stay in the model's output; the loss upcasts them to fp32 and keeps its log-softmax.
        total += arch.vocab * (c + 4)
    return total


def largest_transient(arch: Architecture, s, seq: int) -> float:
    """Bytes per token of the largest tensor whose gradient the backward pass holds at once."""
    largest = max(size for _, size in saved_tensor_bytes(arch, s, seq))
    if s.task == "lm":
        largest = max(largest, arch.vocab * 4)
    return largest


def inference_bytes(arch: Architecture, s) -> int:
    """Working memory of one forward pass without autograd (the frozen regime's feature caching)."""
    c, f = sizes(s)
    h, i, a, g, d = arch.hidden, arch.intermediate, arch.heads, arch.kv_heads, arch.head_dim
    # The residual stream in and out of a block, plus the larger of attention's and the MLP's
    # intermediates; nothing outlives its block.
    attention = (2 * a + 2 * g) * d * c
    mlp = (2 if arch.mlp_saves != 3 else 3) * i * c
    per_token = 2 * h * f + max(attention, mlp)
    return int(s.batch_size * s.seq_len * per_token)
