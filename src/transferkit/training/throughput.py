"""How close a run's training came to what the hardware can do: model FLOPs per second over the
machine's measured matrix-multiply ceiling.

Model FLOPs of a stage (the usual approximation, attention's own work left out): a forward pass
costs 2 multiply-adds' worth per parameter per token, 2 * N * T for N non-embedding parameters
over T trained tokens (padding excluded); the backward pass costs 2 * N * T more for the
activation gradients and 2 * N_trained * T for the weight gradients. Full fine-tuning is then the
familiar 6 * N * T; LoRA about 4 * N * T. A head on cached features counts its own parameters only.

The ceiling is measured once per machine and cached (ceiling.json in transferkit's cache folder,
keyed by CPU or GPU, threads, precision and torch version): the best GFLOP/s of 15 timings of a (4096 x 384) @ (384 x 1536)
product (MiniLM's feed-forward shape) in the run's precision, on the threads the run uses. In fp32
on a CPU the faster of PyTorch's default matmul and oneDNN's (PyTorch routes linear layers to the
first; on some CPUs the second is twice as fast), so the share says how much a better kernel could
still give.
"""

from __future__ import annotations

import functools
import json
import platform
import time

import torch
from torch import nn

SHAPE = (4096, 384, 1536)


def non_embedding_parameters(model: nn.Module) -> tuple[int, int]:
    """(all, trained) parameters outside the embedding tables (a lookup costs no FLOPs)."""
    total = trained = 0
    for name, p in model.named_parameters():
        if "embed" in name and "norm" not in name.lower():
            continue
        total += p.numel()
        trained += p.numel() if p.requires_grad else 0
    return total, trained


def model_flops(model: nn.Module, tokens: int) -> float:
    total, trained = non_embedding_parameters(model)
    return (4 * total + 2 * trained) * tokens


@functools.cache
def ceiling(precision: str, device: str = "cpu") -> dict:
    """{"gflops", "precision", "path", "threads"}: the best matmul rate of this machine in `precision`,
    from the cache when it was measured before."""
    from ..models.causal import cache_dir

    key = f"{_hardware(device)}|threads={torch.get_num_threads()}|{precision}|torch {torch.__version__}"
    path = cache_dir() / "ceiling.json"
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError):
        known = {}
    if key not in known:
        known[key] = measure_ceiling(precision, device)
        try:
            from .. import folders

            path.parent.mkdir(parents=True, exist_ok=True)
            folders.write_text(path, json.dumps(known, indent=2))
        except OSError:
            pass  # a read-only cache folder: measured again next time
    return known[key]


def _hardware(device: str) -> str:
    if device != "cpu":
        return torch.cuda.get_device_name()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def measure_ceiling(precision: str, device: str = "cpu") -> dict:
    """The best measured matmul rate on this machine in `precision` (about a second)."""
    m, k, n = SHAPE
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    a, b = torch.randn(m, k, dtype=dtype, device=device), torch.randn(k, n, dtype=dtype, device=device)
    paths = {"matmul": lambda: a @ b}
    if device == "cpu" and dtype == torch.float32 and torch.backends.mkldnn.is_available():
        a_blocked, weight_blocked = a.to_mkldnn(), b.t().contiguous().to_mkldnn()  # the kernel's rate, not the conversions'
        paths["oneDNN"] = lambda: torch._C._nn.mkldnn_linear(a_blocked, weight_blocked, None)  # noqa: SLF001
    rates = {}
    for name, run in paths.items():
        try:
            rates[name] = _rate(run, 2 * m * k * n, device)
        except RuntimeError:  # a path this build or CPU lacks
            continue
    path = max(rates, key=rates.get)
    return {"gflops": rates[path], "precision": precision, "path": path, "threads": torch.get_num_threads()}


def _rate(run, flops: int, device: str, repeats: int = 15) -> float:
    """The best of `repeats` timings: a ceiling is what the machine reaches, and a shared machine's
    noise only ever slows a timing down."""
    run()  # warm-up (allocations, kernel selection)
    times = []
    for _ in range(repeats):
        if device != "cpu":
            torch.cuda.synchronize()
        started = time.perf_counter()
        run()
        if device != "cpu":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    return flops / min(times) / 1e9
