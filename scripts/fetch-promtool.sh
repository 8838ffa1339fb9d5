#!/usr/bin/env bash
# For `make test` only: promtool lets a test check /metrics as Prometheus reads it. Only that
# binary is taken from Debian's prometheus package (a 19 MB download, 48 MB in .venv/bin, a
# second or two), not the server and its service; where apt cannot fetch the package, that one
# test is skipped with its reason.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/promtool ] && ! command -v promtool >/dev/null && command -v apt-get >/dev/null
then
    fetched=$(mktemp -d)
    if (cd "$fetched" && apt-get download -q prometheus && dpkg-deb -x prometheus_*.deb root) \
        >/dev/null 2>&1; then
        cp "$fetched/root/usr/bin/promtool" .venv/bin/promtool
    fi
    rm -rf "$fetched"
fi
