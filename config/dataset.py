"""The dataset config: its schema, its validation, and the typed form the rest of floe reads.

A user submits one JSON document describing a dataset (how many jobs, the steering values, and
the DAG of tasks each job runs). `validate()` checks it against `DATASET` (see `config.schema`),
then checks what a schema cannot: unique task names, known dependencies without cycles,
expressions that parse and name only defined steering values and known arguments, and
requirements that can be resolved once at submit time. The result, `DatasetConfig`, keeps the
normalized document in `raw` (sizes in bytes, durations in seconds, defaults filled), which is
what the matchmaker stores and what the pilot receives task by task; validating `raw` again gives
the same `DatasetConfig`. At submit, `check_sample_jobs()` also evaluates the expressions the
pilot evaluates per job, for a sample of jobs, so that one that always fails is refused there.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from floe.config import expressions, notify, retries
from floe.config.json_schema import json_schema as schema_of
from floe.config.protocol import MAX_CPUS, MAX_GPUS
from floe.config.resources import SMALLEST_SIZE, Requirements
from floe.config.schema import (
    NO_NUL_SCHEMA,
    OMIT,
    AnyValue,
    Bool,
    ConfigError,
    Duration,
    Either,
    Field,
    Float,
    Integer,
    ListOf,
    MapOf,
    Object,
    Problems,
    Size,
    String,
    join_path,
    no_nul,
    parse_json,
    show,
    suggestion,
)

MAX_JOBS = 10_000_000
MAX_TASK_BYTES = 2**50
"""The most memory or disk one task may ask for (1 PiB): a larger number is a mistake."""
_TASK_SIZE = Size(maximum=MAX_TASK_BYTES, smallest=SMALLEST_SIZE)
MAX_WALLTIME = 366 * 86400
"""The longest walltime one task may ask for (366 days)."""
MAX_TASKS = 1000
MAX_RETRIES = 100

ARGS = ("job", "dataset", "jobs_submitted", "task", "attempt")
"""The names `$args(...)` knows when a task runs; see `job_args()`."""

# Requirements are resolved once, when the dataset is submitted: only what is the same for every
# job of the dataset can be used there.
SUBMIT_TIME_FUNCTIONS = ("steering", "eval", "sprintf")

INPUT_SCHEMES = ("file", "http", "https")
OUTPUT_SCHEMES = ("file", "http", "https")

_NAME = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}"
_NAME_HINT = 'a name of letters, digits, "_", "-" and "." (at most 64 characters)'
_CHECKSUM = r"sha256:[0-9a-fA-F]{64}|md5:[0-9a-fA-F]{32}"
_CHECKSUM_HINT = 'a checksum "sha256:" + 64 hex digits or "md5:" + 32 hex digits'
_STEERING_NAME = r"[A-Za-z_][A-Za-z0-9_.-]{0,63}"
_STEERING_HINT = ('a name of letters, digits, "_", "-" and ".", starting with a letter or "_" '
                  "(at most 64 characters)")
_ENV_NAME = String(pattern=r"[A-Za-z_][A-Za-z0-9_]*",
                   hint='an environment variable name (letters, digits and "_")')
_LOCAL_HINT = 'a relative path inside the task\'s scratch directory, without ".."'
_URL_START = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):")


def _relative_path(text: str) -> str | None:
    """Why `text` cannot name a file inside the task's scratch directory, or None if it can."""
    if not text:
        return 'expected a relative path like "out/result.txt", got ""'
    if text.startswith("/"):
        return (f"expected a path relative to the task's scratch directory, got {show(text)}; "
                "drop the leading /")
    if ".." in text.split("/"):
        return (f'expected a path inside the task\'s scratch directory, got {show(text)}; '
                'remove the ".." parts')
    return None


# Text a module's program gets, as an argument or in its environment.
_ARGUMENT = String(rule=no_nul, rule_schema=NO_NUL_SCHEMA)
_ARGUMENT_1 = String(min_length=1, rule=no_nul, rule_schema=NO_NUL_SCHEMA)
_LOCAL = String(hint=_LOCAL_HINT, rule=_relative_path,
                rule_schema={"minLength": 1, "not": {"pattern": r"^/|(^|/)\.\.(?![^/])"}})


def _url_hint(schemes: tuple[str, ...], absolute_path: bool) -> str:
    starts = [f"{s}://" for s in schemes]
    if absolute_path:
        return f"a URL starting with {', '.join(starts)}, or an absolute path"
    return f"a URL starting with {', '.join(starts[:-1])} or {starts[-1]}"


