#!/usr/bin/env bash
# Installs Debian's headless-capable chromium for the web-page tests (tests/web) when it is
# missing, and prints its path on the last line. The tests drive it over its DevTools protocol.
# Exit status 3: this machine cannot have it (not root, or the package cannot be installed).
set -uo pipefail
# shellcheck source=scripts/batch/common.sh
. "$(dirname "$0")/batch/common.sh"

if ! command -v chromium >/dev/null; then
    need_root
    # fonts-dejavu-core: chromium draws no text in screenshots without a font.
    apt_install chromium fonts-dejavu-core
fi
command -v chromium >/dev/null || die "chromium is still missing after installing it" 3
command -v chromium
