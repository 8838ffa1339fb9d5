#!/usr/bin/env bash
# Provides PBS/Torque-style qsub, qstat and qdel on top of the private SLURM of slurm.sh, for
# floe's PBS plugin tests: `pbs.sh up | down | status`. No PBS server can be installed here.
#
# up      unpacks Debian's slurm-wlm-torque wrappers into a private prefix ($FLOE_BATCH_DIR/pbs)
#         and prints, on its last line, the directory that holds them (give it to the PBS plugin
#         as commands_dir, or put it first on PATH). Installing the package itself would make
#         apt REMOVE gridengine (both ship /usr/bin/qsub), so it is only downloaded and unpacked.
#         The wrappers run the sbatch/squeue/scancel found beside them, so the prefix links those
#         to the real SLURM commands. Start SLURM with slurm.sh first. A no-op when done.
# down    removes the prefix.
# status  exit status 0 when the wrappers are in place, 1 when not.
# Exit status 3: this machine cannot provide them (not root, or the packages cannot be fetched).
set -uo pipefail
# shellcheck source=scripts/batch/common.sh
. "$(dirname "$0")/common.sh"

DIR=$FLOE_BATCH_DIR/pbs
BIN=$DIR/usr/bin
# What the wrappers need that can be installed without conflicts.
PACKAGES=(slurm-client libslurm-perl libslurmdb-perl libswitch-perl)

ready() { [ -x "$BIN/qsub" ] && [ -x "$BIN/qstat" ] && [ -x "$BIN/qdel" ] && [ -L "$BIN/sbatch" ]; }

up() {
    if ready; then
        say "already in place"
        echo "$BIN"
        return 0
    fi
    need_root
    apt_install "${PACKAGES[@]}"
    rm -rf "$DIR"
    mkdir -p "$DIR/deb"
    (cd "$DIR/deb" && apt-get download -q slurm-wlm-torque >"$DIR/download.log" 2>&1) \
        || die "apt-get download slurm-wlm-torque failed; see $DIR/download.log" 3
    dpkg-deb -x "$DIR"/deb/slurm-wlm-torque_*.deb "$DIR" || die "cannot unpack slurm-wlm-torque"
    for command in sbatch salloc srun squeue scancel scontrol sinfo; do
        ln -sfn "/usr/bin/$command" "$BIN/$command"
    done
    say "PBS wrappers over SLURM in $BIN"
    echo "$BIN"
}

down() {
    rm -rf "$DIR"
    say "removed $DIR"
}

status() {
    if ready; then
        say "wrappers in place in $BIN"
        return 0
    fi
    say "wrappers not in place"
    return 1
}

case "${1:-}" in
    up) up ;;
    down) down ;;
    status) status ;;
    *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
