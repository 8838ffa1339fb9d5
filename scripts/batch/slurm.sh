#!/usr/bin/env bash
# Runs a private single-node SLURM (munge + slurmctld + slurmd) on this machine for floe's plugin
# tests and demos: `slurm.sh up | down | status`.
#
# up      installs the Debian packages when missing, writes slurm.conf into the state directory
#         ($FLOE_BATCH_DIR/slurm, default /var/tmp/floe-batch/slurm), links /etc/slurm/slurm.conf
#         to it so that sbatch/squeue/scancel find it, and starts the daemons. A no-op when up.
# down    stops, by the PIDs they wrote, the daemons that `up` started (munged only if `up`
#         started it) and removes the link.
# status  says what runs; exit status 0 when the cluster answers, 1 when it does not.
#
# The node advertises $FLOE_SLURM_CPUS CPUs (default 8, more than the machine has) so that tests
# can run several pilots at once; one partition "$FLOE_SLURM_PARTITION" (default "batch").
# Exit status 3: this machine cannot host it (not root, or the packages cannot be installed).
set -uo pipefail
# shellcheck source=scripts/batch/common.sh
. "$(dirname "$0")/common.sh"

DIR=$FLOE_BATCH_DIR/slurm
CONF=$DIR/slurm.conf
SYSTEM_CONF=/etc/slurm/slurm.conf
CPUS=${FLOE_SLURM_CPUS:-8}
PARTITION=${FLOE_SLURM_PARTITION:-batch}
PACKAGES=(munge slurm-wlm slurmctld slurmd slurm-client)

munge_works() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }
controller_up() { pid_alive "$DIR/slurmctld.pid" && scontrol ping 2>/dev/null | grep -q 'is UP'; }
node_up() { sinfo -h -N -o '%T' 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; }

write_config() {
    local host memory
    host=$(hostname -s)
    memory=$(slurmd -C | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')
    mkdir -p "$DIR/state" "$DIR/spool"
    # Settings and why: recipes/batch-systems.md. DefMemPerCPU keeps a job without --mem from
    # taking the whole node; EnforcePartLimits refuses impossible requests instead of leaving them
    # pending forever; config_overrides lets the node advertise more CPUs than it has.
    cat >"$CONF" <<EOF
ClusterName=floe
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=512
EnforcePartLimits=ALL
SchedulerParameters=batch_sched_delay=0
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherParams=OverMemoryKill
JobAcctGatherFrequency=5
SlurmdParameters=config_overrides
ReturnToService=2
MinJobAge=300
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/slurmctld.log
SlurmdLogFile=$DIR/slurmd.log
NodeName=$host NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$memory State=UNKNOWN
PartitionName=$PARTITION Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
}

link_config() {
    if [ -e "$SYSTEM_CONF" ] && [ "$(readlink "$SYSTEM_CONF")" != "$CONF" ]; then
        die "$SYSTEM_CONF exists and is not ours; move it away to run the private cluster"
    fi
    ln -sfn "$CONF" "$SYSTEM_CONF"
}

up() {
    if controller_up && pid_alive "$DIR/slurmd.pid"; then
        say "already up (slurmctld pid $(cat "$DIR/slurmctld.pid"), config $CONF)"
        return 0
    fi
    if pid_alive "$DIR/slurmctld.pid" || pid_alive "$DIR/slurmd.pid"; then
        die "half up (one daemon runs without the other); run '$0 down' first"
    fi
    need_root
    apt_install "${PACKAGES[@]}"
    rm -rf "$DIR/state" "$DIR/spool"
    write_config
    link_config
    if ! munge_works; then
        install -d -o munge -g munge -m 0755 /run/munge
        runuser -u munge -- /usr/sbin/munged || die "munged did not start"
        wait_for munge_works 10 || die "munged started but 'munge -n | unmunge' fails"
        # munged runs as munge and cannot write into our directory; keep a copy of its pid.
        cp /run/munge/munged.pid "$DIR/munged.pid"
    fi
    /usr/sbin/slurmctld || die "slurmctld did not start; see $DIR/slurmctld.log"
    wait_for controller_up 30 || die "slurmctld does not answer; see $DIR/slurmctld.log"
    /usr/sbin/slurmd || die "slurmd did not start; see $DIR/slurmd.log"
    wait_for node_up 30 || die "the node did not come up; see $DIR/slurmd.log"
    say "up: partition $PARTITION, $CPUS CPUs, config $CONF"
}

down() {
    if ! pid_alive "$DIR/slurmctld.pid" && ! pid_alive "$DIR/slurmd.pid" \
        && ! pid_alive "$DIR/munged.pid"; then
        say "not running"
    fi
    stop_pid "$DIR/slurmd.pid" slurmd
    stop_pid "$DIR/slurmctld.pid" slurmctld
    stop_pid "$DIR/munged.pid" munged
    if [ "$(readlink "$SYSTEM_CONF" 2>/dev/null)" = "$CONF" ]; then
        rm -f "$SYSTEM_CONF"
    fi
}

status() {
    local code=0
    for daemon in munged slurmctld slurmd; do
        if pid_alive "$DIR/$daemon.pid"; then
            say "$daemon runs (pid $(cat "$DIR/$daemon.pid"))"
        elif [ "$daemon" = munged ] && munge_works; then
            say "munged runs (not started by this script)"
        else
            say "$daemon is not running"
            code=1
        fi
    done
    if ((code == 0)) && ! controller_up; then
        say "slurmctld does not answer 'scontrol ping'"
        code=1
    fi
    return $code
}

case "${1:-}" in
    up) up ;;
    down) down ;;
    status) status ;;
    *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
