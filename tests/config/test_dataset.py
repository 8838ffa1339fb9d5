"""Dataset config validation: each rule with the sentence it answers, and the typed result."""

from __future__ import annotations

import copy
import json

import pytest

from floe.config import dataset
from floe.config.resources import GB, GIB, Requirements
from floe.config.schema import ConfigError

SHA = "sha256:" + "0123456789abcdef" * 4


def document(**changes) -> dict:
    base = {
        "jobs": 10,
        "steering": {"seed": 7, "energies": [1, 10]},
        "tasks": [
            {"name": "generate", "modules": [{"command": ["python3", "gen.py"]}]},
            {"name": "filter", "depends": ["generate"],
             "modules": [{"command": "echo $args(job)"}]},
        ],
    }
    base.update(changes)
    return base


def task(name: str, depends=(), **fields) -> dict:
    return {"name": name, "depends": list(depends), "modules": [{"command": "true"}], **fields}


def problems_of(data) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        dataset.validate(data)
    return caught.value.problems


def test_a_minimal_document_gets_every_default():
    config = dataset.validate({"jobs": 1, "tasks": [task("only")]})
    assert (config.description, config.jobs, config.priority, config.max_retries,
            config.debug, config.steering) == ("", 1, 1.0, 3, False, {})
    only = config.tasks[0]
    assert only.requirements == Requirements()
    assert only.raw == {
        "name": "only",
        "requirements": {"cpus": 1, "memory": GIB, "disk": GIB, "gpus": 0, "walltime": 3600,
                         "os": [], "arch": [], "sites": [], "exclude_sites": [],
                         "gpu_memory": 0, "gpu_model": "", "compute_capability": ""},
        "depends": [], "env": {}, "inputs": [], "outputs": [],
        "modules": [{"name": "module0", "command": "true", "env": {}}],
    }


def test_requirements_are_normalized_to_bytes_and_seconds():
    config = dataset.validate(document(tasks=[task("t", requirements={
        "cpus": 4, "memory": "4GB", "disk": "2GiB", "gpus": 1, "walltime": "1-00:00:00",
        "os": ["el9"], "arch": ["x86_64"], "sites": ["uw-*"], "exclude_sites": ["bad"]})]))
    assert config.tasks[0].requirements == Requirements(
        cpus=4, memory=4 * GB, disk=2 * GIB, gpus=1, walltime=86400, os=("el9",),
        arch=("x86_64",), sites=("uw-*",), exclude_sites=("bad",))
    assert config.tasks[0].raw["requirements"]["memory"] == 4 * GB


def test_the_normalized_document_validates_to_the_same_config():
    source = document(priority=2, tasks=[
        task("gen", requirements={"memory": "$eval($steering(seed) * 1000000)",
                                  "walltime": "2h"},
             inputs=[{"url": "https://example.org/gen.py", "local": "gen.py", "checksum": SHA}],
             outputs=[{"local": "out.txt", "url": "file:///data/out_$args(job).txt"}]),
        task("sum", depends=["gen"], env={"E": "$choice($steering(energies))"}),
    ])
    config = dataset.validate(source)
    stored = json.loads(config.to_json())
    assert stored == config.raw
    assert dataset.validate(stored) == config


def test_validation_does_not_change_the_submitted_document():
    source = document(tasks=[task("t", requirements={"cpus": "$steering(seed)"})])
    kept = copy.deepcopy(source)
    dataset.validate(source)
    assert source == kept


def test_depends_and_dependents_are_task_indices():
    config = dataset.validate(document(tasks=[
        task("a"), task("b", ["a"]), task("c", ["a"]), task("d", ["c", "b"])]))
    assert [(t.index, t.depends, t.dependents) for t in config.tasks] == [
        (0, (), (1, 2)), (1, (0,), (3,)), (2, (0,), (3,)), (3, (2, 1), ())]


def test_topological_order_puts_each_task_after_what_it_depends_on():
    config = dataset.validate(document(tasks=[
        task("last", ["middle"]), task("middle", ["first"]), task("first"), task("alone")]))
    assert [t.name for t in config.topological_order()] == ["first", "middle", "last", "alone"]
    assert config.task("middle").index == 1