def _url(schemes: tuple[str, ...], absolute_path: bool) -> String:
    """URLs with these schemes (and plain absolute paths when allowed). A URL that starts with
    an expression is checked by the pilot once the expression has a value."""
    hint = _url_hint(schemes, absolute_path)

    def rule(text: str) -> str | None:
        if text.startswith("$"):
            return None
        scheme = _URL_START.match(text)
        if scheme and scheme.group(1).lower() in schemes and text[scheme.end():].startswith("//"):
            return None
        if not scheme and absolute_path and text.startswith("/"):
            return None
        return f"expected {hint}, got {show(text)}"

    any_case = ("".join(f"[{c.upper()}{c.lower()}]" for c in s) for s in schemes)
    starts = [r"\$", f"({'|'.join(any_case)})://", *(["/"] if absolute_path else [])]
    return String(hint=hint, rule=rule, rule_schema={"pattern": f"^({'|'.join(starts)})"})


REQUIREMENTS = Object([
    Field("cpus", Integer(minimum=1, maximum=MAX_CPUS), "CPU cores the task uses.", default=1),
    Field("memory", _TASK_SIZE, "Memory the task may use; more gets it killed "
          "and retried with more.", default="1GiB", example="4GB"),
    Field("disk", _TASK_SIZE, "Scratch disk the task may fill (inputs, "
          "outputs, temporary files).", default="1GiB", example="20GB"),
    Field("gpus", Integer(minimum=0, maximum=MAX_GPUS), "GPUs the task uses.", default=0),
    Field("walltime", Duration(minimum=1, maximum=MAX_WALLTIME), "Longest time one attempt may "
          "run.", default="1h", example="2h30m"),
    Field("os", ListOf(String(min_length=1)),
          "Operating systems the task runs on, as fnmatch patterns; empty means any.",
          default=[], example=["debian12", "el9"]),
    Field("arch", ListOf(String(min_length=1)),
          "CPU architectures the task runs on, as fnmatch patterns; empty means any.",
          default=[], example=["x86_64"]),
    Field("sites", ListOf(String(min_length=1)),
          "Sites the task may run at, as fnmatch patterns; empty means every site.",
          default=[], example=["uw-*"]),
    Field("exclude_sites", ListOf(String(min_length=1)),
          "Sites the task must not run at, as fnmatch patterns.", default=[]),
    Field("gpu_memory", _TASK_SIZE, "Least memory each of its GPUs has; 0 "
          "means any.", default=0, example="40GiB",
          details="As NVML reports a device's total memory (an H100 has 80GiB)."),
    Field("gpu_model", String(), "The model each of its GPUs is, as an fnmatch pattern of the "
          "name NVML reports (case does not matter); empty means any.", default="",
          example="*H100*"),
    Field("compute_capability", String(pattern=r"^(\d{1,3}(\.\d{1,3})?)?$",
                                       hint='a version such as "8.0"'),
          "Least CUDA compute capability of each of its GPUs; empty means any.", default="",
          example="8.0"),
], doc="What one attempt of the task needs. Resolved at submit time: values may use "
       "`$steering`, `$eval` and `$sprintf`, never `$args`, `$system` or `$choice`.")

INPUT = Object([
    Field("url", _url(INPUT_SCHEMES, absolute_path=True),
          "Where to fetch the file from: file://, http://, https:// or an absolute path.",
          example="https://example.org/gen.py"),
    Field("local", _LOCAL,
          "Where to put it, relative to the task's scratch directory (no `..`).",
          example="gen.py"),
    Field("checksum", String(pattern=_CHECKSUM, hint=_CHECKSUM_HINT),
          "Checksum the fetched file must have; a mismatch is a staging error.", default=OMIT,
          example="md5:9e107d9d372bb6826bd81d3542a419d6"),
], doc="A file fetched into the task's scratch directory before its first module runs.")

OUTPUT = Object([
    Field("local", _LOCAL,
          "The file the task wrote, relative to its scratch directory (no `..`).",
          example="gen.i3"),
    Field("url", _url(OUTPUT_SCHEMES, absolute_path=False),
          "Where to store it: a file:// destination, or an http(s):// URL it is PUT to.",
          example="file:///data/sim/gen_000001.i3"),
    Field("checksum", String(pattern=_CHECKSUM, hint=_CHECKSUM_HINT),
          "Checksum the produced file must have before it is stored.", default=OMIT),
], doc="A file stored after the task's last module succeeded.")

