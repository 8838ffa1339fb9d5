"""The factory's config file (site.toml): its schema, which also documents it, and its loading.

A site admin runs `floe factory --config site.toml`. The file names the matchmaker, this
factory's id (which tags its batch jobs), and one `[[sites]]` table per site it serves: the batch
plugin and its options, the pilot shapes, the limits that keep the queue sane, and what pilots
get. `floe docs factory` prints every key as Markdown from the schema below, so the
documentation and the checks never disagree.
"""

from __future__ import annotations

import json
import os
import re
import socket
import ssl
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from floe.config.connecting import address_problem
from floe.config.protocol import BATCH_SYSTEMS, TOKEN_PREFIXES, token_kind
from floe.config.resources import SMALLEST_SIZE
from floe.config.schema import (
    OMIT,
    AnyValue,
    Bool,
    ConfigError,
    Duration,
    Enum,
    Field,
    Float,
    Integer,
    ListOf,
    MapOf,
    Object,
    Size,
    String,
    no_nul,
    read_toml,
    show,
)

SITE_TOKEN_VARIABLE = "FLOE_SITE_TOKEN"
MATCHMAKER_VARIABLE = "FLOE_URL"
FACTORY_ID = r"[A-Za-z0-9_.]{1,24}"
LABEL = r"[A-Za-z0-9_.-]{1,40}"
"""A shape's or a site's name in a factory config (it goes into batch job names)."""
_ENV_NAME = String(r"[A-Za-z_][A-Za-z0-9_]*", "a shell variable name")
_VALUE = String(rule=no_nul)  # reaches the pilots' environment
_SIZE = Size(0, smallest=SMALLEST_SIZE)

SHAPE_SCHEMA = Object([
    Field("name", String(LABEL, "up to 40 letters, digits, '_', '.' or '-'"),
          "the shape's name, part of its pilots' job names", example="small"),
    Field("cpus", Integer(1, 4096), "CPUs each pilot asks for", 1),
    Field("memory", Size(1, smallest=SMALLEST_SIZE), "memory each pilot offers to tasks", "2GiB",
          details="The batch system is asked for this plus the site's memory headroom, so that "
                  "a task slightly over its request is not killed by the batch system first."),
    Field("disk", _SIZE, "scratch disk each pilot asks for", "10GiB"),
    Field("gpus", Integer(0, 64), "GPUs each pilot asks for", 0),
    Field("walltime", Duration(60), "how long each pilot offers to run tasks", "4h",
          details="The batch system is asked for this plus the site's `walltime_overhead`; the "
                  "pilot takes no task that could not finish within it."),
    Field("os", ListOf(String(min_length=1), max_length=16), "operating systems the worker "
          "nodes offer, as tasks name them (empty: any)", [], example=["el9", "linux"]),
    Field("arch", String(), "CPU architecture of the worker nodes (empty: any)", "",
          example="x86_64"),
    Field("gpu_memory", _SIZE, "memory of each of its GPUs (0: not said)", 0,
          example="80GiB", details="With `gpu_model` and `compute_capability`, what the "
          "demand counts this shape for: tasks that ask for more, another model or a higher "
          "capability are counted for another shape, or as fitting none. What a shape does not "
          "say does not keep a task off it; the pilots report what their GPUs really are."),
    Field("gpu_model", String(), "the model name of its GPUs, as NVML reports it (empty: not "
          "said)", "", example="NVIDIA H100 80GB HBM3"),
    Field("compute_capability", String(r"^(\d{1,3}(\.\d{1,3})?)?$", 'a version such as "9.0"'),
          "its GPUs' CUDA compute capability (empty: not said)", "", example="9.0"),
    Field("directives", ListOf(String(min_length=1)), "extra submit options, exactly as the "
          "batch system takes them", [],
          details="Command-line options of sbatch/qsub (`\"--constraint=avx2\"`, "
                  "`\"-l arch=lx-amd64\"`), or submit-description lines for HTCondor "
                  "(`\"requirements = HasDocker\"`).", example=["--constraint=avx2"]),
], doc="One kind of pilot the site runs. Each ready task is counted for the smallest shape it "
       "fits.")