def test_jobs_is_required_and_bounded():
    data = document()
    del data["jobs"]
    assert problems_of(data) == [
        "jobs: missing; expected an integer from 1 to 10,000,000 "
        "(How many jobs the dataset has; each job runs every task once.)"
    ]
    assert problems_of(document(jobs=10_000_001)) == [
        "jobs: expected an integer from 1 to 10,000,000, got 10000001"
    ]


def test_priority_must_be_positive():
    assert problems_of(document(priority=0)) == [
        "priority: expected a number greater than 0 and at most 1,000, got 0"
    ]


def test_too_many_tasks_are_refused():
    tasks = [task(f"t{i}") for i in range(dataset.MAX_TASKS + 1)]
    assert problems_of(document(tasks=tasks)) == [
        "tasks: expected a list of 1 to 1,000 items, got 1,001"
    ]


def test_misspelled_task_key_suggests_the_right_one():
    data = document()
    data["tasks"][0]["requirments"] = {}
    assert problems_of(data) == ['tasks[0].requirments: unknown key; did you mean "requirements"?']


def test_requirement_with_a_wrong_size_names_path_value_and_form():
    data = document()
    data["tasks"][1]["requirements"] = {"memory": "lots"}
    assert problems_of(data) == ['tasks[1].requirements.memory: expected a size like "4GB" of '
                                 'at most 1PiB, got "lots"']


def test_a_bare_memory_of_1024_is_refused_as_1kib_with_the_unit_to_write():
    data = document()
    data["tasks"][1]["requirements"] = {"memory": 1024, "disk": "4096"}
    assert problems_of(data) == [
        'tasks[1].requirements.memory: 1024 is 1KiB: a size without a unit counts bytes, and '
        'here it must be 0 or at least 1MB; write "1024MiB" or "1024MB" for that many megabytes',
        'tasks[1].requirements.disk: "4096" is 4KiB: a size without a unit counts bytes, and '
        'here it must be 0 or at least 1MB; write "4096MiB" or "4096MB" for that many megabytes']


def test_a_task_size_below_1mb_is_refused_and_bytes_from_1mb_stay_valid_once_normalized():
    data = document()
    data["tasks"][1]["requirements"] = {"memory": "512KiB"}
    assert problems_of(data) == ['tasks[1].requirements.memory: "512KiB" is less than 1MB: here '
                                 'a size must be 0 or at least 1MB']
    data["tasks"][1]["requirements"] = {"memory": "1MB", "disk": 0, "gpus": 1,
                                        "gpu_memory": 2**30}
    normalized = dataset.validate(data).raw
    assert normalized["tasks"][1]["requirements"]["memory"] == 10**6
    assert dataset.validate(normalized).raw == normalized  # as the matchmaker reloads it


def test_all_problems_of_a_document_are_reported_together():
    data = document(jobs=0, debug="yes")
    data["tasks"][1]["name"] = "has space"
    data["tasks"][1]["modules"] = []
    assert problems_of(data) == [
        "jobs: expected an integer from 1 to 10,000,000, got 0",
        'debug: expected true or false, got "yes"',
        'tasks[1].name: expected a name of letters, digits, "_", "-" and "." (at most 64 '
        'characters), got "has space"',
        "tasks[1].modules: expected a list of at least 1 item, got 0",
    ]


def test_task_names_must_be_unique():
    assert problems_of(document(tasks=[task("a"), task("b"), task("a")])) == [
        'tasks[2].name: "a" is also the name of tasks[0]; task names must be unique in a dataset'
    ]


def test_depending_on_an_unknown_task_names_the_nearest_task():
    assert problems_of(document(tasks=[task("generate"), task("f", ["genrate"])])) == [
        'tasks[1].depends[0]: no task is named "genrate"; did you mean "generate"?'
    ]


def test_depending_on_an_unknown_task_lists_the_known_tasks():
    assert problems_of(document(tasks=[task("generate"), task("f", ["zzz"])])) == [
        'tasks[1].depends[0]: no task is named "zzz"; known: "f", "generate"'
    ]


def test_a_dependency_listed_twice_is_refused():
    assert problems_of(document(tasks=[task("a"), task("b", ["a", "a"])])) == [
        'tasks[1].depends[1]: "a" is listed twice; list it once'
    ]


