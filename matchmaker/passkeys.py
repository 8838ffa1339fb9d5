"""Per-attempt passkeys, and how the matchmaker keeps every secret.

A passkey is made here when an attempt is handed out (192 random bits), stored only as its
SHA-256 hash (as user, site and pilot tokens are: they are 128+ random bits, so a fast hash is
enough), and checked here, in constant time, against every heartbeat, report and log upload of
its attempt. A passkey is void once its attempt ended: the check then answers from the stored
attempt (recording.stale_answer).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os

from .errors import Forbidden

PASSKEY_BYTES = 24  # 192 random bits
_POOL_BYTES = PASSKEY_BYTES * 512
_pool = [b"", 0]  # random bytes from the OS, and how many of them are used


def new_passkey() -> str:
    """A fresh passkey: 192 bits from the OS's CSPRNG, URL-safe base64 (as
    `secrets.token_urlsafe(24)` makes them). The bytes are read 12 KiB at a time, each used once:
    a getrandom() call costs ~25 us where system calls are slow (sandboxes), ~4% of a match."""
    pool, used = _pool
    if used + PASSKEY_BYTES > len(pool):
        pool, used = os.urandom(_POOL_BYTES), 0
        _pool[0] = pool
    _pool[1] = used + PASSKEY_BYTES
    return base64.urlsafe_b64encode(pool[used:used + PASSKEY_BYTES]).decode()


def _forget_pool() -> None:
    _pool[0], _pool[1] = b"", 0  # a forked child must not hand out its parent's passkeys


os.register_at_fork(after_in_child=_forget_pool)


def hash_secret(secret: str) -> str:
    """How passkeys and tokens are stored: a SHA-256 hex digest; nothing is kept in the clear."""
    return hashlib.sha256(secret.encode()).hexdigest()


def check(attempt_id: int, stored_hash: str, passkey: str) -> None:
    """Refuse (403) a passkey that is not the one attempt `attempt_id` was handed out with."""
    if not hmac.compare_digest(stored_hash, hash_secret(passkey)):
        raise Forbidden(f"wrong passkey for attempt {attempt_id}: only the pilot that was given "
                        "this attempt may speak for it")