MODULE = Object([
    Field("name", String(pattern=_NAME, hint=_NAME_HINT),
          "Name of the module in logs and statistics; unique in its task.", default=OMIT,
          default_text='`"module0"`, `"module1"`, ... by position', example="gen"),
    Field("command", Either(_ARGUMENT_1, ListOf(_ARGUMENT, min_length=1)),
          "What to run: a list of strings is the argv, one string runs under /bin/sh -c.",
          example=["python3", "gen.py", "--seed", "$args(job)"]),
    Field("env", MapOf(_ARGUMENT, key=_ENV_NAME),
          "Environment variables for this module, on top of the task's.", default={}),
], doc="One command of a task; the modules of a task run one after the other in its scratch "
       "directory, and the task fails at the first that exits non-zero.")

TASK = Object([
    Field("name", String(pattern=_NAME, hint=_NAME_HINT),
          "Name of the task, unique in the dataset.", example="generate"),
    Field("requirements", REQUIREMENTS, "What one attempt needs (see below).", default={}),
    Field("depends", ListOf(String(pattern=_NAME, hint=_NAME_HINT)),
          "Names of tasks of the same job that must complete before this one starts.",
          default=[], example=["generate"]),
    Field("env", MapOf(_ARGUMENT, key=_ENV_NAME),
          "Environment variables for every module of the task.", default={},
          example={"SEED": "$eval($steering(seed_base) + $args(job))"}),
    Field("inputs", ListOf(INPUT), "Files fetched before the task runs.", default=[]),
    Field("outputs", ListOf(OUTPUT), "Files stored after the task succeeded.", default=[]),
    Field("modules", ListOf(MODULE, min_length=1), "The commands the task runs, in order."),
], doc="One node of the DAG every job of the dataset runs.")

DATASET = Object([
    Field("description", String(), "What the dataset is, for people browsing datasets.",
          default="", example="CORSIKA air showers with the 2026 ice model"),
    Field("jobs", Integer(minimum=1, maximum=MAX_JOBS),
          "How many jobs the dataset has; each job runs every task once.", example=1000),
    Field("priority", Float(minimum=0, maximum=1000, above=True),
          "The dataset's weight within its owner's fair share.", default=1,
          details="A dataset with priority 2 gets twice the slots of a dataset with priority 1 "
                  "of the same owner, while both have ready tasks."),
    Field("max_retries", Integer(minimum=0, maximum=MAX_RETRIES),
          "Times a failed task is tried again before it is failed (0: it fails at its first "
          "failure).", default=3,
          details="Only failures that are the task's own count (task_error, resource_overuse, "
                  "staging_error); a lost pilot (pilot_lost) does not, nor a task its pilot "
                  "gave back before starting it (not_run: the pilot was stopped, the tasks "
                  "queued before it ran longer than expected and its walltime no longer fit, "
                  "or the tasks running before it had all run five times the pilot's prefetch "
                  "horizon, leaving no room for it, and it went back for another pilot)."),
    retries.FIELD,
    retries.DELAY_FIELD,
    retries.ELSEWHERE_FIELD,
    notify.FIELD,
    Field("debug", Bool(),
          "Suspend a failing task instead of retrying it, so its owner can inspect it.",
          default=False, details="A suspended task can be run by hand with `floe run` and "
                                 "resumed afterwards."),
    Field("steering", MapOf(AnyValue(), key=String(pattern=_STEERING_NAME,
                                                   hint=_STEERING_HINT)),
          "Named values the tasks refer to with `$steering(name)`.", default={},
          example={"seed_base": 1000, "energies": [1000, 10000]},
          details="Values may be any JSON value; strings may hold expressions themselves, "
                  "evaluated for each job where they are used."),
    Field("tasks", ListOf(TASK, min_length=1, max_length=MAX_TASKS),
          "The tasks every job runs, as a DAG by `depends`."),
], doc="The document a user submits to create a dataset.")

SUBMIT_TIME_EXPRESSION = {
    "type": "string",
    "pattern": r"\$(" + "|".join(SUBMIT_TIME_FUNCTIONS) + r")\(",
    "description": "an expression resolved once when the dataset is submitted, from the "
                   "steering values alone: " + ", ".join(f"${f}" for f in SUBMIT_TIME_FUNCTIONS),
}
"""What a requirement may be instead of its value: `_resolve_requirements` replaces it by its
value before the schema's checks, so any value inside `requirements` may be one."""


