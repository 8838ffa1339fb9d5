#!/usr/bin/env bash
# A worker node behind a proxy, on this machine, for floe's tests and demos:
# `proxied-worker.sh up | down | status`.
#
# up      makes the network namespace $FLOE_WORKER_NS (default floe-worker) joined to this host by
#         a veth pair ($HOST_ADDR on the host, $WORKER_ADDR inside), and starts tinyproxy on the
#         host end ($HOST_ADDR:$FLOE_PROXY_PORT, default 8888), allowed from the namespace only.
#         Inside the namespace 127.0.0.1 is its own loopback: a matchmaker on the host's loopback
#         is reachable from there only through the proxy, as from a firewalled worker node.
#         Prints the proxy's URL last. A no-op when up.
# down    stops the proxy and deletes the namespace (its veth end goes with it, and the peer).
# status  says what runs; exit status 0 when the namespace and the proxy are up, 1 when not.
#
# Run a command on the "worker" with: ip netns exec "$FLOE_WORKER_NS" COMMAND...
# Exit status 3: this machine cannot host it (not root, no ip netns, tinyproxy not installable).
# What works here and why: ../shared/recipes/ssh-namespaces-proxies.md, docs/sites.md.
set -uo pipefail
# shellcheck source=scripts/batch/common.sh
. "$(dirname "$0")/../batch/common.sh"

NS=${FLOE_WORKER_NS:-floe-worker}
PORT=${FLOE_PROXY_PORT:-8888}
DIR=$FLOE_BATCH_DIR/proxied-worker
HOST_IF=floe-wk0
WORKER_IF=floe-wk1
HOST_ADDR=10.203.0.1
WORKER_ADDR=10.203.0.2

namespace_up() { ip netns list 2>/dev/null | grep -qw "$NS"; }
proxy_up() { pid_alive "$DIR/tinyproxy.pid"; }

up() {
    need_root
    command -v ip >/dev/null || apt_install iproute2
    apt_install tinyproxy
    mkdir -p "$DIR"
    if ! namespace_up; then
        ip netns add "$NS" || die "cannot make the network namespace $NS" 3
        ip link add "$HOST_IF" type veth peer name "$WORKER_IF" || die "cannot make a veth pair" 3
        ip link set "$WORKER_IF" netns "$NS"
        ip addr add "$HOST_ADDR/30" dev "$HOST_IF"
        ip link set "$HOST_IF" up
        ip netns exec "$NS" ip addr add "$WORKER_ADDR/30" dev "$WORKER_IF"
        ip netns exec "$NS" ip link set "$WORKER_IF" up
        ip netns exec "$NS" ip link set lo up
        say "network namespace $NS up ($WORKER_ADDR; the host is $HOST_ADDR)"
    fi
    if ! proxy_up; then
        # No ConnectPort line: CONNECT (https) is allowed to every port.
        cat >"$DIR/tinyproxy.conf" <<EOF
Port $PORT
Listen $HOST_ADDR
Allow $WORKER_ADDR
PidFile "$DIR/tinyproxy.pid"
LogFile "$DIR/tinyproxy.log"
LogLevel Info
MaxClients 100
Timeout 600
DisableViaHeader Yes
EOF
        : >"$DIR/tinyproxy.log"
        chmod 0666 "$DIR/tinyproxy.log"
        tinyproxy -c "$DIR/tinyproxy.conf" || die "tinyproxy did not start; see $DIR/tinyproxy.log"
        wait_for proxy_up 10 || die "tinyproxy did not start; see $DIR/tinyproxy.log"
        say "tinyproxy up on $HOST_ADDR:$PORT"
    fi
    echo "http://$HOST_ADDR:$PORT"
}

down() {
    stop_pid "$DIR/tinyproxy.pid" tinyproxy
    if namespace_up; then
        ip netns delete "$NS"
        say "deleted the network namespace $NS"
    fi
    ip link delete "$HOST_IF" 2>/dev/null || true
}

status() {
    local ok=0
    if namespace_up; then say "network namespace $NS is up"; else say "no namespace $NS"; ok=1; fi
    if proxy_up; then say "tinyproxy runs (pid $(head -n1 "$DIR/tinyproxy.pid"))"
    else say "tinyproxy is not running"; ok=1; fi
    return $ok
}

case "${1:-}" in
    up) up ;;
    down) down ;;
    status) status ;;
    *) die "usage: $0 up | down | status" 2 ;;
esac
