"""Seeds: 0 or absent means random; sample i of a seeded request uses seed + i."""

from __future__ import annotations

import secrets

from localstability.protocol import UINT32_MAX


def sample_seeds(seed: int, samples: int) -> list[int]:
    """One seed per sample, each in 1..4294967295 (0 is reserved for "random")."""
    if seed == 0:
        return [secrets.randbelow(UINT32_MAX) + 1 for _ in range(samples)]
    return [(seed - 1 + i) % UINT32_MAX + 1 for i in range(samples)]