def json_schema() -> dict[str, Any]:
    """`DATASET` as JSON Schema (2020-12, the dialect of OpenAPI 3.1): the body the matchmaker
    takes to submit a dataset. What `validate()` checks beyond the schema is in its
    description."""
    schema = schema_of(DATASET, also={REQUIREMENTS: SUBMIT_TIME_EXPRESSION})
    schema["description"] = (
        f"{DATASET.doc} Besides this schema, a dataset is refused when two tasks (or two "
        "modules of one task) have the same name, when a task depends on an unknown task or "
        "the dependencies form a cycle, and when an expression does not parse or names a "
        "steering value or job argument that does not exist; see docs/config.md.")
    return schema


@dataclass(frozen=True)
class TaskSpec:
    """One task of the dataset's DAG; `depends` and `dependents` are task indices."""

    name: str
    index: int
    requirements: Requirements
    depends: tuple[int, ...]
    dependents: tuple[int, ...]
    raw: dict


@dataclass(frozen=True)
class DatasetConfig:
    """A validated dataset config; `raw` is the normalized document to store and re-validate."""

    description: str
    jobs: int
    priority: float
    max_retries: int
    debug: bool
    steering: dict
    tasks: list[TaskSpec]
    raw: dict
    retry_rules: tuple[retries.RetryRule, ...] = ()
    retry_delay: int = 0
    retry_elsewhere: int = 0
    notify: tuple[notify.Hook, ...] = ()

    def task(self, name: str) -> TaskSpec:
        """The task with this name; KeyError when there is none."""
        for spec in self.tasks:
            if spec.name == name:
                return spec
        raise KeyError(name)

    def topological_order(self) -> list[TaskSpec]:
        """The tasks so that each comes after all it depends on (ties in document order)."""
        waiting = {t.index: len(t.depends) for t in self.tasks}
        ready = [t.index for t in self.tasks if not t.depends]
        order = []
        while ready:
            index = min(ready)
            ready.remove(index)
            order.append(self.tasks[index])
            for child in self.tasks[index].dependents:
                waiting[child] -= 1
                if waiting[child] == 0:
                    ready.append(child)
        return order

    def to_json(self) -> str:
        """The normalized document as JSON, as the matchmaker stores it."""
        return json.dumps(self.raw, separators=(",", ":"), ensure_ascii=False)


def job_args(job: int, dataset: int | str, jobs_submitted: int, task: str,
             attempt: int | str = 0) -> dict[str, Any]:
    """The `$args(...)` scope of one task of one job (attempt 0 when run offline)."""
    return {"job": job, "dataset": dataset, "jobs_submitted": jobs_submitted, "task": task,
            "attempt": attempt}


EXPRESSION_FUNCTIONS = {
    "steering": ("$steering(name)",
                 "The dataset's steering value `name`, typed (a number stays a number); "
                 "index lists and objects with `[i]`."),
    "args": ("$args(name)",
             "A fact of the running job: " + ", ".join(f"`{a}`" for a in ARGS) + "."),
    "system": ("$system(name)",
               "A value the site provides (e.g. a scratch or data directory); known only on "
               "the pilot."),
    "eval": ("$eval(code)",
             "Arithmetic, comparisons and `x if c else y` on numbers, strings and booleans."),
    "sprintf": ('$sprintf("format", value, ...)',
                'printf-style formatting, as in `$sprintf("%06d", $args(job))`.'),
    "choice": ("$choice(a, b, ...)",
               "One of the values (or of the items of one list argument), picked by the job: "
               "the same job always gets the same one."),
}
"""One line per expression function, for the generated reference (config.docs)."""


def validate(data: Any) -> DatasetConfig:
    """The typed, normalized dataset config; ConfigError lists every problem in `data`."""
    problems = Problems()
    document = _resolve_requirements(data, problems)
    problems.mute(set(problems.paths))
    raw = DATASET.check(document, "", problems)
    tasks = raw.get("tasks") if isinstance(raw, dict) else None
    edges: list[list[int]] = []
    # Without a list of tasks the schema has already said what is wrong; the checks below
    # only look at the parts that have the right shape.
    if isinstance(tasks, list):
        _name_modules(tasks, problems)
        _check_gpu_kinds(tasks, problems)
        edges = _check_dependencies(tasks, problems)
        _check_expressions(raw, problems)
    problems.raise_if_any()
    return _typed(raw, edges)