def test_a_dependency_cycle_is_refused_naming_the_cycle():
    tasks = [task("generate", ["filter"]), task("filter", ["generate"]), task("plot", ["filter"])]
    assert problems_of(document(tasks=tasks)) == [
        "tasks[0].depends: dependency cycle generate -> filter -> generate (each depends on the "
        "next); remove one of these dependencies"
    ]


def test_a_task_depending_on_itself_is_a_cycle():
    assert problems_of(document(tasks=[task("a", ["a"])])) == [
        "tasks[0].depends: dependency cycle a -> a (each depends on the next); remove one of "
        "these dependencies"
    ]


def test_a_long_chain_of_tasks_is_not_a_cycle():
    tasks = [task("t0")] + [task(f"t{i}", [f"t{i - 1}"]) for i in range(1, dataset.MAX_TASKS)]
    config = dataset.validate(document(tasks=tasks))
    assert config.topological_order()[-1].name == f"t{dataset.MAX_TASKS - 1}"


def test_module_names_default_to_their_position_and_must_be_unique():
    modules = [{"command": "a"}, {"name": "b", "command": "b"}, {"command": "c"}]
    config = dataset.validate(document(tasks=[task("t", modules=modules)]))
    assert [m["name"] for m in config.tasks[0].raw["modules"]] == ["module0", "b", "module2"]
    twice = [{"name": "x", "command": "a"}, {"name": "x", "command": "b"}]
    assert problems_of(document(tasks=[task("t", modules=twice)])) == [
        'tasks[0].modules[1].name: "x" is also the name of modules[0]; module names must be '
        "unique in a task"
    ]


def test_command_is_a_string_or_a_non_empty_argv():
    assert problems_of(document(tasks=[task("t", modules=[{"command": []}])])) == [
        "tasks[0].modules[0].command: expected a list of at least 1 item, got 0"
    ]
    assert problems_of(document(tasks=[task("t", modules=[{"command": 5}])])) == [
        "tasks[0].modules[0].command: expected a non-empty string or a list of at least 1 item, "
        "got 5"
    ]


def test_an_expression_that_does_not_parse_is_refused_with_its_path():
    problems = problems_of(document(tasks=[task("t", env={"X": "$eval(1 +"})]))
    assert len(problems) == 1
    assert problems[0].startswith("tasks[0].env.X: $eval(1 +: ")


def test_an_expression_naming_an_undefined_steering_value_is_refused():
    assert problems_of(document(tasks=[task("t", env={"S": "$steering(sed)"})])) == [
        'tasks[0].env.S: $steering(sed): no steering value is named "sed"; did you mean "seed"?'
    ]


def test_an_undefined_steering_value_in_a_dataset_without_steering_says_where_to_add_it():
    data = document(tasks=[task("t", modules=[{"command": ["run", "$steering(x)"]}])])
    del data["steering"]
    assert problems_of(data) == [
        'tasks[0].modules[0].command[1]: $steering(x): no steering value is named "x"; '
        'add it to "steering"'
    ]


def test_an_unknown_job_argument_is_refused_with_the_known_ones():
    assert problems_of(document(tasks=[task("t", env={"J": "$args(jbo)"})])) == [
        'tasks[0].env.J: $args(jbo): no job argument is named "jbo"; did you mean "job"?'
    ]
    assert problems_of(document(tasks=[task("t", env={"J": "$args(zzz)"})])) == [
        'tasks[0].env.J: $args(zzz): no job argument is named "zzz"; known: "attempt", '
        '"dataset", "job", "jobs_submitted", "task"'
    ]


def test_every_job_argument_name_is_accepted():
    env = {name.upper(): f"$args({name})" for name in dataset.ARGS}
    assert dataset.validate(document(tasks=[task("t", env=env)])).tasks[0].raw["env"] == env


def test_steering_values_are_checked_as_expressions_too():
    assert problems_of(document(steering={"out": "/data/$steering(run)"})) == [
        'steering.out: $steering(run): no steering value is named "run"; known: "out"'
    ]


def test_steering_values_referring_to_each_other_in_a_cycle_are_refused():
    steering = {"a": "$steering(b)/x", "b": "$steering(c)", "c": "$steering(a)", "d": 1}
    assert problems_of(document(steering=steering)) == [
        "steering.a: steering values refer to each other in a cycle: a -> b -> c -> a; one of "
        "them must be a plain value"
    ]


