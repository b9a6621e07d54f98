"""Retry delays: capped exponential backoff with full jitter, a pure function.

``delay(attempt, rng)`` draws uniformly from [0, min(cap, base * 2**attempt)] (the "full
jitter" of the AWS architecture blog), so a fleet reconnecting at once spreads out.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

__all__ = ["Backoff"]


@dataclass(frozen=True, slots=True)
class Backoff:
    base_s: float = 0.2
    cap_s: float = 30.0

    def delay(self, attempt: int, rng: random.Random) -> float:
        """Seconds to wait before retry number ``attempt`` (0-based)."""
        ceiling = min(self.cap_s, self.base_s * (2 ** min(attempt, 32)))
        return rng.uniform(0.0, ceiling)