def check_sample_jobs(config: DatasetConfig) -> None:
    """Evaluate every expression that the pilot evaluates per job (in each task's env, inputs,
    outputs and modules) as it would for the dataset's first and last job, and check the
    values that must have a shape (file names, URLs, text for a program); raise ConfigError
    naming each one that fails, so that a mistake that would fail every attempt (`$eval(1/0)`
    in a command) is refused at submit, as one in requirements is.

    What is known only where a job runs counts as fine: the site's `$system(...)` values, the
    dataset's id and the attempt (`$args(dataset)`, `$args(attempt)`), and so what `$choice`
    picks. Two jobs, not all: a million-job dataset is checked as fast as a two-job one.
    """
    problems = Problems()
    unknown = expressions.UNKNOWN
    found = [_per_job_strings(spec.raw, spec.index) for spec in config.tasks]
    for job in sorted({0, config.jobs - 1}):
        for spec in config.tasks:
            args = job_args(job, unknown, config.jobs, spec.name, unknown)
            for path, text, rule in found[spec.index]:
                if path in problems.paths:
                    continue  # once is enough
                try:
                    value = expressions.evaluate(text, steering=config.steering, args=args,
                                                 system=unknown)
                except expressions.NotKnownYet:
                    continue
                except expressions.ExpressionError as err:
                    problems.add(path, f"{err} (for job {job})")
                    continue
                problem = rule(value)
                if problem:
                    problems.add(path, f"{problem} (for job {job})")
    problems.raise_if_any()


def loads(text: str, source: str = "the dataset config") -> DatasetConfig:
    """The dataset config in a JSON text; `source` names it in syntax errors."""
    return validate(parse_json(text, source))


