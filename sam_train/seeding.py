"""The seed of one random draw, from (run seed, a counter, an index): data order and
augmentation per sample, prompt simulation per training step and per validation batch. A
function of counters, never of a stream position, so a resumed run draws what it would have."""

from __future__ import annotations


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed that differs for every (seed, epoch or step, index)."""
    return (seed * 1_000_003 + epoch * 7_919 + index * 104_729) % (2**63 - 1)
