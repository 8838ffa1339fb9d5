# shellcheck shell=bash
# Shared helpers for the scripts that run a private single-node batch system on this machine
# (slurm.sh, sge.sh, pbs.sh). Sourced, not run. Daemons are started by hand in the background and
# stopped by the PIDs they wrote, because the test machines have no systemd and Debian's
# policy-rc.d keeps packages from starting anything themselves.

FLOE_BATCH_DIR=${FLOE_BATCH_DIR:-/var/tmp/floe-batch}
APT_STAMP="$FLOE_BATCH_DIR/.apt-updated"

say() { echo "$(basename "$0"): $*"; }
die() { echo "$(basename "$0"): $*" >&2; exit "${2:-1}"; }

# Exit status 3 means "this machine cannot host the cluster" (not root, no apt): callers such as
# the test fixtures skip on it and fail on anything else.
need_root() {
    [ "$(id -u)" = 0 ] || die "must run as root to install and start daemons (uid is $(id -u))" 3
}

# Installs the named Debian packages that are missing; runs apt-get update at most once a boot.
apt_install() {
    local missing=()
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" \
            || missing+=("$pkg")
    done
    ((${#missing[@]})) || return 0
    command -v apt-get >/dev/null || die "apt-get is missing, cannot install ${missing[*]}" 3
    mkdir -p "$FLOE_BATCH_DIR"
    if [ ! -e "$APT_STAMP" ]; then
        apt-get update -q >/dev/null || die "apt-get update failed, cannot install ${missing[*]}" 3
        touch "$APT_STAMP"
    fi
    say "installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" \
        >"$FLOE_BATCH_DIR/apt-install.log" 2>&1 \
        || die "apt-get install ${missing[*]} failed; see $FLOE_BATCH_DIR/apt-install.log" 3
}

# True when the pid file names a live process (not a zombie).
pid_alive() {
    local pid
    [ -s "$1" ] || return 1
    pid=$(head -n1 "$1")
    [ -d "/proc/$pid" ] || return 1
    ! grep -q '^State:.*Z' "/proc/$pid/status" 2>/dev/null
}

# Waits up to $2 seconds (default 20) for the command in $1 to succeed.
wait_for() {
    local deadline=$((SECONDS + ${2:-20}))
    until eval "$1" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || return 1
        sleep 0.2
    done
}

# Sends SIGTERM to the process in a pid file, waits for it to go, then SIGKILL; removes the file.
stop_pid() {
    local file=$1 name=$2 pid deadline
    if ! pid_alive "$file"; then
        rm -f "$file"
        return 0
    fi
    pid=$(head -n1 "$file")
    kill -TERM "$pid" 2>/dev/null
    deadline=$((SECONDS + ${3:-20}))
    while [ -d "/proc/$pid" ] && ! grep -q '^State:.*Z' "/proc/$pid/status" 2>/dev/null; do
        if ((SECONDS >= deadline)); then
            say "$name (pid $pid) ignored SIGTERM, killing it"
            kill -KILL "$pid" 2>/dev/null
            break
        fi
        sleep 0.2
    done
    rm -f "$file"
    say "stopped $name (pid $pid)"
}