SSH_SCHEMA = Object([
    Field("host", String(r"([A-Za-z0-9._-]+@)?[A-Za-z0-9._-]+|",
                         "user@host, or a Host name of ~/.ssh/config"),
          "the login node the batch commands run on, as user@host (empty: this machine)", "",
          example="icecube@login.cluster.example.edu",
          details="The factory runs the plugin's commands there through one multiplexed "
                  "OpenSSH connection, with BatchMode (a key that needs no passphrase, or an "
                  "ssh-agent), and keeps its pilot scripts and logs in `workdir` there; nothing "
                  "is installed on the cluster."),
    Field("port", Integer(1, 65535), "the login node's ssh port", 22),
    Field("identity", String(), "the private key file (empty: ssh's defaults and agent)", "",
          example="~/.ssh/floe_ed25519"),
    Field("known_hosts", String(), "a known_hosts file holding the login node's host key "
          "(empty: the account's ~/.ssh/known_hosts)", "",
          details="Given, it is the only one trusted and an unknown host key is refused."),
    Field("workdir", String(), "the factory's directory on the login node (relative: to the "
          "account's home)", "", default_text="floe/<factory_id>.<site>"),
    Field("options", ListOf(String(min_length=1)), "more OpenSSH options, as `-o` takes them",
          [], example=["ProxyJump=bastion.example.edu"]),
], doc="Submission over ssh, where the factory runs elsewhere than the login node.")

