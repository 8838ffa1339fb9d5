"""The facts of the protocols that pilots, factories and the matchmaker must agree on, in one
module that ships in pilot.pyz: how much one request may carry, the largest slot a pilot offers,
how the end of a log is cut, and the batch systems floe knows.

The matchmaker's API schemas and checks, the pilot's client and runner, the factory's settings
and the plugins' registry all read these; none of them writes its own copy.
"""

from __future__ import annotations

MAX_TASKS = 1000
"""The most tasks one ask may take, and the most items of a bulk request (reports, heartbeat)."""
MAX_STATISTICS = 1000
"""The most user statistics one report carries (a task's modules together)."""
MAX_STATISTIC = 1e100
"""The largest magnitude of a statistic's value: sums and squared deviations of millions of
them stay finite (a double holds about 1.8e308)."""
MAX_WARNINGS = 20
"""The most warnings one report carries (what was left out of it and why); more are counted in
the last one."""
MAX_WARNING_LENGTH = 500
"""The longest warning, in characters."""
MAX_CPUS = 4096
"""The most CPUs a pilot offers in one ask (a larger slot offers this many)."""
MAX_GPUS = 64
"""The most GPUs a pilot offers in one ask."""
MAX_ERROR_MESSAGE = 20_000
"""The most characters of a report's error message."""
MAX_REPORTS_BYTES = 16 * 2**20
"""The largest bulk report body (a pilot keeps well below it)."""
QUEUED_TTL = 600
"""Seconds the matchmaker believes what a factory said it has queued, unless it says again or
withdraws it."""
MAX_BATCH_IDS = 1000
"""The most batch ids one factory request names (pilots asked about, batch jobs that ended)."""

BATCH_SYSTEMS = ("local", "slurm", "sge", "pbs", "htcondor")
"""Every batch system floe submits pilots to (the plugins' registry holds one plugin each)."""

TOKEN_PREFIXES = {"user": "floe_u_", "site": "floe_s_", "pilot": "floe_p_", "pilot-key": "floe_k_"}
"""The start of each kind of token (the matchmaker makes them): a part handed a token of the
wrong kind says so before it asks with it."""


def token_kind(token: str) -> str | None:
    """The kind of token `token` is by its prefix ("user", "site", ...); None for no floe
    token."""
    return next((kind for kind, prefix in TOKEN_PREFIXES.items() if token.startswith(prefix)),
                None)


def cut_utf8(data: bytes, cut: bool, errors: str = "replace") -> str:
    """The text of `data`, the end of something longer when `cut`: what is left of a character
    that the cut split (its UTF-8 continuation bytes, three at most) is left out."""
    start = 0
    if cut:
        while start < min(3, len(data)) and data[start] & 0xC0 == 0x80:
            start += 1
    return data[start:].decode(errors=errors)


def utf8_tail(text: str, limit: int) -> str:
    """The end of `text` that takes at most `limit` bytes in UTF-8, cut between characters (how
    the matchmaker keeps the tails pilots report; a pilot reads the last bytes of its log files
    and cuts them with `cut_utf8`, the same way)."""
    if len(text) * 4 <= limit:  # no character takes more than 4 bytes
        return text
    end = text[-limit:]  # every character takes at least one byte
    # The API refuses text with a lone surrogate ("\ud800"); surrogatepass keeps this total for
    # any other caller.
    data = end.encode(errors="surrogatepass")
    if len(data) <= limit:
        return end
    return cut_utf8(data[len(data) - limit:], True, "surrogatepass")
