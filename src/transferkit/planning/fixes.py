"""When a plan does not fit its memory budget: the cheapest change, or fewest changes, that make it fit.

Changes are ordered by what they cost the user. First those that keep the results: gradient
checkpointing (recomputes each block, about a third more compute), a smaller micro-batch with
gradient accumulation (same effective batch, slower), 8-bit AdamW (results close to AdamW:
Dettmers et al. 2022). Then those that change what trains or how precisely: LoRA, frozen
weights in bf16, 4-bit frozen weights (QLoRA). Last the one that changes the data: shorter
sequences.

More devices are another kind of cost (hardware, not results), so they are not in CHANGES:
`fewest_processes` answers separately how many FSDP processes the setup needs as it is.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from .architecture import Architecture
from .memory import Plan, Setup, plan


@dataclass
class Fix:
    """Changes to a setup that make it fit a memory budget, and the plan they give."""

    changes: list[str]
    plan: Plan


def cheapest_fix(arch: Architecture, setup: Setup, budget: int) -> Fix | None:
    """The cheapest changes that make `setup` fit `budget`; None if even all of them do not.

    A set of changes costs what its dearest change costs, so this takes the shortest run of
    CHANGES, in order, that fits, and then drops the earlier changes that the later ones made
    unnecessary. (A single late change such as shorter sequences never beats two early ones
    such as checkpointing and accumulation, which leave the results as they were.)
    """
    chosen = []
    for change in CHANGES:
        chosen.append(change)
        if _apply(arch, setup, budget, chosen).plan.fits(budget):
            break
    else:
        return None
    for change in chosen[:-1]:
        fewer = [c for c in chosen if c is not change]
        if _apply(arch, setup, budget, fewer).plan.fits(budget):
            chosen = fewer
    return _apply(arch, setup, budget, chosen)


MAX_PROCESSES = 65_536
"""Where the search for a process count stops (no real cluster trains one model on more)."""


def fewest_processes(arch: Architecture, setup: Setup, budget: int) -> Plan | None:
    """The plan on the fewest FSDP processes whose per-device peak fits `budget`; None where no
    count does (activations and the gathered blocks do not shrink as processes are added).

    DDP never helps, since each device holds a full replica, so this always shards. Past one
    process every phase's peak only falls as processes are added, so a binary search finds it.
    """
    one = plan(arch, replace(setup, processes=1, sharding="none"))
    if one.fits(budget):
        return one
    if not one.possible or not _sharded(arch, setup, MAX_PROCESSES).fits(budget):
        return None
    low, high = 1, MAX_PROCESSES  # low does not fit, high does
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if _sharded(arch, setup, middle).fits(budget) else (middle, high)
    return _sharded(arch, setup, high)


def _sharded(arch: Architecture, setup: Setup, processes: int) -> Plan:
    return plan(arch, replace(setup, processes=processes, sharding="fsdp"))


def lowest_memory(arch: Architecture, setup: Setup, budget: int) -> Fix:
    """Every applicable change at once: the least memory this list of changes reaches."""
    return _apply(arch, setup, budget, CHANGES)


def _apply(arch: Architecture, setup: Setup, budget: int, changes: list) -> Fix:
    current, done = setup, []
    for change in changes:
        step = change(arch, current, budget)
        if step is not None:
            done.append(step[0])
            current = step[1]
    return Fix(done, plan(arch, current))


def _checkpointing(arch, s, budget):
    if s.gradient_checkpointing or s.regime == "freeze":
        return None
    return "turn on gradient checkpointing (about a third more compute)", replace(s, gradient_checkpointing=True)


def _smaller_batch(arch, s, budget):
    effective = s.batch_size * s.accumulation
    for micro in _halvings(s.batch_size):
        candidate = replace(s, batch_size=micro, accumulation=math.ceil(effective / micro))
        if plan(arch, candidate).fits(budget) or micro == 1:
            return (
                f"micro-batch {micro} with {candidate.accumulation} accumulation steps (same effective batch, slower)",
                candidate,
            )
    return None


def _adamw_8bit(arch, s, budget):
    if s.optimizer != "adamw" or s.regime == "freeze":
        return None
    return "8-bit AdamW from bitsandbytes (results close to AdamW)", replace(s, optimizer="adamw-8bit")


def _lora(arch, s, budget):
    if s.regime != "full":
        return None
    return f"--regime lora (r={s.lora_r}: trains adapters, not the weights)", replace(s, regime="lora")


def _bf16_frozen(arch, s, budget):
    if s.regime == "full" or s.precision not in ("fp32", "mixed-bf16", "mixed-fp16"):
        return None
    return "load the frozen weights in bf16 (--precision bf16)", replace(s, precision="bf16")


def _qlora(arch, s, budget):
    if s.precision == "int4":
        return None
    regime = "lora" if s.regime == "full" else s.regime
    return f"4-bit frozen weights (--precision int4{', --regime lora: QLoRA' if s.regime == 'full' else ''})", replace(
        s, precision="int4", regime=regime
    )


def _shorter_sequence(arch, s, budget):
    for seq in _halvings(s.seq_len):
        if seq < 16:
            break
        candidate = replace(s, seq_len=seq)
        if plan(arch, candidate).fits(budget):
            return f"--seq {seq} (truncates longer inputs)", candidate
    return None


def _halvings(n: int) -> list[int]:
    out = []
    while n > 1:
        n //= 2
        out.append(n)
    return out


# Each change: (arch, setup, budget) -> (what to tell the user, the changed setup), or None
# where it does not apply. Ordered by cost to the user; see cheapest_fix.
CHANGES = [_checkpointing, _smaller_batch, _adamw_8bit, _lora, _bf16_frozen, _qlora, _shorter_sequence]