SITE_SCHEMA = Object([
    Field("name", String(LABEL, "the site's name as registered with `floe site add`"),
          "the site, as the matchmaker knows it", example="uw-slurm"),
    Field("plugin", Enum(BATCH_SYSTEMS), "the batch system", example="slurm"),
    Field("token_file", String(), "file holding the site's factory token", "",
          details=f"Empty: the token comes from the environment variable "
                  f"`{SITE_TOKEN_VARIABLE}`. The file must be readable by its owner alone: "
                  "one that other users can read is refused (`chmod 600` it).",
          example="~/.floe/uw-slurm.token"),
    Field("shapes", ListOf(SHAPE_SCHEMA, min_length=1, max_length=64), "the pilot shapes"),
    Field("max_queued", Integer(0, 100_000), "most pilots of this site waiting in the batch "
          "queue at once", 20),
    Field("max_total", Integer(0, 1_000_000), "most pilots of this site queued and running "
          "together", 100),
    Field("max_per_cycle", Integer(1, 10_000), "most pilots submitted in one cycle", 10),
    Field("cycle", Duration(1, 3600), "how often the factory looks at the queue and the "
          "demand", "30s"),
    Field("removal_grace", Duration(0, 86400), "how long queued pilots may wait after their "
          "demand has gone before they are removed", "5m"),
    Field("queue_allowance", Duration(60, 7 * 86400), "how long a pilot may wait in the "
          "batch queue and still register: the extra lifetime of its pilot token", "1d",
          details="A pilot's token is valid for its walltime (with `walltime_overhead`) plus "
                  "this, counted from its submission. A pilot still queued after this long is "
                  "removed (and replaced while the demand lasts): its token could run out "
                  "before its walltime does. The matchmaker's `pilot_token_max_lifetime` must "
                  "be at least a minute longer than the longest shape's walltime, "
                  "`walltime_overhead` and this together."),
    Field("min_pilot_life", Duration(0, 86400), "where the matchmaker cannot say whether a "
          "pilot registered: a pilot that ends sooner than this after it started counts as "
          "dying at start", "30s",
          details="A pilot is judged by whether it registered with the matchmaker, which the "
                  "factory asks each cycle: one that registered proves the site works, one that "
                  "ended without registering (a node without network, a wrong matchmaker URL "
                  "or CA, a refused token) is a failure however long it ran. Only while the "
                  "matchmaker cannot be asked (it is away, or cannot answer now) does a "
                  "pilot's life decide: one that has run this long proves the site works, one "
                  "that ends sooner is a failure. Keep it below the pilots' `idle_timeout`: a "
                  "pilot that finds no work leaves after that long, which is no failure."),
    Field("backoff", Duration(1, 86400), "wait after the first failure (a refused submit, a "
          "held pilot, a pilot that ended without registering); doubled for each failure in a "
          "row", "30s",
          details="A failure seen while the site waits (the batch system or login node still "
                  "cannot be queried, a pilot submitted before the wait ends without "
                  "registering) counts in the row (`failing_after`) and becomes `last_error` "
                  "in `status.json`, but does not lengthen the wait: the wait doubles with "
                  "each try, not each cycle. Editing the site's settings "
                  "(the factory rereads its config on a change or SIGHUP) ends the wait and "
                  "forgets the failures: the site is tried again at once."),
    Field("max_backoff", Duration(1, 7 * 86400), "longest wait between tries on a failing "
          "site", "30m"),
    Field("failing_after", Integer(1, 1000), "failures in a row after which the site is "
          "reported as failing", 5),
    Field("on_stop", Enum(("remove-queued", "remove-all", "keep")), "what happens to this "
          "site's pilots when the factory stops", "remove-queued",
          details="`remove-queued` takes out the pilots still waiting and lets running ones "
                  "finish their tasks (the next factory start finds them again); `remove-all` "
                  "also stops the running ones (their tasks are requeued); `keep` leaves all."),
    Field("idle_timeout", Duration(1, 86400), "a pilot with no work for this long leaves",
          "5m"),
    Field("keep_pilot_logs", Duration(0, 366 * 86400, smallest=3600), "how long a pilot's "
          "stdout and stderr files stay in the workdir's `logs/` after they were last written "
          "(0: for ever)", "14d",
          details="The factory removes older ones once an hour (on the login node, for a site "
                  "reached over ssh): the files named for this site's pilots (starting with their "
                  "job name, `floe-<factory_id>.<site>-<shape>`, ending in `-<batch id>.out` or "
                  "`.err`), never those of a pilot it still tracks or that ended in that cycle, "
                  "nor anything else there. "
                  "A months-long production's thousands of pilots a day would otherwise fill "
                  "the account's disk quota or its count of files."),
    Field("scratch", String(), "where pilots run their tasks (empty: the batch system's "
          "scratch directory or $TMPDIR, else the pilot's working directory)", ""),
    Field("python", String(), "the Python 3.9+ interpreter on the worker nodes (empty: the "
          "newest python3.X on their PATH, else python3)", "",
          details="The job looks for it on the worker node. With none of 3.9 or newer, the "
                  "pilot ends at once with one line naming the host and what it found, which "
                  "the factory reports (where it can read the pilot's log) as the site's "
                  "failure, and the site is backed off.", example="/opt/python3.11/bin/python3"),
    Field("shared_filesystem", Bool(), "the worker nodes read the factory's workdir at the "
          "same path: pilots start its pilot.pyz instead of carrying it in every job", False,
          details="By default each job carries the pilot (about 220 KiB of job script) and "
                  "writes it to the node's disk, so that no node needs to see the factory's "
                  "workdir. On a cluster whose login node the factory runs on, with the "
                  "workdir on a filesystem the nodes mount, this saves that and the pilot's "
                  "decoding at start. A node that cannot read the pilot there ends its job at "
                  "once with one line that says so. Not with `ssh`, and not with the "
                  "`htcondor` plugin, which transfers the pilot."),
    Field("environment", MapOf(_VALUE, _ENV_NAME), "extra environment variables for every "
          "pilot", {}, example={"APPTAINER_CACHEDIR": "/scratch/cache"}),
    Field("proxy", String(r"(http://\S+)?", "empty, or an http:// URL"), "the HTTP proxy "
          "through which this site's worker nodes reach the matchmaker", "",
          details="Sets `https_proxy` and `http_proxy` for every pilot (and so for its tasks): "
                  "the pilot reaches the matchmaker through it (CONNECT for https) and stages "
                  "inputs and outputs through it; `no_proxy` in `environment` exempts hosts. "
                  "A user and password in the URL go to the proxy as Basic authentication. "
                  "Empty: pilots use what their worker nodes' environment says.",
          example="http://squid.example.edu:3128"),
    Field("system", MapOf(_VALUE, _ENV_NAME), "the site's `$system(name)` values for tasks",
          {}, example={"cvmfs": "/cvmfs/icecube.opensciencegrid.org"}),
    Field("memory_headroom", Float(0, 10), "fraction of a shape's memory asked for on top of "
          "it", 0.10),
    Field("memory_headroom_min", _SIZE, "least memory asked for on top of a shape's",
          "256MiB"),
    Field("walltime_overhead", Duration(0, 86400), "walltime asked for on top of a shape's, "
          "for the pilot to start and report", "10m",
          details="The pilot stops taking work 5 minutes (at most a tenth of its life) before "
                  "the batch system's end, to report and leave in time: keep this above that, "
                  "or tasks as long as the shape's walltime will not fit its pilots."),
    Field("command_timeout", Duration(1, 3600), "how long a batch command may take", "60s"),
    Field("commands_dir", String(), "where the batch commands are when not on PATH (on the "
          "login node with `ssh`)", ""),
    Field("ssh", SSH_SCHEMA, "submit through a login node over ssh (`slurm`, `sge`, `pbs`, "
          "`htcondor`)", {}, details="See \"Running a site's factory\" in README.md."),
    Field("options", MapOf(AnyValue()), "options only this plugin understands", {},
          details="`slurm`: partition, account, qos, request_disk. `sge`: queue, project, "
                  "parallel_environment, memory_resource, gpu_resource, disk_resource. `pbs`: "
                  "flavour (pro or torque), queue, account. `htcondor`: schedd, pool, "
                  "whole_slots, submit_attributes, output (return or discard). `local`: "
                  "state_dir, kill_grace, keep_finished, run_as (another account for the "
                  "pilots), gpus (the machine's GPUs to give pilots, no two live pilots the "
                  "same: \"auto\", those NVML lists, or a list of device UUIDs or indices; a "
                  "GPU shape waits, as status.json's `waiting` says, until enough are free).",
          example={"partition": "debug"}),
], doc="One site the factory serves: one batch system, its pilot shapes and limits.")


