#!/usr/bin/env bash
# A cluster's login node reached over ssh, on this machine, for floe's tests and demos:
# `login-node.sh up | down | status | drop`.
#
# up      installs OpenSSH when missing, makes the "cluster account" $FLOE_CLUSTER_USER (default
#         floe-cluster: a second local account, as a collaboration's account at a site), a key
#         pair for the factory and a host key, and starts a private sshd on
#         127.0.0.1:$FLOE_SSH_PORT (default 2222) that lets in that account with that key only.
#         Prints last one line: `user@host port identity known_hosts`. A no-op when up.
# down    stops that sshd (the account and the keys stay, for the next `up`).
# drop    cuts every open connection to it (the sessions' sshd processes are killed; the
#         listener stays): what a network blip does to a factory's multiplexed connection.
# status  says what runs; exit status 0 when the sshd answers, 1 when not.
#
# The account can use the batch systems that scripts/batch/*.sh start (they take any local
# user). Exit status 3: this machine cannot host it (not root, OpenSSH not installable).
# What works here and why: ../shared/recipes/ssh-namespaces-proxies.md, docs/sites.md.
set -uo pipefail
# shellcheck source=scripts/batch/common.sh
. "$(dirname "$0")/../batch/common.sh"

ACCOUNT=${FLOE_CLUSTER_USER:-floe-cluster}
PORT=${FLOE_SSH_PORT:-2222}
DIR=$FLOE_BATCH_DIR/login-node
KEY=$DIR/factory_ed25519
KNOWN=$DIR/known_hosts

sshd_up() { pid_alive "$DIR/sshd.pid"; }

answers() {
    ssh -p "$PORT" -i "$KEY" -o IdentitiesOnly=yes -o BatchMode=yes -o ConnectTimeout=5 \
        -o UserKnownHostsFile="$KNOWN" -o StrictHostKeyChecking=yes "$ACCOUNT@127.0.0.1" true
}

account() {
    if ! id "$ACCOUNT" >/dev/null 2>&1; then
        useradd -m -s /bin/bash "$ACCOUNT" || die "cannot add the account $ACCOUNT" 3
        say "added the account $ACCOUNT"
    fi
    # A new account is locked ('!'), and sshd without PAM refuses a locked account even with
    # a valid key; '*' unlocks it without giving it a password.
    usermod -p '*' "$ACCOUNT"
    local home
    home=$(getent passwd "$ACCOUNT" | cut -d: -f6)
    install -d -m 0700 -o "$ACCOUNT" -g "$ACCOUNT" "$home/.ssh"
    install -m 0600 -o "$ACCOUNT" -g "$ACCOUNT" "$KEY.pub" "$home/.ssh/authorized_keys"
}

up() {
    need_root
    apt_install openssh-server openssh-client
    mkdir -p "$DIR" /run/sshd
    chmod 0700 "$DIR"
    [ -e "$KEY" ] || ssh-keygen -q -t ed25519 -N '' -C floe-factory -f "$KEY"
    [ -e "$DIR/host_ed25519" ] || ssh-keygen -q -t ed25519 -N '' -f "$DIR/host_ed25519"
    echo "[127.0.0.1]:$PORT $(cut -d' ' -f1-2 "$DIR/host_ed25519.pub")" >"$KNOWN"
    account
    if ! sshd_up; then
        cat >"$DIR/sshd_config" <<EOF
Port $PORT
ListenAddress 127.0.0.1
HostKey $DIR/host_ed25519
PidFile $DIR/sshd.pid
AuthorizedKeysFile .ssh/authorized_keys
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin no
AllowUsers $ACCOUNT
UsePAM no
MaxSessions 32
ClientAliveInterval 15
EOF
        /usr/sbin/sshd -f "$DIR/sshd_config" -E "$DIR/sshd.log" \
            || die "sshd did not start; see $DIR/sshd.log"
        wait_for sshd_up 10 || die "sshd did not start; see $DIR/sshd.log"
        say "sshd up on 127.0.0.1:$PORT for $ACCOUNT"
    fi
    wait_for answers 10 || die "sshd does not let $ACCOUNT in with $KEY; see $DIR/sshd.log"
    echo "$ACCOUNT@127.0.0.1 $PORT $KEY $KNOWN"
}

drop() {
    # Each connection has its own sshd processes: a child of the listener, and its session
    # process, which runs as the account; killing both cuts the connection as a network
    # failure would, and the commands it ran get SIGHUP.
    local listener
    sshd_up || return 0
    listener=$(head -n1 "$DIR/sshd.pid")
    pkill -KILL -u "$ACCOUNT" -x sshd
    pkill -KILL -P "$listener" -x sshd && say "dropped the connections to 127.0.0.1:$PORT"
    return 0
}

down() {
    drop
    stop_pid "$DIR/sshd.pid" sshd
}

status() {
    if sshd_up && answers; then
        say "sshd on 127.0.0.1:$PORT lets $ACCOUNT in (pid $(head -n1 "$DIR/sshd.pid"))"
        return 0
    fi
    say "no sshd for $ACCOUNT on 127.0.0.1:$PORT"
    return 1
}

case "${1:-}" in
    up) up ;;
    down) down ;;
    drop) drop ;;
    status) status ;;
    *) die "usage: $0 up | down | status | drop" 2 ;;
esac
