"""How long to wait before trying the matchmaker again: exponential backoff with jitter.

Thousands of pilots lose the same matchmaker at the same moment; if they all retried on the same
schedule they would hit it together when it comes back. Each delay is drawn at random between
half and all of the exponential step ("equal jitter"), so the retries spread out while no pilot
waits longer than the cap.
"""

from __future__ import annotations

import random


class Backoff:
    """Successive delays: `first`, doubling up to `cap` seconds, each jittered; `reset()` after
    a success starts over."""

    def __init__(self, first: float = 0.5, cap: float = 60.0,
                 rng: random.Random | None = None) -> None:
        self.first = first
        self.cap = cap
        self.failures = 0
        self._rng = rng or random.Random()

    def next(self) -> float:
        step = min(self.cap, self.first * 2 ** min(self.failures, 40))
        self.failures += 1
        return step / 2 + self._rng.uniform(0, step / 2)

    def reset(self) -> None:
        self.failures = 0


def jittered(seconds: float, rng: random.Random | None = None, spread: float = 0.2) -> float:
    """`seconds` give or take `spread` of it, so that pilots told to wait together do not come
    back together."""
    draw = (rng or random).uniform(-spread, spread)
    return max(0.0, seconds * (1 + draw))
