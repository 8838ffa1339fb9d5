"""Settings of the matchmaker server: their schema (which documents them) and their loading.

A site runs `floe server` with no file at all, or with `--settings server.toml` to change any of
these; command-line options win over the file. `floe docs server` prints them as Markdown from
the schema below, so the documentation and the checks never disagree.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from floe.config.schema import (
    ConfigError,
    Duration,
    Enum,
    Field,
    Float,
    Integer,
    ListOf,
    Object,
    Size,
    String,
    read_toml,
)


def _network_problem(text: str) -> str | None:
    try:
        ipaddress.ip_network(text, strict=False)
    except ValueError:
        return (f"{text!r} is not an address or network; write one like \"127.0.0.1\", "
                "\"::1\" or \"10.0.0.0/8\"")
    return None


def base_path_problem(text: str) -> str | None:
    """What is wrong with `text` as a path to publish the pages under; None if nothing."""
    if text and (not text.startswith("/") or text.endswith("/") or "//" in text
                 or any(c in text for c in "?#\\\"' ") or not text.isprintable()):
        return (f"{text!r} is not a path to publish under; write it like \"/floe\" (a "
                "leading /, no trailing /), or leave it empty for the root")
    return None


SERVER_SCHEMA = Object([
    Field("host", String(), "address to listen on", "127.0.0.1",
          details="Use 0.0.0.0 to accept pilots from other hosts (then use TLS)."),
    Field("port", Integer(1, 65535), "TCP port to listen on", 8080),
    Field("database", String(min_length=1), "path of the SQLite file", "var/floe.sqlite",
          details="Created with its directory when missing. Keep it on a local disk: SQLite's "
                  "WAL mode does not work on network file systems. A file that is not a floe "
                  "database (another program's, or no database at all) is refused and left as "
                  "it is; one server at a time uses a database, and a second one is refused "
                  "(the first holds a lock on `<database>.lock`)."),
    Field("tls_cert", String(), "TLS certificate file (PEM); empty for plain HTTP", ""),
    Field("tls_key", String(), "TLS private key file (PEM)", ""),
    Field("durability", Enum(("full", "normal")), "how hard each commit is synced to disk",
          "full", details="`full` survives power loss; `normal` survives a crash of the server "
                          "but may lose the last commits on power loss, for more speed."),
    Field("cache", Size(2**20, 2**36), "how much of the database the writer process keeps in "
          "its own memory", "512MiB",
          details="Every commit reads the pages it changes. Pages in this cache never wait "
                  "for the disk, whatever the system does with its page cache (some hosts "
                  "reclaim it within a minute); memory is taken only as pages are used."),
    Field("heartbeat_interval", Duration(5, 3600), "how often pilots report that their running "
          "attempts are alive (one request for all of a pilot's attempts)", "60s"),
    Field("heartbeat_timeout", Duration(30, 7 * 86400), "an attempt not heard from for this "
          "long is voided and its task requeued", "10m",
          details="Time the matchmaker itself did not run (stopped, frozen, its loop blocked) "
                  "counts against no attempt: after such a pause every attempt has at least "
                  "one `heartbeat_interval` more to be heard from. An attempt that its pilot's "
                  "heartbeat does not hold, or whose pilot asks with `hold` (which says that "
                  "it holds none), is reset one `heartbeat_interval` after it was handed out "
                  "(the answer that handed it out was lost), without waiting for this."),
    Field("pilot_lost_after", Duration(60, 30 * 86400), "an idle pilot not heard from for this "
          "long is marked lost", "30m"),
    Field("fair_share_half_life", Duration(60, 365 * 86400), "half-life of the usage that fair "
          "share counts", "1d", details="Usage decays by half over this time: a user's past "
                                        "consumption weighs less and less."),
    Field("gpu_weight", Float(0, 10_000), "how many cores one GPU counts as in fair share", 8.0),
    Field("runtime_guess", Duration(1, 30 * 86400), "expected runtime of a task before any "
          "attempt of its kind has finished", "10m",
          details="Fair share charges each dispatch this (at most the task's walltime) until "
                  "real runtimes are known, then corrects to what was used."),
    Field("idle_wait", Duration(1, 3600), "how long a pilot is told to wait when nothing "
          "fits", "30s", details="A pilot that can wait is held instead (`hold_asks`): it is "
                                 "told this only by a server that holds no ask."),
    Field("hold_asks", Duration(0, 300), "longest an idle pilot's ask is held open, waiting "
          "for work it can run, before it is answered with none", "25s",
          details="An ask with nothing to give is answered the moment a task it fits becomes "
                  "ready (a submission, a dependency released, a resume, a reset, a retry), "
                  "so that work starts within milliseconds on idle pilots. Only pilots that "
                  "say they can wait are held (floe's pilots do, when they run nothing), for "
                  "at most this long and for no longer than they say. 0 holds none: each "
                  "ask is answered at once. A proxy or load balancer in front of the server "
                  "must let a request be idle longer than this; a pilot whose held asks "
                  "something cuts sooner asks for shorter holds from then on."),
    Field("max_progress_wait", Duration(0, 60), "longest a client's request for a dataset's "
          "progress is held open, waiting for it to change", "60s",
          details="`GET /api/v1/datasets/{id}/progress` (what `floe wait` uses) is answered "
                  "the moment the dataset changes or ends, or after the `wait` it asks for, "
                  "at most this long."),
    Field("max_held_asks", Integer(0, 1_000_000), "most asks held open at once", 20000,
          details="Past it, an ask is answered at once, as with `hold_asks` 0. Each held ask "
                  "keeps one connection and a few kilobytes."),
    Field("max_request_bytes", Size(1024, 2**30), "largest accepted request body", "4MiB"),
    Field("max_connections_per_address", Integer(1, 1_000_000), "most connections one client "
          "address may hold open at once", 4096,
          details="Further connections from that address are closed at once (and logged once "
                  "a minute), so that one client cannot use up the server's open files. Pilots "
                  "behind one NAT or proxy share an address: each holds one or two connections. "
                  "The server raises its open-files limit to the hard limit (`ulimit -Hn`) when "
                  "it starts, and logs it."),
    Field("max_log_bytes", Size(1024, 2**31), "largest stored log of one attempt stream",
          "8MiB"),
    Field("tail_bytes", Size(1024, 2**24), "how much of stdout/stderr is kept with each "
          "attempt", "64KiB",
          details="The end of each stream is kept: at most this many bytes of its UTF-8 text, "
                  "cut between two characters."),
    Field("black_hole_failures", Integer(0, 1000), "failures of different tasks, each soon "
          "after its start, that make a host a black hole", 5,
          details="Counted on one host since its last success, across its pilots and their "
                  "factories, for tasks of datasets that have completed tasks (a dataset "
                  "broken everywhere makes no host a black hole). A failure counts whole when "
                  "its dataset's tasks fail at most one time in twenty otherwise (elsewhere, "
                  "or on this host before), and for less the more often they do (one time in "
                  "five: about half), so that a flaky dataset does not blame a healthy host. "
                  "A black hole gets no "
                  "work for `black_hole_cooldown`; its pilots are told why, and it is listed by "
                  "`floe sites`, on the sites page and in /metrics. 0 turns this off."),
    Field("black_hole_quick", Duration(1, 86400), "how soon after its start a failure counts "
          "towards making its host a black hole", "2m"),
    Field("black_hole_cooldown", Duration(60, 30 * 86400), "how long a black-hole host gets "
          "no work", "1h"),
    Field("max_jobs_per_dataset", Integer(1, 10_000_000), "most jobs one submitted dataset may "
          "have", 1_000_000,
          details="A dataset config asking for more is refused with this limit in the answer. "
                  "A production larger than this is submitted as several datasets. The "
                  "default takes the largest datasets collaborations run (IceCube's biggest "
                  "simulation datasets have about a million jobs), where HTCondor's 20,000 "
                  "jobs per submission would make a production manager cut one dataset into "
                  "fifty."),
    Field("max_queued_tasks_per_user", Integer(1, 1_000_000_000), "most unfinished tasks one "
          "user may have, over all their datasets", 5_000_000,
          details="A submission that would take a user past this is refused, saying how many "
                  "tasks the user has unfinished. Each unfinished task costs the matchmaker "
                  "about 100 bytes of memory for as long as it waits (10 million queued tasks "
                  "take about 1 GB in the scale benchmark), so the default keeps one user to "
                  "about half a gigabyte: a few full productions at once, where HTCondor's "
                  "100,000 jobs per owner would not hold one."),
    Field("materialize_chunk", Integer(1, 1_000_000), "tasks created per transaction when a "
          "dataset is submitted", 2000),
    Field("pilot_token_max_lifetime", Duration(60, 366 * 86400), "longest lifetime a factory "
          "may ask for a pilot token", "14d"),
    Field("flush_interval", Duration(1, 3600), "how often heartbeats and fair-share usage are "
          "written to the database", "15s"),
    Field("sweep_interval", Duration(1, 3600), "how often silent attempts and pilots are "
          "looked for", "5s"),
    Field("trusted_proxies", ListOf(String(rule=_network_problem)), "addresses or networks "
          "of the reverse proxies whose X-Forwarded-* headers are believed", [],
          example=["127.0.0.1", "10.0.0.0/8"],
          details="A request from one of them is taken as the proxy says: its scheme from "
                  "`X-Forwarded-Proto` (cookies are `Secure` when it was https), its client "
                  "from the last address of `X-Forwarded-For` that is not itself a trusted "
                  "proxy (the access and audit logs show it), and the path the pages are "
                  "published under from `X-Forwarded-Prefix` (instead of `base_path`). From "
                  "any other address these headers are ignored."),
    Field("base_path", String(rule=base_path_problem), "the path a reverse proxy publishes "
          "the server under, such as \"/floe\"; empty for the root", "",
          details="The proxy strips it before passing a request on (nginx: `location /floe/ "
                  "{ proxy_pass http://127.0.0.1:8080/; }`); the pages put it in front of "
                  "their links, redirects and cookie paths. A trusted proxy's "
                  "`X-Forwarded-Prefix` wins over it."),
    Field("access_log", Enum(("off", "text", "json")), "one line per request: its time, "
          "client address, who it was, method, path, status, bytes and milliseconds", "off",
          details="`text` is one readable line, `json` one JSON object per line. Pilots ask "
                  "and report often: at scale this is many lines. Tokens, passkeys and "
                  "bodies are never logged; query strings are left out."),
    Field("access_log_file", String(), "file the access log is appended to; empty for the "
          "server's standard error", ""),
    Field("audit_log", Enum(("off", "text", "json")), "one line per change made by a user "
          "or an admin: who, what, which dataset, user or site, from where", "text",
          details="Every successful API request other than GET, HEAD and OPTIONS by a user "
                  "or admin token, every page form that changed something, and signing in "
                  "and out. What pilots and factories send (asks, reports, demand) is the "
                  "machines' own traffic, kept in the database and the access log instead."),
    Field("audit_log_file", String(), "file the audit log is appended to; empty for the "
          "server's standard error", ""),
], doc="The matchmaker's settings (server.toml). Every key is optional.")


@dataclass
class ServerSettings:
    """Validated settings; SERVER_SCHEMA holds what each means and its default. Make them with
    `server_settings({...})` so that defaults are written in one place only."""

    host: str
    port: int
    database: str
    tls_cert: str
    tls_key: str
    durability: str
    cache: int
    heartbeat_interval: int
    heartbeat_timeout: int
    pilot_lost_after: int
    fair_share_half_life: int
    gpu_weight: float
    runtime_guess: int
    idle_wait: int
    hold_asks: int
    max_progress_wait: int
    max_held_asks: int
    max_request_bytes: int
    max_connections_per_address: int
    max_log_bytes: int
    tail_bytes: int
    black_hole_failures: int
    black_hole_quick: int
    black_hole_cooldown: int
    max_jobs_per_dataset: int
    max_queued_tasks_per_user: int
    materialize_chunk: int
    pilot_token_max_lifetime: int
    flush_interval: int
    sweep_interval: int
    trusted_proxies: list[str]
    base_path: str
    access_log: str
    access_log_file: str
    audit_log: str
    audit_log_file: str


RELOADABLE = ("tls_cert", "tls_key", "trusted_proxies", "base_path", "access_log",
              "access_log_file", "audit_log", "audit_log_file", "idle_wait", "hold_asks",
              "max_progress_wait", "max_log_bytes", "max_jobs_per_dataset",
              "max_queued_tasks_per_user", "materialize_chunk", "pilot_token_max_lifetime")
"""The settings that SIGHUP applies to a running server (matchmaker.reload); a change to
any other one is logged as waiting for a restart."""


def server_settings(document: Mapping[str, Any] | None = None,
                    where: str = "server settings") -> ServerSettings:
    """Validate a settings document (all problems at once, as ConfigError)."""
    try:
        values = SERVER_SCHEMA.validate(dict(document or {}))
    except ConfigError as exc:
        raise ConfigError([f"{where}: {p}" for p in exc.problems]) from None
    return ServerSettings(**{f.name: values[f.name] for f in fields(ServerSettings)})


def load_server_settings(path: str | None, overrides: Mapping[str, Any] | None = None
                         ) -> ServerSettings:
    """Settings from a TOML file (or none), with command-line `overrides` on top."""
    document: dict[str, Any] = {}
    if path:
        document = read_toml(path, "the settings file")
    document.update(overrides or {})
    return server_settings(document, path or "server settings")


def reference() -> str:
    """docs/server.md: every server setting, generated from SERVER_SCHEMA."""
    from floe.config.docs import GENERATED, markdown

    intro = (GENERATED.format(topic="server", source="config/settings.py") + "\n\n"
             "`floe server --settings server.toml` reads these from a TOML file; every key is "
             "optional, and `--db`, `--host`, `--port`, `--cert` and `--key` override the file. "
             "Durations are written like `\"90s\"`, `\"10m\"` or `\"1d\"`, sizes like `\"4MiB\"`."
             "\n\nSIGHUP (`systemctl reload floe-server`) reads the file again and applies "
             "these at once: " + ", ".join(f"`{name}`" for name in RELOADABLE) + " (the "
             "certificate and key files are read again even when their names did not change, "
             "and the log files are reopened). A change to any other setting is logged as "
             "waiting for a restart; a file with a mistake changes nothing.")
    return markdown(SERVER_SCHEMA, "Matchmaker server settings", intro)
