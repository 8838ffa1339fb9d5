"""How much one failure of a task says about the node it ran on, for telling a broken node (a
black hole) from a dataset whose tasks fail now and then wherever they run.

Both the matchmaker (`matchmaker.blackholes`, across a host's pilots) and each pilot
(`pilot.streak`, on its own node) count the failures of different tasks in a row, and a node is
suspect once they add up to a limit (5 by default). A failure counts whole when its dataset's
tasks seldom fail otherwise (`RARE`), and less the more often they do: five failures in a row of
a dataset that fails one time in five happen by chance every few thousand tasks on healthy
nodes, so that one needs about ten. Once a dataset's rate is known, the chance that a streak
on a healthy node reaches the limit stays about that of five failures in a row of a dataset
failing one time in twenty, about 3 in 10 million (a few attempts tell little of the rate: see
`pilot.streak` for how a pilot waits to know it).
"""

from __future__ import annotations

import math

RARE = 0.05
"""A dataset whose tasks fail this seldom (or less) otherwise: each failure of it counts whole."""
PRIOR = (0.5, 20)
"""Failures and attempts a dataset is taken to have had before any were seen (its failure rate
taken to be 2.5 % until its own attempts say otherwise)."""


def weight(failed: int, ended: int) -> float:
    """How much one failure counts when the dataset's tasks failed `failed` times in `ended`
    attempts otherwise (elsewhere, or before the streak): 1 for a dataset that fails at most
    `RARE` of the time, less the more often it fails (its failure rate's logarithm against
    RARE's)."""
    rate = (max(failed, 0) + PRIOR[0]) / (max(ended, 0) + PRIOR[1])
    if rate <= RARE:
        return 1.0
    if rate >= 1.0:
        return 0.0
    return math.log(rate) / math.log(RARE)