def test_system_values_are_not_checked_at_submit_time():
    config = dataset.validate(document(tasks=[task("t", env={"D": "$system(anything)"})]))
    assert config.tasks[0].raw["env"]["D"] == "$system(anything)"


def test_shell_variables_and_the_description_are_left_alone():
    config = dataset.validate(document(
        description="costs $5 and $foo(bar)",
        tasks=[task("t", modules=[{"command": 'echo "$HOME" $$ ${USER}'}])]))
    assert config.description == "costs $5 and $foo(bar)"


def test_requirements_expressions_are_resolved_from_steering_at_submit_time():
    steering = {"cores": 4, "gb": 3, "hours": "2h", "os": ["el9"]}
    config = dataset.validate(document(steering=steering, tasks=[task("t", requirements={
        "cpus": "$steering(cores)", "memory": "$eval($steering(gb) * 1000000000)",
        "disk": '$sprintf("%dGB", $steering(gb))', "walltime": "$steering(hours)",
        "os": "$steering(os)"})]))
    assert config.tasks[0].requirements == Requirements(
        cpus=4, memory=3 * GB, disk=3 * GB, walltime=7200, os=("el9",))


@pytest.mark.parametrize("function, text", [
    ("$args", "$args(job)"),
    ("$system", "$system(scratch)"),
    ("$choice", "$choice(1, 2)"),
])
def test_per_job_functions_are_refused_in_requirements(function, text):
    assert problems_of(document(tasks=[task("t", requirements={"cpus": text})])) == [
        f"tasks[0].requirements.cpus: {function} cannot be used in requirements: they are "
        "resolved once when the dataset is submitted and are the same for every job, so only "
        "$steering, $eval, $sprintf can be used there"
    ]


def test_a_requirement_resolving_to_a_wrong_value_is_reported_once():
    problems = problems_of(document(steering={"mem": "lots"},
                                    tasks=[task("t", requirements={"memory": "$steering(mem)"})]))
    assert problems == ['tasks[0].requirements.memory: expected a size like "4GB" of at most '
                        '1PiB, got "lots"']


def test_a_requirement_naming_an_undefined_steering_value_is_reported_once():
    assert problems_of(document(tasks=[task("t", requirements={"gpus": "$steering(ngpu)"})])) == [
        'tasks[0].requirements.gpus: $steering(ngpu): no steering value is named "ngpu"; known: '
        '"energies", "seed"'
    ]


def test_a_requirement_whose_steering_value_needs_job_arguments_is_refused():
    problems = problems_of(document(steering={"n": "$args(job)"},
                                    tasks=[task("t", requirements={"cpus": "$steering(n)"})]))
    assert len(problems) == 1
    assert problems[0].startswith("tasks[0].requirements.cpus: $args(job): job arguments are "
                                  "not known here")


@pytest.mark.parametrize("local, complaint", [
    ("../escape.txt", 'expected a path inside the task\'s scratch directory, got '
                      '"../escape.txt"; remove the ".." parts'),
    ("a/../../b", 'expected a path inside the task\'s scratch directory, got "a/../../b"; '
                  'remove the ".." parts'),
    ("/etc/passwd", "expected a path relative to the task's scratch directory, got "
                    '"/etc/passwd"; drop the leading /'),
])
def test_local_paths_must_stay_inside_the_scratch_directory(local, complaint):
    inputs = [{"url": "https://example.org/x", "local": local}]
    outputs = [{"local": local, "url": "file:///data/x"}]
    assert problems_of(document(tasks=[task("t", inputs=inputs, outputs=outputs)])) == [
        f"tasks[0].inputs[0].local: {complaint}", f"tasks[0].outputs[0].local: {complaint}"]


def test_input_urls_must_use_an_allowed_scheme():
    inputs = [{"url": "ftp://example.org/x", "local": "x"}, {"url": "x.txt", "local": "y"}]
    assert problems_of(document(tasks=[task("t", inputs=inputs)])) == [
        "tasks[0].inputs[0].url: expected a URL starting with file://, http://, https://, or an "
        'absolute path, got "ftp://example.org/x"',
        "tasks[0].inputs[1].url: expected a URL starting with file://, http://, https://, or an "
        'absolute path, got "x.txt"',
    ]