def _address(text: str) -> str | None:
    problem = address_problem(text)
    return None if problem is None else f"{show(text)} {problem}"


FACTORY_SCHEMA = Object([
    Field("matchmaker", String(hint="an http:// or https:// address", rule=_address,
                               rule_schema={"pattern": r"^[Hh][Tt][Tt][Pp][Ss]?://\S+$"}),
          "the matchmaker's address", example="https://floe.example.org:8443",
          details=f"`floe factory --matchmaker URL`, else the environment variable "
                  f"`{MATCHMAKER_VARIABLE}`, replaces it (the log's first line says which "
                  "the factory uses); given either, the file may leave it out."),
    Field("cacert", String(), "CA or self-signed certificate to trust for an https "
          "matchmaker, for the factory and its pilots (empty: the system's)", ""),
    Field("factory_id", String(FACTORY_ID, "up to 24 letters, digits, '_' or '.'"), "tags this "
          "factory's batch jobs so that no other factory touches them", OMIT,
          default_text="the host name", details="Give each factory sharing a batch system its "
          "own id; keep it across restarts, so that a restarted factory finds its pilots."),
    Field("workdir", String(min_length=1), "where the factory keeps its state, pilot scripts, "
          "logs and the pilot bundle", "var/factory",
          details="Only the factory reads it: each pilot's job carries the pilot itself, and "
                  "no worker node needs to see this directory. The factory makes it readable "
                  "by its own account only (it holds the pilot scripts, each with a token)."),
    Field("sites", ListOf(SITE_SCHEMA, min_length=1), "the sites this factory serves"),
], doc="The factory's config (site.toml).")


@dataclass(frozen=True)
class ShapeConfig:
    """One pilot shape of a site, as SHAPE_SCHEMA validates it (sizes in bytes, durations in
    seconds)."""

    name: str
    cpus: int
    memory: int
    disk: int
    gpus: int
    walltime: int
    os: tuple[str, ...]
    arch: str
    gpu_memory: int
    gpu_model: str
    compute_capability: str
    directives: tuple[str, ...]


@dataclass(frozen=True)
class SiteConfig:
    """One site the factory serves, as SITE_SCHEMA validates it: every field is one of the
    schema's (a test holds the two together)."""

    name: str
    plugin: str
    token_file: str
    shapes: tuple[ShapeConfig, ...]
    max_queued: int
    max_total: int
    max_per_cycle: int
    cycle: int
    removal_grace: int
    queue_allowance: int
    min_pilot_life: int
    backoff: int
    max_backoff: int
    failing_after: int
    on_stop: str
    idle_timeout: int
    keep_pilot_logs: int
    scratch: str
    python: str
    shared_filesystem: bool
    environment: Mapping[str, str]
    proxy: str
    system: Mapping[str, str]
    memory_headroom: float
    memory_headroom_min: int
    walltime_overhead: int
    command_timeout: int
    commands_dir: str
    ssh: Mapping[str, Any]
    options: Mapping[str, Any]

    @classmethod
    def from_values(cls, values: Mapping[str, Any]) -> SiteConfig:
        """From the mapping SITE_SCHEMA.validate returns."""
        shapes = tuple(ShapeConfig(**dict(shape, os=tuple(shape["os"]),
                                          directives=tuple(shape["directives"])))
                       for shape in values["shapes"])
        return cls(**dict(values, shapes=shapes))


