"""Fair share: decaying usage per user and per dataset, and the order in which they are served.

Usage is weighted core-seconds (a GPU counts as `gpu_weight` cores) that decays with a half-life,
so what a user ran last month matters little and what they run now matters most. A user's place
in line is usage / share (lowest first); within a user, a dataset's place is usage / priority.

An attempt is charged its expected usage the moment it is dispatched (so a burst of asks at one
instant does not all go to the same user) and trued up to what it really used when it ends.

To keep ordering cheap, usage is stored scaled to a fixed reference time: adding `x` at time `t`
adds `x * 2**((t - t0) / half_life)`. Decay then multiplies every entry by the same factor, so the
order of scaled values never changes with time and nothing is recomputed per ask. The reference
is moved forward before the scale factors grow too large.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Hashable, Iterable, Iterator
from operator import itemgetter


class Ledger:
    """Decaying usage of many entities (users, datasets), comparable at any instant.

    It also keeps its entities sorted by usage / weight (`ranked`), within groups (a user's
    datasets), updated as charges come in, so that finding the most deserving user and dataset
    costs nothing per ask. An entity that has nothing to be served (an ended dataset) can be
    left out of the order (`park`), keeping its usage, so that walking a group's order never
    passes the thousands of datasets a user ran over the years.
    """

    _RESCALE_AT = 512.0  # half-lives before the reference time moves (2**512 stays a float)

    def __init__(self, half_life: float, now: float,
                 weight: Callable[[Hashable], float] | None = None,
                 group: Callable[[Hashable], Hashable] | None = None) -> None:
        if half_life <= 0:
            raise ValueError("the fair-share half-life must be positive")
        self.half_life = half_life
        self._t0 = now
        self._scaled: dict[Hashable, float] = {}
        self._weight = weight or (lambda key: 1.0)
        self._group = group or (lambda key: None)
        self._rank: dict[Hashable, float] = {}
        self._order: dict[Hashable, list[tuple[float, Hashable]]] = {}
        self._parked: set[Hashable] = set()

    def charge(self, key: Hashable, amount: float, now: float) -> None:
        """Add `amount` (negative to correct an earlier estimate) of usage at time `now`."""
        exponent = (now - self._t0) / self.half_life
        if exponent > self._RESCALE_AT:
            self._rescale(now)
            exponent = 0.0
        value = self._scaled.get(key, 0.0) + amount * 2.0 ** exponent
        self._scaled[key] = max(value, 0.0)
        self.rerank(key)

    def rerank(self, key: Hashable) -> None:
        """Place `key` in the order by its usage / weight (also after its weight changed)."""
        if key in self._parked:
            return
        rank = self._scaled.get(key, 0.0) / self._weight(key)
        old = self._rank.get(key)
        order = self._order.setdefault(self._group(key), [])
        if old is not None:
            if old == rank:
                return
            del order[bisect.bisect_left(order, (old, key))]
        self._rank[key] = rank
        bisect.insort(order, (rank, key))

    def park(self, key: Hashable) -> None:
        """Leave `key` out of the order until `unpark`; its usage stays, and charges to it
        still count."""
        self._parked.add(key)
        self._unrank(key)

    def unpark(self, key: Hashable) -> None:
        """Put a parked `key` back in the order."""
        if key in self._parked:
            self._parked.discard(key)
            self.rerank(key)

    def ranked(self, group: Hashable = None) -> Iterator[Hashable]:
        """The entities of `group` ever charged or reranked and not parked, least usage per
        weight first: read in place, so valid only until the next charge or rerank."""
        return map(itemgetter(1), self._order.get(group, ()))

    def scaled(self, key: Hashable) -> float:
        """A time-invariant rank of `key`'s usage: compare these, don't read them as seconds."""
        return self._scaled.get(key, 0.0)

    def value(self, key: Hashable, now: float) -> float:
        """`key`'s usage as decayed to `now`, in weighted core-seconds."""
        return self._scaled.get(key, 0.0) * 2.0 ** (-(now - self._t0) / self.half_life)

    def items(self, now: float) -> Iterable[tuple[Hashable, float]]:
        factor = 2.0 ** (-(now - self._t0) / self.half_life)
        return ((key, scaled * factor) for key, scaled in self._scaled.items())

    def restore(self, key: Hashable, value: float, at: float) -> None:
        """Load a value saved at time `at` (as `value(key, at)` returned it)."""
        self._scaled[key] = value * 2.0 ** ((at - self._t0) / self.half_life)
        self.rerank(key)

    def forget(self, key: Hashable) -> None:
        """Drop `key` and its usage."""
        self._scaled.pop(key, None)
        self._parked.discard(key)
        self._unrank(key)

    def _unrank(self, key: Hashable) -> None:
        rank = self._rank.pop(key, None)
        if rank is not None:
            order = self._order[self._group(key)]
            del order[bisect.bisect_left(order, (rank, key))]

    def _rescale(self, now: float) -> None:
        factor = 2.0 ** (-(now - self._t0) / self.half_life)
        self._scaled = {k: v * factor for k, v in self._scaled.items()}
        self._t0 = now
        self._rank = {k: self._scaled.get(k, 0.0) / self._weight(k) for k in self._rank}
        self._order = {}
        for key, rank in self._rank.items():
            self._order.setdefault(self._group(key), []).append((rank, key))
        for order in self._order.values():
            order.sort()


def weight(cpus: int, gpus: int, gpu_weight: float) -> float:
    """The rate at which a slot of `cpus` and `gpus` accrues usage (weighted cores)."""
    return cpus + gpus * gpu_weight


def expected_runtime(observed: float | None, walltime: int, guess: float) -> float:
    """How long an attempt is expected to run: what similar attempts took, else a guess bounded by
    the requested walltime (walltimes are upper bounds and would overcharge)."""
    if observed is not None and math.isfinite(observed):
        return max(observed, 1.0)
    return float(min(walltime, guess))