def test_output_urls_must_be_file_or_http_destinations():
    outputs = [{"local": "x", "url": "/data/x"}]
    assert problems_of(document(tasks=[task("t", outputs=outputs)])) == [
        "tasks[0].outputs[0].url: expected a URL starting with file://, http:// or https://, "
        'got "/data/x"'
    ]


def test_allowed_urls_and_urls_that_start_with_an_expression_are_accepted():
    inputs = [{"url": "/cvmfs/x", "local": "a"}, {"url": "file:///x", "local": "b"},
              {"url": "HTTPS://example.org/x", "local": "c"},
              {"url": "$steering(base)/x", "local": "d"}]
    outputs = [{"local": "a", "url": "http://store/x_$args(job)"}]
    data = document(steering={"base": "http://mirror"},
                    tasks=[task("t", inputs=inputs, outputs=outputs)])
    assert len(dataset.validate(data).tasks[0].raw["inputs"]) == 4


def test_checksums_must_be_sha256_or_md5_in_hex():
    inputs = [{"url": "/x", "local": "a", "checksum": SHA},
              {"url": "/x", "local": "b", "checksum": "md5:" + "a" * 32},
              {"url": "/x", "local": "c", "checksum": "sha1:" + "a" * 40},
              {"url": "/x", "local": "d", "checksum": "sha256:abc"}]
    expected = ('expected a checksum "sha256:" + 64 hex digits or "md5:" + 32 hex digits, '
                "got {}")
    assert problems_of(document(tasks=[task("t", inputs=inputs)])) == [
        "tasks[0].inputs[2].checksum: " + expected.format(f'"sha1:{"a" * 40}"'),
        "tasks[0].inputs[3].checksum: " + expected.format('"sha256:abc"'),
    ]


def test_environment_variable_names_are_checked():
    assert problems_of(document(tasks=[task("t", env={"1X": "a", "OK": 2})])) == [
        'tasks[0].env["1X"]: expected an environment variable name (letters, digits and "_"), '
        'got "1X"',
        "tasks[0].env.OK: expected a string, got 2",
    ]


def test_the_document_must_be_an_object():
    assert problems_of([1, 2]) == ["(document): expected an object, got [1, 2]"]


def test_loads_names_the_json_syntax_error_position():
    with pytest.raises(ConfigError) as caught:
        dataset.loads('{"jobs": 1,\n "tasks": [}', "submitted.json")
    assert str(caught.value) == "submitted.json: line 2, column 12: Expecting value"


