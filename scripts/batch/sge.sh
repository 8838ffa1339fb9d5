#!/usr/bin/env bash
# Runs a private single-node Grid Engine (Debian's gridengine 8.1: sge_qmaster + sge_execd) on this
# machine for floe's plugin tests and demos: `sge.sh up | down | status`.
#
# up      installs the Debian packages when missing (debconf preseeded), creates a fresh cluster
#         (Debian keeps its spool under /var/spool/gridengine), starts qmaster, configures it with
#         qconf from files written into the state directory ($FLOE_BATCH_DIR/sge, default
#         /var/tmp/floe-batch/sge) and starts execd. A no-op when up.
# down    stops execd and qmaster by their PIDs.
# status  says what runs; exit status 0 when qmaster answers, 1 when it does not.
#
# One queue all.q with $FLOE_SGE_SLOTS slots (default 8, more than the machine has, so that tests
# run several pilots at once) and a parallel environment "smp" that keeps a job's slots on one
# host (what `qsub -pe smp N` asks for). Settings and why: recipes/batch-systems.md.
# Exit status 3: this machine cannot host it (not root, or the packages cannot be installed).
set -uo pipefail
# shellcheck source=scripts/batch/common.sh
. "$(dirname "$0")/common.sh"

DIR=$FLOE_BATCH_DIR/sge
SLOTS=${FLOE_SGE_SLOTS:-8}
export SGE_ROOT=/var/lib/gridengine SGE_CELL=default
SPOOL=/var/spool/gridengine
QMASTER_PID=$SPOOL/qmaster/qmaster.pid
HOST=$(hostname -s)
# execd names its spool after the name qmaster knows it by: "localhost", through host_aliases.
EXECD_PID=$SPOOL/execd/localhost/execd.pid
PACKAGES=(gridengine-master gridengine-exec gridengine-client)

qmaster_up() { pid_alive "$QMASTER_PID" && qconf -sh >/dev/null 2>&1; }
# The queue instance has no state letters once execd has reported its load.
queue_ready() { qstat -f -q all.q 2>/dev/null | awk -v h="all.q@$HOST" '$1 == h { exit NF != 5 }'; }

install_packages() {
    # Answers for the packages' configuration questions, so that apt asks nothing.
    for pkg in gridengine-common "${PACKAGES[@]}"; do
        printf '%s shared/gridengineconfig boolean true\n' "$pkg"
        printf '%s shared/gridenginecell string default\n' "$pkg"
        printf '%s shared/gridenginemaster string %s\n' "$pkg" "$HOST"
    done | debconf-set-selections
    apt_install "${PACKAGES[@]}"
    # qmaster sees a client on this machine come from "localhost" and refuses it unless the
    # host's own name is an alias of it.
    local aliases=$SGE_ROOT/$SGE_CELL/common/host_aliases
    grep -qx "$HOST localhost" "$aliases" 2>/dev/null || echo "$HOST localhost" >>"$aliases"
    echo "$HOST" >"$SGE_ROOT/$SGE_CELL/common/act_qmaster"
}

fresh_cluster() {
    rm -rf "$SPOOL/qmaster" "$SPOOL/spooldb" "$SPOOL/execd"
    install -d -o sgeadmin -g sgeadmin "$SPOOL/qmaster" "$SPOOL/qmaster/job_scripts" \
        "$SPOOL/spooldb" "$SPOOL/execd"
    runuser -u sgeadmin -- /usr/share/gridengine/scripts/init_cluster \
        "$SGE_ROOT" "$SGE_CELL" "$SPOOL/spooldb" sgeadmin >"$DIR/init_cluster.log" 2>&1 \
        || die "init_cluster failed; see $DIR/init_cluster.log"
}