def load(path: str | Path) -> DatasetConfig:
    """The dataset config in a JSON file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError([f"{path}: cannot read the dataset config ({err.strerror})"]) from None
    except UnicodeDecodeError as err:
        raise ConfigError([f"{path}: not UTF-8 text (byte {err.start}); save it as UTF-8"]
                          ) from None
    return loads(text, str(path))


# ---------------------------------------------------------------- checks beyond the schema


def _resolve_requirements(data: Any, problems: Problems) -> Any:
    """`data` with the expressions in each task's requirements replaced by their values.

    Requirements decide which slots a task fits, so they are computed once here, from the
    steering values alone, and stored as plain numbers.
    """
    if not isinstance(data, Mapping) or not isinstance(data.get("tasks"), list):
        return data
    steering = data.get("steering", {})
    tasks = []
    for index, task in enumerate(data["tasks"]):
        if isinstance(task, Mapping) and "requirements" in task:
            path = f"tasks[{index}].requirements"
            task = {**task, "requirements": _resolve(task["requirements"], path, steering,
                                                     problems)}
        tasks.append(task)
    return {**data, "tasks": tasks}


def _resolve(value: Any, path: str, steering: Any, problems: Problems) -> Any:
    if isinstance(value, list):
        return [_resolve(item, join_path(path, i), steering, problems)
                for i, item in enumerate(value)]
    if isinstance(value, Mapping):
        return {key: _resolve(item, join_path(path, key), steering, problems)
                for key, item in value.items()}
    if not isinstance(value, str) or "$" not in value:
        return value
    try:
        used = expressions.functions(value)
    except expressions.ExpressionError as err:
        problems.add(path, str(err))
        return value
    refused = [f"${name}" for name in expressions.FUNCTIONS
               if name in used and name not in SUBMIT_TIME_FUNCTIONS]
    if refused:
        allowed = ", ".join(f"${name}" for name in SUBMIT_TIME_FUNCTIONS)
        problems.add(path, f"{' and '.join(refused)} cannot be used in requirements: they are "
                           "resolved once when the dataset is submitted and are the same for "
                           f"every job, so only {allowed} can be used there")
        return value
    if not isinstance(steering, Mapping):
        return value  # the schema reports the steering itself
    if not _check_references(value, path, steering, problems):
        return value
    try:
        result = expressions.evaluate(value, steering=steering)
    except expressions.ExpressionError as err:
        problems.add(path, str(err))
        return value
    # $eval of whole numbers can give 4.0; the requirement is still a whole number.
    if isinstance(result, float) and result.is_integer():
        return int(result)
    return result


def _name_modules(tasks: list, problems: Problems) -> None:
    """Give unnamed modules their default name and refuse two modules with one name."""
    for index, task in enumerate(tasks):
        modules = task.get("modules") if isinstance(task, dict) else None
        if not isinstance(modules, list):
            continue
        seen: dict[str, int] = {}
        for position, module in enumerate(modules):
            if not isinstance(module, dict):
                continue
            if "name" not in module:
                modules[position] = module = {"name": f"module{position}", **module}
            name = module["name"]
            if isinstance(name, str) and name in seen:
                problems.add(f"tasks[{index}].modules[{position}].name",
                             f"{show(name)} is also the name of modules[{seen[name]}]; "
                             "module names must be unique in a task")
            elif isinstance(name, str):
                seen[name] = position


def _check_gpu_kinds(tasks: list, problems: Problems) -> None:
    """Refuse a GPU kind (gpu_memory, gpu_model, compute_capability) on a task without GPUs."""
    for index, task in enumerate(tasks):
        needs = task.get("requirements") if isinstance(task, dict) else None
        if not isinstance(needs, dict) or needs.get("gpus"):
            continue
        for name in ("gpu_memory", "gpu_model", "compute_capability"):
            if needs.get(name):
                problems.add(f"tasks[{index}].requirements.{name}",
                             "describes the task's GPUs, and it asks for none: set gpus too")


def _check_dependencies(tasks: list, problems: Problems) -> list[list[int]]:
    """Each task's dependencies as indices, after refusing repeated task names, unknown
    dependencies and cycles."""
    index_of: dict[str, int] = {}
    for index, task in enumerate(tasks):
        name = task.get("name") if isinstance(task, dict) else None
        if not isinstance(name, str):
            continue
        if name in index_of:
            problems.add(f"tasks[{index}].name",
                         f"{show(name)} is also the name of tasks[{index_of[name]}]; "
                         "task names must be unique in a dataset")
        else:
            index_of[name] = index
    edges: list[list[int]] = []
    for index, task in enumerate(tasks):
        depends = task.get("depends") if isinstance(task, dict) else None
        found: list[int] = []
        for position, name in enumerate(depends if isinstance(depends, list) else []):
            path = f"tasks[{index}].depends[{position}]"
            if not isinstance(name, str):
                continue
            if name not in index_of:
                problems.add(path, f"no task is named {show(name)}"
                                   + suggestion(name, list(index_of)))
            elif index_of[name] in found:
                problems.add(path, f"{show(name)} is listed twice; list it once")
            else:
                found.append(index_of[name])
        edges.append(found)
    names = {i: name for name, i in index_of.items()}
    for cycle in _cycles({i: edges[i] for i in names}):
        problems.add(f"tasks[{cycle[0]}].depends",
                     "dependency cycle " + " -> ".join(names[i] for i in cycle)
                     + " (each depends on the next); remove one of these dependencies")
    return edges


def _check_expressions(raw: dict, problems: Problems) -> None:
    """Every expression outside requirements parses and names only defined steering values
    and known job arguments; steering values do not refer to each other in a cycle."""
    steering = raw.get("steering")
    if not isinstance(steering, dict):
        return
    refers: dict[str, list[str]] = {}
    for name, value in steering.items():
        refers[name] = []
        for path, text in _expression_strings(value, join_path("steering", name)):
            if _check_references(text, path, steering, problems):
                refers[name].extend(sorted(ref for func, ref in expressions.references(text)
                                           if func == "steering" and ref in steering))
    for cycle in _cycles(refers):
        problems.add(join_path("steering", cycle[0]),
                     "steering values refer to each other in a cycle: " + " -> ".join(cycle)
                     + "; one of them must be a plain value")
    for index, task in enumerate(raw["tasks"]):
        if not isinstance(task, dict):
            continue
        rest = {key: value for key, value in task.items() if key != "requirements"}
        for path, text in _expression_strings(rest, f"tasks[{index}]"):
            _check_references(text, path, steering, problems)


def _per_job_strings(task: dict, index: int
                     ) -> list[tuple[str, str, Callable[[Any], str | None]]]:
    """(path, text, check of its value) of every string with an expression that the pilot
    evaluates per job, in the parts of the task that `pilot.runner` resolves."""
    base = f"tasks[{index}]"
    found = [(path, text, _argument) for path, text in
             _expression_strings(task["env"], f"{base}.env")]
    for kind, entries in (("inputs", task["inputs"]), ("outputs", task["outputs"])):
        for position, entry in enumerate(entries):
            for key in ("url", "local"):
                path = f"{base}.{kind}[{position}].{key}"
                found += [(path, text, _file_check((INPUT if kind == "inputs" else OUTPUT)
                                                   .fields[key].kind))
                          for path, text in _expression_strings(entry[key], path)]
    for position, module in enumerate(task["modules"]):
        for key in ("command", "env"):
            found += [(path, text, _argument) for path, text in
                      _expression_strings(module[key], f"{base}.modules[{position}].{key}")]
    return found


def _argument(value: Any) -> str | None:
    """What is wrong with a value a module's program gets (any value: the pilot writes one
    that is not a string as JSON, which holds no NUL)."""
    return no_nul(value) if isinstance(value, str) else None


def _file_check(kind: Any) -> Callable[[Any], str | None]:
    """The check of a file's URL or local name once its expressions have a value."""
    def check(value: Any) -> str | None:
        if not isinstance(value, str):
            return f"is {show(value)} once evaluated; it must be a string"
        return kind.rule(value)
    return check


