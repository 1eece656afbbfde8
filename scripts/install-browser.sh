#!/usr/bin/env bash
# The browser tests drive Debian's chromium through Playwright (playwright's own
# browser download cannot run offline). Installs it when missing; needs root.
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then exit 0; fi
if [ -n "${HYBRIDLAB_SKIP_APT:-}" ]; then exit 0; fi
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