def test_load_names_the_file_in_a_syntax_error(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{\n  "jobs": 1\n  "tasks": []\n}\n')
    with pytest.raises(ConfigError) as caught:
        dataset.load(path)
    assert str(caught.value) == f"{path}: line 3, column 3: Expecting ',' delimiter"


def test_load_of_a_missing_file_is_a_config_error(tmp_path):
    path = tmp_path / "absent.json"
    with pytest.raises(ConfigError) as caught:
        dataset.load(path)
    assert str(caught.value) == (f"{path}: cannot read the dataset config "
                                 "(No such file or directory)")


def test_load_reads_a_valid_file(tmp_path):
    path = tmp_path / "ok.json"
    path.write_text(json.dumps(document()))
    assert dataset.load(path) == dataset.validate(document())


def test_job_args_has_exactly_the_names_expressions_may_use():
    assert tuple(dataset.job_args(3, 1, 10, "generate", 42)) == dataset.ARGS


def test_a_nul_in_what_a_module_runs_with_is_refused_at_submit():
    data = document()
    data["tasks"][0]["modules"][0] = {"command": ["echo", "a\0b"], "env": {"X": "\0"}}
    data["tasks"][0]["env"] = {"Y": "c\0"}
    problems = sorted(problems_of(data))
    assert problems == [
        'tasks[0].env.Y: holds a NUL character (\\u0000), which cannot be passed to a program: '
        'remove it from "c\\u0000"',
        'tasks[0].modules[0].command[1]: holds a NUL character (\\u0000), which cannot be '
        'passed to a program: remove it from "a\\u0000b"',
        'tasks[0].modules[0].env.X: holds a NUL character (\\u0000), which cannot be passed to '
        'a program: remove it from "\\u0000"',
    ]


# ---------------------------------------------------------------- a sample of jobs at submit


def sample_problems(data) -> list[str]:
    """What submit refuses after `validate`: the per-job expressions of the sample jobs."""
    config = dataset.validate(data)
    with pytest.raises(ConfigError) as caught:
        dataset.check_sample_jobs(config)
    return caught.value.problems


def test_a_command_whose_eval_always_fails_is_refused_at_submit_naming_the_module():
    # The trial's bug: accepted, then task_error on every attempt.
    data = document(tasks=[task("t", modules=[{"command": "true"},
                                              {"command": "echo $eval(1/0)"}])])
    assert sample_problems(data) == [
        "tasks[0].modules[1].command: $eval(1/0): division by zero (for job 0)"]


def test_every_per_job_part_of_a_task_is_evaluated_at_submit():
    broken = "$eval(1/0)"
    data = document(tasks=[task(
        "t", env={"A": broken},
        inputs=[{"url": f"/data/{broken}", "local": "in"}],
        outputs=[{"local": "out", "url": f"file:///store/{broken}"}],
        modules=[{"command": ["echo", broken], "env": {"B": broken}}])])
    assert sample_problems(data) == [
        f"tasks[0].{path}: $eval(1/0): division by zero (for job 0)"
        for path in ("env.A", "inputs[0].url", "outputs[0].url", "modules[0].command[1]",
                     "modules[0].env.B")]


def test_a_failure_only_the_last_job_meets_names_the_last_job():
    data = document(jobs=10, tasks=[task("t", modules=[
        {"command": "echo $eval(100 / ($args(jobs_submitted) - 1 - $args(job)))"}])])
    assert sample_problems(data) == [
        "tasks[0].modules[0].command: $eval(100 / ($args(jobs_submitted) - 1 - $args(job))): "
        "division by zero (for job 9)"]


def test_a_steering_value_that_fails_for_every_job_is_refused_where_it_is_used():
    data = document(steering={"bad": "$eval(1/0)"},
                    tasks=[task("t", modules=[{"command": "echo $steering(bad)"}])])
    assert sample_problems(data) == [
        "tasks[0].modules[0].command: $eval(1/0): division by zero (in steering parameter "
        "bad) (for job 0)"]


def test_file_names_and_urls_are_checked_once_their_expressions_have_a_value():
    data = document(steering={"up": ".."}, tasks=[task(
        "t", inputs=[{"url": "$eval(3)", "local": "$steering(up)/x"}])])
    assert sample_problems(data) == [
        "tasks[0].inputs[0].url: is 3 once evaluated; it must be a string (for job 0)",
        "tasks[0].inputs[0].local: expected a path inside the task's scratch directory, got "
        '"../x"; remove the ".." parts (for job 0)']


def test_what_only_the_running_job_knows_is_no_error_at_submit():
    # $system values come from the site, the dataset id and the attempt from the matchmaker
    # as it hands the task out, and what $choice picks depends on the dataset id.
    data = document(steering={"data": "$system(data_dir)"}, tasks=[task(
        "t", env={"D": "$steering(data)/run$args(dataset)", "A": "$eval($args(attempt) + 1)",
                  "C": "$choice(a, b)"},
        inputs=[{"url": "$system(store)/$args(job).dat", "local": "in.dat"}],
        modules=[{"command": ["gen", "$eval($system(cores) * 2)", "$args(job)"]}])])
    dataset.check_sample_jobs(dataset.validate(data))


def test_an_error_beside_a_value_known_only_later_is_still_found():
    data = document(tasks=[task("t", modules=[
        {"command": "$system(bin)/gen $eval(1/0)"},
        {"command": "$choice($eval(1/0), 2)"}])])
    assert sample_problems(data) == [
        "tasks[0].modules[0].command: $eval(1/0): division by zero (for job 0)",
        "tasks[0].modules[1].command: $eval(1/0): division by zero (for job 0)"]


def test_only_the_first_and_last_jobs_are_sampled_whatever_the_dataset_size():
    # A fixed sample keeps submit of a million jobs quick; a failure of job 5 alone is met by
    # job 5's attempts, as before.
    data = document(jobs=1_000_000, tasks=[task("t", modules=[
        {"command": "echo $eval(1 / ($args(job) - 5))"}])])
    dataset.check_sample_jobs(dataset.validate(data))
