"""Move a task's files: fetch inputs into its scratch directory, store outputs where they go.

Inputs come from file:// URLs, plain absolute paths or http(s):// (GET); outputs go to file://
URLs or plain paths (copied, parent directories created) or http(s):// (PUT). HTTP transfers have
a timeout and a few retries for failures that may pass (connection errors, 5xx, 429); everything
else fails at once. Every failure is a `StagingError` whose message names the file and the cause.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import posixpath
import secrets
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

CHUNK = 1 << 20
_RETRY_STATUS = {408, 429, 500, 502, 503, 504}


class StagingError(Exception):
    """An input that could not be fetched or an output that could not be stored."""


def scratch_path(scratch: Path, local: str) -> Path:
    """`local` inside the scratch directory; refuses a path that would lead out of it."""
    if not local or os.path.isabs(local) or ".." in Path(local).parts:
        raise StagingError(f"local path {local!r} must be relative to the task's scratch "
                           "directory, without '..'")
    return scratch / local


def _local_file(url: str) -> Path | None:
    """The path a file:// URL or plain absolute path names; None for other URLs."""
    if url.startswith("/"):
        return Path(url)
    parts = urllib.parse.urlsplit(url)
    if parts.scheme.lower() != "file":
        return None
    if parts.netloc not in ("", "localhost"):
        raise StagingError(f"{url}: file:// URLs must name a local path (file:///path), "
                           f"not host {parts.netloc!r}")
    return Path(urllib.request.url2pathname(parts.path))


def kept_path(root: Path, url: str) -> Path:
    """Where an output for `url` is kept under `root` instead of being stored there (`floe run`
    keeps them so by default): `file/<path>` for a file:// URL or path (the path production
    would write, StagingError for one it would refuse), `<scheme>/<host>/<path>` for the
    others, the query kept with the last name; each name quoted, so that no two URLs share a
    file ("%" for an empty path, which no quoted name is), and nothing leads out of `root`."""
    local = _local_file(url)
    if local is not None:
        head, path, query = ["file"], str(local), ""
    else:
        parts = urllib.parse.urlsplit(url)
        head = [parts.scheme.lower() or "other", parts.netloc or "-"]
        path, query = parts.path, parts.query
    names = [name for name in posixpath.normpath("/" + path).split("/") if name]
    if query:
        names = [*names[:-1], (names[-1] if names else "") + "?" + query]
    quoted = [_short(urllib.parse.quote(name, safe="")) for name in names] or ["%"]
    return root.joinpath(*(urllib.parse.quote(part, safe="") for part in head), *quoted)


def _short(name: str) -> str:
    """`name`, or where it is longer than a file's name may be (a presigned URL's query), its
    start and a hash of all of it."""
    if len(name) <= 200:
        return name
    return f"{name[:150]}%{hashlib.sha256(name.encode()).hexdigest()[:16]}"


def _is_http(url: str) -> bool:
    return urllib.parse.urlsplit(url).scheme.lower() in ("http", "https")


def digest(path: Path, algorithm: str = "sha256") -> str:
    """The hex digest of a file."""
    hasher = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(CHUNK), b""):
            hasher.update(block)
    return hasher.hexdigest()


def verify(path: Path, checksum: str, what: str) -> None:
    """Raise StagingError unless the file has `checksum` ("sha256:HEX" or "md5:HEX")."""
    algorithm, _, expected = checksum.partition(":")
    algorithm = algorithm.lower()
    if algorithm not in ("sha256", "md5") or not expected:
        raise StagingError(f"{what}: checksum {checksum!r} is not \"sha256:HEX\" or \"md5:HEX\"")
    actual = digest(path, algorithm)
    if actual != expected.lower():
        raise StagingError(f"{what}: {algorithm} checksum mismatch: expected {expected.lower()}, "
                           f"got {actual}")


def fetch(url: str, destination: Path, *, timeout: float = 60.0, retries: int = 2) -> None:
    """Put the file at `url` at `destination` (parent directories created)."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    source = _local_file(url)
    if source is not None:
        try:
            shutil.copyfile(source, destination)
        except OSError as err:
            raise StagingError(f"input {url}: cannot copy: {err.strerror or err}") from None
        return
    if not _is_http(url):
        raise StagingError(f"input {url}: unsupported URL; use file://, http://, https:// or "
                           "an absolute path")

    def download() -> None:
        partial = destination.with_name(destination.name + ".part")
        with urllib.request.urlopen(url, timeout=timeout) as answer, open(partial, "wb") as out:
            shutil.copyfileobj(answer, out, CHUNK)
        os.replace(partial, destination)

    _with_retries(f"input {url}", download, retries)


def _new_beside(target: Path) -> str:
    """A new, empty hidden file beside `target`, with the mode the umask gives a new file (as
    `cp` makes one: a collaboration's group may read what its tasks store), for the copy that
    then replaces `target`."""
    for _ in range(100):
        partial = str(target.with_name(f".{target.name}.{secrets.token_hex(4)}"))
        try:
            os.close(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        return partial
    raise FileExistsError(f"no free name beside {target}")


def store(source: Path, url: str, *, timeout: float = 60.0, retries: int = 2) -> None:
    """Copy `source` to a file:// URL or path (atomically), or PUT it to an http(s) URL."""
    target = _local_file(url)
    if target is not None:
        partial = None
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = _new_beside(target)
            shutil.copyfile(source, partial)
            os.replace(partial, target)
        except OSError as err:
            if partial is not None:
                with contextlib.suppress(OSError):
                    os.unlink(partial)
            raise StagingError(f"output {url}: cannot write: {err.strerror or err}") from None
        return
    if not _is_http(url):
        raise StagingError(f"output {url}: unsupported URL; use file://, http:// or https://")

    def upload() -> None:
        size = source.stat().st_size
        with open(source, "rb") as body:
            request = urllib.request.Request(
                url, data=body, method="PUT",
                headers={"Content-Length": str(size),
                         "Content-Type": "application/octet-stream"})
            with urllib.request.urlopen(request, timeout=timeout):
                pass

    _with_retries(f"output {url}", upload, retries)


def _with_retries(what: str, transfer, retries: int) -> None:
    for attempt in range(retries + 1):
        try:
            transfer()
            return
        except urllib.error.HTTPError as err:
            problem = f"HTTP {err.code} {err.reason}"
            transient = err.code in _RETRY_STATUS
        except (urllib.error.URLError, OSError) as err:
            reason = getattr(err, "reason", None) or err
            problem = f"{reason}"
            transient = True
        if not transient or attempt == retries:
            tries = f" after {attempt + 1} tries" if attempt else ""
            raise StagingError(f"{what}: {problem}{tries}")
        time.sleep(0.5 * 2**attempt)