write_configs() {
    cat >"$DIR/exechost" <<EOF
hostname              $HOST
load_scaling          NONE
complex_values        NONE
user_lists            NONE
xuser_lists           NONE
projects              NONE
xprojects             NONE
usage_scaling         NONE
report_variables      NONE
EOF
    cat >"$DIR/allhosts" <<EOF
group_name @allhosts
hostlist $HOST
EOF
    cat >"$DIR/pe-smp" <<'EOF'
pe_name            smp
slots              9999
user_lists         NONE
xuser_lists        NONE
start_proc_args    NONE
stop_proc_args     NONE
allocation_rule    $pe_slots
control_slaves     FALSE
job_is_first_task  TRUE
urgency_slots      min
accounting_summary FALSE
qsort_args         NONE
EOF
    # unix_behavior: the script's own #! line picks its shell, as on most sites.
    cat >"$DIR/queue-all.q" <<EOF
qname                 all.q
hostlist              @allhosts
seq_no                0
load_thresholds       NONE
suspend_thresholds    NONE
nsuspend              1
suspend_interval      00:05:00
priority              0
min_cpu_interval      00:05:00
processors            UNDEFINED
qtype                 BATCH INTERACTIVE
ckpt_list             NONE
pe_list               smp
rerun                 FALSE
slots                 $SLOTS
tmpdir                /tmp
shell                 /bin/sh
prolog                NONE
epilog                NONE
shell_start_mode      unix_behavior
starter_method        NONE
suspend_method        NONE
resume_method         NONE
terminate_method      NONE
notify                00:00:60
owner_list            NONE
user_lists            NONE
xuser_lists           NONE
subordinate_list      NONE
complex_values        NONE
projects              NONE
xprojects             NONE
calendar              NONE
initial_state         default
s_rt                  INFINITY
h_rt                  INFINITY
s_cpu                 INFINITY
h_cpu                 INFINITY
s_fsize               INFINITY
h_fsize               INFINITY
s_data                INFINITY
h_data                INFINITY
s_stack               INFINITY
h_stack               INFINITY
s_core                INFINITY
h_core                INFINITY
s_rss                 INFINITY
h_rss                 INFINITY
s_vmem                INFINITY
h_vmem                INFINITY
EOF
    # Debian's min_uid/min_gid of 1000 would refuse root's jobs; a short load report and
    # scheduling interval make jobs start within seconds.
    qconf -sconf global | sed -E \
        -e 's/^(min_uid|min_gid)( +).*/\1\20/' \
        -e 's/^(load_report_time +).*/\100:00:05/' >"$DIR/global"
    qconf -ssconf | sed -E \
        -e 's/^(schedule_interval +).*/\10:0:1/' \
        -e 's/^(flush_submit_sec +).*/\11/' \
        -e 's/^(flush_finish_sec +).*/\11/' >"$DIR/scheduler"
}

configure() {
    {
        qconf -as "$HOST" &&
            qconf -Ae "$DIR/exechost" &&
            qconf -Ahgrp "$DIR/allhosts" &&
            qconf -Ap "$DIR/pe-smp" &&
            qconf -Aq "$DIR/queue-all.q" &&
            qconf -Mconf "$DIR/global" &&
            qconf -Msconf "$DIR/scheduler"
    } >"$DIR/qconf.log" 2>&1
}

up() {
    if qmaster_up && pid_alive "$EXECD_PID"; then
        say "already up (sge_qmaster pid $(cat "$QMASTER_PID"), queue all.q)"
        return 0
    fi
    if pid_alive "$QMASTER_PID" || pid_alive "$EXECD_PID"; then
        die "half up (one daemon runs without the other); run '$0 down' first"
    fi
    need_root
    mkdir -p "$DIR"
    install_packages
    fresh_cluster
    /usr/sbin/sge_qmaster || die "sge_qmaster did not start; see $SPOOL/qmaster/messages"
    wait_for qmaster_up 30 || die "sge_qmaster does not answer; see $SPOOL/qmaster/messages"
    write_configs
    configure || die "configuring the cluster with qconf failed; see $DIR/qconf.log"
    /usr/sbin/sge_execd || die "sge_execd did not start; see $SPOOL/execd/localhost/messages"
    wait_for queue_ready 30 || die "queue all.q@$HOST did not come up; see qstat -f"
    say "up: queue all.q, $SLOTS slots, parallel environment smp"
}

down() {
    if ! pid_alive "$QMASTER_PID" && ! pid_alive "$EXECD_PID"; then
        say "not running"
    fi
    stop_pid "$EXECD_PID" sge_execd
    stop_pid "$QMASTER_PID" sge_qmaster 30
}

status() {
    local code=0
    for daemon in sge_qmaster sge_execd; do
        local file=$QMASTER_PID
        [ "$daemon" = sge_execd ] && file=$EXECD_PID
        if pid_alive "$file"; then
            say "$daemon runs (pid $(cat "$file"))"
        else
            say "$daemon is not running"
            code=1
        fi
    done
    if ((code == 0)) && ! qmaster_up; then
        say "sge_qmaster does not answer qconf"
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