@dataclass(frozen=True)
class FactoryConfig:
    """A validated site.toml."""

    matchmaker: str
    cacert: str
    factory_id: str
    workdir: Path
    sites: tuple[SiteConfig, ...]
    path: str = ""
    matchmaker_source: str = ""
    """Where `matchmaker` came from, for the log: the file's path, "--matchmaker" or "FLOE_URL"
    (and what the file said, when that is not the one used)."""


def default_factory_id() -> str:
    """This host's short name, as a factory id."""
    name = re.sub(r"[^A-Za-z0-9_.]", "_", socket.gethostname().split(".")[0])
    return name[:24] or "factory"


def matchmaker_override(option: str | None) -> tuple[str, str] | None:
    """The matchmaker address that replaces the file's, and where it comes from: `option`
    (`floe factory --matchmaker`), else FLOE_URL; None when neither is given."""
    if option:
        return option, "--matchmaker"
    variable = os.environ.get(MATCHMAKER_VARIABLE, "").strip()
    return (variable, MATCHMAKER_VARIABLE) if variable else None


def factory_config(document: Mapping[str, Any], where: str = "site.toml",
                   matchmaker: tuple[str, str] | None = None) -> FactoryConfig:
    """Validate a factory config document (every problem at once, as ConfigError).
    `matchmaker`, as `matchmaker_override` gives it, replaces the document's address."""
    document = dict(document)
    source = where
    if matchmaker is not None:
        url, given = matchmaker
        problem = address_problem(url)
        if problem:
            shown = f"{given}={url}" if given == MATCHMAKER_VARIABLE else f"{given} {url}"
            raise ConfigError([f"{shown} {problem}"])
        in_file = document.get("matchmaker")
        source = given if in_file in (None, url) else f"{given}, not {where}'s {in_file}"
        document["matchmaker"] = url
    try:
        values = FACTORY_SCHEMA.validate(document)
    except ConfigError as exc:
        raise ConfigError([f"{where}: {p}" for p in exc.problems]) from None
    problems = []
    if values["cacert"]:
        try:
            ssl.create_default_context(cafile=os.path.expanduser(values["cacert"]))
        except (OSError, ssl.SSLError) as exc:
            problems.append(f"{where}: cacert: cannot load {values['cacert']} as a CA "
                            f"certificate (PEM): {getattr(exc, 'strerror', None) or exc}")
    names = [site["name"] for site in values["sites"]]
    for name in sorted({n for n in names if names.count(n) > 1}):
        problems.append(f"{where}: sites: the site {name!r} is listed twice; give each site "
                        "one [[sites]] table")
    for i, site in enumerate(values["sites"]):
        shapes = [shape["name"] for shape in site["shapes"]]
        for name in sorted({n for n in shapes if shapes.count(n) > 1}):
            problems.append(f"{where}: sites[{i}].shapes: the shape {name!r} is listed twice")
        if site["shared_filesystem"] and (site["ssh"]["host"] or site["plugin"] == "htcondor"):
            why = ("a site reached over ssh shares no filesystem with the factory"
                   if site["ssh"]["host"] else "the htcondor plugin transfers the pilot")
            problems.append(f"{where}: sites[{i}].shared_filesystem: {why}; remove "
                            "shared_filesystem")
        if site["max_total"] < site["max_queued"]:
            problems.append(f"{where}: sites[{i}].max_total: {site['max_total']} is below "
                            f"max_queued ({site['max_queued']}); raise max_total")
    if problems:
        raise ConfigError(problems)
    base = Path(where).parent if where.endswith(".toml") else Path(".")
    workdir = Path(os.path.expanduser(values["workdir"]))
    return FactoryConfig(
        matchmaker=values["matchmaker"].rstrip("/"), cacert=values["cacert"],
        factory_id=values.get("factory_id") or default_factory_id(),
        workdir=(workdir if workdir.is_absolute() else base / workdir).absolute(),
        sites=tuple(SiteConfig.from_values(site) for site in values["sites"]), path=where,
        matchmaker_source=source)


def load_factory_config(path: str | Path, matchmaker: str | None = None) -> FactoryConfig:
    """A factory config from its TOML file; relative `workdir`s are taken from the file's
    directory. The matchmaker's address is `matchmaker` (`floe factory --matchmaker`) where
    given, else FLOE_URL where set, else the file's."""
    path = str(path)
    document = read_toml(path, "the factory config")
    return factory_config(document, path, matchmaker_override(matchmaker))


