"""The HTCondor plugin: the submit description it builds through the htcondor2 bindings, and
its handling of the bindings' errors when no schedd answers (no HTCondor daemons can be
installed on the test machines, so nothing here submits for real)."""

from __future__ import annotations

from pathlib import Path

import pytest

from config.resources import GIB, MIB
from plugins.base import BatchError, PilotShape, PluginConfigError, PluginSettings
from plugins.htcondor import HTCondorPlugin, quote_argument

SHAPE = PilotShape("pair", cpus=2, memory=512 * MIB, disk=GIB, gpus=1, walltime=600)


def make_plugin(workdir: Path, **options: object) -> HTCondorPlugin:
    return HTCondorPlugin(PluginSettings(factory_id="f1", workdir=workdir, options=options))


def rendered(plugin: HTCondorPlugin, shape: PilotShape = SHAPE,
             command: tuple[str, ...] = ("/opt/floe/pilot.pyz", "--site", "wisc"),
             env: dict[str, str] | None = None) -> dict[str, str]:
    """The submit description as the bindings render it, as command -> value."""
    text = str(plugin.description(shape, list(command), env or {}))
    lines = [line.split(" = ", 1) for line in text.splitlines() if " = " in line]
    return {name: value for name, value in lines}


def test_the_description_asks_for_the_shape_and_carries_the_tag(tmp_path: Path) -> None:
    submit = rendered(make_plugin(tmp_path))
    assert submit["request_cpus"] == "2"
    assert submit["request_memory"] == "768"       # MiB: 512 plus the minimum headroom
    assert submit["request_disk"] == str(1024 * 1024)  # KiB
    assert submit["request_gpus"] == "1"
    assert submit["allowed_job_duration"] == "900"
    assert submit["MY.FloeFactory"] == '"f1"'
    assert submit["MY.FloeShape"] == '"pair"'
    assert submit["batch_name"] == "floe-f1-pair"
    assert submit["executable"] == "/opt/floe/pilot.pyz"
    assert submit["arguments"] == "\"'--site' 'wisc'\""
    assert submit["output"] == f"{tmp_path}/logs/floe-f1-pair-$(ClusterId).$(ProcId).out"


def test_arguments_and_environment_use_the_new_quoting(tmp_path: Path) -> None:
    submit = rendered(make_plugin(tmp_path), command=("python3", "pilot.pyz", "it's \"x\""),
                      env={"FLOE_TOKEN_FILE": "/tmp/a b"})
    assert submit["executable"] == "/usr/bin/env"  # a bare name is looked up on the node
    assert submit["arguments"] == "\"'python3' 'pilot.pyz' 'it''s \"\"x\"\"'\""
    environment = submit["environment"]
    assert environment.startswith('"') and environment.endswith('"')
    assert "FLOE_TOKEN_FILE='/tmp/a b'" in environment
    assert "FLOE_BATCH_ID='$(ClusterId).$(ProcId)'" in environment
    assert quote_argument("a'b\"c") == "'a''b\"\"c'"


def test_whole_slots_ask_for_everything_the_partitionable_slot_has(tmp_path: Path) -> None:
    shape = PilotShape("pair", cpus=2, memory=512 * MIB, disk=GIB, gpus=1,
                       directives=("requirements = HasSingularity",))
    submit = rendered(make_plugin(tmp_path, whole_slots=True,
                                  submit_attributes={"requirements": 'OpSys == "LINUX"'}),
                      shape=shape)
    assert submit["request_cpus"] == "ifThenElse(isUndefined(TotalSlotCpus), 2, TotalSlotCpus)"
    assert submit["request_memory"] == \
        "ifThenElse(isUndefined(TotalSlotMemory), 768, TotalSlotMemory)"
    assert submit["request_gpus"] == "ifThenElse(isUndefined(TotalSlotGPUs), 1, TotalSlotGPUs)"
    requirements = submit["requirements"]
    for part in ("(isUndefined(TotalSlotCpus) || TotalSlotCpus >= 2)", 'OpSys == "LINUX"',
                 "HasSingularity"):
        assert part in requirements


def test_site_submit_attributes_add_to_and_replace_the_defaults(tmp_path: Path) -> None:
    submit = rendered(make_plugin(tmp_path, submit_attributes={
        "+AccountingGroup": '"group_icecube.alice"', "universe": "docker"}))
    assert submit["MY.AccountingGroup"] == '"group_icecube.alice"'
    assert submit["universe"] == "docker"


def test_a_directive_that_is_not_a_submit_command_is_refused(tmp_path: Path) -> None:
    shape = PilotShape("pair", directives=("--constraint=avx2",))
    with pytest.raises(PluginConfigError, match="write it as 'name = value'"):
        make_plugin(tmp_path).description(shape, ["/bin/true"], {})


@pytest.mark.parametrize("verb", ["submit", "status", "remove", "orphans"])
def test_no_local_schedd_is_a_batch_error_not_a_crash(tmp_path: Path, verb: str) -> None:
    plugin = make_plugin(tmp_path)
    calls = {
        "submit": lambda: plugin.submit(SHAPE, 2, ["/bin/true"], {}),
        "status": plugin.status,
        "remove": lambda: plugin.remove(["12.0"]),
        "orphans": lambda: plugin.orphans(set()),
    }
    with pytest.raises(BatchError) as caught:
        calls[verb]()
    assert caught.value.summary.startswith("HTCondor could not")
    assert "through the local schedd" in caught.value.summary
    assert "Unable to locate local daemon" in str(caught.value)


def test_a_pool_whose_collector_does_not_answer_is_a_batch_error(tmp_path: Path) -> None:
    plugin = make_plugin(tmp_path, pool="127.0.0.1:1", schedd="submit.example.org")
    with pytest.raises(BatchError) as caught:
        plugin.status()
    assert "through submit.example.org of pool 127.0.0.1:1." in caught.value.summary


def test_the_pilot_token_travels_as_a_private_file_never_in_the_job_ad(tmp_path: Path) -> None:
    submit = rendered(make_plugin(tmp_path), env={"FLOE_PILOT_TOKEN": "floe_p_secret"})
    assert "floe_p_secret" not in "".join(submit.values())
    [secret] = (tmp_path / "secrets").iterdir()
    assert secret.read_text() == "floe_p_secret"
    assert secret.stat().st_mode & 0o077 == 0
    assert submit["transfer_input_files"] == str(secret)
    assert submit["should_transfer_files"] == "YES"
    assert f"FLOE_PILOT_TOKEN_FILE='{secret.name}'" in submit["environment"]
