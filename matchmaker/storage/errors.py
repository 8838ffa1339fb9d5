"""What the storage layer raises: a database that cannot be used or written, and a guarded
update that found its row changed."""

from __future__ import annotations


class StorageError(RuntimeError):
    """The database could not be opened or written; the message says what to do."""


class StaleWrite(StorageError):
    """A guarded update found its row in another state than expected (a late or duplicate write)."""