def to_toml(document: Mapping[str, Any]) -> str:
    """A factory config document (as FACTORY_SCHEMA takes it) as the text of a site.toml, for
    the tools that write one (`floe demo`, the benchmarks, the tests)."""
    lines = [f"{key} = {_toml_value(value)}" for key, value in document.items()
             if key != "sites"]
    for site in document.get("sites", ()):
        lines += ["", "[[sites]]"]
        lines += [f"{key} = {_toml_value(value)}" for key, value in site.items()
                  if key != "shapes"]
        for shape in site.get("shapes", ()):
            lines += ["", "[[sites.shapes]]"]
            lines += [f"{key} = {_toml_value(value)}" for key, value in shape.items()]
    return "\n".join(lines) + "\n"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a TOML basic string
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{json.dumps(str(k))} = {_toml_value(v)}"
                               for k, v in value.items()) + "}"
    raise TypeError(f"{value!r} has no TOML form in a site.toml")


def site_token(site: SiteConfig) -> str:
    """The site's factory token, from its `token_file` or FLOE_SITE_TOKEN; ConfigError naming
    the fix when there is none, or when it is another kind of token (a user's)."""
    if site.token_file:
        path = Path(os.path.expanduser(site.token_file))
        try:
            with open(path, encoding="utf-8", errors="replace") as stream:
                mode = os.fstat(stream.fileno()).st_mode
                token = stream.read().strip()
        except OSError as exc:
            raise ConfigError([f"site {site.name}: token_file {path}: "
                               f"{exc.strerror or exc}"]) from None
        if stat.S_ISREG(mode) and mode & 0o044:
            raise ConfigError([f"site {site.name}: token_file {path} can be read by other users "
                               f"(mode {stat.S_IMODE(mode):04o}), and the token lets anyone "
                               f"start pilots for the site; make it yours alone: chmod 600 "
                               f"{path}"])
        if not token:
            raise ConfigError([f"site {site.name}: token_file {path} is empty; write the "
                               "token `floe site add` printed into it"])
        if len(token.split()) > 1:
            raise ConfigError([f"site {site.name}: token_file {path} holds more than a token; "
                               "the file must hold the token `floe site add` printed, alone"])
        return _of_a_site(token, site.name, f"token_file {path}")
    token = os.environ.get(SITE_TOKEN_VARIABLE, "").strip()
    if not token:
        raise ConfigError([f"site {site.name}: no site token: set token_file, or "
                           f"{SITE_TOKEN_VARIABLE}"])
    return _of_a_site(token, site.name, SITE_TOKEN_VARIABLE)


_TOKEN_NAMES = {"user": "a user's token", "pilot": "a pilot token", "pilot-key": "a pilot's key"}


def _of_a_site(token: str, site: str, where: str) -> str:
    """`token`, unless its prefix says it is not a site's factory token: said before the
    matchmaker is asked, which refuses a user's (or takes an admin's for any site)."""
    kind = token_kind(token)
    if kind in _TOKEN_NAMES:
        raise ConfigError([
            f"site {site}: {where} holds {_TOKEN_NAMES[kind]} ({TOKEN_PREFIXES[kind]}...), not "
            f"the site's factory token (floe_s_...): on the matchmaker's host, `floe site add "
            f"{site}` prints it once, and `floe site token {site}` replaces a lost one"])
    return token


def reference() -> str:
    """docs/factory.md: every factory setting, generated from FACTORY_SCHEMA."""
    from floe.config.docs import GENERATED, markdown

    intro = (GENERATED.format(topic="factory", source="config/factory.py") + "\n\n"
             "`floe factory --config site.toml` reads this TOML file. Only `matchmaker` and "
             "`sites` (each with `name`, `plugin` and `shapes`) are required. Durations are "
             "written like `\"90s\"`, `\"10m\"` or `\"4h\"`, sizes like `\"2GiB\"` (a number "
             "without a unit counts bytes: a shape's `memory`, `disk` and `gpu_memory` and a "
             "site's `memory_headroom_min` are 0 or at least 1MB, so that `memory = 2048` is "
             "refused, not taken for 2KiB). The factory "
             "picks up a changed file without a restart (on SIGHUP, and when the file changes); "
             "a file that does not validate is refused with its problems and the old config "
             "stays in force. `examples/site.toml` is a complete example.")
    return markdown(FACTORY_SCHEMA, "Factory configuration (site.toml)", intro)
