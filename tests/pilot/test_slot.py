"""Slot measurement from each batch system's variables, HTCondor's machine ad, cgroups v1 and v2
and /proc, all given as a fake filesystem root and environment."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from floe.config.resources import GIB, MIB
from floe.pilot.slot import (
    SAFETY_MARGIN,
    SlotError,
    detect_batch,
    measure,
    os_names,
    read_classad,
)

NOW = 1_800_000_000.0


def node(tmp_path: Path, files: dict[str, str] | None = None, cpus: int = 8,
         memory_kib: int = 16 * 2**20) -> Path:
    """A fake root: a node with `cpus` CPUs and `memory_kib` of memory, plus extra files."""
    root = tmp_path / "root"
    defaults = {
        "proc/self/status": f"Name:\tpython3\nCpus_allowed_list:\t0-{cpus - 1}\n",
        "proc/cpuinfo": "".join(f"processor\t: {i}\nmodel name\t: x\n\n" for i in range(cpus)),
        "proc/meminfo": f"MemTotal:       {memory_kib} kB\nMemFree:        1000 kB\n",
        "proc/self/cgroup": "0::/\n",
        "etc/os-release": 'ID=debian\nVERSION_ID="12"\n',
    }
    for name, text in {**defaults, **(files or {})}.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def probe(root: Path, env: dict[str, str], tmp_path: Path, **options):
    options.setdefault("scratch", tmp_path)
    return measure(env, root, gpu_source=None, now=NOW, **options)


def test_a_bare_node_offers_its_cpus_and_physical_memory(tmp_path):
    slot = probe(node(tmp_path, cpus=6, memory_kib=4 * 2**20), {}, tmp_path)
    assert slot.cpus == 6
    assert slot.memory == 4 * GIB
    assert slot.sources["memory"] == "/proc/meminfo MemTotal"
    assert slot.batch_system == "none"
    assert slot.deadline is None


def test_slurm_allocation_sets_cpus_memory_and_end_time(tmp_path):
    env = {"SLURM_JOB_ID": "77", "SLURM_CPUS_ON_NODE": "2", "SLURM_MEM_PER_NODE": "512",
           "SLURM_JOB_CPUS_PER_NODE": "2", "SLURM_JOB_END_TIME": str(int(NOW + 3600))}
    slot = probe(node(tmp_path), env, tmp_path)
    assert (slot.cpus, slot.sources["cpus"]) == (2, "SLURM_CPUS_ON_NODE")
    assert (slot.memory, slot.sources["memory"]) == (512 * MIB, "SLURM_MEM_PER_NODE")
    assert (slot.batch_system, slot.batch_job_id) == ("slurm", "77")
    assert slot.seconds_left(NOW) == 3600 - SAFETY_MARGIN
    assert slot.limits["cpus"]["CPU affinity"] == 8


def test_slurm_cpus_per_node_in_repeated_form_counts_this_node_only(tmp_path):
    env = {"SLURM_JOB_ID": "5", "SLURM_JOB_CPUS_PER_NODE": "4(x2),2"}
    slot = probe(node(tmp_path), env, tmp_path)
    assert slot.cpus == 4
    assert slot.sources["cpus"] == "SLURM_JOB_CPUS_PER_NODE"


def test_slurm_memory_per_cpu_is_multiplied_by_the_allocated_cpus(tmp_path):
    env = {"SLURM_JOB_ID": "5", "SLURM_CPUS_ON_NODE": "3", "SLURM_MEM_PER_CPU": "1000"}
    slot = probe(node(tmp_path), env, tmp_path)
    assert slot.memory == 3000 * MIB
    assert slot.sources["memory"] == "SLURM_MEM_PER_CPU x CPUs"


def test_affinity_smaller_than_the_allocation_wins(tmp_path):
    env = {"SLURM_JOB_ID": "5", "SLURM_CPUS_ON_NODE": "16"}
    slot = probe(node(tmp_path, cpus=4), env, tmp_path)
    assert slot.cpus == 4
    assert slot.limits["cpus"]["SLURM_CPUS_ON_NODE"] == 16


def test_pbs_cpus_per_node_and_walltime(tmp_path):
    env = {"PBS_JOBID": "12.server", "PBS_NUM_PPN": "3", "PBS_NP": "6", "PBS_WALLTIME": "7200"}
    slot = probe(node(tmp_path), env, tmp_path)
    assert (slot.cpus, slot.sources["cpus"]) == (3, "PBS_NUM_PPN")
    assert (slot.batch_system, slot.batch_job_id) == ("pbs", "12.server")
    assert slot.seconds_left(NOW) == 7200 - SAFETY_MARGIN


def test_pbs_pro_ncpus_counts_only_inside_a_pbs_job(tmp_path):
    assert probe(node(tmp_path), {"PBS_JOBID": "1.s", "NCPUS": "2"}, tmp_path).cpus == 2
    assert probe(node(tmp_path), {"NCPUS": "2"}, tmp_path).cpus == 8


def test_sge_slots_and_job_id(tmp_path):
    env = {"JOB_ID": "55", "SGE_ROOT": "/var/lib/gridengine", "NSLOTS": "2",
           "SGE_TASK_ID": "undefined"}
    slot = probe(node(tmp_path), env, tmp_path)
    assert (slot.cpus, slot.sources["cpus"]) == (2, "NSLOTS")
    assert (slot.batch_system, slot.batch_job_id) == ("sge", "55")


def test_sge_array_task_is_part_of_the_job_id(tmp_path):
    env = {"JOB_ID": "55", "SGE_ROOT": "/x", "SGE_TASK_ID": "4"}
    assert probe(node(tmp_path), env, tmp_path).batch_job_id == "55.4"


def test_htcondor_machine_ad_gives_cpus_memory_disk_and_end(tmp_path):
    machine_ad = tmp_path / ".machine.ad"
    machine_ad.write_text(
        'Cpus = 2\nMemory = 3000\nDisk = 1024\nAssignedGPUs = "GPU-c4a6ff11"\n'
        f"GLIDEIN_ToDie = {int(NOW + 10000)}\nName = \"slot1@node\"\n")
    job_ad = tmp_path / ".job.ad"
    job_ad.write_text("ClusterId = 10\nProcId = 3\nOwner = \"alice\"\n")
    env = {"_CONDOR_MACHINE_AD": str(machine_ad), "_CONDOR_JOB_AD": str(job_ad)}
    slot = probe(node(tmp_path), env, tmp_path)
    assert (slot.cpus, slot.sources["cpus"]) == (2, "machine ad Cpus")
    assert slot.memory == 3000 * MIB
    assert (slot.disk, slot.sources["disk"]) == (1024 * 1024, "machine ad Disk")
    assert (slot.batch_system, slot.batch_job_id) == ("htcondor", "10.3")
    assert slot.seconds_left(NOW) == 10000 - SAFETY_MARGIN


def test_classad_values_are_typed_and_names_case_insensitive(tmp_path):
    ad = tmp_path / "ad"
    ad.write_text('Cpus = 4\nLoadAvg = 0.25\nStart = true\nName = "slot1@n"\n'
                  "Requirements = (TARGET.Arch == \"X86_64\")\nnot a line\n")
    assert read_classad(ad) == {
        "cpus": 4, "loadavg": 0.25, "start": True, "name": "slot1@n",
        "requirements": '(TARGET.Arch == "X86_64")',
    }
    assert read_classad(tmp_path / "missing") == {}


def test_cgroup_v2_quota_and_memory_limit_of_a_parent_apply(tmp_path):
    root = node(tmp_path, {
        "proc/self/cgroup": "0::/job/task\n",
        "sys/fs/cgroup/cgroup.controllers": "cpu memory\n",
        "sys/fs/cgroup/job/memory.max": f"{GIB}\n",
        "sys/fs/cgroup/job/cpu.max": "max 100000\n",
        "sys/fs/cgroup/job/task/memory.max": "max\n",
        "sys/fs/cgroup/job/task/cpu.max": "250000 100000\n",
    })
    slot = probe(root, {}, tmp_path)
    assert slot.cpus == 2
    assert slot.sources["cpus"].endswith("job/task/cpu.max")
    assert slot.memory == GIB
    assert slot.sources["memory"].endswith("job/memory.max")


def test_cgroup_v1_quota_and_limit(tmp_path):
    cgroup = "sys/fs/cgroup"
    root = node(tmp_path, {
        "proc/self/cgroup": "4:memory:/slurm/job_5\n2:cpu,cpuacct:/slurm/job_5\n1:name=x:/\n",
        f"{cgroup}/memory/memory.limit_in_bytes": "9223372036854771712\n",
        f"{cgroup}/memory/slurm/job_5/memory.limit_in_bytes": f"{2 * GIB}\n",
        f"{cgroup}/cpu,cpuacct/cpu.cfs_quota_us": "-1\n",
        f"{cgroup}/cpu,cpuacct/slurm/job_5/cpu.cfs_quota_us": "300000\n",
        f"{cgroup}/cpu,cpuacct/slurm/job_5/cpu.cfs_period_us": "100000\n",
    })
    slot = probe(root, {}, tmp_path)
    assert slot.cpus == 3
    assert slot.memory == 2 * GIB
    assert "memory.limit_in_bytes" in slot.sources["memory"]


def test_cgroup_v1_without_limits_leaves_physical_memory(tmp_path):
    root = node(tmp_path, {
        "proc/self/cgroup": "4:memory:/\n",
        "sys/fs/cgroup/memory/memory.limit_in_bytes": "9223372036854771712\n",
    }, memory_kib=2**20)
    slot = probe(root, {}, tmp_path)
    assert slot.memory == GIB
    assert list(slot.limits["memory"]) == ["/proc/meminfo MemTotal"]


def test_container_cgroup_path_missing_under_the_mount_uses_the_mount(tmp_path):
    root = node(tmp_path, {
        "proc/self/cgroup": "0::/kubepods/burstable/pod1/abc\n",
        "sys/fs/cgroup/cgroup.controllers": "cpu memory\n",
        "sys/fs/cgroup/memory.max": "536870912\n",
    })
    assert probe(root, {}, tmp_path).memory == 512 * MIB


def test_a_quota_below_one_cpu_still_offers_one(tmp_path):
    root = node(tmp_path, {"sys/fs/cgroup/cgroup.controllers": "cpu\n",
                           "sys/fs/cgroup/cpu.max": "50000 100000\n"})
    assert probe(root, {}, tmp_path).cpus == 1


def test_disk_is_the_free_space_of_the_batch_scratch_directory(tmp_path):
    scratch = tmp_path / "condor-scratch"
    scratch.mkdir()
    env = {"_CONDOR_SCRATCH_DIR": str(scratch), "TMPDIR": "/tmp"}
    slot = measure(env, node(tmp_path), gpu_source=None, now=NOW)
    assert slot.scratch == str(scratch)
    assert "_CONDOR_SCRATCH_DIR" in slot.sources["disk"]
    assert slot.disk > 0


def test_scratch_variables_naming_missing_directories_are_skipped(tmp_path):
    env = {"_CONDOR_SCRATCH_DIR": str(tmp_path / "gone"), "SLURM_TMPDIR": str(tmp_path)}
    slot = measure(env, node(tmp_path), gpu_source=None, now=NOW)
    assert slot.scratch == str(tmp_path)


def test_scratch_option_wins_over_the_batch_scratch(tmp_path):
    chosen = tmp_path / "chosen"
    chosen.mkdir()
    env = {"TMPDIR": str(tmp_path)}
    slot = measure(env, node(tmp_path), scratch=chosen, gpu_source=None, now=NOW)
    assert slot.scratch == str(chosen)
    assert "--scratch" in slot.sources["disk"]


def test_lifetime_option_wins_over_the_batch_walltime(tmp_path):
    env = {"SLURM_JOB_ID": "1", "SLURM_JOB_END_TIME": str(int(NOW + 86400))}
    slot = probe(node(tmp_path), env, tmp_path, lifetime=600)
    assert slot.seconds_left(NOW) == 540  # a tenth of a short life is kept as the margin
    assert slot.sources["seconds"].startswith("--lifetime")


def test_os_names_for_debian_and_an_el_alias_for_rhel_likes(tmp_path):
    assert os_names(node(tmp_path)) == ("debian12", "debian", "linux")
    rocky = node(tmp_path, {"etc/os-release":
                            'ID="rocky"\nID_LIKE="rhel centos fedora"\nVERSION_ID="9.3"\n'})
    assert os_names(rocky) == ("rocky9.3", "rocky9", "rocky", "el9", "linux")
    ubuntu = node(tmp_path, {"etc/os-release": 'ID=ubuntu\nID_LIKE=debian\nVERSION_ID="22.04"\n'})
    assert os_names(ubuntu) == ("ubuntu22.04", "ubuntu22", "ubuntu", "linux")


def test_offer_turns_free_resources_into_a_matchmaker_slot(tmp_path):
    env = {"FLOE_SITE": "uw-madison"}
    slot = probe(node(tmp_path, cpus=4), env, tmp_path, lifetime=3600)
    offer = slot.offer(cpus=1, memory=GIB, now=NOW)
    assert (offer.cpus, offer.memory, offer.disk, offer.gpus) == (1, GIB, slot.disk, 0)
    assert offer.seconds == 3600 - SAFETY_MARGIN
    assert offer.site == "uw-madison"
    assert offer.os == ("debian12", "debian", "linux")


def test_site_option_wins_over_the_environment(tmp_path):
    slot = probe(node(tmp_path), {"FLOE_SITE": "a"}, tmp_path, site="b")
    assert slot.site == "b"
    assert slot.to_dict(NOW)["site"] == "b"


def test_the_factory_shape_caps_what_a_pilot_offers_where_nothing_enforces_it(tmp_path):
    env = {"FLOE_SHAPE_CPUS": "2", "FLOE_SHAPE_MEMORY": str(GIB), "FLOE_SHAPE_DISK": "1000000"}
    slot = probe(node(tmp_path, cpus=8), env, tmp_path)
    assert (slot.cpus, slot.sources["cpus"]) == (2, "FLOE_SHAPE_CPUS")
    assert (slot.memory, slot.sources["memory"]) == (GIB, "FLOE_SHAPE_MEMORY")
    assert (slot.disk, slot.sources["disk"]) == (1_000_000, "FLOE_SHAPE_DISK")


def test_a_batch_allocation_smaller_than_the_shape_wins(tmp_path):
    env = {"SLURM_JOB_ID": "9", "SLURM_CPUS_ON_NODE": "1", "FLOE_SHAPE_CPUS": "4",
           "FLOE_SHAPE_MEMORY": ""}
    slot = probe(node(tmp_path), env, tmp_path)
    assert (slot.cpus, slot.sources["cpus"]) == (1, "SLURM_CPUS_ON_NODE")
    assert "FLOE_SHAPE_MEMORY" not in slot.limits["memory"]


def test_a_shape_set_by_hand_takes_sizes_as_the_configs_write_them(tmp_path):
    env = {"FLOE_SHAPE_MEMORY": "1GiB", "FLOE_SHAPE_DISK": "512MiB", "FLOE_SHAPE_GPUS": "0"}
    slot = probe(node(tmp_path), env, tmp_path)
    assert (slot.memory, slot.disk) == (GIB, 512 * MIB)


@pytest.mark.parametrize("variable, value, said", [
    ("FLOE_SHAPE_MEMORY", "lots", "FLOE_SHAPE_MEMORY='lots': expected a size like \"4GB\""),
    ("FLOE_SHAPE_CPUS", "2.5", "FLOE_SHAPE_CPUS='2.5': expected a whole number, such as 4"),
    ("FLOE_SHAPE_CPUS", "0", "FLOE_SHAPE_CPUS='0': must be at least 1"),
])
def test_a_shape_that_cannot_be_read_is_refused_naming_its_variable(tmp_path, variable, value,
                                                                    said):
    with pytest.raises(SlotError, match=re.escape(said)):
        probe(node(tmp_path), {variable: value}, tmp_path)


# What each plugin's pilot finds in its environment: the factory's two variables (set as the
# plugin sets them, with the id its submit returned) beside the batch system's own.
FACTORY_STARTED = {
    "local": ({"FLOE_BATCH_ID": "a1b2c3"}, "a1b2c3"),
    "slurm": ({"SLURM_JOB_ID": "77", "FLOE_BATCH_ID": "77"}, "77"),
    # Slurm's PBS wrappers: a SLURM job, which the factory's pbs plugin submitted and tracks.
    "pbs": ({"SLURM_JOB_ID": "78", "FLOE_BATCH_ID": "78"}, "78"),
    "sge": ({"JOB_ID": "55", "SGE_ROOT": "/x", "SGE_TASK_ID": "undefined",
             "FLOE_BATCH_ID": "55"}, "55"),
    # HTCondor expands "$(ClusterId).$(ProcId)" in the submit description (no job ad here).
    "htcondor": ({"_CONDOR_JOB_AD": "/nonexistent", "FLOE_BATCH_ID": "10.3"}, "10.3"),
}


@pytest.mark.parametrize("plugin", sorted(FACTORY_STARTED))
def test_a_pilot_a_factory_started_registers_as_the_factory_knows_it(tmp_path, plugin):
    env, batch_id = FACTORY_STARTED[plugin]
    slot = probe(node(tmp_path), {**env, "FLOE_BATCH_SYSTEM": plugin}, tmp_path)
    assert (slot.batch_system, slot.batch_job_id) == (plugin, batch_id)


def test_without_both_factory_variables_the_batch_systems_own_say_it(tmp_path):
    slurm = {"SLURM_JOB_ID": "77"}
    assert detect_batch({**slurm, "FLOE_BATCH_SYSTEM": "pbs"}) == ("slurm", "77")
    assert detect_batch({**slurm, "FLOE_BATCH_ID": "1"}) == ("slurm", "77")
    assert detect_batch({"FLOE_BATCH_SYSTEM": "local", "FLOE_BATCH_ID": ""}) == ("none", "")


def test_a_slot_that_keeps_its_shapes_promise_reports_no_shortfall(tmp_path):
    env = {"FLOE_SHAPE_CPUS": "4", "FLOE_SHAPE_MEMORY": str(4 * GIB), "FLOE_SHAPE_GPUS": "0",
           "FLOE_SHAPE_WALLTIME": "3600", "SLURM_JOB_ID": "3",
           "SLURM_JOB_END_TIME": str(int(NOW + 3700))}
    slot = probe(node(tmp_path), env, tmp_path, lifetime=3700)
    assert slot.promised == {"cpus": 4, "memory": 4 * GIB, "gpus": 0, "walltime": 3600}
    assert slot.short == []
    assert probe(node(tmp_path), {}, tmp_path).short == []  # no shape: nothing promised


def test_a_slot_short_of_its_shape_says_what_and_where_it_read_it(tmp_path):
    """What the factory needs to stop sending pilots that cannot serve their shape: each
    resource found short, promised beside found, with the finding's source."""
    env = {"FLOE_SHAPE_CPUS": "8", "FLOE_SHAPE_MEMORY": str(32 * GIB), "FLOE_SHAPE_GPUS": "1",
           "FLOE_SHAPE_WALLTIME": "14400", "SLURM_JOB_ID": "3", "SLURM_CPUS_ON_NODE": "2",
           "SLURM_JOB_END_TIME": str(int(NOW + 3600))}
    slot = probe(node(tmp_path, memory_kib=16 * 2**20), env, tmp_path, lifetime=14400)
    assert slot.short == [
        {"resource": "cpus", "promised": 8, "found": 2, "source": "SLURM_CPUS_ON_NODE"},
        {"resource": "gpus", "promised": 1, "found": 0, "source": "no GPUs: no NVML"},
        {"resource": "memory", "promised": 32 * GIB, "found": 16 * GIB,
         "source": "/proc/meminfo MemTotal"},
        {"resource": "walltime", "promised": 14400, "found": 3600 - SAFETY_MARGIN,
         "source": f"SLURM_JOB_END_TIME, less a {SAFETY_MARGIN // 60}m safety margin"}]
    assert slot.to_dict()["short"] == slot.short