def _expression_strings(value: Any, path: str) -> list[tuple[str, str]]:
    """(path, text) of every string with a `$` inside a JSON value."""
    if isinstance(value, str):
        return [(path, value)] if "$" in value else []
    if isinstance(value, list):
        return [pair for i, item in enumerate(value)
                for pair in _expression_strings(item, join_path(path, i))]
    if isinstance(value, dict):
        return [pair for key, item in value.items()
                for pair in _expression_strings(item, join_path(path, key))]
    return []


def _check_references(text: str, path: str, steering: Mapping[str, Any],
                      problems: Problems) -> bool:
    """Whether `text` parses and names only defined steering values and known arguments."""
    before = len(problems)
    try:
        named = expressions.references(text)
    except expressions.ExpressionError as err:
        problems.add(path, str(err))
        return False
    for function, name in sorted(named):
        if function == "steering" and name not in steering:
            problems.add(path, f"$steering({name}): no steering value is named {show(name)}"
                               + (suggestion(name, list(steering)) or '; add it to "steering"'))
        elif function == "args" and name not in ARGS:
            problems.add(path, f"$args({name}): no job argument is named {show(name)}"
                               + suggestion(name, ARGS))
    return len(problems) == before


def _cycles(graph: Mapping[Any, list]) -> list[list]:
    """The cycles a depth-first walk of `graph` (node -> successors) meets, each as the nodes
    along it with the first repeated at the end. Iterative: a chain of a thousand tasks must
    not hit Python's recursion limit."""
    state: dict[Any, int] = {}  # 1 while on the current trail, 2 when finished
    found = []
    for root in graph:
        if root in state:
            continue
        state[root] = 1
        trail = [root]
        stack = [iter(graph[root])]
        while stack:
            for child in stack[-1]:
                if state.get(child) == 1:
                    found.append([*trail[trail.index(child):], child])
                elif child not in state and child in graph:
                    state[child] = 1
                    trail.append(child)
                    stack.append(iter(graph[child]))
                    break
            else:
                state[trail.pop()] = 2
                stack.pop()
    return found


def _typed(raw: dict, edges: list[list[int]]) -> DatasetConfig:
    dependents: list[list[int]] = [[] for _ in edges]
    for index, depends in enumerate(edges):
        for parent in depends:
            dependents[parent].append(index)
    tasks = [
        TaskSpec(name=task["name"], index=index,
                 requirements=Requirements.from_dict(task["requirements"]),
                 depends=tuple(edges[index]), dependents=tuple(dependents[index]), raw=task)
        for index, task in enumerate(raw["tasks"])
    ]
    return DatasetConfig(description=raw["description"], jobs=raw["jobs"],
                         priority=raw["priority"], max_retries=raw["max_retries"],
                         debug=raw["debug"], steering=raw["steering"], tasks=tasks, raw=raw,
                         retry_rules=retries.rules_of(raw["retry_rules"]),
                         retry_delay=raw["retry_delay"], retry_elsewhere=raw["retry_elsewhere"],
                         notify=notify.hooks_of(raw["notify"]))
