#!/usr/bin/env bash
# Creates .venv with floe and its test tools installed (editable). Installs Debian's python3-venv
# first when the interpreter lacks ensurepip and we are root (a fresh Debian 12 has no venv module).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "floe needs Python 3.11 or newer for the server side; $PY is $("$PY" --version 2>&1)." >&2
    echo "Set PYTHON=/path/to/python3.11 and run again." >&2
    exit 1
fi
if [ ! -x .venv/bin/python ]; then
    if ! "$PY" -m venv .venv 2>/dev/null; then
        rm -rf .venv
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
            echo "installing Debian's python3-venv (this interpreter has no venv module)"
            DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv >/dev/null
            "$PY" -m venv .venv
        else
            echo "$PY cannot create a virtual environment: install python3-venv and run again." >&2
            exit 1
        fi
    fi
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[dev]'
touch .venv/.floe-installed
