#!/usr/bin/env bash
# Makes sure the kmock Kubernetes API emulator (kmock, from PyPI) is installed at a pinned
# version in a virtualenv under target/ (so `make clean` removes it and nothing lands outside
# the checkout), then prints that venv's python on stdout, as the last and only line of stdout.
# Tests use it like this:
#     PY="$(scripts/kmock.sh)" && "$PY" tests/kmock/shim.py --port 0   # prints LISTENING <port>
# All logging goes to stderr. Idempotent, and safe to run from many test processes at once
# (an flock serialises the install). Installs python3-venv with apt if it is missing and we
# may (root or passwordless sudo; BERTH_NO_INSTALL=1 forbids).
# The venv is "${BERTH_TOOLS:-target/tools}/kmock-venv"; a relative BERTH_TOOLS is relative to
# the repository root. Every dependency is pinned by tests/kmock/constraints.txt.
set -euo pipefail

VERSION=0.8
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
TOOLS="${BERTH_TOOLS:-target/tools}"
case "$TOOLS" in /*) ;; *) TOOLS="$ROOT/$TOOLS" ;; esac
VENV="$TOOLS/kmock-venv"
CONSTRAINTS="$ROOT/tests/kmock/constraints.txt"
PY="$VENV/bin/python"

log() { printf 'kmock.sh: %s\n' "$*" >&2; }
die() { log "$*"; exit 2; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"
  elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then sudo "$@"
  else return 1; fi
}

[ -f "$CONSTRAINTS" ] || die "missing $CONSTRAINTS"
# The stamp records what was installed: kmock's version and a hash of the constraints, so
# editing the pins reinstalls. It is written last: an interrupted install is redone.
WANT="kmock==$VERSION $(sha256sum "$CONSTRAINTS" | cut -d' ' -f1)"

installed() {
  [ -x "$PY" ] && [ -f "$VENV/.installed" ] && [ "$(cat "$VENV/.installed")" = "$WANT" ] \
    && "$PY" -c 'import importlib.metadata as m, sys; sys.exit(m.version("kmock") != sys.argv[1])' \
         "$VERSION" 2>/dev/null
}

if ! installed; then
  mkdir -p "$TOOLS"
  exec 9>"$TOOLS/kmock-venv.lock"
  flock 9   # parallel test processes: one installs, the others wait and then find it done
  if ! installed; then
    command -v python3 >/dev/null 2>&1 || die "python3 is required (apt-get install python3 python3-venv)"
    python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
      || die "kmock $VERSION needs Python >= 3.11, found $(python3 --version 2>&1)"
    if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
      log "python3's venv module is missing; installing python3-venv"
      { [ -z "${BERTH_NO_INSTALL:-}" ] && command -v apt-get >/dev/null 2>&1 \
        && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >&2; } \
        || die "python3's venv module is missing: apt-get install python3-venv"
    fi
    log "installing kmock==$VERSION into $VENV"
    rm -rf "$VENV"
    python3 -m venv "$VENV" >&2
    "$VENV/bin/pip" install --quiet --disable-pip-version-check --no-input \
        -c "$CONSTRAINTS" "kmock==$VERSION" >&2 \
      || die "could not install kmock==$VERSION (with -c $CONSTRAINTS) from PyPI"
    printf '%s\n' "$WANT" >"$VENV/.installed"
    log "installed kmock==$VERSION"
  fi
fi
printf '%s\n' "$PY"
